"""Downstream rows: the ad domain's samples of a time window, with their representation features.

Rows are held as a dict of numpy arrays (the raw features as `features.parse_examples` gives
them, `[n]` or `[n, length]`), built batch by batch with vectorised filters; the representation
features of `trainer.downstream.point_in_time.attach` are added as `[n, d]` and `[n]` arrays,
the upstream's predicted ad click probability of each row (`with_upstream_prediction`, the
`distill` mode) as `[n]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from common import features, signatures
from common.downstream_requests import example_with_representations
from common.serving_layout import resolve_export_dir
from trainer import data_input, oracle
from trainer.downstream import point_in_time

Rows = dict[str, np.ndarray]
# A batch of raw features (`features.ALL_FEATURES`, as `to_dataset` batches them) -> the
# upstream's ad click probability of each row, `[batch]` or `[batch, 1]`.
PredictFn = Callable[[dict[str, tf.Tensor]], tf.Tensor | np.ndarray]


def read_rows(files: Sequence[str], start: int | None = None, end: int | None = None,
              domain: bytes | None = features.DOMAIN_AD, batch_size: int = 8192) -> Rows:
    """Every raw feature of the records with `start <= timestamp < end` (and `domain`), in
    record order."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in features.ALL_FEATURES}
    for batch in data_input.make_dataset(list(files), batch_size, start=start, end=end):
        keep = (batch[features.DOMAIN].numpy() == domain) if domain is not None else None
        for name in features.ALL_FEATURES:
            value = batch[name].numpy()
            parts[name].append(value[keep] if keep is not None else value)
    return with_bytes_as_objects(
        {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()})


def with_bytes_as_objects(rows: Rows) -> Rows:
    """`rows` with each bytes feature of the schema as an object array of `bytes` (what the
    point-in-time lookups and the ranker's preprocessing take)."""
    for name in features.ALL_FEATURES:
        if name in rows and features.FEATURE_TYPES[name] is bytes:
            rows[name] = rows[name].astype(object)
    return rows


def size(rows: Rows) -> int:
    return int(rows[features.LABEL].shape[0])


def select(rows: Rows, keep: np.ndarray) -> Rows:
    return {name: value[keep] for name, value in rows.items()}


def with_representations(rows: Rows, source: point_in_time.RepresentationSource,
                         names: Sequence[str]) -> Rows:
    """`rows` plus the representation features `names`, as of strictly before each row."""
    if not names:
        return dict(rows)
    extra = point_in_time.attach(source, rows[features.USER_ID], rows[features.ITEM_ID],
                                 rows[features.TIMESTAMP], names)
    return {**rows, **extra}


def with_upstream_prediction(rows: Rows, predict: PredictFn, batch_size: int = 4096) -> Rows:
    """`rows` plus `signatures.UPSTREAM_AD_PREDICTION_FEATURE` `[n]` float32: `predict` on the
    rows' raw features, `batch_size` rows at a time (e.g. `keras_ad_prediction_fn`,
    `saved_model_ad_prediction_fn`). The upstream scores each row itself, as the live model
    does at request time: give one that never trained on the rows."""
    raw = {name: rows[name] for name in features.ALL_FEATURES}
    out = [np.asarray(predict(batch), np.float32).reshape(-1)
           for batch in to_dataset(raw, batch_size)]
    probabilities = np.concatenate(out) if out else np.zeros(0, np.float32)
    if probabilities.shape != (size(rows),):
        raise ValueError(f"predict gave {probabilities.shape[0]} values for {size(rows)} rows: "
                         "it must give one probability per row")
    bad = ~((probabilities >= 0.0) & (probabilities <= 1.0))  # NaN included
    if bad.any():
        raise ValueError(f"predict gave {int(bad.sum())} values outside [0, 1] (e.g. "
                         f"{probabilities[bad][0]}): it must give probabilities")
    return {**rows, signatures.UPSTREAM_AD_PREDICTION_FEATURE: probabilities}


def keras_ad_prediction_fn(model: tf.keras.Model) -> PredictFn:
    """An in-memory upstream (`trainer.model.LFM4AdsModel`) as a `PredictFn`: its
    `ad_prediction` on the raw features, not training."""
    forward = tf.function(lambda raw: model(raw, training=False)[signatures.AD_PREDICTION])
    return lambda raw: forward(raw).numpy()  # [batch, 1]


def saved_model_ad_prediction_fn(export_dir: str) -> PredictFn:
    """An upstream SavedModel (a version directory or a model base path: its highest version)
    as a `PredictFn`: the `ad_prediction` output of its `serving_default` signature on each
    row serialized as the serving request it would be (the raw features of a tf.Example)."""
    path = resolve_export_dir(export_dir)
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures.get(signatures.SERVING_DEFAULT)
    if serve is None or signatures.AD_PREDICTION not in serve.structured_outputs:
        raise ValueError(
            f"SavedModel {path!r} has no {signatures.SERVING_DEFAULT!r} signature with the "
            f"output {signatures.AD_PREDICTION!r}; it has {sorted(loaded.signatures)}"
        )

    def predict(raw: dict[str, tf.Tensor]) -> np.ndarray:
        values = {name: value.numpy() for name, value in raw.items()}
        n = next(iter(values.values())).shape[0]
        examples = [example_with_representations({k: v[r] for k, v in values.items()}, {})
                    for r in range(n)]
        return serve(**{signatures.INPUT_KEY: tf.constant(examples, tf.string)})[
            signatures.AD_PREDICTION].numpy()  # [batch, 1]

    predict.loaded = loaded  # keeps the variables alive
    return predict


def to_dataset(rows: Rows, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of feature dicts (shuffled each epoch when `shuffle_seed` is given)."""
    tensors = {name: tf.constant(value) for name, value in rows.items()}
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        ds = ds.shuffle(size(rows), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def oracle_probabilities(data: str, rows: Rows, start: int, end: int,
                         domain: bytes | None = features.DOMAIN_AD) -> np.ndarray | None:
    """The true click probability of each of `rows` (read with `read_rows(start, end, domain)`
    from `data`) when `data` holds the synthetic generator's oracle (`trainer.oracle`); None
    otherwise, or when the oracle's rows of that window are not `rows`."""
    return oracle.probabilities(data, rows[features.LABEL], rows[features.ITEM_ID],
                                rows[features.TIMESTAMP], start,
                                end, None if domain is None else domain == features.DOMAIN_AD)
