"""Server and client CPU time and context switches per answered gRPC request, side by side.

32 closed-loop batch-1 clients (`benchmarks.grpc_load`) against `python -m serving.model_server`
without and with batching (the serving benchmark's `--batching_parameters` default) and
against the echo floor, each in turn on the same export, for `--seconds`; the server's and the
clients' CPU (`/proc/PID/stat`) and the server's context switches (`/proc/PID/task/*/status`)
are read over the load's middle part, divided by the requests answered in it. The runs are
interleaved `--repeats` times (servers restarted) and reported per run and as medians, with the
ratios of QPS within each run.

`--before DIR` also runs the model server from another checkout of the project (e.g.
`git worktree add /tmp/before <commit>`), as `before-off` and `before-on`, interleaved with
this checkout's: a change's before and after on the same machine in one run.

    python -m benchmarks.serving_cpu [--seconds 8] [--repeats 3] [--clients 32]
        [--before DIR] [--json]

Linux only (`/proc`).
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import grpc_load, serving
from benchmarks.serving import DEFAULT_BATCHING, ServerProcess, ratio_interval
from common import cli

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all a process's threads so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total


def measure(server_pid: int, port: int, request_path: str, clients: int,
            seconds: float) -> dict:
    """Drives the server for `seconds` after the load's start-up and warm-up; CPU and switches
    over all but the first and last 0.5 s of that."""
    load = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_load", f"--target=127.0.0.1:{port}",
         f"--request={request_path}", f"--clients={clients}", f"--seconds={seconds}",
         "--warmup_seconds=1", "--announce"], stdout=subprocess.PIPE, text=True)
    first = load.stdout.readline().strip()  # the load generator imports TensorFlow's protos
    if first != grpc_load.ANNOUNCEMENT:     # first: seconds of start-up, not of load
        load.kill()
        raise RuntimeError(f"benchmarks.grpc_load did not start measuring: {first!r}")
    time.sleep(0.5)
    window = seconds - 1.0
    s0, c0, x0 = cpu_seconds(server_pid), cpu_seconds(load.pid), context_switches(server_pid)
    time.sleep(window)
    s1, c1, x1 = cpu_seconds(server_pid), cpu_seconds(load.pid), context_switches(server_pid)
    out, _ = load.communicate()
    if load.returncode != 0:
        raise RuntimeError(f"benchmarks.grpc_load exited with {load.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    answered = result["qps"] * window
    if answered <= 0:
        raise RuntimeError(f"no request was answered; errors: {result['errors'][:3]}")
    return {"qps": result["qps"], "p50_ms": result["p50_ms"],
            "server_cpu_us": 1e6 * (s1 - s0) / answered,
            "client_cpu_us": 1e6 * (c1 - c0) / answered,
            "server_switches": (x1 - x0) / answered, "errors": len(result["errors"])}


def _start(mode: str, base: str, work: str, before: str | None, echo_response: bytes):
    if mode == "echo":
        return serving._EchoServer(echo_response, work)
    which, batching = mode.rsplit("-", 1)
    return ServerProcess(base, DEFAULT_BATCHING if batching == "on" else None, work,
                         cwd=before if which == "before" else None)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.serving_cpu",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--before", default=None,
                   help="another checkout of the project whose model server also runs")
    args = p.parse_args(argv)
    if args.seconds < 2 or args.repeats < 1 or args.clients < 1:
        p.error("--seconds must be >= 2, --repeats and --clients >= 1")
    if args.before and not os.path.isdir(os.path.join(args.before, "serving", "model_server")):
        p.error(f"--before {args.before}: not a checkout of this project (no serving/model_server)")

    def run() -> dict:
        modes = (["before-off", "before-on"] if args.before else []) + [
            "after-off", "after-on", "echo"]
        work = tempfile.mkdtemp(prefix="lfm4ads-serving-cpu-")
        rows: dict[str, list[dict]] = {m: [] for m in modes}
        try:
            base, examples = serving._export(work)
            request_path = os.path.join(work, "request.pb")
            with open(request_path, "wb") as f:
                f.write(serving._grpc_request(examples, 1).SerializeToString())
            first = ServerProcess(base, None, work)
            try:
                echo_response = first.response(examples, 1)
            finally:
                first.stop()
            for _ in range(args.repeats):
                for mode in modes:
                    server = _start(mode, base, work, args.before, echo_response)
                    try:
                        rows[mode].append(measure(server.proc.pid, server.grpc_port,
                                                  request_path, args.clients, args.seconds))
                    finally:
                        server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        print(f"\nCPU per answered request, {args.clients} batch-1 gRPC clients, "
              f"{args.seconds} s per run, median of {args.repeats} run(s), on {machine}\n")
        print(f"{'server':14}{'QPS':>8}{'server CPU us':>14}{'client CPU us':>15}"
              f"{'switches':>10}{'p50 ms':>9}")
        medians = {}
        for mode, runs in rows.items():
            med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            medians[mode] = med
            print(f"{mode:14}{med['qps']:>8.0f}{med['server_cpu_us']:>14.0f}"
                  f"{med['client_cpu_us']:>15.0f}{med['server_switches']:>10.1f}"
                  f"{med['p50_ms']:>9.2f}")
        pairs = [("after-on", "after-off"), ("after-off", "echo")]
        if args.before:
            pairs += [("before-on", "before-off"), ("after-on", "before-on"),
                      ("after-off", "before-off"), ("after-on", "before-off")]
        ratios = {}
        print()
        for a, b in pairs:
            per_run = [x["qps"] / y["qps"] for x, y in zip(rows[a], rows[b], strict=True)]
            entry = {"per_run": per_run, "median": float(np.median(per_run))}
            if len(per_run) > 1:
                entry["interval95"] = ratio_interval(per_run)
            ratios[f"{a}/{b}"] = entry
            interval = (f", 95% [{entry['interval95'][0]:.2f}, {entry['interval95'][1]:.2f}]"
                        if "interval95" in entry else "")
            print(f"QPS {a}/{b}: {', '.join(f'{r:.2f}' for r in per_run)}{interval}")
        return {"machine": machine, "clients": args.clients, "repeats": args.repeats,
                "medians": medians, "runs": rows, "ratios": ratios}

    return cli.run(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
