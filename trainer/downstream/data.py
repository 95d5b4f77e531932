"""Downstream rows: the ad domain's samples of a time window, with their representation features.

Rows are held as a dict of numpy arrays (the raw features as `features.parse_examples` gives
them, `[n]` or `[n, length]`), built batch by batch with vectorised filters; the representation
features of `trainer.downstream.point_in_time.attach` are added as `[n, d]` and `[n]` arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer import features as F
from trainer import input as data_input
from trainer import oracle
from trainer.downstream import point_in_time as P

Rows = dict[str, np.ndarray]


def read_rows(files: Sequence[str], start: int | None = None, end: int | None = None,
              domain: bytes | None = F.DOMAIN_AD, batch_size: int = 8192) -> Rows:
    """Every raw feature of the records with `start <= timestamp < end` (and `domain`), in
    record order."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in F.ALL_FEATURES}
    for batch in data_input.make_dataset(list(files), batch_size, start=start, end=end):
        keep = (batch[F.DOMAIN].numpy() == domain) if domain is not None else None
        for name in F.ALL_FEATURES:
            value = batch[name].numpy()
            parts[name].append(value[keep] if keep is not None else value)
    return with_bytes_as_objects(
        {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()})


def with_bytes_as_objects(rows: Rows) -> Rows:
    """`rows` with each bytes feature of the schema as an object array of `bytes` (what the
    point-in-time lookups and the ranker's preprocessing take)."""
    for name in F.ALL_FEATURES:
        if name in rows and F.FEATURE_TYPES[name] is bytes:
            rows[name] = rows[name].astype(object)
    return rows


def size(rows: Rows) -> int:
    return int(rows[F.LABEL].shape[0])


def select(rows: Rows, keep: np.ndarray) -> Rows:
    return {name: value[keep] for name, value in rows.items()}


def with_representations(rows: Rows, source: P.RepresentationSource,
                         features: Sequence[str]) -> Rows:
    """`rows` plus the representation `features`, as of strictly before each row."""
    if not features:
        return dict(rows)
    extra = P.attach(source, rows[F.USER_ID], rows[F.ITEM_ID], rows[F.TIMESTAMP], features)
    return {**rows, **extra}


def to_dataset(rows: Rows, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of feature dicts (shuffled each epoch when `shuffle_seed` is given)."""
    tensors = {name: tf.constant(value) for name, value in rows.items()}
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        ds = ds.shuffle(size(rows), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def oracle_probabilities(data: str, rows: Rows, start: int, end: int,
                         domain: bytes | None = F.DOMAIN_AD) -> np.ndarray | None:
    """The true click probability of each of `rows` (read with `read_rows(start, end, domain)`
    from `data`) when `data` holds the synthetic generator's oracle (`trainer.oracle`); None
    otherwise, or when the oracle's rows of that window are not `rows`."""
    return oracle.probabilities(data, rows[F.LABEL], rows[F.ITEM_ID], rows[F.TIMESTAMP], start,
                                end, None if domain is None else domain == F.DOMAIN_AD)
