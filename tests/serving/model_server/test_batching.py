"""Server-side batching: merged model calls, padding to allowed sizes, isolation of a bad
request, and the scheduler's limits (size, queue, concurrent RPCs)."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
import tensorflow as tf

from common import signatures
from serving.model_server import BatchingParameters, ModelServer
from tests.serving.conftest import MODEL, Stubs, copy_version, predict_request, rpc_error, wait_for

UR = signatures.USER_REPRESENTATION


@pytest.fixture(scope="module")
def base(exported, tmp_path_factory) -> str:
    base = str(tmp_path_factory.mktemp("batching") / MODEL)
    copy_version(exported["a"], base, 1)
    return base


@pytest.fixture(scope="module")
def server(base):
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000,
                                max_enqueued_batches=4, num_batch_threads=1,
                                allowed_batch_sizes=(2, 4, 8))
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None,
                     batching_parameters=params, grpc_max_threads=32) as server:
        yield server


@pytest.fixture(scope="module")
def stubs(server):
    stubs = Stubs(server)
    yield stubs
    stubs.close()


def _expected(reference, base: str, examples: list[bytes]) -> np.ndarray:
    return reference(f"{base}/1", UR, examples=examples)[UR]


def _padded_sizes(server: ModelServer) -> dict[int, int]:
    """execution batch size -> batches run at that size (from the Prometheus text)."""
    pattern = (r':tensorflow:serving:batching_session:padding_size_count'
               r'\{execution_batch_size="(\d+)"\} (\d+)')
    return {int(size): int(count) for size, count in re.findall(pattern, server.metrics_text())}


def test_concurrent_requests_share_model_calls(server, stubs, base, examples, reference):
    calls = server.metrics.wrapped_run_count
    before = calls.value()
    futures = [stubs.predict.Predict.future(predict_request([examples[i]]), timeout=60)
               for i in range(6)]
    served = np.concatenate([tf.make_ndarray(f.result().outputs[UR]) for f in futures])
    np.testing.assert_allclose(served, _expected(reference, base, examples[:6]), rtol=1e-6)
    assert 1 <= calls.value() - before < 6  # 6 requests, fewer model calls
    assert set(_padded_sizes(server)) <= {2, 4, 8}  # every call ran at an allowed size


def test_a_batch_is_padded_to_the_next_allowed_size(server, stubs, base, examples, reference):
    before = _padded_sizes(server).get(4, 0)
    response = stubs.predict.Predict(predict_request(examples[:3]), timeout=60)  # 3 rows -> 4
    served = tf.make_ndarray(response.outputs[UR])
    assert served.shape[0] == 3
    np.testing.assert_allclose(served, _expected(reference, base, examples[:3]), rtol=1e-6)
    assert _padded_sizes(server).get(4, 0) == before + 1


def test_a_bad_request_does_not_fail_its_batch(stubs, base, examples, reference):
    records = [[examples[0]], [b"not a tf.Example"], [examples[2]], [examples[3]]]
    futures = [stubs.predict.Predict.future(predict_request(r), timeout=60) for r in records]
    with pytest.raises(grpc.RpcError) as info:
        futures[1].result()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Could not parse example input" in info.value.details()
    for i in (0, 2, 3):
        np.testing.assert_allclose(tf.make_ndarray(futures[i].result().outputs[UR]),
                                   _expected(reference, base, [examples[i]]), rtol=1e-6)


def test_a_request_without_deadline_waits_for_its_batch(stubs, base, examples, reference):
    """gRPC gives a call without deadline ~9.2e18 s to go, more than a thread can wait."""
    response = stubs.predict.Predict(predict_request(examples[:1]))  # no timeout
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[UR]),
                               _expected(reference, base, examples[:1]), rtol=1e-6)


def test_request_sizes_at_the_edges(stubs, examples):
    error = rpc_error(stubs.predict.Predict, predict_request(examples[:9]), timeout=60)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Task size 9 is larger than maximum batch size 8")
    empty = stubs.predict.Predict(predict_request([]), timeout=60)
    assert tf.make_ndarray(empty.outputs[UR]).shape == (0, 8)


def test_queue_full_and_too_many_concurrent_rpcs(base, examples, reference):
    """One open batch waits 1.5 s: a task that needs a second batch finds the queue full;
    with 3 RPCs waiting in it, a fourth exceeds --grpc_max_threads=3 (and, with
    --grpc_max_queued_requests=0, cannot wait for a thread: refused at once)."""
    params = BatchingParameters(max_batch_size=4, batch_timeout_micros=1_500_000,
                                max_enqueued_batches=1, num_batch_threads=1)
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None,
                     batching_parameters=params, grpc_max_threads=3,
                     grpc_max_queued_requests=0) as server:
        stubs = Stubs(server)
        submitted = server.metrics.input_batch_size
        first = stubs.predict.Predict.future(predict_request(examples[:1]), timeout=60)
        wait_for(lambda: submitted.count() == 1, what="the first task in the queue")

        error = rpc_error(stubs.predict.Predict, predict_request(examples[:4]), timeout=60)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full")
        error = rpc_error(stubs.predict.Predict, predict_request(examples[:5]), timeout=60)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "Task size 5 is larger than maximum batch size 4")

        more = [stubs.predict.Predict.future(predict_request([examples[i]]), timeout=60)
                for i in (1, 2)]
        wait_for(lambda: submitted.count() == 3, what="three RPCs waiting in the batch")
        error = rpc_error(stubs.predict.Predict, predict_request(examples[3:4]), timeout=60)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        served = np.concatenate([tf.make_ndarray(f.result().outputs[UR])
                                 for f in [first] + more])
        np.testing.assert_allclose(served, _expected(reference, base, examples[:3]), rtol=1e-6)
        assert server.metrics.wrapped_run_count.value() == 1  # the three ran as one batch
        stubs.close()


def test_a_deadline_that_expires_in_the_queue_fails_only_that_request(base, examples,
                                                                     reference):
    """A batch waits 1.5 s for more tasks: a request with a 0.3 s deadline expires while it
    waits; the request that then joins the same batch gets its own rows, correct."""
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=1_500_000,
                                num_batch_threads=1)
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None,
                     batching_parameters=params) as server:
        stubs = Stubs(server)
        error = rpc_error(stubs.predict.Predict, predict_request(examples[:1]), timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        response = stubs.predict.Predict(predict_request(examples[1:3]), timeout=60)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[UR]),
                                   _expected(reference, base, examples[1:3]), rtol=1e-6)
        assert server.metrics.wrapped_run_count.value() == 1  # one batch held both tasks
        stubs.close()

