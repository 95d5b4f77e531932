"""``RepresentationStore``: UR, IR, CR(u), CR(i) on a back-end, and ``open_store``.

The store checks every input, computes every row value (``codec``, ``cross``) and hands the
back-end atomic reads and read-modify-writes (``backend.Backend``); bad input is refused before
anything is written, and a write that fails (guard, dimension, conflict) leaves the store
unchanged. The guard (paper Sec. 4.3.2) compares the statistics of a table before and after a
bulk write (``common/representations/statistics.py``) and refuses the write when a rate of
change passes its threshold.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.representations import cr_folding
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS, Beta, half_life_decay
from common.representations.statistics import (
    GuardThresholds,
    TableStatistics,
    Verdict,
    judge,
    table_statistics,
)
from serving.store.backend import Backend, NewRows, OldRows, SnapshotInfo
from serving.store.codec import (
    CR_ITEM,
    CR_USER,
    CROSS_TABLES,
    check_ints,
    check_keys,
    check_matrix,
    check_snapshot_name,
    check_table,
    check_unique,
    decode_rows,
    encode_rows,
    new_records,
)
from serving.store.cross import fold_cross, tie_groups
from serving.store.errors import DimensionError, GuardRefusedError
from serving.store.sqlite_backend import SqliteBackend

DEFAULT_GUARD = GuardThresholds()


@dataclass(frozen=True, eq=False)
class Rows:
    """Result of ``get``: one entry per requested key, in request order.

    keys: [n] bytes; found: bool [n]; representations: float32 [n, d] (NaN rows where not
    found; d = 0 while the table has never been written); updated_at, model_version: int64 [n]
    (-1 where not found).
    """

    keys: list[bytes]
    found: np.ndarray
    representations: np.ndarray
    updated_at: np.ndarray
    model_version: np.ndarray


@dataclass(frozen=True)
class PutResult:
    """Rows written, and the guard's verdict when the write was guarded."""

    rows: int
    verdict: Verdict | None = None


@dataclass(frozen=True)
class CrossUpdate:
    """Result of ``update_cross``: events received, late events skipped per side, and the
    events left out by their domain (``cr_domains``)."""

    events: int
    late_user: int
    late_item: int
    not_folded: int = 0


def _guarded(
    table: str,
    dim: int,
    current: dict[bytes, bytes],
    incoming: dict[bytes, bytes],
    replace: bool,
    thresholds: GuardThresholds,
) -> Verdict:
    """judge(statistics after the write, statistics before); GuardRefusedError if held."""
    after = incoming if replace else {**current, **incoming}
    before = decode_rows(table, dim, list(current.values()))["representation"]  # [rows, d]
    new = table_statistics(decode_rows(table, dim, list(after.values()))["representation"])
    verdict = judge(new, table_statistics(before) if before.shape[0] else None, thresholds)
    if not verdict.publish:
        raise GuardRefusedError(table, verdict)
    return verdict


class RepresentationStore:
    """UR, IR, CR(u), CR(i) tables on a backend, with the EMA decay ``beta`` (Eq. 1-2).

    Build one with ``open_store(url)``. Safe to share between threads; open one per process.
    """

    def __init__(self, backend: Backend, beta: Beta) -> None:
        self._backend = backend
        self._beta = beta

    @property
    def url(self) -> str:
        return self._backend.url

    def __enter__(self) -> RepresentationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    def dims(self) -> dict[str, int]:
        """The recorded dimension of every table written so far."""
        return self._backend.dims()

    def count(self, table: str) -> int:
        """Number of rows of ``table``."""
        return self._backend.count(check_table(table))

    def _check_dim(self, table: str, dim: int) -> None:
        stored = self._backend.dims().get(table)
        if stored is not None and stored != dim:
            raise DimensionError(table, stored, dim)

    def get(self, table: str, keys: Sequence[bytes | str]) -> Rows:
        """Batch get; keys not in the table have ``found`` False (see ``Rows``)."""
        keys = check_keys("keys", keys)
        dim, values = self._backend.read(check_table(table), keys)
        d = dim or 0
        n = len(keys)
        found = np.array([v is not None for v in values], dtype=bool)  # [n]
        reps = np.full((n, d), np.nan, dtype=np.float32)  # [n, d]
        updated = np.full(n, -1, dtype=np.int64)
        versions = np.full(n, -1, dtype=np.int64)
        if found.any():
            rec = decode_rows(table, d, [v for v in values if v is not None])
            reps[found], updated[found] = rec["representation"], rec["updated_at"]
            versions[found] = rec["model_version"]
        return Rows(keys, found, reps, updated, versions)

    def put(
        self,
        table: str,
        keys: Sequence[bytes | str],
        representations: Any,
        updated_at: Any,
        model_version: Any,
        *,
        replace: bool = False,
        guard: GuardThresholds | None = None,
        only_newer: bool = False,
    ) -> PutResult:
        """Batch put (upsert) of rows; with ``replace`` the table becomes exactly these rows.

        Args:
          table: one of ``TABLES``.
          keys: [n] distinct ids.
          representations: float [n, d], finite (stored as float32).
          updated_at, model_version: int [n] or one int for all rows.
          replace: drop the table's other rows in the same transaction.
          guard: judge the table after the write against the table before with these
            thresholds; raises GuardRefusedError (nothing written) when held.
          only_newer: keep a stored row whose ``updated_at`` is later than the new row's,
            decided atomically with the write (concurrent online writers: newest wins);
            ``PutResult.rows`` counts the rows written.
        """
        check_table(table)
        keys = check_keys("keys", keys)
        n = len(keys)
        check_unique("keys", keys)
        vectors = check_matrix("representations", representations, n).astype(np.float32)
        updated = check_ints("updated_at", updated_at, n, scalar_ok=True)
        versions = check_ints("model_version", model_version, n, scalar_ok=True)
        d = vectors.shape[1]
        self._check_dim(table, d)
        values = dict(zip(keys, encode_rows(new_records(table, vectors, updated, versions)),
                          strict=True))
        if only_newer and (guard is not None or replace):
            raise ValueError("only_newer applies to a plain upsert (no guard, no replace)")
        if only_newer:
            written: list[int] = []

            def newer(old: OldRows) -> NewRows:
                keep = {}
                for i, (key, stored) in enumerate(zip(keys, old[table], strict=True)):
                    stored_at = (None if stored is None
                                 else int(decode_rows(table, d, [stored])["updated_at"][0]))
                    if stored_at is not None and stored_at > int(updated[i]):
                        continue  # a later write already landed
                    keep[key] = values[key]
                written[:] = [len(keep)]
                return {table: keep}

            self._backend.update({table: d}, {table: keys}, newer, False)
            return PutResult(written[0] if written else 0)
        if guard is None and not replace:
            self._backend.update({table: d}, {table: keys}, lambda old: {table: values}, True)
            return PutResult(n)
        verdicts: list[Verdict] = []

        def compute(current: dict[bytes, bytes]) -> dict[bytes, bytes]:
            if guard is not None:
                verdicts.append(_guarded(table, d, current, values, replace, guard))
            return values

        self._backend.rewrite(table, d, compute, replace)
        return PutResult(n, verdicts[-1] if verdicts else None)

    def update_cross(
        self,
        user_ids: Sequence[bytes | str],
        item_ids: Sequence[bytes | str],
        cr: Any,
        timestamps: Any,
        model_version: int = 0,
        domains: Sequence[bytes | str] | None = None,
        cr_domains: str = cr_folding.DEFAULT,
    ) -> CrossUpdate:
        """Folds CR(u,i) events into CR(u) and CR(i) (Eq. 1-2, tie rule), atomically per key.

        Args:
          user_ids, item_ids: [n] ids of each event.
          cr: float [n, d] CR(u,i), finite.
          timestamps: int [n] unix seconds; the events may come in any order within a call.
          model_version: written to every updated row.
          domains: [n] each event's request domain (``b"ad"`` / ``b"content"``); with them,
            only the events ``cr_domains`` selects fold (``"ad"``, the default: a CR is folded
            when a user meets an ad, paper Sec. 4.3.1; ``"all"``: every event), the others
            are counted in ``not_folded``. Without them every given event folds (the caller
            selected them).
          cr_domains: ``common.representations.cr_folding.CHOICES``.

        Returns:
          CrossUpdate; late events (older than their key's updated_at) are skipped and counted.
        Raises:
          ValueError, TypeError: bad input (naming it); nothing is written.
        """
        users, items = check_keys("user_ids", user_ids), check_keys("item_ids", item_ids)
        n = len(users)
        if len(items) != n:
            raise ValueError(f"item_ids has {len(items)} ids, user_ids has {n}: one per event")
        x = check_matrix("cr", cr, n).astype(np.float64)  # [n, d]
        t = check_ints("timestamps", timestamps, n, scalar_ok=False)  # [n]
        version = int(check_ints("model_version", model_version, 1, scalar_ok=True)[0])
        cr_folding.check(cr_domains)
        not_folded = 0
        if domains is not None:
            values = check_keys("domains", domains)
            if len(values) != n:
                raise ValueError(f"domains has {len(values)} values, user_ids has {n}: one per "
                                 "event")
            fold = cr_folding.fold_mask(np.array(values, dtype=object), cr_domains)  # [n]
            not_folded = int(n - fold.sum())
            if not_folded:
                rows = np.flatnonzero(fold)
                users, items = [users[r] for r in rows], [items[r] for r in rows]
                x, t = x[rows], t[rows]
        d = x.shape[1]
        for table in CROSS_TABLES:
            self._check_dim(table, d)
        groups = {CR_USER: tie_groups(users, t, x), CR_ITEM: tie_groups(items, t, x)}
        late: dict[str, int] = {}

        def compute(old: OldRows) -> NewRows:
            out = {}
            for table, g in groups.items():
                out[table], late[table] = fold_cross(
                    table, d, g, old[table], self._beta, version)
            return out

        keys = {table: list(g) for table, g in groups.items()}
        if not_folded == n > 0:  # every event left out by its domain: nothing to write
            late = {CR_USER: 0, CR_ITEM: 0}
        else:
            self._backend.update({CR_USER: d, CR_ITEM: d}, keys, compute, False)
        return CrossUpdate(n, late[CR_USER], late[CR_ITEM], not_folded)

    def bulk_load(
        self,
        table: str,
        pattern: str,
        *,
        replace: bool = True,
        guard: GuardThresholds | None = DEFAULT_GUARD,
    ) -> PutResult:
        """Loads a published table (``common/representations/tables.py`` TFRecords).

        ``pattern`` globs the gzip TFRecord files (e.g. ``<root>/<version>/user/part-*``);
        each row keeps its ``updated_at`` and ``model_version``. Guarded by default (see
        ``put``); imports TensorFlow to read the files.
        """
        from common.representations.tables import read_table

        keys, matrix, updated_at, versions = read_table(pattern)
        return self.put(check_table(table), keys, matrix, updated_at, versions,
                        replace=replace, guard=guard)

    def statistics(self, table: str) -> TableStatistics | None:
        """The guard's statistics of the stored table; None while it is empty."""
        dim, rows = self._backend.scan(check_table(table))
        if not rows:
            return None
        return table_statistics(decode_rows(table, dim or 0, list(rows.values()))["representation"])

    def clear(self, table: str) -> None:
        """Deletes every row of ``table`` and forgets its dimension."""
        self._backend.clear(check_table(table))

    def snapshot(self, name: str) -> SnapshotInfo:
        """Copies all four tables (and their dimensions) under ``name``, atomically."""
        self._backend.snapshot(check_snapshot_name(name), time.time())
        return next(s for s in self._backend.snapshots() if s.name == name)

    def list_snapshots(self) -> list[SnapshotInfo]:
        """Every snapshot, oldest first."""
        return sorted(self._backend.snapshots(), key=lambda s: (s.created_at, s.name))

    def rollback(self, name: str) -> None:
        """Makes all four tables exactly as they were at snapshot ``name`` (which is kept)."""
        self._backend.rollback(check_snapshot_name(name))

    def delete_snapshot(self, name: str) -> None:
        self._backend.delete_snapshot(check_snapshot_name(name))


def open_store(
    url: str,
    *,
    half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS,
    beta: Beta | None = None,
) -> RepresentationStore:
    """Opens (creating if needed) the store at ``url``.

    Args:
      url: ``sqlite:///abs/path.db``, ``sqlite://rel/path.db``, a plain file path (sqlite),
        or ``redis://host:port/db[?prefix=name:]`` (keys prefixed, default ``lfm4ads:``).
      half_life_seconds: decay of Eq. 1-2, ``beta(dt) = 0.5 ** (dt / half_life_seconds)``;
        use the same value as the pipeline's CR aggregation.
      beta: a custom vectorised decay instead (``ema.Beta``).
    """
    decay = beta if beta is not None else half_life_decay(half_life_seconds)
    if not isinstance(url, str) or not url:
        raise ValueError(f"store url must be a non-empty string, got {url!r}")
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    if scheme == "redis":
        from serving.store.redis_backend import RedisBackend  # the redis client, only if used

        return RepresentationStore(RedisBackend(url), decay)
    if scheme != "sqlite":
        raise ValueError(
            f"unsupported store url {url!r}: use sqlite:///path/to.db or redis://host:port/db"
        )
    path = url.split("://", 1)[1] if "://" in url else url
    if not path or path == ":memory:":
        raise ValueError(f"store url {url!r} names no database file (in-memory is not shared)")
    return RepresentationStore(SqliteBackend(url, path), decay)
