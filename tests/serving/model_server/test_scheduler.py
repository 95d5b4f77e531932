"""The batch scheduler and the gRPC front end's loop waker, without a model or a server: when
the batch thread wakes, when a batch runs, how finished requests reach their waiters."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import grpc
import numpy as np
import pytest

from serving.model_server import BatchingParameters
from serving.model_server.batching import BatchScheduler
from serving.model_server.errors import ServingError, invalid_argument
from serving.model_server.grpc_service import _LoopWaker
from serving.model_server.metrics import ServingMetrics


class _Model:
    """Doubles its input; records the rows of every call."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


def _inputs(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 2), value, dtype=np.float32)}


@pytest.fixture
def scheduler():
    made = []

    def make(**params) -> BatchScheduler:
        made.append(BatchScheduler(BatchingParameters(**params), ServingMetrics()))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_the_batch_thread_wakes_when_a_batch_opens_or_fills_not_per_request(scheduler):
    batcher = scheduler(max_batch_size=4, batch_timeout_micros=5_000_000, num_batch_threads=1)
    wakes = []
    notify = batcher._cond.notify
    batcher._cond.notify = lambda *a: (wakes.append(1), notify(*a))
    model = _Model()
    started = time.monotonic()
    tasks = [batcher.submit("k", model, _inputs(i)) for i in range(4)]
    outputs = [task.wait(10) for task in tasks]
    assert time.monotonic() - started < 2.0  # full: run at once, not after the 5 s timeout
    assert model.calls == [4]
    assert len(wakes) == 2  # the batch opened, the batch filled; the 2 tasks between: none
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out["y"], _inputs(i)["x"] * 2)


def test_an_open_batch_runs_at_its_timeout_and_a_new_one_behind_it_at_once(scheduler):
    batcher = scheduler(max_batch_size=4, batch_timeout_micros=200_000, num_batch_threads=1)
    model = _Model()
    started = time.monotonic()
    alone = batcher.submit("k", model, _inputs(1.0))
    alone.wait(10)
    assert time.monotonic() - started >= 0.19  # nobody joined: it waited its timeout
    assert model.calls == [1]

    big = _inputs(0.0, rows=3)
    first = batcher.submit("k", model, big)
    second = batcher.submit("k", model, big)  # does not fit: opens a batch; the first is ready
    first.wait(10)
    assert model.calls == [1, 3]
    second.wait(10)
    assert model.calls == [1, 3, 3]


def test_on_finish_gets_each_task_from_the_thread_that_finished_it(scheduler):
    batcher = scheduler(max_batch_size=2, batch_timeout_micros=5_000_000, num_batch_threads=1)
    finished: list[tuple[str, object]] = []

    def on_finish(task):
        finished.append((threading.current_thread().name, task))

    tasks = [batcher.submit("k", _Model(), _inputs(i), on_finish=on_finish) for i in range(2)]
    for task in tasks:
        task.wait(10)
    assert [t for _, t in finished] == tasks
    assert {name for name, _ in finished} == {"model_server_batch_threads_0"}
    assert all(task.done for task in tasks)
    np.testing.assert_array_equal(tasks[1].result()["y"], _inputs(1)["x"] * 2)


def test_a_task_not_done_by_its_timeout_is_deadline_exceeded_and_its_error_is_raised(scheduler):
    batcher = scheduler(max_batch_size=8, batch_timeout_micros=5_000_000, num_batch_threads=1)
    waiting = batcher.submit("k", _Model(), _inputs(1.0))
    with pytest.raises(ServingError) as late:
        waiting.wait(0.05)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not waiting.done

    def broken(inputs):
        raise invalid_argument("bad rows")

    failed = batcher.submit("other", broken, _inputs(1.0, rows=8))  # full: runs at once
    with pytest.raises(ServingError, match="bad rows"):
        failed.wait(10)
    with pytest.raises(ServingError, match="bad rows"):  # a second wait gives the same
        failed.wait(0)


def _identity(value):
    return value


def _fail():
    raise invalid_argument("no")


def test_the_loop_waker_wakes_the_loop_once_for_results_finished_together():
    loop = asyncio.new_event_loop()
    try:
        wakes = []
        call_soon = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakes.append(1), call_soon(*a))
        waker = _LoopWaker(loop)
        futures = [loop.create_future() for _ in range(33)]

        def finish_all() -> None:  # another thread, as the batch thread
            for i, future in enumerate(futures[:32]):
                waker.resolve(future, functools.partial(_identity, i))
            waker.resolve(futures[32], _fail)

        thread = threading.Thread(target=finish_all)
        thread.start()
        thread.join()
        results = loop.run_until_complete(asyncio.gather(*futures, return_exceptions=True))
        assert results[:32] == list(range(32))
        assert isinstance(results[32], ServingError) and results[32].message == "no"
        assert len(wakes) == 1

        done = loop.create_future()
        done.set_result("first")  # resolved already (its deadline passed): left as it is
        waker.resolve(done, functools.partial(_identity, "late"))
        loop.run_until_complete(asyncio.sleep(0))
        assert done.result() == "first" and len(wakes) == 2
    finally:
        loop.close()
