"""`benchmarks.grpc_load`, the gRPC load generator of the serving benchmark: it counts the
answers it gets, and a failing call is an error named by its status, not a latency."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from benchmarks import grpc_load
from serving.model_server import ModelServer
from tests.serving.conftest import MODEL, copy_version, free_ports, predict_request


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("load") / MODEL)
    copy_version(exported["a"], base, 1)
    with ModelServer(model_name=MODEL, model_base_path=base, port=0,
                     rest_api_port=None) as server:
        yield server


def test_concurrent_clients_get_answers(server, examples):
    result = grpc_load.drive(server.grpc_target, predict_request(examples[:2]), clients=4,
                             seconds=0.5, warmup_seconds=0.1)
    assert result["errors"] == []
    assert result["requests"] > 4
    assert result["qps"] == result["requests"] / 0.5
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_each_client_sends_a_fixed_number_of_requests(server, examples):
    result = grpc_load.drive(server.grpc_target, predict_request(examples[:1]), clients=3,
                             seconds=0.01, warmup_seconds=0.1, requests_per_client=4)
    assert result["errors"] == []
    assert result["requests"] == 12  # not cut by `seconds`
    assert result["qps"] == result["requests"] / result["seconds"]


def test_failed_calls_are_counted_as_errors(server, examples):
    bad = predict_request(examples[:1])
    bad.model_spec.name = "no_such_model"
    result = grpc_load.drive(server.grpc_target, bad, clients=2, seconds=0.3,
                             warmup_seconds=0)
    assert result["requests"] == 0
    assert result["errors"] and set(result["errors"]) == {"NOT_FOUND"}


@pytest.mark.slow
def test_cli_prints_one_json_line(server, examples, tmp_path):
    path = tmp_path / "request.pb"
    path.write_bytes(predict_request(examples[:1]).SerializeToString())
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.grpc_load", f"--target={server.grpc_target}",
         f"--request={path}", "--clients=2", "--seconds=0.3"],
        capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] > 0 and result["errors"] == []


def test_announce_marks_the_start_of_the_measured_part(server, examples, tmp_path):
    path = tmp_path / "request.pb"
    path.write_bytes(predict_request(examples[:1]).SerializeToString())
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.grpc_load", f"--target={server.grpc_target}",
         f"--request={path}", "--clients=2", "--seconds=0.3", "--announce"],
        capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == grpc_load.ANNOUNCEMENT
    assert json.loads(lines[-1])["requests"] > 0


@pytest.mark.slow
def test_echo_server_answers_with_the_canned_response(server, examples, tmp_path):
    """The transport floor answers every Predict with the model server's own bytes."""
    request = predict_request(examples[:1])
    with grpc.insecure_channel(server.grpc_target) as channel:
        real = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=60)
    path = tmp_path / "response.pb"
    path.write_bytes(real.SerializeToString())
    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_load", "--serve_echo",
                             f"--port={port}", f"--response={path}"])
    try:
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            echoed = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=60)
        assert echoed == real
        result = grpc_load.drive(target, request, clients=4, seconds=0.3, warmup_seconds=0)
        assert result["requests"] > 0 and result["errors"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
