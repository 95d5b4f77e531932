"""No lost update: 8 concurrent writers (threads, processes) on hot keys, on both backends.

Every writer sends, per round, a few ``update_cross`` calls of events on the same 3 users and
3 items, all stamped with the round's second; a barrier separates the rounds. Within a round
the tie rule averages the second's events, so the final tables do not depend on how the
writers interleave: they must equal ``aggregate_sequential`` over the multiset of all events.
A lost update (two writers reading the same row and both writing) drops events from an
average, or a whole round's transition, and the comparison fails.
"""

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.store import open_store
from tests.serving.store.helpers import HALF_LIFE, Events, assert_matches_sequential

WRITERS, ROUNDS, CALLS, BATCH, DIM = 8, 4, 3, 4, 5
HOT_KEYS = 3


def _events(writer: int, rnd: int, call: int) -> Events:
    """The events of one call: deterministic, so the test can rebuild the whole multiset."""
    rng = np.random.default_rng([writer, rnd, call])
    return Events(
        [b"u%d" % k for k in rng.integers(0, HOT_KEYS, BATCH)],
        [b"i%d" % k for k in rng.integers(0, HOT_KEYS, BATCH)],
        rng.normal(size=(BATCH, DIM)).astype(np.float32),
        np.full(BATCH, 1000 + 7 * rnd, dtype=np.int64),
    )


def _all_events() -> Events:
    parts = [_events(w, r, c) for w in range(WRITERS) for r in range(ROUNDS) for c in range(CALLS)]
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def _write(store, writer: int, barrier) -> None:
    for rnd in range(ROUNDS):
        barrier.wait(timeout=60)
        for call in range(CALLS):
            ev = _events(writer, rnd, call)
            store.update_cross(ev.users, ev.items, ev.cr, ev.t)


def _process_main(url: str, writer: int, barrier) -> None:
    with open_store(url, half_life_seconds=HALF_LIFE) as store:
        _write(store, writer, barrier)


def test_threads_sharing_one_store_lose_no_update(store):
    barrier = threading.Barrier(WRITERS)
    with ThreadPoolExecutor(WRITERS) as pool:
        futures = [pool.submit(_write, store, w, barrier) for w in range(WRITERS)]
        for f in futures:
            f.result()
    assert_matches_sequential(store, _all_events(), HALF_LIFE)


def test_processes_lose_no_update(store):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_process_main, args=(store.url, w, barrier))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        pytest.fail(f"writer processes exited with {codes}")
    assert_matches_sequential(store, _all_events(), HALF_LIFE)
