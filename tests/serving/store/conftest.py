"""Fixtures of the store tests: each test runs on sqlite and on a real redis-server.

The redis server is Debian's ``redis-server`` binary started on a free port for the session
(no persistence) and stopped after; the redis tests are skipped, saying so, without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import redis

from serving.store import RepresentationStore, open_store
from tests.serving.store.helpers import HALF_LIFE


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    """An empty store's url on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def store(store_url) -> Iterator[RepresentationStore]:
    with open_store(store_url, half_life_seconds=HALF_LIFE) as s:
        yield s


def _sqlite_state(path: str) -> tuple:
    """The database file and its write-ahead log, byte for byte."""
    files = []
    for p in (path, path + "-wal"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                files.append((p, f.read()))
    return tuple(files)


def _redis_state(url: str) -> dict:
    """Every key of the database with its serialized value (DUMP), byte for byte."""
    client = redis.Redis.from_url(url)
    try:
        return {k: client.dump(k) for k in sorted(client.scan_iter(count=1000))}
    finally:
        client.close()


@pytest.fixture
def fingerprint(store_url) -> Callable[[], object]:
    """A function returning the raw stored bytes of the whole store (files or all keys)."""
    if store_url.startswith("sqlite://"):
        path = store_url[len("sqlite://"):]
        return lambda: _sqlite_state(path)
    return lambda: _redis_state(store_url)
