"""`python -m serving.model_server` as a subprocess, configured by TF Serving's flags and text
files, answering gRPC (LFM4Ads and ScaNN models), REST and Prometheus, and stopping on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common import console, signatures
from serving.model_server import main
from tests.serving.conftest import MODEL, copy_version, free_ports, predict_request, wait_for

REPO = Path(__file__).resolve().parents[3]


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def cli_server(exported, scann_export, tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    config = _write(tmp_path / "models.config", f"""
        model_config_list {{
          config {{ name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow" }}
          config {{ name: "retrieval" base_path: "{scann_export[0]}" model_platform: "tensorflow" }}
        }}""")
    batching = _write(tmp_path / "batching.config", """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 1000 }
        num_batch_threads { value: 2 }""")
    monitoring = _write(tmp_path / "monitoring.config",
                        'prometheus_config { enable: true path: "/metrics" }')
    grpc_port, rest_port = free_ports(2)
    command = [sys.executable, "-m", "serving.model_server", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", f"--model_config_file={config}",
               "--enable_batching", f"--batching_parameters_file={batching}",
               f"--monitoring_config_file={monitoring}", "--file_system_poll_wait_seconds=0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    ready = f"Exporting HTTP/REST API at:localhost:{rest_port} ..."
    try:
        wait_for(lambda: any(ready in line for line in lines) or process.poll() is not None,
                 timeout=120, what="the server to start")
        assert process.poll() is None, "".join(lines)
        yield process, grpc_port, rest_port, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_cli_serves_grpc_rest_and_metrics(cli_server, exported, scann_export, examples,
                                          reference):
    process, grpc_port, rest_port, lines = cli_server
    assert any(f"Running gRPC ModelServer at 0.0.0.0:{grpc_port} ..." in line for line in lines)
    channel = grpc.insecure_channel(f"localhost:{grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    response = stub.Predict(predict_request(examples[:4]), timeout=60)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs[signatures.USER_REPRESENTATION]),
        reference(exported["a"], signatures.USER_REPRESENTATION, examples=examples[:4])[
            signatures.USER_REPRESENTATION], rtol=1e-6)

    # the ScaNN ops are registered by the server itself (this process never sends them)
    base, queries = scann_export
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "retrieval"
    request.inputs["queries"].CopyFrom(tf.make_tensor_proto(queries))
    response = stub.Predict(request, timeout=60)
    expected = reference(f"{base}/1", "serving_default", queries=queries)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), expected["scores"],
                               rtol=1e-6)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["ids"]), expected["ids"])
    channel.close()

    url = f"http://localhost:{rest_port}"
    with urllib.request.urlopen(f"{url}/v1/models/retrieval", timeout=30) as reply:
        assert json.load(reply)["model_version_status"][0]["state"] == "AVAILABLE"
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}} 1' in text
    assert ":tensorflow:serving:batching_session:wrapped_run_count{} " in text

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_cli_refuses_bad_flags(capsys):
    assert main(["--model_base_path=", "--model_config_file="]) == 255
    assert ("Failed to start server. Error: INVALID_ARGUMENT: Both server_options.model_base_path"
            " and server_options.model_config_file are empty!") in capsys.readouterr().err
    assert main(["--model_base_path=/nowhere", "--batching_parameters_file=/b.config"]) == 255
    assert ("batching_parameters_file is set without setting server_options.enable_batching "
            "to true.") in capsys.readouterr().err
    assert main(["--model_base_path=/nowhere", "--grpc_max_queued_requests=-1"]) == 255
    assert "grpc_max_queued_requests must be >= 0, got -1" in capsys.readouterr().err


def test_cli_flags_parse_as_tf_serving(capsys):
    from serving.model_server.config import parse_flags

    options = parse_flags(["--model_name=m", "--model_base_path=rel/dir", "--port=0",
                           "--rest_api_port=8501", "--enable_batching",
                           "--file_system_poll_wait_seconds=0.5"])
    assert options.port is None  # 0 disables a listener, as in tensorflow_model_server
    assert options.rest_api_port == 8501
    assert options.model_base_path == os.path.abspath("rel/dir")
    assert options.enable_batching is True
    assert options.file_system_poll_wait_seconds == 0.5
    assert parse_flags(["--enable_batching=false"]).enable_batching is False
    assert parse_flags([]).port == 8500 and parse_flags([]).rest_api_port is None
    # this server's own: the gRPC request queue (0 = refuse at once, as TF Serving)
    assert parse_flags([]).grpc_max_queued_requests == 256
    assert parse_flags(["--grpc_max_queued_requests=0"]).grpc_max_queued_requests == 0
    with pytest.raises(SystemExit):
        parse_flags(["--help"])
    assert "--grpc_max_queued_requests" in capsys.readouterr().out
    # TF Serving flags this server does not implement are reported, not fatal
    assert parse_flags(["--rest_api_num_threads=4", "--port=9000"]).port == 9000
    assert "unknown argument: --rest_api_num_threads=4" in capsys.readouterr().err


# TensorFlow's native (C++) log lines, "2026-01-01 00:00:00.000000: W tensorflow/...cc:38] ..."
# and absl's "W0101 00:00:00.000000  1234 file.cc:12] ...", and its Python logger's and
# warnings' lines. The server's own lines read "2026-01-01 00:00:00,000 INFO ...".
_TENSORFLOW_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
                              r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
                              r"|(INFO|WARNING):tensorflow:|TF-TRT|rendezvous|\w+Warning: ")


@pytest.mark.slow
def test_cli_prints_no_tensorflow_log_lines(exported, examples, tmp_path):
    """The server has the other CLIs' quiet console (`common.console`): started as a user's
    shell would (no TF_CPP_MIN_LOG_LEVEL, no --verbose), through a version load with its warmup
    records, a batch of concurrent requests and SIGTERM, its stderr holds its own lines only,
    none of TensorFlow's (TF-TRT, "Local rendezvous ... End of sequence", ...)."""
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    batching = _write(tmp_path / "batching.config", """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 5000 }""")
    grpc_port, rest_port = free_ports(2)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", console.ENV_VAR)}
    command = [sys.executable, "-m", "serving.model_server", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", f"--model_name={MODEL}",
               f"--model_base_path={base}", "--enable_batching",
               f"--batching_parameters_file={batching}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Exporting HTTP/REST API" in line for line in lines)
                 or process.poll() is not None, timeout=120, what="the server to start")
        assert process.poll() is None, "".join(lines)
        channel = grpc.insecure_channel(f"localhost:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [stub.Predict.future(predict_request(examples[i:i + 4]), timeout=60)
                 for i in range(0, 32, 4)]
        assert all(call.result().outputs for call in calls)
        channel.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    reader.join(timeout=30)
    assert any(f"Running gRPC ModelServer at 0.0.0.0:{grpc_port}" in line for line in lines)
    assert [line for line in lines if _TENSORFLOW_LINE.search(line)] == []
