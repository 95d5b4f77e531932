"""Representation store: UR, IR, CR(u), CR(i) for online serving (paper Sec. 4.3.1-4.3.2).

LFM4Ads (arXiv 2508.14948) serves its upstream representations from storage (Fig. 4): for a
request (u, i) the downstream model reads UR(u), IR(i), CR(u), CR(i); the new UR(u), IR(i)
replace the stored ones, and the new CR(u,i) is folded into CR(u) and CR(i) with the
time-aware EMA of Eq. 1-2 (``common/representations/ema.py``):

    CR(k) <- beta(t - updated_at(k)) * CR(k) + (1 - beta(t - updated_at(k))) * CR(u,i)

with the same semantics as ``ema.aggregate_sequential``: the first event of a key initialises
it, and the events of one key in one second are averaged and applied once (TIE RULE), also
when they arrive in different ``update_cross`` calls. An event older than its key's
``updated_at`` is LATE: it is skipped and counted (replaying a time-ordered stream never has
late events, so the store then holds exactly the tables of ``aggregate_sequential``).

Sec. 4.3.2: a guard compares the statistics of a table before and after a bulk write
(``common/representations/statistics.py``: mean, variance, L1 norm, max |x|) and
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

Modules: ``core`` (``RepresentationStore``, ``open_store``), ``codec`` (table names, the packed
row layout shared by both back-ends, input checks), ``cross`` (the EMA fold), ``backend`` (the
``Backend`` protocol), ``sqlite_backend``, ``redis_backend``, ``errors``.

Example::

    store = open_store("sqlite:///tmp/reps.db", half_life_seconds=3600)
    store.put(UR, [b"u1"], np.ones((1, 8), np.float32), updated_at=[100], model_version=3)
    store.update_cross([b"u1"], [b"i9"], cr, timestamps=[100], model_version=3)
    rows = store.get(CR_USER, [b"u1", b"u2"])   # rows.found == [True, False]
    store.snapshot("2025-01-01"); ...; store.rollback("2025-01-01")
"""

from common.representations.statistics import GuardThresholds, TableStatistics, Verdict
from serving.store.backend import Backend, NewRows, OldRows, SnapshotInfo
from serving.store.codec import CR_ITEM, CR_USER, CROSS_TABLES, IR, TABLES, UR
from serving.store.core import (
    DEFAULT_GUARD,
    CrossUpdate,
    PutResult,
    RepresentationStore,
    Rows,
    open_store,
)
from serving.store.errors import (
    ConflictError,
    DimensionError,
    GuardRefusedError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    StoreError,
)

__all__ = [
    "CROSS_TABLES", "CR_ITEM", "CR_USER", "DEFAULT_GUARD", "IR", "TABLES", "UR",
    "Backend", "ConflictError", "CrossUpdate", "DimensionError", "GuardRefusedError",
    "GuardThresholds", "NewRows", "OldRows", "PutResult", "RepresentationStore", "Rows",
    "SnapshotExistsError", "SnapshotInfo", "SnapshotNotFoundError", "StoreError",
    "TableStatistics", "Verdict", "open_store",
]
