"""Representation store: UR, IR, CR(u), CR(i) for online serving (paper Sec. 4.3.1-4.3.2).

LFM4Ads (arXiv 2508.14948) serves its upstream representations from storage (Fig. 4): for a
request (u, i) the downstream model reads UR(u), IR(i), CR(u), CR(i); the new UR(u), IR(i)
replace the stored ones, and the new CR(u,i) is folded into CR(u) and CR(i) with the
time-aware EMA of Eq. 1-2 (DESIGN.md, ``trainer/representations/ema.py``):

    CR(k) <- beta(t - updated_at(k)) * CR(k) + (1 - beta(t - updated_at(k))) * CR(u,i)

with the same semantics as ``ema.aggregate_sequential``: the first event of a key initialises
it, and the events of one key in one second are averaged and applied once (TIE RULE), also
when they arrive in different ``update_cross`` calls. An event older than its key's
``updated_at`` is LATE: it is skipped and counted (replaying a time-ordered stream never has
late events, so the store then holds exactly the tables of ``aggregate_sequential``).

Sec. 4.3.2: a guard compares the statistics of a table before and after a bulk write
(``components/representation_guard/statistics.py``: mean, variance, L1 norm, max |x|) and
refuses the write when a rate of change passes its threshold; named snapshots (e.g. daily)
allow a roll back to the last normal one.

Tables (names as in the published layout): ``user`` (UR), ``item`` (IR), ``cross_user``
(CR(u)), ``cross_item`` (CR(i)). A row is key (bytes; str is UTF-8 encoded) -> representation
float32 [d] (d recorded on the table's first write and checked after), ``updated_at`` (int
seconds) and ``model_version`` (int). Backends (``open_store``):

* ``sqlite:///path/to.db`` (default, embedded): WAL mode, one ``BEGIN IMMEDIATE`` transaction
  per write, safe for threads and processes on one host;
* ``redis://host:port/db[?prefix=name:]``: for many serving hosts; per-key optimistic
  compare-and-set in a Lua script for online updates, WATCH/MULTI/EXEC for table rewrites,
  snapshots and rollbacks.

Every write is atomic: bad input is refused before anything is written, and a write that
fails (guard, dimension, conflict) leaves the store unchanged.

Row value layout (little-endian, the same bytes in both backends):

    int64 updated_at | int64 model_version | float32[d] representation
    CR tables also:    int64 tie_count | int64 base_at | float64[d] tie_sum | float64[d] base

``tie_sum``/``tie_count`` are the sum and number of the CR(u,i) of second ``updated_at`` and
``base`` the float64 state after every earlier second (``base_at`` its time, -1 if none), so

    CR(k) = tie_sum / tie_count                                               if base_at < 0
    CR(k) = b * base + (1 - b) * tie_sum / tie_count, b = beta(updated_at - base_at)  otherwise

which lets a later event of the same second re-average the tie group exactly. A row written
by ``put``/``bulk_load`` into a CR table counts as one event at its ``updated_at``.

Example::

    store = open_store("sqlite:///tmp/reps.db", half_life_seconds=3600)
    store.put(UR, [b"u1"], np.ones((1, 8), np.float32), updated_at=[100], model_version=3)
    store.update_cross([b"u1"], [b"i9"], cr, timestamps=[100], model_version=3)
    rows = store.get(CR_USER, [b"u1", b"u2"])   # rows.found == [True, False]
    store.snapshot("2025-01-01"); ...; store.rollback("2025-01-01")
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from components.representation_guard.statistics import (
    GuardThresholds,
    TableStatistics,
    Verdict,
    judge,
    table_statistics,
)
from trainer.representations import tables
from trainer.representations.ema import (
    DEFAULT_HALF_LIFE_SECONDS,
    Beta,
    _evaluate_beta,
    half_life_decay,
)

UR = tables.USER_TABLE
IR = tables.ITEM_TABLE
CR_USER = tables.CROSS_USER_TABLE
CR_ITEM = tables.CROSS_ITEM_TABLE
TABLES = tables.TABLES
CROSS_TABLES = tables.CROSS_TABLES
DEFAULT_GUARD = GuardThresholds()
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class StoreError(Exception):
    """A store operation that cannot be done; the store is unchanged."""


class DimensionError(StoreError, ValueError):
    """Representations whose dimension differs from the table's recorded one."""

    def __init__(self, table: str, stored: int, got: int) -> None:
        super().__init__(
            f"table {table!r} has dimension {stored}, got representations of dimension {got}"
        )
        self.table, self.stored, self.got = table, stored, got


class GuardRefusedError(StoreError):
    """The guard held a bulk write: a statistic changed too fast or a hard limit failed."""

    def __init__(self, table: str, verdict: Verdict) -> None:
        super().__init__(
            f"guard refused the write to table {table!r}: " + "; ".join(verdict.reasons)
        )
        self.table, self.verdict = table, verdict


class SnapshotNotFoundError(StoreError, LookupError):
    """No snapshot has that name."""


class SnapshotExistsError(StoreError):
    """A snapshot with that name already exists."""


class ConflictError(StoreError):
    """An optimistic transaction kept conflicting with concurrent writers and gave up."""


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
    """Result of ``update_cross``: events received and late events skipped per side."""

    events: int
    late_user: int
    late_item: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A named snapshot: creation time (unix seconds) and row count per table."""

    name: str
    created_at: float
    rows: dict[str, int] = field(default_factory=dict)


OldRows = Mapping[str, Sequence["bytes | None"]]
NewRows = dict[str, dict[bytes, bytes]]


class Backend(Protocol):
    """What a storage backend provides; every method is atomic."""

    url: str

    def dims(self) -> dict[str, int]: ...

    def count(self, table: str) -> int: ...

    def read(self, table: str, keys: Sequence[bytes]) -> tuple[int | None, list[bytes | None]]:
        """(recorded dim, values of keys: None where absent), read at one instant."""

    def scan(self, table: str) -> tuple[int | None, dict[bytes, bytes]]: ...

    def update(
        self,
        dims: Mapping[str, int],
        keys: Mapping[str, Sequence[bytes]],
        compute: Callable[[OldRows], NewRows],
        blind: bool,
    ) -> None:
        """Checks/records ``dims``, reads ``keys`` (skipped if blind), writes ``compute(old)``.

        No concurrent write to those keys happens in between (compute may run more than once).
        """

    def rewrite(
        self,
        table: str,
        dim: int,
        compute: Callable[[dict[bytes, bytes]], dict[bytes, bytes]],
        replace: bool,
    ) -> None:
        """Reads the whole table, writes ``compute(table)`` (replacing the table if asked)."""

    def clear(self, table: str) -> None: ...

    def snapshot(self, name: str, created_at: float) -> None: ...

    def snapshots(self) -> list[SnapshotInfo]: ...

    def rollback(self, name: str) -> None: ...

    def delete_snapshot(self, name: str) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ row codec


def _row_dtype(dim: int, cross: bool) -> np.dtype:
    """The packed little-endian record of one row (layout in the module docstring)."""
    fields: list[tuple[Any, ...]] = [
        ("updated_at", "<i8"),
        ("model_version", "<i8"),
        ("representation", "<f4", (dim,)),
    ]
    if cross:
        fields += [
            ("tie_count", "<i8"),
            ("base_at", "<i8"),
            ("tie_sum", "<f8", (dim,)),
            ("base", "<f8", (dim,)),
        ]
    return np.dtype(fields)


def _encode(records: np.ndarray) -> list[bytes]:
    """One bytes value per record [n]."""
    raw, size = records.tobytes(), records.dtype.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(records.shape[0])]


def _decode(table: str, dim: int, values: Sequence[bytes]) -> np.ndarray:
    """Records [n] (read-only) from stored values; StoreError naming a malformed one."""
    dtype = _row_dtype(dim, table in CROSS_TABLES)
    for v in values:
        if len(v) != dtype.itemsize:
            raise StoreError(
                f"table {table!r}: a stored row has {len(v)} bytes, expected {dtype.itemsize} "
                f"for dimension {dim}"
            )
    return np.frombuffer(b"".join(values), dtype=dtype)


def _new_records(
    table: str, vectors: np.ndarray, updated_at: np.ndarray, model_version: np.ndarray
) -> np.ndarray:
    """Records of put rows; in a CR table each row is one event at its updated_at."""
    n, d = vectors.shape
    rec = np.zeros(n, dtype=_row_dtype(d, table in CROSS_TABLES))
    rec["updated_at"], rec["model_version"], rec["representation"] = (
        updated_at, model_version, vectors)
    if table in CROSS_TABLES:
        rec["tie_count"], rec["base_at"] = 1, -1
        rec["tie_sum"] = vectors.astype(np.float64)
    return rec


# ------------------------------------------------------------------------ input checking


def _check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables are {TABLES}")
    return table


def _check_keys(name: str, keys: Any) -> list[bytes]:
    """Ids [n] (bytes or str, str UTF-8 encoded) -> list of bytes."""
    if isinstance(keys, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ids, got a single {type(keys).__name__}")
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {keys.shape}")
        keys = keys.tolist()
    out = []
    for i, k in enumerate(keys):
        if isinstance(k, str):
            out.append(k.encode("utf-8"))
        elif isinstance(k, bytes):
            out.append(bytes(k))
        else:
            raise TypeError(f"{name}[{i}] must be bytes or str, got {type(k).__name__}")
    return out


def _check_matrix(name: str, value: Any, n: int) -> np.ndarray:
    """A finite float matrix [n, d], d >= 1 (finite also once cast to float32)."""
    try:
        m = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular [n, d] float array: {e}") from None
    if m.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, d), one row per key, got {m.shape}")
    if m.shape[1] < 1:
        raise ValueError(f"{name} must have dimension d >= 1, got shape {m.shape}")
    with np.errstate(over="ignore"):
        finite = np.isfinite(m.astype(np.float32)).all(axis=1)  # [n]
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name} row {i} is not finite in float32 (NaN, Inf or overflow)")
    return m


def _check_ints(name: str, value: Any, n: int, scalar_ok: bool) -> np.ndarray:
    """Integers [n] (a scalar is repeated n times when scalar_ok) -> int64 [n]."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    if a.ndim == 0 and scalar_ok:
        a = np.full(n, a, dtype=np.int64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one per key, got {a.shape}")
    return a.astype(np.int64)


def _check_unique(name: str, keys: list[bytes]) -> None:
    seen: set[bytes] = set()
    for k in keys:
        if k in seen:
            raise ValueError(f"{name}: key {k!r} appears more than once in the batch")
        seen.add(k)


def _check_snapshot_name(name: str) -> str:
    if not (isinstance(name, str) and _SNAPSHOT_NAME.fullmatch(name)):
        raise ValueError(
            f"snapshot name must be 1-64 characters of [A-Za-z0-9_.-] starting with a letter "
            f"or digit, got {name!r}"
        )
    return name


# -------------------------------------------------------------------------- EMA (Eq. 1-2)


def _beta_at(beta: Beta, dt: int) -> float:
    """beta(dt) for one dt, checked to lie in [0, 1] (``ema._evaluate_beta``)."""
    return float(_evaluate_beta(beta, np.array([dt], dtype=np.float64))[0])


@dataclass
class _Tie:
    """The events of one key in one second: their timestamp, CR(u,i) sum [d], count."""

    t: int
    total: np.ndarray
    count: int


def _tie_groups(keys: list[bytes], t: np.ndarray, x: np.ndarray) -> dict[bytes, list[_Tie]]:
    """Events grouped by key, then by second (the tie rule), seconds ascending."""
    by_key: dict[bytes, dict[int, list[int]]] = {}
    for i, (k, ti) in enumerate(zip(keys, t.tolist(), strict=True)):
        by_key.setdefault(k, {}).setdefault(ti, []).append(i)
    return {
        k: [_Tie(ti, x[idx].sum(axis=0), len(idx)) for ti, idx in sorted(by_t.items())]
        for k, by_t in by_key.items()
    }


def _cross_values(records: np.ndarray, beta: Beta) -> np.ndarray:
    """CR(k) [n, d] float64 of CR records [n] (formula of the module docstring).

    One vectorised beta call for all rows; row by row the same float64 arithmetic as
    ``aggregate_sequential``'s ``b * prev + (1 - b) * x``.
    """
    mean = records["tie_sum"] / records["tie_count"][:, None]  # [n, d]
    has_base = records["base_at"] >= 0  # [n]
    if not has_base.any():
        return mean  # the first second of a key initialises it
    dt = (records["updated_at"] - records["base_at"])[has_base].astype(np.float64)
    b = np.zeros(records.shape[0], dtype=np.float64)  # [n]
    b[has_base] = _evaluate_beta(beta, dt)
    ema = b[:, None] * records["base"] + (1.0 - b)[:, None] * mean  # Eq. 1 / Eq. 2
    return np.where(has_base[:, None], ema, mean)


@dataclass
class _Ema:
    """EMA state of one CR key in float64 (the CR fields of the row layout).

    ``current``: CR(k) [d] when known (computed lazily, dropped when the state changes).
    """

    updated_at: int
    tie_count: int
    tie_sum: np.ndarray  # [d]
    base_at: int
    base: np.ndarray  # [d]
    current: np.ndarray | None = None

    @classmethod
    def from_record(cls, rec: np.void, current: np.ndarray) -> _Ema:
        return cls(int(rec["updated_at"]), int(rec["tie_count"]), rec["tie_sum"].copy(),
                   int(rec["base_at"]), rec["base"].copy(), current)

    def value(self, beta: Beta) -> np.ndarray:
        """CR(k) [d] float64."""
        if self.current is None:
            mean = self.tie_sum / self.tie_count
            if self.base_at < 0:
                return mean
            b = _beta_at(beta, self.updated_at - self.base_at)
            self.current = b * self.base + (1.0 - b) * mean  # Eq. 1 / Eq. 2
        return self.current

    def add(self, tie: _Tie, beta: Beta) -> bool:
        """Folds one second's events in; False (nothing changes) if they are late."""
        if tie.t < self.updated_at:
            return False
        if tie.t == self.updated_at:  # tie rule: re-average the second's events
            self.tie_sum = self.tie_sum + tie.total
            self.tie_count += tie.count
        else:  # a later second: the state so far becomes the base of Eq. 1
            self.base, self.base_at = self.value(beta), self.updated_at
            self.updated_at, self.tie_sum, self.tie_count = tie.t, tie.total, tie.count
        self.current = None
        return True

    def write(self, rec: np.void, model_version: int) -> None:
        """Fills a record, all but its representation (``_cross_values`` computes those)."""
        rec["updated_at"], rec["model_version"] = self.updated_at, model_version
        rec["tie_count"], rec["tie_sum"] = self.tie_count, self.tie_sum
        rec["base_at"], rec["base"] = self.base_at, self.base


def _fold_cross(
    table: str,
    dim: int,
    groups: dict[bytes, list[_Tie]],
    old: Sequence[bytes | None],
    beta: Beta,
    model_version: int,
) -> tuple[dict[bytes, bytes], int]:
    """New values of the keys of ``groups`` (old values aligned with them) and #late events."""
    stored = _decode(table, dim, [v for v in old if v is not None])  # [m]
    stored_values = iter(_cross_values(stored, beta))  # [m, d]
    stored_rows = iter(stored)
    records = np.zeros(len(groups), dtype=_row_dtype(dim, cross=True))  # [k]
    changed = np.zeros(len(groups), dtype=bool)  # [k]
    late = 0
    for r, (ties, value) in enumerate(zip(groups.values(), old, strict=True)):
        if value is not None:
            state, rest = _Ema.from_record(next(stored_rows), next(stored_values)), ties
        else:  # the first event of a key initialises it
            first, rest = ties[0], ties[1:]
            state = _Ema(first.t, first.count, first.total, -1, np.zeros(dim))
            changed[r] = True
        for tie in rest:
            if state.add(tie, beta):
                changed[r] = True
            else:
                late += tie.count
        if changed[r]:
            state.write(records[r], model_version)
    records = records[changed]
    records["representation"] = _cross_values(records, beta).astype(np.float32)
    keys = [k for k, c in zip(groups, changed, strict=True) if c]
    return dict(zip(keys, _encode(records), strict=True)), late


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
    before = _decode(table, dim, list(current.values()))["representation"]  # [rows, d]
    new = table_statistics(_decode(table, dim, list(after.values()))["representation"])
    verdict = judge(new, table_statistics(before) if before.shape[0] else None, thresholds)
    if not verdict.publish:
        raise GuardRefusedError(table, verdict)
    return verdict


# ------------------------------------------------------------------------------- the store


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
        return self._backend.count(_check_table(table))

    def _check_dim(self, table: str, dim: int) -> None:
        stored = self._backend.dims().get(table)
        if stored is not None and stored != dim:
            raise DimensionError(table, stored, dim)

    def get(self, table: str, keys: Sequence[bytes | str]) -> Rows:
        """Batch get; keys not in the table have ``found`` False (see ``Rows``)."""
        keys = _check_keys("keys", keys)
        dim, values = self._backend.read(_check_table(table), keys)
        d = dim or 0
        n = len(keys)
        found = np.array([v is not None for v in values], dtype=bool)  # [n]
        reps = np.full((n, d), np.nan, dtype=np.float32)  # [n, d]
        updated = np.full(n, -1, dtype=np.int64)
        versions = np.full(n, -1, dtype=np.int64)
        if found.any():
            rec = _decode(table, d, [v for v in values if v is not None])
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
        _check_table(table)
        keys = _check_keys("keys", keys)
        n = len(keys)
        _check_unique("keys", keys)
        vectors = _check_matrix("representations", representations, n).astype(np.float32)
        updated = _check_ints("updated_at", updated_at, n, scalar_ok=True)
        versions = _check_ints("model_version", model_version, n, scalar_ok=True)
        d = vectors.shape[1]
        self._check_dim(table, d)
        values = dict(zip(keys, _encode(_new_records(table, vectors, updated, versions)),
                          strict=True))
        if only_newer and (guard is not None or replace):
            raise ValueError("only_newer applies to a plain upsert (no guard, no replace)")
        if only_newer:
            written: list[int] = []

            def newer(old: OldRows) -> NewRows:
                keep = {}
                for i, (key, stored) in enumerate(zip(keys, old[table], strict=True)):
                    if stored is not None and (
                            int(_decode(table, d, [stored])["updated_at"][0]) > int(updated[i])):
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
    ) -> CrossUpdate:
        """Folds CR(u,i) events into CR(u) and CR(i) (Eq. 1-2, tie rule), atomically per key.

        Args:
          user_ids, item_ids: [n] ids of each event.
          cr: float [n, d] CR(u,i), finite.
          timestamps: int [n] unix seconds; the events may come in any order within a call.
          model_version: written to every updated row.

        Returns:
          CrossUpdate; late events (older than their key's updated_at) are skipped and counted.
        """
        users, items = _check_keys("user_ids", user_ids), _check_keys("item_ids", item_ids)
        n = len(users)
        if len(items) != n:
            raise ValueError(f"item_ids has {len(items)} ids, user_ids has {n}: one per event")
        x = _check_matrix("cr", cr, n).astype(np.float64)  # [n, d]
        t = _check_ints("timestamps", timestamps, n, scalar_ok=False)  # [n]
        version = int(_check_ints("model_version", model_version, 1, scalar_ok=True)[0])
        d = x.shape[1]
        for table in CROSS_TABLES:
            self._check_dim(table, d)
        groups = {CR_USER: _tie_groups(users, t, x), CR_ITEM: _tie_groups(items, t, x)}
        late: dict[str, int] = {}

        def compute(old: OldRows) -> NewRows:
            out = {}
            for table, g in groups.items():
                out[table], late[table] = _fold_cross(
                    table, d, g, old[table], self._beta, version)
            return out

        keys = {table: list(g) for table, g in groups.items()}
        self._backend.update({CR_USER: d, CR_ITEM: d}, keys, compute, False)
        return CrossUpdate(n, late[CR_USER], late[CR_ITEM])

    def bulk_load(
        self,
        table: str,
        pattern: str,
        *,
        replace: bool = True,
        guard: GuardThresholds | None = DEFAULT_GUARD,
    ) -> PutResult:
        """Loads a published table (``trainer/representations/tables.py`` TFRecords).

        ``pattern`` globs the gzip TFRecord files (e.g. ``<root>/<version>/user/part-*``);
        each row keeps its ``updated_at`` and ``model_version``. Guarded by default (see
        ``put``); imports TensorFlow to read the files.
        """
        from trainer.representations.tables import read_table

        keys, matrix, updated_at, versions = read_table(pattern)
        return self.put(_check_table(table), keys, matrix, updated_at, versions,
                        replace=replace, guard=guard)

    def statistics(self, table: str) -> TableStatistics | None:
        """The guard's statistics of the stored table; None while it is empty."""
        dim, rows = self._backend.scan(_check_table(table))
        if not rows:
            return None
        return table_statistics(_decode(table, dim or 0, list(rows.values()))["representation"])

    def clear(self, table: str) -> None:
        """Deletes every row of ``table`` and forgets its dimension."""
        self._backend.clear(_check_table(table))

    def snapshot(self, name: str) -> SnapshotInfo:
        """Copies all four tables (and their dimensions) under ``name``, atomically."""
        self._backend.snapshot(_check_snapshot_name(name), time.time())
        return next(s for s in self._backend.snapshots() if s.name == name)

    def list_snapshots(self) -> list[SnapshotInfo]:
        """Every snapshot, oldest first."""
        return sorted(self._backend.snapshots(), key=lambda s: (s.created_at, s.name))

    def rollback(self, name: str) -> None:
        """Makes all four tables exactly as they were at snapshot ``name`` (which is kept)."""
        self._backend.rollback(_check_snapshot_name(name))

    def delete_snapshot(self, name: str) -> None:
        self._backend.delete_snapshot(_check_snapshot_name(name))


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
        from serving._store_redis import RedisBackend

        return RepresentationStore(RedisBackend(url), decay)
    if scheme != "sqlite":
        raise ValueError(
            f"unsupported store url {url!r}: use sqlite:///path/to.db or redis://host:port/db"
        )
    path = url.split("://", 1)[1] if "://" in url else url
    if not path or path == ":memory:":
        raise ValueError(f"store url {url!r} names no database file (in-memory is not shared)")
    from serving._store_sqlite import SqliteBackend

    return RepresentationStore(SqliteBackend(url, path), decay)


def measure_update_throughput(
    url: str,
    *,
    events: int = 20000,
    batch_size: int = 256,
    dim: int = 32,
    num_keys: int = 1000,
    seed: int = 0,
) -> float:
    """``update_cross`` events per second on the (scratch) store at ``url``.

    Writes ``events`` random CR(u,i) events over ``num_keys`` users and items, in time order,
    in calls of ``batch_size``, into CR(u) and CR(i) of that store.
    """
    if events < 1 or batch_size < 1 or dim < 1 or num_keys < 1:
        raise ValueError("events, batch_size, dim and num_keys must be >= 1")
    rng = np.random.default_rng(seed)
    users = np.array([b"u%d" % k for k in rng.integers(0, num_keys, events)], dtype=object)
    items = np.array([b"i%d" % k for k in rng.integers(0, num_keys, events)], dtype=object)
    cr = rng.normal(size=(events, dim)).astype(np.float32)
    t = np.sort(rng.integers(0, max(events // 4, 1), events))
    with open_store(url) as store:
        start = time.perf_counter()
        for s in range(0, events, batch_size):
            sl = slice(s, s + batch_size)
            store.update_cross(users[sl], items[sl], cr[sl], t[sl])
        elapsed = time.perf_counter() - start
    return events / elapsed if elapsed > 0 else math.inf
