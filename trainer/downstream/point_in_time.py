"""Representations as downstream features, point in time (paper Sec. 3.4, Fig. 4).

A downstream row `(u, i, t)` may only see what the online system had stored before it was
served: UR(u), IR(i), CR(u) and CR(i) **as of strictly before t**. A key with nothing stored yet
gets a zero vector and a found-indicator of 0 (a cold start, not an error).

Two kinds of source answer the same question, `lookup(table, keys, timestamps) -> Lookup`:

* `HistorySource`: every state each table went through (`RepresentationHistory`). It is built
  from a published version of the pipeline's tables (one state per key, the table's
  `updated_at`) and, optionally, continued over a window of later traffic the way the online
  loop of Fig. 4 continues the store: the frozen upstream model is replayed over the requests
  (`trainer.downstream.replay`); each request writes the new UR(u), IR(i) (the latest request
  per key wins, same-second ties by the sample digest, as the extractor and the online loop)
  and folds CR(u,i) into CR(u), CR(i) with the time-aware EMA of Eq. 1-2 when the request's
  domain is selected (`cr_domains`: ad requests by default, Sec. 4.3.1).
* `StoreSource`: the representation store (`serving.store`, or anything with its `get`), a
  snapshot of one moment: a row sees a stored value only if its `updated_at` is before the row.

Everything is vectorised (sorts and `searchsorted` over numpy arrays); no Python runs per row.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from common import signatures
from common.representations import ema, tables

# Histories that the published tables do not hold: the latest CR(u,i) of each user and item,
# without aggregation (the `cr_latest` ablation of Table 1).
LATEST_CROSS_USER_TABLE = "latest_cross_user"
LATEST_CROSS_ITEM_TABLE = "latest_cross_item"

USER_SIDE, ITEM_SIDE = "user", "item"
# Representation feature -> (table, side whose key it is looked up by).
FEATURE_TABLES = {
    signatures.UR_FEATURE: (tables.USER_TABLE, USER_SIDE),
    signatures.IR_FEATURE: (tables.ITEM_TABLE, ITEM_SIDE),
    signatures.CR_USER_FEATURE: (tables.CROSS_USER_TABLE, USER_SIDE),
    signatures.CR_ITEM_FEATURE: (tables.CROSS_ITEM_TABLE, ITEM_SIDE),
    signatures.CR_LATEST_USER_FEATURE: (LATEST_CROSS_USER_TABLE, USER_SIDE),
    signatures.CR_LATEST_ITEM_FEATURE: (LATEST_CROSS_ITEM_TABLE, ITEM_SIDE),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Lookup:
    """Answer to a point-in-time lookup, one entry per query row.

    vectors: float32 [n, d] (zeros where not found); found: bool [n];
    updated_at: int64 [n] (the state's time; -1 where not found).
    """

    vectors: np.ndarray
    found: np.ndarray
    updated_at: np.ndarray


def _keys(values, what: str) -> np.ndarray:
    """Keys as an object array of bytes (str is UTF-8 encoded)."""
    keys = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if keys.ndim != 1:
        raise ValueError(f"{what}: keys must be 1-D, got shape {keys.shape}")
    if keys.dtype.kind == "U":
        return np.char.encode(keys, "utf-8").astype(object)
    if keys.dtype.kind == "S":
        return keys.astype(object)
    keys = keys.astype(object)
    bad = [i for i, k in enumerate(keys) if not isinstance(k, bytes)]
    if bad:
        if all(isinstance(keys[i], str) for i in bad):
            keys = keys.copy()
            keys[bad] = [keys[i].encode("utf-8") for i in bad]
        else:
            i = next(i for i in bad if not isinstance(keys[i], str))
            raise TypeError(f"{what}: key {i} must be bytes or str, got {type(keys[i]).__name__}")
    return keys


def _timestamps(values, n: int, what: str) -> np.ndarray:
    t = np.asarray(values)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{what}: timestamps must be integers, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{what}: timestamps must have shape ({n},) like the keys, got {t.shape}")
    return t.astype(np.int64, copy=False)


def _vectors(values, n: int, what: str) -> np.ndarray:
    vectors = np.asarray(values, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"{what}: vectors must have shape ({n}, d), got {vectors.shape}")
    return vectors


class RepresentationHistory:
    """The states of one table over time: per key, `(updated_at, vector)` in time order.

    `as_of(keys, timestamps)` gives, for each query `(k, t)`, the last state of `k` with
    `updated_at < t` (strictly before: a state written at `t` itself is not seen).

    Args:
      keys: [m] bytes; updated_at: int [m]; vectors: float [m, d]. A key may appear several
        times (one state per time); two states of one key at the same time are an error.
    """

    def __init__(self, keys, updated_at, vectors):
        keys = _keys(keys, "history")
        updated_at = _timestamps(updated_at, keys.shape[0], "history")
        vectors = _vectors(vectors, keys.shape[0], "history")
        uniq, code = np.unique(keys, return_inverse=True) if keys.size else (keys, keys)
        code = np.asarray(code, dtype=np.int64).reshape(-1)
        order = np.lexsort((updated_at, code))  # by key, then time
        self.uniq = uniq  # [K] sorted distinct keys
        self.code = code[order]  # [m] index into uniq
        self.keys, self.updated_at, self.vectors = keys[order], updated_at[order], vectors[order]
        same = (self.code[1:] == self.code[:-1]) & (self.updated_at[1:] == self.updated_at[:-1])
        if same.any():
            i = int(np.flatnonzero(same)[0])
            raise ValueError(f"history: key {self.keys[i]!r} has two states at time "
                             f"{int(self.updated_at[i])}")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def as_of(self, keys, timestamps) -> Lookup:
        """The state of each query key as of strictly before its timestamp (class doc)."""
        keys = _keys(keys, "query")
        t = _timestamps(timestamps, keys.shape[0], "query")
        n = keys.shape[0]
        vectors = np.zeros((n, self.dim), dtype=np.float32)  # [n, d]
        updated_at = np.full(n, -1, dtype=np.int64)  # [n]
        found = np.zeros(n, dtype=bool)  # [n]
        if n == 0 or len(self) == 0:
            return Lookup(vectors, found, updated_at)
        j = np.searchsorted(self.uniq, keys)  # [n]
        jc = np.minimum(j, self.uniq.shape[0] - 1)
        known = self.uniq[jc] == keys  # [n]
        # (key code, time rank) packed into one int64 that sorts like the pair.
        times = np.unique(np.concatenate([self.updated_at, t]))  # [R]
        r = np.int64(times.shape[0])
        packed = self.code * r + np.searchsorted(times, self.updated_at)  # [m], sorted
        query = jc * r + np.searchsorted(times, t)  # [n]
        pos = np.searchsorted(packed, query, side="left") - 1  # last state before (key, t)
        pos_c = np.maximum(pos, 0)
        hit = known.astype(bool) & (pos >= 0) & (self.code[pos_c] == jc)  # [n]
        vectors[hit] = self.vectors[pos_c[hit]]
        updated_at[hit] = self.updated_at[pos_c[hit]]
        found[hit] = True
        return Lookup(vectors, found, updated_at)

    def last_mask(self) -> np.ndarray:
        """bool [m]: the states that are their key's last."""
        last = np.ones(len(self), dtype=bool)
        last[:-1] = self.code[1:] != self.code[:-1]
        return last

    def last(self) -> RepresentationHistory:
        """Each key's last state only (what a store holds after the same writes)."""
        last = self.last_mask()
        return RepresentationHistory(self.keys[last], self.updated_at[last], self.vectors[last])

    # -- builders ---------------------------------------------------------------------------

    @classmethod
    def latest(cls, keys, timestamps, vectors, digests=None,
               base: RepresentationHistory | None = None) -> RepresentationHistory:
        """UR / IR as the online loop writes them: each request stores its key's vector;
        among one key's requests in one second the largest `digest` wins (`sample_digest` of
        the request; without digests, the last one given). `base` (e.g. a published table)
        holds the states before the requests: a request older than its key's last base state
        is late and skipped, and one in the same second replaces it, as in the store."""
        keys = _keys(keys, "events")
        n = keys.shape[0]
        t = _timestamps(timestamps, n, "events")
        vectors = _vectors(vectors, n, "events")
        rank = np.arange(n) if digests is None else _keys(digests, "digests")
        new = np.ones(n, dtype=bool)
        if base is not None and len(base):
            keep = _not_late(base, keys, t)
            keys, t, vectors, rank = keys[keep], t[keep], vectors[keep], rank[keep]
            new = np.concatenate([np.zeros(len(base), bool), new[keep]])
            keys, t = np.concatenate([base.keys, keys]), np.concatenate([base.updated_at, t])
            vectors = np.concatenate([base.vectors, vectors.reshape(-1, base.dim)])
            filler = np.full(len(base), b"" if rank.dtype == object else -1, dtype=rank.dtype)
            rank = np.concatenate([filler, rank])
        if not keys.size:
            return cls(keys, t, vectors)
        code = np.unique(keys, return_inverse=True)[1].reshape(-1)
        _, rank_code = np.unique(rank, return_inverse=True)
        # By (key, second, request after base, rank): the last of each (key, second) wins.
        order = np.lexsort((rank_code.reshape(-1), new, t, code))
        code, t_s = code[order], t[order]
        last = np.ones(order.shape[0], dtype=bool)
        last[:-1] = (code[1:] != code[:-1]) | (t_s[1:] != t_s[:-1])
        chosen = order[last]
        return cls(keys[chosen], t[chosen], vectors[chosen])

    @classmethod
    def aggregated(cls, keys, timestamps, crs, half_life_seconds: float,
                   base: RepresentationHistory | None = None) -> RepresentationHistory:
        """CR(u) or CR(i): the time-aware EMA of Eq. 1-2 over the CR(u,i) events, every
        intermediate state kept (`ema.prefix_states`, with the tie rule of
        `common.representations.ema`). `base` holds the states before the events (a
        published CR table): the EMA continues from each key's last base state (it acts as
        that key's first event); events older than it are late and skipped, as in the store."""
        keys = _keys(keys, "events")
        t = _timestamps(timestamps, keys.shape[0], "events")
        crs = _vectors(crs, keys.shape[0], "events")
        history = None
        if base is not None and len(base):
            keep = _not_late(base, keys, t)
            last = base.last()
            keys = np.concatenate([last.keys, keys[keep]])
            t = np.concatenate([last.updated_at, t[keep]])
            crs = np.concatenate([last.vectors, crs[keep].reshape(-1, base.dim)])
            history = base
        if not keys.size:
            return cls(keys, t, crs)
        state_keys, state_t, states = ema.prefix_states(
            keys, t, crs, ema.half_life_decay(half_life_seconds))
        if history is not None:  # the base's earlier states stay visible to earlier rows
            earlier = ~history.last_mask()  # the base's earlier states, not continued
            state_keys = np.concatenate([history.keys[earlier], state_keys])
            state_t = np.concatenate([history.updated_at[earlier], state_t])
            states = np.concatenate([history.vectors[earlier], states])
        return cls(state_keys, state_t, states)


def _not_late(base: RepresentationHistory, keys: np.ndarray, t: np.ndarray) -> np.ndarray:
    """bool [n]: the events not older than their key's last state in `base` (store rule)."""
    last = base.as_of(keys, np.full(keys.shape[0], np.iinfo(np.int64).max))
    return ~last.found | (t >= last.updated_at)


class RepresentationSource(Protocol):
    """Anything that answers point-in-time lookups of the representation tables."""

    def lookup(self, table: str, keys: Sequence[bytes], timestamps: np.ndarray) -> Lookup: ...


class HistorySource:
    """Point-in-time lookups from `RepresentationHistory`s, one per table (module doc)."""

    def __init__(self, histories: Mapping[str, RepresentationHistory],
                 model_versions: frozenset[int] = frozenset()):
        self.histories = dict(histories)
        self.model_versions = frozenset(model_versions)  # of published tables, when known

    def newest(self) -> int | None:
        """The latest `updated_at` of any state, None when every table is empty."""
        times = [int(h.updated_at.max()) for h in self.histories.values() if len(h)]
        return max(times) if times else None

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.histories)

    def lookup(self, table: str, keys, timestamps) -> Lookup:
        if table not in self.histories:
            raise KeyError(f"no history for table {table!r}; this source has "
                           f"{sorted(self.histories)}")
        return self.histories[table].as_of(keys, timestamps)

    @classmethod
    def from_published(cls, directory: str) -> HistorySource:
        """The four tables of a published version `<publish_root>/<version>/` (or of the
        guard's LIVE version when `directory` is the publish root), one state per key; the
        model versions that wrote them in `model_versions`."""
        live = os.path.join(directory, tables.LIVE_FILE)
        if os.path.exists(live):
            with open(live) as f:
                directory = os.path.join(directory, f.read().strip())
        missing = [t for t in tables.TABLES if not os.path.isdir(os.path.join(directory, t))]
        if missing:
            raise FileNotFoundError(
                f"{directory!r} is not a published representation version: "
                f"it lacks the tables {missing} (expected {list(tables.TABLES)})"
            )
        return cls.from_tables({table: os.path.join(directory, table) for table in tables.TABLES})

    @classmethod
    def from_tables(cls, directories: Mapping[str, str]) -> HistorySource:
        """Tables from their directories (`{table name: directory of part files}`, e.g. the
        extractor's and the aggregator's artifacts before publication), one state per key."""
        histories, versions = {}, set()
        for table, directory in directories.items():
            keys, vectors, updated_at, model_version = tables.read_table(
                os.path.join(directory, "*" + tables.FILE_SUFFIX))
            histories[table] = RepresentationHistory(keys, updated_at, vectors)
            versions.update(int(v) for v in np.unique(model_version))
        return cls(histories, frozenset(versions))


class StoreSource:
    """Point-in-time lookups from a representation store (`serving.store.RepresentationStore`
    or anything with its `get(table, keys) -> rows` with `found`, `representations`,
    `updated_at`). The store holds one state per key, the latest: a row sees it only if it was
    written strictly before the row's timestamp."""

    def __init__(self, store):
        self.store = store

    def lookup(self, table: str, keys, timestamps) -> Lookup:
        keys = _keys(keys, "query")
        t = _timestamps(timestamps, keys.shape[0], "query")
        rows = self.store.get(table, list(keys))
        found = np.asarray(rows.found, dtype=bool) & (np.asarray(rows.updated_at) < t)
        reps = np.asarray(rows.representations, dtype=np.float32)
        vectors = np.where(found[:, None], np.nan_to_num(reps), 0.0).astype(np.float32)
        return Lookup(vectors, found, np.where(found, rows.updated_at, -1).astype(np.int64))


def attach(
    source: RepresentationSource,
    user_ids,
    item_ids,
    timestamps,
    features: Sequence[str] = signatures.REPRESENTATION_FEATURES[:4],
) -> dict[str, np.ndarray]:
    """The representation features of downstream rows, as of strictly before each row.

    Args:
      source: a `RepresentationSource`.
      user_ids, item_ids: [n] bytes; timestamps: int [n] unix seconds.
      features: which of `signatures.REPRESENTATION_FEATURES` to attach.
    Returns:
      `{name: float32 [n, d], found_feature(name): float32 [n] (1.0 found, 0.0 cold start)}`.
    """
    sides = {USER_SIDE: _keys(user_ids, "user_ids"), ITEM_SIDE: _keys(item_ids, "item_ids")}
    n = sides[USER_SIDE].shape[0]
    if sides[ITEM_SIDE].shape[0] != n:
        raise ValueError(f"user_ids has {n} rows but item_ids has {sides[ITEM_SIDE].shape[0]}")
    t = _timestamps(timestamps, n, "rows")
    out = {}
    for name in features:
        if name not in FEATURE_TABLES:
            raise ValueError(f"unknown representation feature {name!r}; known: "
                             f"{list(FEATURE_TABLES)}")
        table, side = FEATURE_TABLES[name]
        found = source.lookup(table, sides[side], t)
        out[name] = found.vectors
        out[signatures.found_feature(name)] = found.found.astype(np.float32)
    return out
