"""``update_cross`` throughput of the representation store (``serving.store``), for benchmarks.

    rate = measure_update_throughput("sqlite:///tmp/scratch.db")   # events per second

``benchmarks.serving`` reports it for SQLite and Redis.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import time

import numpy as np

from serving.store import open_store


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


@contextlib.contextmanager
def redis_server():
    """A throw-away `redis-server` on a free port (no persistence): yields its URL, or None
    when the binary is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

