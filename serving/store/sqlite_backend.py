"""SQLite backend of the representation store (``sqlite:///path``): embedded, one host.

Schema (row values are the packed rows of ``serving/store/codec.py``):

    rows(tbl, key, value)            PRIMARY KEY (tbl, key)
    dims(tbl, dim)                   the recorded dimension of each written table
    snapshots(name, created_at)
    snapshot_rows(snap, tbl, key, value), snapshot_dims(snap, tbl, dim)

WAL mode (readers never block the writer). Every write is one ``BEGIN IMMEDIATE`` transaction,
which takes the database's write lock before reading, so a read-modify-write never loses a
concurrent update, across threads and processes alike; reads run in a deferred transaction
(one consistent view). One connection per thread and process (a forked child opens its own).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from serving.store.backend import NewRows, OldRows, SnapshotInfo
from serving.store.codec import TABLES
from serving.store.errors import DimensionError, SnapshotExistsError, SnapshotNotFoundError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rows (tbl TEXT NOT NULL, key BLOB NOT NULL, "
    "value BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dims (tbl TEXT PRIMARY KEY, dim INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshots (name TEXT PRIMARY KEY, created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshot_rows (snap TEXT NOT NULL, tbl TEXT NOT NULL, "
    "key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (snap, tbl, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS snapshot_dims (snap TEXT NOT NULL, tbl TEXT NOT NULL, "
    "dim INTEGER NOT NULL, PRIMARY KEY (snap, tbl))",
)
_UPSERT = "INSERT OR REPLACE INTO rows (tbl, key, value) VALUES (?, ?, ?)"
_CHUNK = 500  # keys per IN (...) query, below SQLite's bound-parameter limit
_BUSY_TIMEOUT_S = 60.0


class SqliteBackend:
    """The store's tables in one SQLite file (see the module docstring)."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._pid = os.getpid()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._write() as con:
            for statement in _SCHEMA:
                con.execute(statement)

    def _con(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork: inherited ones are not used)."""
        if os.getpid() != self._pid:
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        con = self._con()
        con.execute(begin)
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _write(self):
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self):
        return self._transaction("BEGIN")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for con in connections:
            con.close()
        self._local = threading.local()

    # ------------------------------------------------------------------------------- rows

    @staticmethod
    def _dim(con: sqlite3.Connection, table: str) -> int | None:
        row = con.execute("SELECT dim FROM dims WHERE tbl = ?", (table,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _select(con: sqlite3.Connection, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        found: dict[bytes, bytes] = {}
        for s in range(0, len(keys), _CHUNK):
            chunk = keys[s : s + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(con.execute(
                f"SELECT key, value FROM rows WHERE tbl = ? AND key IN ({marks})",
                (table, *chunk)))
        return [found.get(k) for k in keys]

    def _claim_dims(self, con: sqlite3.Connection, dims: Mapping[str, int]) -> None:
        """Records each table's dimension if unset; DimensionError if it differs."""
        for table, dim in dims.items():
            stored = self._dim(con, table)
            if stored is None:
                con.execute("INSERT INTO dims (tbl, dim) VALUES (?, ?)", (table, dim))
            elif stored != dim:
                raise DimensionError(table, stored, dim)

    def dims(self) -> dict[str, int]:
        with self._read() as con:
            return {t: int(d) for t, d in con.execute("SELECT tbl, dim FROM dims")}

    def count(self, table: str) -> int:
        with self._read() as con:
            return con.execute("SELECT count(*) FROM rows WHERE tbl = ?", (table,)).fetchone()[0]

    def read(self, table: str, keys: Sequence[bytes]) -> tuple[int | None, list[bytes | None]]:
        with self._read() as con:
            return self._dim(con, table), self._select(con, table, keys)

    def scan(self, table: str) -> tuple[int | None, dict[bytes, bytes]]:
        with self._read() as con:
            rows = con.execute("SELECT key, value FROM rows WHERE tbl = ?", (table,))
            return self._dim(con, table), dict(rows)

    def update(
        self,
        dims: Mapping[str, int],
        keys: Mapping[str, Sequence[bytes]],
        compute: Callable[[OldRows], NewRows],
        blind: bool,
    ) -> None:
        with self._write() as con:
            self._claim_dims(con, dims)
            old = {} if blind else {t: self._select(con, t, ks) for t, ks in keys.items()}
            for table, rows in compute(old).items():
                con.executemany(_UPSERT, ((table, k, v) for k, v in rows.items()))

    def rewrite(
        self,
        table: str,
        dim: int,
        compute: Callable[[dict[bytes, bytes]], dict[bytes, bytes]],
        replace: bool,
    ) -> None:
        with self._write() as con:
            self._claim_dims(con, {table: dim})
            current = dict(con.execute("SELECT key, value FROM rows WHERE tbl = ?", (table,)))
            rows = compute(current)
            if replace:
                con.execute("DELETE FROM rows WHERE tbl = ?", (table,))
            con.executemany(_UPSERT, ((table, k, v) for k, v in rows.items()))

    def clear(self, table: str) -> None:
        with self._write() as con:
            con.execute("DELETE FROM rows WHERE tbl = ?", (table,))
            con.execute("DELETE FROM dims WHERE tbl = ?", (table,))

    # -------------------------------------------------------------------------- snapshots

    @staticmethod
    def _exists(con: sqlite3.Connection, name: str) -> bool:
        return con.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone() is not None

    def snapshot(self, name: str, created_at: float) -> None:
        with self._write() as con:
            if self._exists(con, name):
                raise SnapshotExistsError(f"snapshot {name!r} already exists")
            con.execute("INSERT INTO snapshots (name, created_at) VALUES (?, ?)",
                        (name, created_at))
            con.execute("INSERT INTO snapshot_rows SELECT ?, tbl, key, value FROM rows", (name,))
            con.execute("INSERT INTO snapshot_dims SELECT ?, tbl, dim FROM dims", (name,))

    def snapshots(self) -> list[SnapshotInfo]:
        with self._read() as con:
            counts: dict[str, dict[str, int]] = {}
            for snap, table, n in con.execute(
                    "SELECT snap, tbl, count(*) FROM snapshot_rows GROUP BY snap, tbl"):
                counts.setdefault(snap, {})[table] = n
            return [
                SnapshotInfo(name, created_at,
                             {t: counts.get(name, {}).get(t, 0) for t in TABLES})
                for name, created_at in con.execute("SELECT name, created_at FROM snapshots")
            ]

    def rollback(self, name: str) -> None:
        with self._write() as con:
            if not self._exists(con, name):
                raise SnapshotNotFoundError(f"no snapshot named {name!r}")
            con.execute("DELETE FROM rows")
            con.execute("DELETE FROM dims")
            con.execute("INSERT INTO rows SELECT tbl, key, value FROM snapshot_rows "
                        "WHERE snap = ?", (name,))
            con.execute("INSERT INTO dims SELECT tbl, dim FROM snapshot_dims WHERE snap = ?",
                        (name,))

    def delete_snapshot(self, name: str) -> None:
        with self._write() as con:
            if not self._exists(con, name):
                raise SnapshotNotFoundError(f"no snapshot named {name!r}")
            for table in ("snapshots", "snapshot_rows", "snapshot_dims"):
                column = "name" if table == "snapshots" else "snap"
                con.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))
