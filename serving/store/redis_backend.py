"""Redis backend of the representation store (``redis://host:port/db[?prefix=name:]``).

Key layout (``P`` = prefix, default ``lfm4ads:``; row values are the packed rows of
``serving/store/codec.py``):

    P table:<table>              hash  key -> row value
    P dims                       hash  table -> recorded dimension
    P snapshots                  hash  snapshot name -> created_at
    P snapshot:<name>:<table>    hash  copy of P table:<table>
    P snapshot:<name>:dims       hash  copy of P dims

Concurrency:

* ``update`` (online EMA, batch put) is optimistic per key: read the rows, compute the new
  values, then one Lua script (atomic on the server) checks the dimensions and that every
  row still holds the value it was computed from, and writes all rows only if so; otherwise
  the client re-reads and retries (with backoff). Writers of different keys never conflict.
* ``rewrite`` (guarded / replacing bulk writes) uses WATCH on the table and the dimensions,
  then MULTI/EXEC; snapshots, rollbacks and deletions are MULTI/EXEC transactions of COPY/DEL
  under WATCH of the snapshot index.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import WatchError

from serving.store.backend import NewRows, OldRows, SnapshotInfo
from serving.store.codec import TABLES
from serving.store.errors import (
    ConflictError,
    DimensionError,
    SnapshotExistsError,
    SnapshotNotFoundError,
)

DEFAULT_PREFIX = "lfm4ads:"
MAX_ATTEMPTS = 500
_ANY = b"*"  # expected value: write without comparing (a row value is never this short)

# KEYS[1]: the dims hash; KEYS[2..]: table hashes.
# ARGV: m, then m (table, dim) pairs, then quads (KEYS index, field, expected, new value);
# expected '' = the field must be absent, '*' = do not compare.
# Returns {2} when written, {1} on a conflict (nothing written), {0, table, stored dim} when a
# table's recorded dimension differs (nothing written).
_CAS_SCRIPT = """
local m = tonumber(ARGV[1])
for j = 0, m - 1 do
  local stored = redis.call('HGET', KEYS[1], ARGV[2 + 2 * j])
  if stored and stored ~= ARGV[3 + 2 * j] then
    return {0, ARGV[2 + 2 * j], stored}
  end
end
local first = 2 + 2 * m
for p = first, #ARGV, 4 do
  local expected = ARGV[p + 2]
  if expected ~= '*' then
    local current = redis.call('HGET', KEYS[tonumber(ARGV[p])], ARGV[p + 1]) or ''
    if current ~= expected then
      return {1}
    end
  end
end
for j = 0, m - 1 do
  redis.call('HSET', KEYS[1], ARGV[2 + 2 * j], ARGV[3 + 2 * j])
end
for p = first, #ARGV, 4 do
  redis.call('HSET', KEYS[tonumber(ARGV[p])], ARGV[p + 1], ARGV[p + 3])
end
return {2}
"""


def _split_prefix(url: str) -> tuple[str, str]:
    """(url without the ``prefix`` query parameter, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0.0, min(0.05, 0.0005 * 2 ** min(attempt, 10))))


class RedisBackend:
    """The store's tables as Redis hashes (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_url, self.prefix = _split_prefix(url)
        self._client = redis.Redis.from_url(connect_url)
        self._client.ping()
        self._cas = self._client.register_script(_CAS_SCRIPT)
        self.conflicts = 0  # optimistic retries so far (for benchmarks)

    def _table_key(self, table: str) -> str:
        return f"{self.prefix}table:{table}"

    @property
    def _dims_key(self) -> str:
        return f"{self.prefix}dims"

    @property
    def _index_key(self) -> str:
        return f"{self.prefix}snapshots"

    def _snap_key(self, name: str, part: str) -> str:
        return f"{self.prefix}snapshot:{name}:{part}"

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------- rows

    def dims(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self._client.hgetall(self._dims_key).items()}

    def count(self, table: str) -> int:
        return int(self._client.hlen(self._table_key(table)))

    def _read_many(
        self, keys: Mapping[str, Sequence[bytes]]
    ) -> tuple[dict[str, int], dict[str, list[bytes | None]]]:
        """(dims, values of each table's keys), read in one MULTI/EXEC (one instant)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(self._dims_key)
        tables = [t for t, ks in keys.items() if ks]
        for t in tables:
            pipe.hmget(self._table_key(t), list(keys[t]))
        dims_raw, *values = pipe.execute()
        old: dict[str, list[bytes | None]] = {t: [] for t in keys}
        old.update(zip(tables, values, strict=True))
        return {k.decode(): int(v) for k, v in dims_raw.items()}, old

    def read(self, table: str, keys: Sequence[bytes]) -> tuple[int | None, list[bytes | None]]:
        dims, old = self._read_many({table: keys})
        return dims.get(table), old[table]

    def scan(self, table: str) -> tuple[int | None, dict[bytes, bytes]]:
        pipe = self._client.pipeline(transaction=True)
        pipe.hget(self._dims_key, table)
        pipe.hgetall(self._table_key(table))
        dim, rows = pipe.execute()
        return (None if dim is None else int(dim)), rows

    def update(
        self,
        dims: Mapping[str, int],
        keys: Mapping[str, Sequence[bytes]],
        compute: Callable[[OldRows], NewRows],
        blind: bool,
    ) -> None:
        tables = list(keys)
        redis_keys = [self._dims_key, *(self._table_key(t) for t in tables)]
        for attempt in range(MAX_ATTEMPTS):
            old: dict[str, list[bytes | None]] = {}
            if not blind:
                stored, old = self._read_many(keys)
                for t, d in dims.items():
                    if stored.get(t, d) != d:
                        raise DimensionError(t, stored[t], d)
            new = compute(old)
            args: list[object] = [len(dims)]
            for t, d in dims.items():
                args += [t, d]
            for i, t in enumerate(tables):
                expected = {} if blind else dict(zip(keys[t], old[t], strict=True))
                for k, v in new.get(t, {}).items():
                    args += [i + 2, k, _ANY if blind else (expected[k] or b""), v]
            result = self._cas(keys=redis_keys, args=args)
            if result[0] == 2:
                return
            if result[0] == 0:
                table = result[1].decode()
                raise DimensionError(table, int(result[2]), dims[table])
            self.conflicts += 1
            _backoff(attempt)
        raise ConflictError(f"update of {tables} conflicted {MAX_ATTEMPTS} times; gave up")

    def rewrite(
        self,
        table: str,
        dim: int,
        compute: Callable[[dict[bytes, bytes]], dict[bytes, bytes]],
        replace: bool,
    ) -> None:
        tkey = self._table_key(table)
        for attempt in range(MAX_ATTEMPTS):
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(tkey, self._dims_key)
                    stored = pipe.hget(self._dims_key, table)
                    if stored is not None and int(stored) != dim:
                        raise DimensionError(table, int(stored), dim)
                    rows = compute(pipe.hgetall(tkey))
                    pipe.multi()
                    if replace:
                        pipe.delete(tkey)
                    if rows:
                        pipe.hset(tkey, mapping=rows)
                    pipe.hset(self._dims_key, table, dim)
                    pipe.execute()
                    return
                except WatchError:
                    self.conflicts += 1
            _backoff(attempt)
        raise ConflictError(f"rewrite of {table!r} conflicted {MAX_ATTEMPTS} times; gave up")

    def clear(self, table: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._table_key(table))
        pipe.hdel(self._dims_key, table)
        pipe.execute()

    # -------------------------------------------------------------------------- snapshots

    def _on_snapshot(self, name: str, must_exist: bool, queue: Callable) -> None:
        """WATCHes the index, checks whether ``name`` exists, runs ``queue(pipe)`` in MULTI."""
        for attempt in range(MAX_ATTEMPTS):
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._index_key)
                    exists = bool(pipe.hexists(self._index_key, name))
                    if must_exist and not exists:
                        raise SnapshotNotFoundError(f"no snapshot named {name!r}")
                    if not must_exist and exists:
                        raise SnapshotExistsError(f"snapshot {name!r} already exists")
                    pipe.multi()
                    queue(pipe)
                    pipe.execute()
                    return
                except WatchError:
                    self.conflicts += 1
            _backoff(attempt)
        raise ConflictError(f"snapshot {name!r}: conflicted {MAX_ATTEMPTS} times; gave up")

    def _copy_all(self, pipe, to_snapshot: str | None, from_snapshot: str | None) -> None:
        """Queues DEL + COPY of every table and the dims (a missing source leaves none)."""
        for part in (*TABLES, "dims"):
            live = self._dims_key if part == "dims" else self._table_key(part)
            src = live if from_snapshot is None else self._snap_key(from_snapshot, part)
            dst = live if to_snapshot is None else self._snap_key(to_snapshot, part)
            pipe.delete(dst)
            pipe.copy(src, dst)

    def snapshot(self, name: str, created_at: float) -> None:
        def queue(pipe) -> None:
            self._copy_all(pipe, to_snapshot=name, from_snapshot=None)
            pipe.hset(self._index_key, name, repr(created_at))

        self._on_snapshot(name, must_exist=False, queue=queue)

    def snapshots(self) -> list[SnapshotInfo]:
        index = self._client.hgetall(self._index_key)
        names = sorted(k.decode() for k in index)
        pipe = self._client.pipeline(transaction=True)
        for name in names:
            for table in TABLES:
                pipe.hlen(self._snap_key(name, table))
        counts = iter(pipe.execute())
        return [
            SnapshotInfo(name, float(index[name.encode()]), {t: int(next(counts)) for t in TABLES})
            for name in names
        ]

    def rollback(self, name: str) -> None:
        self._on_snapshot(
            name, must_exist=True,
            queue=lambda pipe: self._copy_all(pipe, to_snapshot=None, from_snapshot=name))

    def delete_snapshot(self, name: str) -> None:
        def queue(pipe) -> None:
            pipe.hdel(self._index_key, name)
            pipe.delete(*(self._snap_key(name, part) for part in (*TABLES, "dims")))

        self._on_snapshot(name, must_exist=True, queue=queue)
