"""The gRPC request queue: beyond --grpc_max_threads running RPCs, up to
--grpc_max_queued_requests wait for a thread (each until its deadline) instead of being
refused; RESOURCE_EXHAUSTED only when the queue is full. Requests are made slow
deterministically by server-side batching: a batch waits `batch_timeout_micros` for more tasks
while its RPCs hold their threads."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from common import signatures
from serving.model_server import BatchingParameters, ModelServer, MonitoringConfig
from serving.model_server.admission import AdmissionQueue
from serving.model_server.errors import ServingError
from tests.serving.conftest import MODEL, Stubs, copy_version, predict_request, rpc_error, wait_for

UR = signatures.USER_REPRESENTATION
DEPTH = ":tensorflow:serving:request_queue_depth"
REFUSED = ":tensorflow:serving:request_queue_refused_count"


@pytest.fixture(scope="module")
def base(exported, tmp_path_factory) -> str:
    base = str(tmp_path_factory.mktemp("queueing") / MODEL)
    copy_version(exported["a"], base, 1)
    return base


def _slow_batches(timeout_s: float) -> BatchingParameters:
    """Every batch waits `timeout_s` for more tasks (it never fills: 64 rows at most)."""
    return BatchingParameters(max_batch_size=64, batch_timeout_micros=int(timeout_s * 1e6),
                              max_enqueued_batches=100, num_batch_threads=1)


@pytest.mark.slow
def test_64_concurrent_clients_on_4_threads_all_get_answers(base, examples, reference):
    """64 client threads x 3 Predicts each on --grpc_max_threads=4: every request waits its turn
    and is answered (with the old behaviour, queue 0, most would be RESOURCE_EXHAUSTED)."""
    clients, per_client = 64, 3
    expected = reference(f"{base}/1", UR, examples=examples[:clients])[UR]
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=0,
                     batching_parameters=_slow_batches(0.02), grpc_max_threads=4,
                     grpc_max_queued_requests=64,
                     monitoring=MonitoringConfig(prometheus_enable=True)) as server:
        stubs = Stubs(server)
        depth = server.metrics.request_queue_depth
        start = threading.Barrier(clients)
        failures: list[str] = []
        served: dict[int, list[np.ndarray]] = {i: [] for i in range(clients)}

        def client(i: int) -> None:
            start.wait()
            for _ in range(per_client):
                try:
                    response = stubs.predict.Predict(predict_request([examples[i]]), timeout=120)
                    served[i].append(tf.make_ndarray(response.outputs[UR]))
                except grpc.RpcError as e:
                    failures.append(e.code().name)

        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], depth.value())
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        watcher.join()
        stubs.close()

        assert failures == []
        for i in range(clients):
            assert len(served[i]) == per_client
            for rows in served[i]:
                np.testing.assert_allclose(rows, expected[i:i + 1], rtol=1e-5, atol=1e-6)
        assert peak[0] > 0  # requests did wait in the queue
        assert depth.value() == 0
        assert server.metrics.request_queue_refused_count.value() == 0
        assert server.metrics.request_count.value(MODEL, "OK") == clients * per_client

        # the queue's metrics are on the Prometheus page
        url = f"{server.rest_url}/monitoring/prometheus/metrics"
        with urllib.request.urlopen(url, timeout=60) as reply:
            text = reply.read().decode()
        assert f"# TYPE {DEPTH} gauge\n{DEPTH}{{}} 0\n" in text
        assert f"# TYPE {REFUSED} counter\n" in text


@pytest.mark.parametrize("queued", [0, 2])
def test_a_full_queue_refuses_with_resource_exhausted(base, examples, reference, queued):
    """2 RPCs hold both threads (their batch waits 1 s), `queued` more wait for a thread: the
    next one finds the queue full and is refused at once; the others are all answered."""
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None,
                     batching_parameters=_slow_batches(1.0), grpc_max_threads=2,
                     grpc_max_queued_requests=queued) as server:
        stubs = Stubs(server)
        metrics = server.metrics
        running = [stubs.predict.Predict.future(predict_request([examples[i]]), timeout=60)
                   for i in range(2)]
        wait_for(lambda: metrics.input_batch_size.count() == 2, what="2 running RPCs")
        waiting = [stubs.predict.Predict.future(predict_request([examples[i]]), timeout=60)
                   for i in range(2, 2 + queued)]
        wait_for(lambda: metrics.request_queue_depth.value() == queued,
                 what=f"{queued} RPCs in the queue")
        assert f"{DEPTH}{{}} {queued}\n" in server.metrics_text()

        started = time.monotonic()
        error = rpc_error(stubs.predict.Predict, predict_request(examples[9:10]), timeout=60)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 0.5  # refused at once, not after the batch
        assert f"--grpc_max_queued_requests={queued}" in error.details()
        assert metrics.request_queue_refused_count.value() == 1
        assert f"{REFUSED}{{}} 1\n" in server.metrics_text()
        assert metrics.request_count.value(MODEL, "RESOURCE_EXHAUSTED") == 1

        served = np.concatenate([tf.make_ndarray(f.result().outputs[UR])
                                 for f in running + waiting])
        np.testing.assert_allclose(
            served, reference(f"{base}/1", UR, examples=examples[:2 + queued])[UR], rtol=1e-6)
        assert metrics.request_queue_depth.value() == 0
        stubs.close()


def test_a_queued_request_past_its_deadline_is_deadline_exceeded(base, examples, reference):
    """1 thread, held for 1 s by a batch: a request with a 0.3 s deadline waits in the queue,
    is answered DEADLINE_EXCEEDED when its deadline passes, and never runs."""
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None,
                     batching_parameters=_slow_batches(1.0), grpc_max_threads=1,
                     grpc_max_queued_requests=4) as server:
        stubs = Stubs(server)
        metrics = server.metrics
        first = stubs.predict.Predict.future(predict_request(examples[:1]), timeout=60)
        wait_for(lambda: metrics.input_batch_size.count() == 1, what="the running RPC")

        error = rpc_error(stubs.predict.Predict, predict_request(examples[1:2]), timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: metrics.request_count.value(MODEL, "DEADLINE_EXCEEDED") == 1,
                 what="the server to give up on the queued request")
        assert metrics.request_queue_depth.value() == 0

        np.testing.assert_allclose(tf.make_ndarray(first.result().outputs[UR]),
                                   reference(f"{base}/1", UR, examples=examples[:1])[UR],
                                   rtol=1e-6)
        assert metrics.input_batch_size.count() == 1  # the expired request never ran
        assert metrics.wrapped_run_count.value() == 1
        assert metrics.request_queue_refused_count.value() == 0
        stubs.close()


class _Context:
    """The part of a grpc.aio.ServicerContext that the queue uses."""

    def __init__(self, seconds: float = 60.0):
        self.deadline = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


async def _settle(condition, turns: int = 100) -> None:
    """Lets the loop run until `condition()` holds (a cancellation takes a few turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition()


def test_waiting_requests_run_in_arrival_order_and_a_cancelled_one_leaves():
    async def scenario() -> tuple[list[int], list[grpc.StatusCode]]:
        queue = AdmissionQueue(max_running=1, max_queued=3)
        await queue.enter(_Context())
        order: list[int] = []

        async def request(i: int) -> None:
            await queue.enter(_Context())
            order.append(i)
            queue.leave()

        tasks = []
        for i in range(3):  # queued one after the other
            tasks.append(asyncio.ensure_future(request(i)))
            await _settle(lambda i=i: queue.queued == i + 1)
        tasks[1].cancel()  # its client gave up: it leaves the queue without running
        await _settle(lambda: queue.queued == 2)
        queue.leave()  # the running request ends: the oldest waiter takes its slot
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        assert (queue.running, queue.queued) == (0, 0)
        return order

    assert asyncio.run(scenario()) == [0, 2]


def test_a_waiter_past_its_deadline_leaves_the_queue_with_deadline_exceeded():
    async def scenario() -> None:
        queue = AdmissionQueue(max_running=1, max_queued=2)
        await queue.enter(_Context())
        with pytest.raises(ServingError) as late:
            await queue.enter(_Context(seconds=0.05))
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (queue.running, queue.queued) == (1, 0)
        queue.leave()
        assert queue.running == 0

    asyncio.run(scenario())
