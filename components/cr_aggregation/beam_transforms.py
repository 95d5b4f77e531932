"""Beam transforms for the time-aware EMA of cross representations (paper Sec. 3.3, Eq. 1-2).

    CR(u) <- beta(t(u)) * CR(u) + (1 - beta(t(u))) * CR(u,i)        (Eq. 1)
    CR(i) <- beta(t(i)) * CR(i) + (1 - beta(t(i))) * CR(u,i)        (Eq. 2)

Semantics (initialisation, tie rule, strictly-before as-of) are those of
``common.representations.ema``. Which events fold is ``cr_domains``
(``common.representations.cr_folding``): by default only those of ad requests (paper
Sec. 4.3.1: a CR(u,i) is folded when a user meets an ad), ``"all"`` folds every event; the
other events are dropped before the key buckets. The transforms work on batches, not one
Python object per event (several times slower in Beam): each input batch is split into
sub-batches by key bucket ``zlib.crc32(key) % num_buckets`` (``components.key_buckets``:
stable across processes, unlike ``hash()``), the sub-batches of one bucket are grouped,
concatenated and aggregated with numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

from common import signatures
from common.representations import cr_folding
from common.representations.ema import (
    Beta,
    _validate_events,
    aggregate_sorted,
    as_of,
    half_life_decay,
)
from common.representations.tables import sample_digest
from components.key_buckets import key_buckets

EVENT_FIELDS = ("user_id", "item_id", "timestamp", "cross_representation")
QUERY_FIELDS = ("key", "timestamp", "row_id")
SIDES = {"user": "user_id", "item": "item_id"}


def _field(batch: dict, name: str, expected: tuple[str, ...]) -> np.ndarray:
    if name not in batch:
        raise KeyError(f"batch is missing field {name!r}; expected fields {list(expected)}")
    return np.asarray(batch[name])


def _bytes_keys(keys: np.ndarray) -> np.ndarray:
    """Keys as an object array of bytes [n] (str is UTF-8 encoded)."""
    out = np.empty(keys.shape[0], dtype=object)
    for i, k in enumerate(keys.tolist()):
        if isinstance(k, str):
            k = k.encode("utf-8")
        elif not isinstance(k, bytes):
            raise TypeError(f"keys must be bytes or str, got {type(k).__name__} at row {i}")
        out[i] = k
    return out


def _split_by_bucket(
    num_buckets: int, keys: np.ndarray, *columns: np.ndarray
) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """Yields (bucket, (keys[rows], *columns[rows])) for each bucket present in the batch."""
    bucket = key_buckets(keys, num_buckets)  # [n]
    order = np.argsort(bucket, kind="stable")  # [n]
    b_sorted = bucket[order]
    bounds = np.flatnonzero(np.diff(b_sorted)) + 1
    for rows in np.split(order, bounds):
        if rows.size:
            yield int(bucket[rows[0]]), (keys[rows],) + tuple(c[rows] for c in columns)


def _split_events(
    batch: dict, key_field: str, num_buckets: int, cr_domains: str = cr_folding.DEFAULT
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    batch = cr_folding.select_events(batch, cr_domains)  # the events that fold (module doc)
    keys = _bytes_keys(_field(batch, key_field, EVENT_FIELDS))
    ts = _field(batch, "timestamp", EVENT_FIELDS)
    crs = _field(batch, "cross_representation", EVENT_FIELDS)
    keys, ts, crs = _validate_events(keys, ts, crs)  # fail early, naming the bad row
    yield from _split_by_bucket(num_buckets, keys, ts, crs)


def _concat(parts: Iterable[tuple[np.ndarray, ...]], d: int | None = None) -> list[np.ndarray]:
    parts = list(parts)
    if not parts:  # only for an empty events side in a co-group
        return [
            np.empty(0, dtype=object),
            np.empty(0, dtype=np.int64),
            np.empty((0, d), dtype=np.float32),
        ]
    return [np.concatenate(cols) for cols in zip(*parts, strict=True)]


def _aggregate_bucket(
    element: tuple[int, Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]], beta: Beta
) -> Iterator[tuple[bytes, np.ndarray, int]]:
    _, parts = element
    keys, ts, crs = _concat(parts)
    uniq, cr, updated_at = aggregate_sorted(keys, ts, crs, beta)  # [k], [k, d], [k]
    yield from zip(uniq.tolist(), cr, updated_at.tolist(), strict=True)  # (key, [d], int)


def _decay_and_buckets(
    half_life_seconds: float, beta: Beta | None, num_buckets: int
) -> tuple[Beta, int]:
    """The transforms' shared arguments: beta (default: half-life decay), checked bucket count."""
    if not (isinstance(num_buckets, int) and num_buckets >= 1):
        raise ValueError(f"num_buckets must be an int >= 1, got {num_buckets!r}")
    return (beta if beta is not None else half_life_decay(half_life_seconds)), num_buckets


class AggregateCrossRepresentations(beam.PTransform):
    """Final CR(u) and CR(i) after all events (Eq. 1-2), from batches of CR(u,i) events.

    Input: PCollection of batches ``{"user_id": bytes/str [n], "item_id": bytes/str [n],
    "timestamp": int [n] (seconds), "domain": bytes [n], "cross_representation": float
    [n, d]}``; ``cr_domains`` picks the events that fold (``"ad"``: ``domain == b"ad"``;
    ``"all"``: every event, and "domain" may be absent).

    Output: ``{"user": PCollection, "item": PCollection}`` of ``(key: bytes, cr: float32 [d],
    updated_at: int)``, one element per distinct key.

    Events are routed to ``num_buckets`` buckets by ``zlib.crc32(key) % num_buckets``; a
    bucket's events are held in memory while it is aggregated (vectorised
    ``ema.aggregate_sorted``); the result per key is one d-float vector and one int
    (4 * d + 8 bytes of payload). Nothing is collected to the driver.
    Tie rule: events of one key with the same timestamp are averaged and applied as one event.
    """

    def __init__(
        self,
        half_life_seconds: float,
        num_buckets: int = 64,
        beta: Beta | None = None,
        label: str | None = None,
        cr_domains: str = cr_folding.DEFAULT,
    ) -> None:
        super().__init__(label)
        self._beta, self._num_buckets = _decay_and_buckets(half_life_seconds, beta, num_buckets)
        self._cr_domains = cr_folding.check(cr_domains)

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        out = {}
        for side, key_field in SIDES.items():
            out[side] = (
                batches
                | f"{side}/SplitByBucket"
                >> beam.FlatMap(_split_events, key_field, self._num_buckets, self._cr_domains)
                | f"{side}/GroupByBucket" >> beam.GroupByKey()
                | f"{side}/Aggregate" >> beam.FlatMap(_aggregate_bucket, self._beta)
            )
        return out


def _split_queries(
    batch: dict, num_buckets: int
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    keys = _bytes_keys(_field(batch, "key", QUERY_FIELDS))
    ts = _field(batch, "timestamp", QUERY_FIELDS)
    row_id = _field(batch, "row_id", QUERY_FIELDS)
    if ts.dtype.kind not in "iu":
        raise TypeError(f"queries: timestamps must be integers, got dtype {ts.dtype}")
    n = keys.shape[0]
    if ts.shape != (n,) or row_id.shape[:1] != (n,):
        raise ValueError(
            f"queries: key, timestamp and row_id must have length {n}, "
            f"got {ts.shape} and {row_id.shape}"
        )
    yield from _split_by_bucket(num_buckets, keys, ts.astype(np.int64), row_id)


def _as_of_bucket(
    element: tuple[int, dict[str, Iterable]], beta: Beta, cr_dim: int
) -> Iterator[tuple[object, np.ndarray, int]]:
    _, groups = element
    queries = list(groups["queries"])
    if not queries:
        return
    keys_e, ts_e, crs_e = _concat(groups["events"], cr_dim)
    if crs_e.shape[1] != cr_dim:
        raise ValueError(f"cross_representation has width {crs_e.shape[1]}, expected {cr_dim}")
    keys_q, ts_q, row_id = _concat(queries)
    cr, updated_at = as_of(keys_e, ts_e, crs_e, keys_q, ts_q, beta)  # [q, d], [q]
    yield from zip(row_id.tolist(), cr, updated_at.tolist(), strict=True)  # (row_id, [d], int)


class PointInTimeCrossRepresentations(beam.PTransform):
    """CR(key) as of strictly before each query row's timestamp (Eq. 1-2, no leakage).

    Input: ``{"events": PCollection of event batches (as AggregateCrossRepresentations),
    "queries": PCollection of batches {"key": bytes/str [q], "timestamp": int [q],
    "row_id": [q]}}``; ``key_field`` ("user_id" or "item_id") picks the events' key column,
    ``cr_domains`` the events that fold (as AggregateCrossRepresentations).

    Output: PCollection of ``(row_id, cr: float32 [cr_dim], updated_at: int)``: the state after
    all of the key's events with timestamp < the row's timestamp; NaN vector and -1 when none.
    Events and queries meet per bucket (``zlib.crc32(key) % num_buckets``) via CoGroupByKey;
    a bucket's events and queries are held in memory while it is processed.
    """

    def __init__(
        self,
        key_field: str,
        cr_dim: int,
        half_life_seconds: float,
        num_buckets: int = 64,
        beta: Beta | None = None,
        label: str | None = None,
        cr_domains: str = cr_folding.DEFAULT,
    ) -> None:
        super().__init__(label)
        if key_field not in SIDES.values():
            raise ValueError(
                f"key_field must be one of {sorted(SIDES.values())}, got {key_field!r}"
            )
        self._key_field = key_field
        self._cr_dim = int(cr_dim)
        self._beta, self._num_buckets = _decay_and_buckets(half_life_seconds, beta, num_buckets)
        self._cr_domains = cr_folding.check(cr_domains)

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        events = inputs["events"] | "SplitEvents" >> beam.FlatMap(
            _split_events, self._key_field, self._num_buckets, self._cr_domains
        )
        queries = inputs["queries"] | "SplitQueries" >> beam.FlatMap(
            _split_queries, self._num_buckets
        )
        return (
            {"events": events, "queries": queries}
            | "CoGroupByBucket" >> beam.CoGroupByKey()
            | "AsOf" >> beam.FlatMap(_as_of_bucket, self._beta, self._cr_dim)
        )


# ------------------------------------------------------------- point-in-time CRs on examples
POINT_IN_TIME_FEATURES = {
    "user": (signatures.CR_USER_FEATURE, signatures.CR_USER_FEATURE + "_updated_at"),
    "item": (signatures.CR_ITEM_FEATURE, signatures.CR_ITEM_FEATURE + "_updated_at"),
}


def _example_cls():
    from tensorflow.core.example import example_pb2  # proto only

    return example_pb2.Example


def _row_id(serialized: bytes) -> bytes:
    """Rows are matched by the extractor's sample digest (BLAKE2b-128 of the bytes)."""
    return sample_digest(serialized)


def _queries(batch: list[bytes], key_field: str) -> dict:
    """Serialized examples -> one query batch {"key", "timestamp", "row_id"} for `key_field`."""
    parse = _example_cls().FromString
    keys = np.empty(len(batch), dtype=object)
    ts = np.empty(len(batch), dtype=np.int64)
    row_ids = np.empty(len(batch), dtype=object)
    for i, serialized in enumerate(batch):
        feature = parse(serialized).features.feature
        keys[i] = feature[key_field].bytes_list.value[0]
        ts[i] = feature["timestamp"].int64_list.value[0]
        row_ids[i] = _row_id(serialized)
    return {"key": keys, "timestamp": ts, "row_id": row_ids}


def _attach(element, cr_dim: int) -> Iterator[bytes]:
    """(row_id, {"example": [bytes], "user": [(cr, t)], "item": [(cr, t)]}) -> examples."""
    _, groups = element
    example_cls = _example_cls()
    extra = {}
    for side, (vector_name, time_name) in POINT_IN_TIME_FEATURES.items():
        found = list(groups[side])
        # Byte-identical rows have identical answers: one is enough.
        cr, updated_at = found[0] if found else (None, -1)
        extra[vector_name] = (np.asarray(cr, dtype=np.float32) if updated_at >= 0
                              else np.zeros(cr_dim, dtype=np.float32))  # none earlier
        extra[time_name] = int(updated_at)
    for serialized in groups["example"]:
        example = example_cls.FromString(serialized)
        feature = example.features.feature
        for vector_name, time_name in POINT_IN_TIME_FEATURES.values():
            feature[vector_name].float_list.value[:] = extra[vector_name].tolist()
            feature[time_name].int64_list.value[:] = [extra[time_name]]
        yield example.SerializeToString()


class AttachPointInTimeCrossRepresentations(beam.PTransform):
    """Adds CR(u), CR(i) as of strictly before each example's timestamp to the example.

    Input: ``{"events": event batches (as AggregateCrossRepresentations), "examples":
    serialized tf.Examples with user_id, item_id, timestamp}``. Output: the same examples with
    ``cr_user`` / ``cr_item`` (float [cr_dim]; zeros when the key has no earlier event) and
    ``cr_user_updated_at`` / ``cr_item_updated_at`` (int; -1 when none): downstream training
    features without look-ahead leakage. Rows are matched by a BLAKE2b digest of their bytes.
    ``cr_domains``: the events that fold (as AggregateCrossRepresentations); every example
    gets its answer, whatever its own domain.
    """

    def __init__(self, cr_dim: int, half_life_seconds: float, num_buckets: int = 64,
                 batch_size: int = 1024, label: str | None = None,
                 cr_domains: str = cr_folding.DEFAULT) -> None:
        super().__init__(label)
        self._cr_dim = int(cr_dim)
        self._half_life = half_life_seconds
        self._num_buckets = num_buckets
        self._batch_size = batch_size
        self._cr_domains = cr_folding.check(cr_domains)

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        examples = inputs["examples"]
        batches = examples | "Batch" >> beam.BatchElements(
            min_batch_size=self._batch_size, max_batch_size=self._batch_size)
        grouped = {"example": examples | "KeyExamples" >> beam.Map(lambda s: (_row_id(s), s))}
        for side, key_field in SIDES.items():
            queries = batches | f"Queries[{side}]" >> beam.Map(_queries, key_field)
            grouped[side] = (
                {"events": inputs["events"], "queries": queries}
                | f"AsOf[{side}]" >> PointInTimeCrossRepresentations(
                    key_field, self._cr_dim, self._half_life, self._num_buckets,
                    cr_domains=self._cr_domains)
                | f"Key[{side}]" >> beam.Map(lambda r: (r[0], (r[1], r[2])))
            )
        return (
            grouped
            | "JoinRows" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(_attach, self._cr_dim)
        )


# ------------------------------------------- both from one grouping of the events per side
def _split_queries_by_split(batch: list[bytes], key_field: str, split: str,
                            num_buckets: int) -> Iterator[tuple[int, tuple]]:
    """One split's example batch -> (bucket, (split, keys, timestamps, row_ids)) pieces."""
    queries = _queries(batch, key_field)
    for bucket, (keys, ts, row_id) in _split_by_bucket(
            num_buckets, queries["key"], queries["timestamp"], queries["row_id"]):
        yield bucket, (split, keys, ts, row_id)


def _aggregate_and_answer(element, beta: Beta, queries: dict) -> Iterator:
    """A bucket's events -> its keys' final CR (main output) and, tagged `as_of[<split>]`,
    `(row_id, cr, updated_at)` for the bucket's queries of each split (`_as_of_bucket`)."""
    bucket, parts = element
    keys, ts, crs = _concat(parts)
    uniq, cr, updated_at = aggregate_sorted(keys, ts, crs, beta)  # [k], [k, d], [k]
    yield from zip(uniq.tolist(), cr, updated_at.tolist(), strict=True)
    by_split: dict[str, list] = {}
    for split, *columns in queries[bucket]:
        by_split.setdefault(split, []).append(tuple(columns))
    for split, pieces in sorted(by_split.items()):
        keys_q, ts_q, row_id = _concat(pieces)
        answer, at = as_of(keys, ts, crs, keys_q, ts_q, beta)  # [q, d], [q]
        for r, v, t in zip(row_id.tolist(), answer, at.tolist(), strict=True):
            yield beam.pvalue.TaggedOutput(f"as_of[{split}]", (r, (v, t)))


class AggregateWithPointInTime(beam.PTransform):
    """`AggregateCrossRepresentations` and `AttachPointInTimeCrossRepresentations` of several
    splits from one grouping of the events per side (instead of three).

    Input: ``{"events": event batches, "examples": {split: serialized tf.Examples}}``. Output:
    ``{"user": ..., "item": ...}`` as `AggregateCrossRepresentations`, and ``{split: the
    examples with cr_user, cr_item and their updated_at}`` as
    `AttachPointInTimeCrossRepresentations`, under "point_in_time". The examples' queries
    (key, time and digest per row, not the rows) reach each bucket as a side input; the rows
    meet their two answers in one CoGroupByKey per split. ``cr_domains``: the events that fold
    (as AggregateCrossRepresentations).
    """

    def __init__(self, cr_dim: int, half_life_seconds: float, num_buckets: int = 64,
                 batch_size: int = 1024, label: str | None = None,
                 cr_domains: str = cr_folding.DEFAULT) -> None:
        super().__init__(label)
        self._cr_dim = int(cr_dim)
        self._beta, self._num_buckets = _decay_and_buckets(half_life_seconds, None, num_buckets)
        self._batch_size = batch_size
        self._cr_domains = cr_folding.check(cr_domains)

    def expand(self, inputs: dict) -> dict:
        examples = inputs["examples"]
        batches = {split: pcoll | f"Batch[{split}]" >> beam.BatchElements(
            min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            for split, pcoll in examples.items()}
        out: dict = {}
        answers: dict = {split: {} for split in examples}
        for side, key_field in SIDES.items():
            queries = [batches[split] | f"{side}/Queries[{split}]" >> beam.FlatMap(
                _split_queries_by_split, key_field, split, self._num_buckets)
                for split in examples]
            queries = (queries or [inputs["events"].pipeline | f"{side}/NoQueries"
                                   >> beam.Create([])]) | f"{side}/AllQueries" >> beam.Flatten()
            result = (
                inputs["events"]
                | f"{side}/SplitByBucket" >> beam.FlatMap(_split_events, key_field,
                                                          self._num_buckets, self._cr_domains)
                | f"{side}/GroupByBucket" >> beam.GroupByKey()
                | f"{side}/Aggregate" >> beam.FlatMap(
                    _aggregate_and_answer, self._beta, beam.pvalue.AsMultiMap(queries))
                .with_outputs(*[f"as_of[{split}]" for split in examples], main="final")
            )
            out[side] = result.final
            for split in examples:
                answers[split][side] = result[f"as_of[{split}]"]
        out["point_in_time"] = {}
        for split, pcoll in examples.items():
            grouped = {"example": pcoll | f"KeyExamples[{split}]"
                       >> beam.Map(lambda s: (_row_id(s), s)), **answers[split]}
            out["point_in_time"][split] = (
                grouped
                | f"JoinRows[{split}]" >> beam.CoGroupByKey()
                | f"Attach[{split}]" >> beam.FlatMap(_attach, self._cr_dim)
            )
        return out
