"""Latency and throughput of `user_representation` served over gRPC and REST, and store updates.

One run, side by side on the same exported model and the same serialized examples:

* `inprocess`: the SavedModel's signature called in this process (the floor);
* `grpc` / `rest`: `python -m serving.model_server` in a subprocess (without, then with server-side
  batching, `--batching_parameters`), driven by 1, 8 and 32 closed-loop clients, each sending
  requests of batch 1, 32 and 256 back to back for `--seconds`: gRPC clients are asyncio
  coroutines in a `benchmarks.grpc_load` subprocess, REST clients threads here (batch sizes
  over the batching server's `max_batch_size` are not sent to it);
* `grpc-echo`: the same gRPC clients against `benchmarks.grpc_load --serve_echo`, which answers
  with the model server's own response bytes and runs nothing: the transport floor, the most
  a Python gRPC front end could give those clients on this machine;
* store: `update_cross` events/s on SQLite and on Redis (a `redis-server` started here when
  the binary exists).

The latency figures are per request (p50, p99 over all requests of a configuration); QPS is
requests per second over all clients. Targets: gRPC adds at most 1.5 ms median over the
in-process call at batch 1; with batching, 32 concurrent batch-1 clients get at least 2.5x the
throughput they get without (the echo row bounds what is measurable: `batching_speedup_ceiling`).

    python -m benchmarks.serving [--seconds 3] [--clients 1 8 32] [--batches 1 32 256]
        [--repeats 1] [--batching_parameters TEXT] [--json]

`--queueing` runs instead the gRPC request queue comparison: `python -m serving.model_server`
with its default flags (no batching, `--grpc_max_threads` = 4 x CPUs), once with
`--grpc_max_queued_requests=0` (refuse at once beyond the threads, as TF Serving) and once with
the default queue, each driven by every `--loads` entry `CxN` (C clients starting together,
each sending N batch-1 requests back to back): failed requests by status, and the p50/p99
latency of the answered ones.

    python -m benchmarks.serving --queueing [--loads 16x50 64x20] [--json]

With `--json` the last line of stdout is one JSON object (`grpc_p50_ms_b1`,
`inprocess_p50_ms_b1`, `qps_batching_c32`, `qps_nobatching_c32`, and every row). With
`--repeats N` every row runs N times (servers restarted each time) and the figures are medians;
the batching speedup is the median of the per-run ratios.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import argparse
import base64
import functools
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

from benchmarks.store_throughput import measure_update_throughput, redis_server
from common import cli, features, signatures
from pipelines.sources import synthetic
from serving.model_server import BatchingParameters
from serving.model_server.errors import ServingError
from trainer import data_input
from trainer.config import ModelConfig
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

MODEL = "lfm4ads"
SIGNATURE = signatures.USER_REPRESENTATION
# Tuned for the 32 closed-loop batch-1 clients of the target row: a batch is cut when all 32
# are waiting (a full batch runs at once), else after 20 ms; one batch thread, so the next
# batch fills while one runs. The cost is latency at low concurrency: one client waits the
# whole timeout (see docs/BENCHMARKS.md for other settings).
DEFAULT_BATCHING = ("max_batch_size { value: 32 }\n"
                    "batch_timeout_micros { value: 20000 }\n"
                    "max_enqueued_batches { value: 1000 }\n"
                    "num_batch_threads { value: 1 }\n")


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
    model(features.parse_examples(tf.constant(examples[:8])))
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


class ServerProcess:
    """`python -m serving.model_server` in a subprocess on free ports."""

    def __init__(self, base: str, batching: str | None, work: str,
                 flags: tuple[str, ...] = ("--grpc_max_threads=128",),
                 model_config_file: str | None = None, cwd: str | None = None):
        """Serves `base` as MODEL, or every model of `model_config_file` (MODEL among them);
        `cwd`: the checkout whose `serving.model_server` runs (default: this one)."""
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        models = ([f"--model_config_file={model_config_file}"] if model_config_file else
                  [f"--model_name={MODEL}", f"--model_base_path={base}"])
        args = [sys.executable, "-m", "serving.model_server", *models,
                f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", *flags]
        if batching is not None:
            path = os.path.join(work, "batching.txt")
            with open(path, "w") as f:
                f.write(batching)
            args += ["--enable_batching", f"--batching_parameters_file={path}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=cwd)
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        deadline = time.monotonic() + 120
        while True:  # the port opens before the model is loaded
            try:
                stub.Predict(_grpc_request([b""], 1), timeout=10)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                    continue
            break
        channel.close()

    def response(self, examples: list[bytes], batch: int) -> bytes:
        """The serialized PredictResponse this server gives for `batch` rows."""
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            return stub.Predict(_grpc_request(examples, batch), timeout=60).SerializeToString()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class _EchoServer:
    """`benchmarks.grpc_load --serve_echo`: answers with canned responses, runs nothing."""

    def __init__(self, response: bytes, work: str):
        self.grpc_port = _free_port()
        path = os.path.join(work, "echo_response.pb")
        with open(path, "wb") as f:
            f.write(response)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.grpc_load", "--serve_echo",
             f"--port={self.grpc_port}", f"--response={path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


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


def _grpc_request(examples: list[bytes], batch: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = SIGNATURE
    request.inputs[signatures.INPUT_KEY].CopyFrom(tf.make_tensor_proto(examples[:batch], tf.string))
    return request


def _grpc_load(server: ServerProcess, examples: list[bytes], batch: int, clients: int,
               work: str, *flags: str) -> dict:
    """`benchmarks.grpc_load` in a subprocess (asyncio clients, off this process's GIL): its
    JSON result."""
    path = os.path.join(work, f"request_b{batch}.pb")
    with open(path, "wb") as f:
        f.write(_grpc_request(examples, batch).SerializeToString())
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.grpc_load", f"--target=127.0.0.1:{server.grpc_port}",
         f"--request={path}", f"--clients={clients}", *flags],
        capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _drive_grpc(server: ServerProcess, examples: list[bytes], batch: int, clients: int,
                seconds: float, work: str) -> dict:
    result = _grpc_load(server, examples, batch, clients, work, f"--seconds={seconds}")
    return {"p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "qps": result["qps"],
            "errors": len(result["errors"])}


def _drive_rest(server: ServerProcess, examples: list[bytes], batch: int, clients: int,
                seconds: float) -> dict:
    """REST clients: `clients` threads here, one keep-alive connection each."""
    body = json.dumps({"signature_name": SIGNATURE, "instances": [
        {signatures.INPUT_KEY: {"b64": base64.b64encode(e).decode()}} for e in examples[:batch]]})
    payload = body.encode()
    warm = time.perf_counter() + 0.3
    _rest_worker(server.rest_port, payload, warm, [], [])
    latencies: list[float] = []
    errors: list[str] = []
    end = time.perf_counter() + seconds
    threads = [threading.Thread(target=_rest_worker,
                                args=(server.rest_port, payload, end, latencies, errors))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p50, p99 = _percentiles(latencies) if latencies else (float("nan"), float("nan"))
    return {"p50_ms": p50, "p99_ms": p99, "qps": len(latencies) / seconds,
            "errors": len(errors)}


def _median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per row (same position in every repeat): the median of each figure, errors summed."""
    rows = []
    for same in zip(*runs, strict=True):
        row = dict(same[0])
        for key in ("p50_ms", "p99_ms", "qps"):
            row[key] = float(np.median([r[key] for r in same]))
        row["errors"] = sum(r["errors"] for r in same)
        row["repeats"] = len(same)
        rows.append(row)
    return rows


def _find(rows: list[dict], transport: str, batch: int, clients: int,
          batching: bool = False) -> dict | None:
    """The row of that configuration, or None."""
    for r in rows:
        if (r["transport"], r["batch"], r["clients"], r["batching"]) == (
                transport, batch, clients, batching):
            return r
    return None


def _per_run(runs: list[list[dict]], figure) -> list[float]:
    """`figure(find)` within each run (`find(transport, batch, clients, batching=False)` gives
    that run's row); runs missing a row the figure needs are left out."""
    out = []
    for rows in runs:
        def find_in(*key, rows=rows):
            row = _find(rows, *key)
            if row is None:
                raise KeyError(key)
            return row
        try:
            out.append(float(figure(find_in)))
        except KeyError:
            continue
    return out


def ratio_interval(ratios: list[float]) -> list[float]:
    """95% interval of the geometric mean of per-run ratios (Student t on their logarithms,
    the runs taken as independent draws of the machine's state)."""
    from scipy import stats  # noqa: PLC0415  (only for this figure)

    logs = np.log(np.asarray(ratios, dtype=float))
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]


def _store_throughput(work: str) -> dict:
    out = {"sqlite": measure_update_throughput(f"sqlite:///{os.path.join(work, 'store.db')}")}
    with redis_server() as url:
        out["redis"] = measure_update_throughput(url) if url else None
    return out


def _load(text: str) -> tuple[int, int]:
    """`16x50` -> (16 clients, 50 requests each)."""
    try:
        clients, requests = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CLIENTSxREQUESTS, e.g. 16x50, got {text!r}") from None
    if clients < 1 or requests < 1:
        raise argparse.ArgumentTypeError(f"clients and requests must be >= 1, got {text!r}")
    return clients, requests


def _queueing(loads: list[tuple[int, int]]) -> dict:
    """The `--queueing` comparison (module doc): one server per queue setting, same export."""
    from serving.model_server.config import DEFAULT_GRPC_MAX_QUEUED_REQUESTS, ServerOptions

    threads = ServerOptions().grpc_max_threads
    queues = (0, DEFAULT_GRPC_MAX_QUEUED_REQUESTS)
    work = tempfile.mkdtemp(prefix="lfm4ads-queueing-bench-")
    rows = []
    try:
        base, examples = _export(work)
        for queue in queues:
            server = ServerProcess(base, None, work, (f"--grpc_max_queued_requests={queue}",))
            try:
                for clients, requests in loads:
                    result = _grpc_load(server, examples, 1, clients, work,
                                        f"--requests_per_client={requests}")
                    failed: dict[str, int] = {}
                    for code in result["errors"]:
                        failed[code] = failed.get(code, 0) + 1
                    rows.append({"clients": clients, "requests_per_client": requests,
                                 "queue": queue, "answered": result["requests"],
                                 "failed": failed, "p50_ms": result["p50_ms"],
                                 "p99_ms": result["p99_ms"], "seconds": result["seconds"]})
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"\ngRPC request queue: {SIGNATURE} Predict, batch 1, no batching, "
          f"--grpc_max_threads={threads} (default), on {machine}\n")
    print(f"{'clients x requests':>19}{'queue':>7}{'answered':>10}{'failed':>8}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'wall s':>8}  failures")
    for r in sorted(rows, key=lambda r: (-r["requests_per_client"], r["queue"])):
        load = f"{r['clients']} x {r['requests_per_client']}"
        failed = sum(r["failed"].values())
        detail = ", ".join(f"{n} {code}" for code, n in sorted(r["failed"].items()))
        print(f"{load:>19}{r['queue']:>7}{r['answered']:>10}{failed:>8}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['seconds']:>8.2f}  {detail or '-'}")
    return {"machine": machine, "grpc_max_threads": threads, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.serving",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--transports", nargs="+", default=["grpc", "rest"])
    p.add_argument("--repeats", type=int, default=1,
                   help="run every row this many times (servers restarted); report medians")
    p.add_argument("--batching_parameters", default=DEFAULT_BATCHING,
                   help="the batching_parameters_file text of the batching server")
    p.add_argument("--queueing", action="store_true",
                   help="instead: the gRPC request queue comparison (queue 0 vs the default)")
    p.add_argument("--loads", type=_load, nargs="+", default=[(16, 50), (64, 20)],
                   help="with --queueing: CLIENTSxREQUESTS per client, e.g. 16x50 64x20")
    args = p.parse_args(argv)
    if args.queueing:
        return cli.run(lambda: _queueing(args.loads), args)
    if args.seconds <= 0 or args.repeats < 1 or min(args.clients + args.batches) < 1:
        p.error("--seconds must be > 0, --repeats, --clients and --batches >= 1")
    batching_text = args.batching_parameters
    # refuse a bad one before any run; requests over its max_batch_size are not driven there
    try:
        max_batch = BatchingParameters.from_text(batching_text).max_batch_size
    except ServingError as e:
        cli.fail(f"--batching_parameters: {e.message}")

    def measure() -> dict:
        work = tempfile.mkdtemp(prefix="lfm4ads-serving-bench-")
        runs: list[list[dict]] = []  # one list of rows per repeat
        try:
            base, examples = _export(work)
            for _ in range(args.repeats):
                rows = []
                for batch in args.batches:
                    rows.append({"transport": "inprocess", "batching": False, "batch": batch,
                                 "clients": 1, **_inprocess(base, examples, batch, args.seconds)})
                responses = {}
                for batching in (False, True):
                    server = ServerProcess(base, batching_text if batching else None, work)
                    try:
                        if not batching and "grpc" in args.transports:
                            responses = {b: server.response(examples, b) for b in args.batches}
                        for transport in args.transports:
                            for batch in args.batches:
                                if batching and batch > max_batch:
                                    continue  # INVALID_ARGUMENT by design: no row
                                for clients in args.clients:
                                    if transport == "grpc":
                                        row = _drive_grpc(server, examples, batch, clients,
                                                          args.seconds, work)
                                    else:
                                        row = _drive_rest(server, examples, batch, clients,
                                                          args.seconds)
                                    rows.append({"transport": transport, "batching": batching,
                                                 "batch": batch, "clients": clients, **row})
                    finally:
                        server.stop()
                for batch, response in responses.items():  # the transport floor
                    echo = _EchoServer(response, work)
                    try:
                        for clients in args.clients:
                            rows.append({"transport": "grpc-echo", "batching": False,
                                         "batch": batch, "clients": clients,
                                         **_drive_grpc(echo, examples, batch, clients,
                                                       args.seconds, work)})
                    finally:
                        echo.stop()
                runs.append(rows)
            store = _store_throughput(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows = _median_rows(runs)
        find = functools.partial(_find, rows)

        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        print(f"\nuser_representation serving benchmark on {machine}, {args.seconds} s per row, "
              f"median of {args.repeats} run(s)\n")
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
            "repeats": args.repeats,
            "rows": rows,
        }
        overheads = _per_run(runs, lambda find_in: find_in("grpc", 1, 1)["p50_ms"]
                             - find_in("inprocess", 1, 1)["p50_ms"])
        if overheads:  # gRPC p50 minus in-process p50 at batch 1 within each run, then the median
            summary["grpc_overhead_p50_ms_b1"] = float(np.median(overheads))
        speedups = _per_run(runs, lambda find_in: find_in("grpc", 1, 32, True)["qps"]
                            / find_in("grpc", 1, 32)["qps"])
        if speedups:  # the ratio within each run, then the median: both sides share the machine
            summary["batching_speedup_c32"] = float(np.median(speedups))
            summary["batching_speedups_c32"] = speedups
            if len(speedups) > 1:
                summary["batching_speedup_c32_interval95"] = ratio_interval(speedups)
        floor = find("grpc-echo", 1, 32)
        if floor is not None:
            summary["qps_floor_c32"] = floor["qps"]
            ceilings = _per_run(runs, lambda find_in: find_in("grpc-echo", 1, 32)["qps"]
                                / find_in("grpc", 1, 32)["qps"])
            # no server that answers these clients can beat the echo server: this bounds the
            # batching speedup measurable here, whatever the batching does
            summary["batching_speedup_ceiling_c32"] = float(np.median(ceilings))
        print()
        for key in ("inprocess_p50_ms_b1", "grpc_p50_ms_b1", "grpc_overhead_p50_ms_b1",
                    "qps_nobatching_c32", "qps_batching_c32", "batching_speedup_c32",
                    "qps_floor_c32", "batching_speedup_ceiling_c32"):
            if summary.get(key) is not None:
                print(f"{key:28}{summary[key]:10.2f}")
        if "batching_speedup_c32_interval95" in summary:
            low, high = summary["batching_speedup_c32_interval95"]
            print(f"{'batching speedup 95% interval':28}{low:10.2f} to {high:.2f} "
                  f"(geometric mean of {len(speedups)} runs' ratios)")
        print(f"{'store update_cross events/s':28}{json.dumps(store)}")
        return summary

    return cli.run(measure, args)


if __name__ == "__main__":
    raise SystemExit(main())
