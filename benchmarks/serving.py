"""Latency and throughput of `user_representation` served over gRPC and REST, and store updates.

One run, side by side on the same exported model and the same serialized examples:

* `inprocess`: the SavedModel's signature called in this process (the floor);
* `grpc` / `rest`: `python -m serving.server` in a subprocess (without, then with server-side
  batching), driven by 1, 8 and 32 client threads here, each sending requests of batch 1, 32
  and 256 back to back for `--seconds`;
* store: `update_cross` events/s on SQLite and on Redis (a `redis-server` started here when
  the binary exists).

The latency figures are per request (p50, p99 over all requests of a configuration); QPS is
requests per second over all clients. Targets of the issue: gRPC adds at most 1.5 ms median
over the in-process call at batch 1; with batching, 32 concurrent batch-1 clients get at least
3x the throughput they get without.

    python -m benchmarks.serving [--seconds 3] [--clients 1 8 32] [--batches 1 32 256] [--json]

With `--json` the last line of stdout is one JSON object (`grpc_p50_ms_b1`,
`inprocess_p50_ms_b1`, `qps_batching_c32`, `qps_nobatching_c32`, and every row).
"""

from trainer import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import argparse
import base64
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pipelines.sources import synthetic
from serving.store import measure_update_throughput
from trainer import features as F
from trainer import input as data_input
from trainer import signatures as S
from trainer.config import ModelConfig
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

MODEL = "lfm4ads"
SIGNATURE = S.USER_REPRESENTATION


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export(work: str) -> tuple[str, list[bytes]]:
    data = os.path.join(work, "data")
    synthetic.generate(data, examples=2000, seed=3, days=2, progress=False)
    files = data_input.list_files(data)
    examples = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP").take(512)]
    model = LFM4AdsModel(ModelConfig())  # the default architecture
    model(F.parse_examples(tf.constant(examples[:8])))
    base = os.path.join(work, "export")
    export_saved_model(model, base, warmup_examples=examples[:4], version=1)
    return base, examples


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    a = np.asarray(latencies) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _inprocess(base: str, examples: list[bytes], batch: int, seconds: float) -> dict:
    fn = tf.saved_model.load(os.path.join(base, "1")).signatures[SIGNATURE]
    x = tf.constant(examples[:batch])
    for _ in range(10):
        fn(examples=x)
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        fn(examples=x)[SIGNATURE].numpy()
        latencies.append(time.perf_counter() - started)
    p50, p99 = _percentiles(latencies)
    return {"p50_ms": p50, "p99_ms": p99, "qps": len(latencies) / seconds, "errors": 0}


class _Server:
    """`python -m serving.server` in a subprocess on free ports."""

    def __init__(self, base: str, batching: bool, work: str):
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        args = [sys.executable, "-m", "serving.server", f"--model_name={MODEL}",
                f"--model_base_path={base}", f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}", "--grpc_max_threads=128"]
        if batching:
            path = os.path.join(work, "batching.txt")
            with open(path, "w") as f:
                f.write("max_batch_size { value: 512 }\n"
                        "batch_timeout_micros { value: 1000 }\n"
                        "max_enqueued_batches { value: 1000 }\n"
                        "num_batch_threads { value: 2 }\n")
            args += ["--enable_batching", f"--batching_parameters_file={path}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        deadline = time.monotonic() + 120
        while True:  # the port opens before the model is loaded
            try:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = MODEL
                request.model_spec.signature_name = SIGNATURE
                request.inputs[S.INPUT_KEY].CopyFrom(tf.make_tensor_proto([b""], tf.string))
                stub.Predict(request, timeout=10)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                    continue
            break
        channel.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _grpc_worker(port: int, request, end: float, out: list, errors: list) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    latencies = []
    while time.perf_counter() < end:
        started = time.perf_counter()
        try:
            stub.Predict(request, timeout=30)
            latencies.append(time.perf_counter() - started)
        except grpc.RpcError as e:
            errors.append(e.code().name)
    out.extend(latencies)
    channel.close()


def _rest_worker(port: int, body: bytes, end: float, out: list, errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    path = f"/v1/models/{MODEL}:predict"
    while time.perf_counter() < end:
        started = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors.append(str(response.status))
    out.extend(latencies)
    conn.close()


def _drive(server: _Server, transport: str, examples: list[bytes], batch: int, clients: int,
           seconds: float) -> dict:
    if transport == "grpc":
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = SIGNATURE
        request.inputs[S.INPUT_KEY].CopyFrom(tf.make_tensor_proto(examples[:batch], tf.string))
        target, port, payload = _grpc_worker, server.grpc_port, request
    else:
        body = json.dumps({"signature_name": SIGNATURE, "instances": [
            {S.INPUT_KEY: {"b64": base64.b64encode(e).decode()}} for e in examples[:batch]]})
        target, port, payload = _rest_worker, server.rest_port, body.encode()
    warm = time.perf_counter() + 0.3
    target(port, payload, warm, [], [])
    latencies: list[float] = []
    errors: list[str] = []
    end = time.perf_counter() + seconds
    threads = [threading.Thread(target=target, args=(port, payload, end, latencies, errors))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p50, p99 = _percentiles(latencies) if latencies else (float("nan"), float("nan"))
    return {"p50_ms": p50, "p99_ms": p99, "qps": len(latencies) / seconds,
            "errors": len(errors)}


def _store_throughput(work: str) -> dict:
    out = {"sqlite": measure_update_throughput(f"sqlite:///{os.path.join(work, 'store.db')}")}
    binary = shutil.which("redis-server")
    if binary is None:
        out["redis"] = None
        return out
    port = _free_port()
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
        out["redis"] = measure_update_throughput(f"redis://127.0.0.1:{port}/0")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--transports", nargs="+", default=["grpc", "rest"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="lfm4ads-serving-bench-")
    rows = []
    try:
        base, examples = _export(work)
        for batch in args.batches:
            rows.append({"transport": "inprocess", "batching": False, "batch": batch,
                         "clients": 1, **_inprocess(base, examples, batch, args.seconds)})
        for batching in (False, True):
            server = _Server(base, batching, work)
            try:
                for transport in args.transports:
                    for batch in args.batches:
                        for clients in args.clients:
                            rows.append({"transport": transport, "batching": batching,
                                         "batch": batch, "clients": clients,
                                         **_drive(server, transport, examples, batch, clients,
                                                  args.seconds)})
            finally:
                server.stop()
        store = _store_throughput(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def find(transport, batch, clients, batching=False):
        for r in rows:
            if (r["transport"], r["batch"], r["clients"], r["batching"]) == (
                    transport, batch, clients, batching):
                return r
        return None

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"\nuser_representation serving benchmark on {machine}, {args.seconds} s per row\n")
    print(f"{'transport':10}{'batching':>9}{'batch':>7}{'clients':>8}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'QPS':>9}{'errors':>8}")
    for r in rows:
        print(f"{r['transport']:10}{str(r['batching']):>9}{r['batch']:>7}{r['clients']:>8}"
              f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['qps']:>9.1f}{r['errors']:>8}")
    summary = {
        "machine": machine,
        "inprocess_p50_ms_b1": find("inprocess", 1, 1)["p50_ms"],
        "grpc_p50_ms_b1": (find("grpc", 1, 1) or {}).get("p50_ms"),
        "rest_p50_ms_b1": (find("rest", 1, 1) or {}).get("p50_ms"),
        "qps_nobatching_c32": (find("grpc", 1, 32) or {}).get("qps"),
        "qps_batching_c32": (find("grpc", 1, 32, True) or {}).get("qps"),
        "store_update_events_per_s": store,
        "rows": rows,
    }
    if summary["grpc_p50_ms_b1"] is not None:
        summary["grpc_overhead_p50_ms_b1"] = (summary["grpc_p50_ms_b1"]
                                              - summary["inprocess_p50_ms_b1"])
    if summary["qps_batching_c32"] and summary["qps_nobatching_c32"]:
        summary["batching_speedup_c32"] = (summary["qps_batching_c32"]
                                           / summary["qps_nobatching_c32"])
    print()
    for key in ("inprocess_p50_ms_b1", "grpc_p50_ms_b1", "grpc_overhead_p50_ms_b1",
                "qps_nobatching_c32", "qps_batching_c32", "batching_speedup_c32"):
        if summary.get(key) is not None:
            print(f"{key:28}{summary[key]:10.2f}")
    print(f"{'store update_cross events/s':28}{json.dumps(store)}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
