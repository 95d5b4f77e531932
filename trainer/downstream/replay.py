"""Replay of the frozen upstream model over traffic: the offline twin of the online loop.

In production (paper Fig. 4) every request runs the upstream model; the online loop stores
the new UR(u), IR(i) and folds CR(u,i) into CR(u), CR(i) when the request is an ad (Sec.
4.3.1; `cr_domains`, `common.representations.cr_folding`: `"ad"` by default, `"all"` folds
content requests too). To build downstream training rows
that see exactly what production would have stored before each of them, `run_upstream` runs
the upstream's `user_representation`, `item_representation` and `cross_representation`
signatures over the serialized requests in batches (vectorised: one call per batch), and
`histories` turns the outputs into the point-in-time histories of
`trainer.downstream.point_in_time` (optionally continuing a published version of the tables).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from common import features, signatures
from common.representations import cr_folding, tables
from common.serving_layout import resolve_export_dir, version_of
from trainer.downstream import point_in_time
from trainer.export import read_training_facts
from trainer.mix_tower import CR_OUTPUT

# The outputs `run_upstream` collects: UR, IR and CR(u,i).
UR, IR, CR = (
    signatures.USER_REPRESENTATION,
    signatures.ITEM_REPRESENTATION,
    signatures.CROSS_REPRESENTATION,
)

RepresentationFn = Callable[[tf.Tensor], Mapping[str, tf.Tensor]]
"""Serialized tf.Examples `[batch]` -> `{UR: [batch, d_ur], IR: ..., CR: ...}` (and more)."""


def resolve_export(export_dir: str) -> tuple[str, int | None]:
    """(SavedModel directory, its version) of `export_dir`: a version directory or a model
    base path in TF Serving's layout (its highest version; `serving_layout.resolve_export_dir`)."""
    path = resolve_export_dir(export_dir)
    return path, version_of(path)


def saved_model_fn(export_dir: str) -> RepresentationFn:
    """The upstream SavedModel as one `RepresentationFn`: its `representations` signature (one
    forward pass per batch; it also returns the ad prediction), or, for an export from
    before that signature, its three representation signatures."""
    path, _ = resolve_export(export_dir)
    loaded = tf.saved_model.load(path)
    run = signatures.representations_fn(loaded, path)
    run.loaded = loaded  # keeps the variables alive
    return run


def keras_model_fn(model, cr_layers: Iterable[str] = ()) -> RepresentationFn:
    """An in-memory `trainer.model.LFM4AdsModel` as a `RepresentationFn`; with `cr_layers`
    (`embedding`, `cross_<l>`, `mlp_<l>`) also the ad branch's output at each of those layers,
    under `CR + ":" + layer` (the layer study of paper Sec. 5.1.3)."""
    cr_layers = tuple(cr_layers)

    @tf.function
    def forward(examples):
        raw = features.parse_examples(examples)
        out = {UR: model.user_representation(raw), IR: model.item_representation(raw)}
        layers = model.ad_branch_outputs(raw)
        out[CR] = layers[CR_OUTPUT]
        for name in cr_layers:
            out[f"{CR}:{name}"] = layers[name]
        return {k: tf.cast(v, tf.float32) for k, v in out.items()}

    return forward


@dataclasses.dataclass(eq=False)
class UpstreamEvents:
    """The upstream's outputs on each request, in input order.

    user_id, item_id, digest: object [n] bytes; timestamp: int64 [n];
    outputs: name -> float32 [n, d] (at least UR, IR, CR);
    domain: object [n] bytes, each request's `domain` (None: not read; then only
    `cr_domains="all"` can fold its CR events).
    trained_until: int64 [n], the end (unix seconds, exclusive) of the data the model that
    scored each request was trained on (None: not recorded); `check_unseen` reads it.
    """

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    digest: np.ndarray
    outputs: dict[str, np.ndarray]
    domain: np.ndarray | None = None
    trained_until: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def select(self, rows: np.ndarray) -> UpstreamEvents:
        """The events of `rows` (a boolean mask or indices)."""
        return UpstreamEvents(self.user_id[rows], self.item_id[rows], self.timestamp[rows],
                              self.digest[rows], {k: v[rows] for k, v in self.outputs.items()},
                              None if self.domain is None else self.domain[rows],
                              None if self.trained_until is None else self.trained_until[rows])

    def scored_by(self, trained_until: int) -> UpstreamEvents:
        """These events, recorded as scored by a model trained on data before
        `trained_until`."""
        return dataclasses.replace(self, trained_until=np.full(len(self), trained_until,
                                                               np.int64))

    def fold_mask(self, cr_domains: str) -> np.ndarray:
        """bool [n]: the events whose CR(u,i) folds under `cr_domains` (`cr_folding.fold_mask`).
        Raises ValueError under a setting that reads domains when these events have none."""
        if not cr_folding.needs_domains(cr_domains):
            return np.ones(len(self), dtype=bool)
        if self.domain is None:
            raise ValueError(f"cr_domains={cr_domains!r} needs each request's domain; these "
                             f"events have none (run_upstream reads it): fold with "
                             f"cr_domains={cr_folding.ALL!r} or give UpstreamEvents.domain")
        return cr_folding.fold_mask(self.domain, cr_domains)


def run_upstream(fn: RepresentationFn, records: Iterable[bytes] | tf.data.Dataset,
                 batch_size: int = 4096) -> UpstreamEvents:
    """Runs `fn` over serialized requests (each with user_id, item_id, timestamp and the
    features the upstream reads) in batches of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(records, tf.data.Dataset):
        records = tf.data.Dataset.from_tensor_slices(tf.constant(list(records), tf.string))
    spec = features.feature_spec((features.USER_ID, features.ITEM_ID, features.TIMESTAMP,
                                  features.DOMAIN))
    parts: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "timestamp": [],
                                          "digest": [], "domain": []}
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in records.batch(batch_size).prefetch(2):
        ids = tf.io.parse_example(batch, spec)
        parts["user_id"].append(ids[features.USER_ID].numpy().astype(object))
        parts["item_id"].append(ids[features.ITEM_ID].numpy().astype(object))
        parts["timestamp"].append(ids[features.TIMESTAMP].numpy().astype(np.int64))
        parts["domain"].append(ids[features.DOMAIN].numpy().astype(object))
        parts["digest"].append(np.array([tables.sample_digest(r) for r in batch.numpy()],
                                        dtype=object))
        for name, value in fn(batch).items():
            outputs.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
    if not parts["timestamp"]:
        raise ValueError("run_upstream got no records")
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    return UpstreamEvents(joined["user_id"], joined["item_id"], joined["timestamp"],
                          joined["digest"], {k: np.concatenate(v) for k, v in outputs.items()},
                          joined["domain"])


def concatenate(parts: Sequence[UpstreamEvents]) -> UpstreamEvents:
    """The events of `parts`, one after the other (each part with the same outputs; domains
    and `trained_until` kept only when every part has them)."""
    if not parts:
        raise ValueError("concatenate got no events")
    names = set(parts[0].outputs)
    for part in parts[1:]:
        if set(part.outputs) != names:
            raise ValueError(f"events with different outputs: {sorted(names)} and "
                             f"{sorted(part.outputs)}")

    def joined(field):
        values = [getattr(p, field) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return UpstreamEvents(*(joined(f) for f in ("user_id", "item_id", "timestamp", "digest")),
                          {k: np.concatenate([p.outputs[k] for p in parts]) for k in names},
                          joined("domain"), joined("trained_until"))


def record_timestamps(records: Sequence[bytes]) -> np.ndarray:
    """int64 [n]: the `timestamp` of each serialized request."""
    if not len(records):
        return np.zeros(0, np.int64)
    spec = {features.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64)}
    batches = tf.data.Dataset.from_tensor_slices(tf.constant(list(records), tf.string))
    return np.concatenate([tf.io.parse_example(b, spec)[features.TIMESTAMP].numpy()
                           for b in batches.batch(65536)]).astype(np.int64)


def version_index(trained_until: Sequence[int], timestamps: np.ndarray) -> np.ndarray:
    """int [n]: for each timestamp, the index of the last of `trained_until` (ascending) that
    is <= it, or 0 when none is (`run_versions`' rule)."""
    ends = np.asarray(trained_until, np.int64)
    return np.maximum(np.searchsorted(ends, np.asarray(timestamps), side="right") - 1, 0)


def run_versions(versions: Sequence[tuple[int, RepresentationFn]],
                 records: Iterable[bytes], batch_size: int = 4096) -> UpstreamEvents:
    """Requests scored as production would have: each by the newest upstream version trained
    only on data before it.

    `versions`: `(trained_until, fn)` pairs, `trained_until` the end (exclusive, unix seconds)
    of the data that version trained on. A request at `t` goes to the last version with
    `trained_until <= t`; requests older than every version (the first version's own training
    data: history for the tables, not rows to evaluate) go to the first. The events come back
    in input order, each with the `trained_until` of the version that scored it.
    """
    versions = sorted(versions, key=lambda v: v[0])
    if not versions:
        raise ValueError("run_versions got no upstream versions")
    records = list(records)
    if not records:
        raise ValueError("run_versions got no records")
    stamps = record_timestamps(records)
    which = version_index([v[0] for v in versions], stamps)
    parts, order = [], []
    for k, (trained_until, fn) in enumerate(versions):
        chosen = np.flatnonzero(which == k)
        if chosen.size:
            parts.append(run_upstream(fn, [records[j] for j in chosen], batch_size)
                         .scored_by(trained_until))
            order.append(chosen)
    events = concatenate(parts)
    return events.select(np.argsort(np.concatenate(order), kind="stable"))


def upstream_versions(base: str) -> list[tuple[int, str]]:
    """`(trained_until, version directory)` of every version under a model base path in TF
    Serving's layout, oldest first: `trained_until` is the `train_end` its export recorded
    (`trainer.export.read_training_facts`; `trainer.train` writes it). Raises ValueError when
    there is no version or one does not say what it was trained on."""
    if not tf.io.gfile.isdir(base):
        raise ValueError(f"the upstream base path {base!r} is not a directory")
    names = sorted((d.strip("/") for d in tf.io.gfile.listdir(base) if d.strip("/").isdigit()),
                   key=int)
    if not names:
        raise ValueError(f"{base!r} holds no upstream version (<base>/<version>/)")
    out = []
    for name in names:
        path = f"{base.rstrip('/')}/{name}"
        end = read_training_facts(path).get("train_end")
        if end is None:
            raise ValueError(f"the upstream version {path!r} does not record the end of the "
                             "data it was trained on (train_end in assets.extra, written by "
                             "trainer.train): it cannot say which rows it never saw")
        out.append((int(end), path))
    return sorted(out)


def check_unseen(events: UpstreamEvents, start: int) -> None:
    """Raises ValueError unless every event at or after `start` was scored by a model trained
    only on data before it (`trained_until <= timestamp`): the rows a downstream model trains
    and is tested on never met an upstream that had seen them."""
    if events.trained_until is None:
        raise ValueError("these events do not record which model scored them "
                         "(UpstreamEvents.trained_until); run them with run_versions")
    late = np.flatnonzero((events.timestamp >= start) & (events.trained_until > events.timestamp))
    if late.size:
        j = late[0]
        raise ValueError(
            f"{late.size} request(s) from {start} on were scored by a model that had trained on "
            f"them, e.g. user {events.user_id[j]!r}, item {events.item_id[j]!r} at "
            f"{events.timestamp[j]} by a model trained on data up to {events.trained_until[j]}")


def histories(events: UpstreamEvents, half_life_seconds: float,
              base: point_in_time.HistorySource | None = None, cr_output: str = CR,
              cr_domains: str = cr_folding.DEFAULT) -> point_in_time.HistorySource:
    """The tables the online loop would hold after each of `events` (module doc).

    UR, IR: the latest request per key (same-second ties by the sample digest), every request;
    CR(u), CR(i): the time-aware EMA of `cr_output` (Eq. 1-2) over the requests `cr_domains`
    selects (`"ad"`: ad requests only, paper Sec. 4.3.1; `"all"`: every request); the latest
    CR(u,i) per user and per item over the same requests (no aggregation; `cr_latest`).
    `base`: a published version the replay continues.
    """
    if cr_output not in events.outputs:
        raise KeyError(f"events have no output {cr_output!r}; they have {sorted(events.outputs)}")
    fold = events.fold_mask(cr_domains)  # [n] the CR(u,i) events that fold
    old = base.histories if base is not None else {}
    u, i, t, digest = events.user_id, events.item_id, events.timestamp, events.digest
    cr = events.outputs[cr_output][fold]  # [m, d_cr]
    cu, ci, ct, cdigest = u[fold], i[fold], t[fold], digest[fold]
    latest = point_in_time.RepresentationHistory.latest
    aggregated = point_in_time.RepresentationHistory.aggregated
    return point_in_time.HistorySource({
        tables.USER_TABLE: latest(u, t, events.outputs[UR], digest, old.get(tables.USER_TABLE)),
        tables.ITEM_TABLE: latest(i, t, events.outputs[IR], digest, old.get(tables.ITEM_TABLE)),
        tables.CROSS_USER_TABLE: aggregated(cu, ct, cr, half_life_seconds,
                                       old.get(tables.CROSS_USER_TABLE)),
        tables.CROSS_ITEM_TABLE: aggregated(ci, ct, cr, half_life_seconds,
                                       old.get(tables.CROSS_ITEM_TABLE)),
        point_in_time.LATEST_CROSS_USER_TABLE: latest(cu, ct, cr, cdigest),
        point_in_time.LATEST_CROSS_ITEM_TABLE: latest(ci, ct, cr, cdigest),
    })
