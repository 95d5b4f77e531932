"""Latency of the whole online loop of Fig. 4 with a downstream model served: per request and
per step, against the steps measured alone.

    python -m benchmarks.online_loop [--seconds 5] [--callers 1 32] [--cr_domains ad|all]
                                     [--calls 3 1] [--json]

Set-up: 20k synthetic examples; the upstream model (the default architecture) and a downstream
ranker in `lfm4ads` mode, both with untrained weights (the cost does not depend on them), served
together by `python -m serving.model_server --model_config_file` in a subprocess; the store on
SQLite and on Redis (a `redis-server` started here when the binary exists), first filled by
replaying the data's first 10k examples through the loop.

C closed-loop callers (threads; one store connection each, the gRPC channels shared) each send
one request (batch 1) after another for `--seconds`, the data's other examples moved a day past
the data, in time order:

* `loop`: `OnlineLoop.process`: the request's latency, and each step's time inside it
  (`store_read`: UR, IR, CR(u), CR(i); `downstream_predict`: the ranker with those as features;
  `upstream_infer`: the upstream, either in one call of its `representations` signature (UR,
  IR, CR(u,i) and the ad prediction in one forward pass; `calls` 1, the loop's default) or
  in the three representation signatures' calls (`calls` 3, the loop before that signature,
  and still its way with an upstream exported before it); `store_write`: the new UR, IR and the
  EMA update of CR(u), CR(i), which only the requests `--cr_domains` selects make: ad requests
  by default, paper Sec. 4.3.1, or all of them);
* each step alone, the same way, on inputs prepared beforehand (the writes with fresh
  timestamps, so none is late).

The loop's overhead is its p50 minus the sum of the steps' p50s alone. `--calls 3 1` measures
both ways at each backend and concurrency, one after the other on the same server. With
`--json` the last line is one JSON object with every row.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import json
import os
import platform
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2

from benchmarks.serving import MODEL, ServerProcess
from benchmarks.store_throughput import redis_server
from common import cli, features, signatures
from common.downstream_requests import example_with_representations
from common.representations import cr_folding
from pipelines.sources import synthetic
from serving.client import EmbeddingClient, ServingClientError, batches
from serving.online import OnlineLoop
from serving.store import CR_ITEM, CR_USER, IR, UR, open_store
from trainer import data_input
from trainer.config import ModelConfig
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream.export import export_ranker
from trainer.downstream.ranker import FIELDS, DownstreamRanker
from trainer.downstream.train import make_preprocessor
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

RANKER = "ranker"
HALF_LIFE = 86_400.0
STEPS = ("store_read", "downstream_predict", "upstream_infer", "store_write")


def _timestamp(serialized: bytes) -> int:
    return int(example_pb2.Example.FromString(serialized)
               .features.feature[features.TIMESTAMP].int64_list.value[0])


def _shifted(serialized: bytes, timestamp: int) -> bytes:
    example = example_pb2.Example.FromString(serialized)
    example.features.feature[features.TIMESTAMP].int64_list.value[:] = [timestamp]
    return example.SerializeToString()


def prepare(work: str) -> tuple[str, list[bytes]]:
    """Data, the two exports and their model config file; returns (config path, records in
    time order)."""
    data = os.path.join(work, "data")
    synthetic.generate(data, examples=20_000, seed=3, days=4, progress=False)
    files = data_input.list_files(data)
    records = [r.numpy() for r in data_input.records_in_window(files)]
    records = [records[i] for i in np.argsort([_timestamp(r) for r in records], kind="stable")]
    upstream = LFM4AdsModel(ModelConfig())  # the default architecture, untrained
    outputs = upstream(features.parse_examples(tf.constant(records[:8])))
    export_saved_model(upstream, os.path.join(work, MODEL), warmup_examples=records[:4],
                       version=1)
    dims = {signatures.UR_FEATURE: outputs[signatures.USER_REPRESENTATION].shape[-1],
            signatures.IR_FEATURE: outputs[signatures.ITEM_REPRESENTATION].shape[-1],
            signatures.CR_USER_FEATURE: outputs[signatures.CROSS_REPRESENTATION].shape[-1],
            signatures.CR_ITEM_FEATURE: outputs[signatures.CROSS_REPRESENTATION].shape[-1]}
    rows = ranker_data.read_rows(files)
    ranker = DownstreamRanker(downstream_config.DownstreamConfig(mode=downstream_config.LFM4ADS),
                              make_preprocessor(rows), dims,
                              label_prior=0.04)
    zeros = {name: np.zeros(dim, np.float32) for name, dim in dims.items()}
    warmup = [example_with_representations(
        {name: rows[name][r] for name in FIELDS},
        {**zeros, **{signatures.found_feature(name): 0 for name in dims}}) for r in range(4)]
    export_ranker(ranker, os.path.join(work, RANKER), warmup, version=1)
    path = os.path.join(work, "models.config")
    with open(path, "w") as f:
        f.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{name}" base_path: "{os.path.join(work, name)}" '
            'model_platform: "tensorflow" }\n' for name in (MODEL, RANKER)) + "}\n")
    return path, records


def _wait_for(client: EmbeddingClient) -> None:
    """Until the client's model is loaded (the second model may still be loading when the
    server answers for the first): an empty example is refused as INVALID_ARGUMENT then."""
    deadline = time.monotonic() + 120
    while True:
        try:
            client.predict([b""])
            return
        except ServingClientError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _drive(callers: int, seconds: float, make_worker) -> dict:
    """`callers` threads, each calling its `make_worker(i)()` back to back for `seconds`; the
    worker returns the seconds to record (a float, or a dict of step -> seconds)."""
    workers = [make_worker(i) for i in range(callers)]
    results: list[list] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)
    end = [0.0]

    def run(i):
        start.wait()
        while time.perf_counter() < end[0]:
            results[i].append(workers[i]())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    end[0] = time.perf_counter() + seconds
    start.wait()
    for t in threads:
        t.join()
    return [r for rs in results for r in rs]


def _ms(values) -> dict:
    a = np.asarray(values, np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "n": int(a.size)}


def measure(url: str, target: str, records: list[bytes], callers: int, seconds: float,
            cr_domains: str = cr_folding.DEFAULT, calls: int = 1) -> dict:
    """One backend at one concurrency: the loop, then each step alone (the CR fold alone only
    for the requests `cr_domains` selects, as in the loop); the upstream asked in `calls` (1
    or 3) calls per request (module doc)."""
    one_call = {1: True, 3: False}[calls]
    fill, rest = records[:10_000], records[10_000:]
    t0 = max(_timestamp(r) for r in records) + 86_400
    with EmbeddingClient(target, MODEL, timeout=30) as client, \
            EmbeddingClient(target, RANKER, timeout=30) as ranker:
        _wait_for(ranker)
        store = open_store(url, half_life_seconds=HALF_LIFE)
        for table in (UR, IR, CR_USER, CR_ITEM):
            store.clear(table)
        filler = OnlineLoop(client, store, cr_domains=cr_domains)
        for batch in batches(fill, 64):
            filler.process(batch)
        store.close()
        # Requests: the rest of the data a day later, in time order, dealt round-robin.
        requests = [_shifted(r, t0 + i) for i, r in enumerate(rest)]
        stores = []

        def loop_worker(i):
            store = open_store(url, half_life_seconds=HALF_LIFE)
            stores.append(store)
            loop, mine, k = (OnlineLoop(client, store, ranker=ranker, cr_domains=cr_domains,
                                        one_call=one_call), requests[i::callers], [0])

            def one():
                example = mine[k[0] % len(mine)]
                k[0] += 1
                started = time.perf_counter()
                out = loop.process([example])
                return {"total": time.perf_counter() - started, **out.seconds}
            return one

        loop_rows = _drive(callers, seconds, loop_worker)
        # Inputs of the steps alone, prepared once (untimed).
        prepared = requests[:256]
        store = open_store(url, half_life_seconds=HALF_LIFE)
        stores.append(store)
        helper = OnlineLoop(client, store, ranker=ranker, cr_domains=cr_domains)
        parsed = [example_pb2.Example.FromString(r).features.feature for r in prepared]
        ids = [(f[features.USER_ID].bytes_list.value[0], f[features.ITEM_ID].bytes_list.value[0])
               for f in parsed]
        # each request's domain, as the loop hands it to the store (None: every event folds)
        domains = ([[f[features.DOMAIN].bytes_list.value[0]] for f in parsed]
                   if cr_folding.needs_domains(cr_domains) else [None] * len(parsed))
        fetched = [helper.fetch([u], [i]) for u, i in ids]
        vectors = [(client.user_representations([r]), client.item_representations([r]),
                    client.cross_representations([r])) for r in prepared]
        clock = [int(time.time()) + 10 * 86_400]

        def step_worker(step):
            def make(i):
                store = open_store(url, half_life_seconds=HALF_LIFE)
                stores.append(store)
                loop, k = OnlineLoop(client, store, ranker=ranker, cr_domains=cr_domains,
                                     one_call=one_call), [i]

                def one():
                    j = k[0] % len(prepared)
                    k[0] += callers
                    (user, item), example = ids[j], prepared[j]
                    started = time.perf_counter()
                    if step == "store_read":
                        loop.fetch([user], [item])
                    elif step == "downstream_predict":
                        loop.rank([example], fetched[j])
                    elif step == "upstream_infer":
                        loop.infer([example])
                    else:
                        ur, ir, cr = vectors[j]
                        clock[0] += 1
                        t = np.array([clock[0]], np.int64)
                        store.put(UR, [user], ur, t, 1, only_newer=True)
                        store.put(IR, [item], ir, t, 1, only_newer=True)
                        store.update_cross([user], [item], cr, t, model_version=1,
                                           domains=domains[j], cr_domains=cr_domains)
                    return time.perf_counter() - started
                return one
            return make

        alone = {step: _ms(_drive(callers, seconds, step_worker(step))) for step in STEPS}
        for s in stores:
            s.close()
    loop = {"total": _ms([r["total"] for r in loop_rows]),
            **{step: _ms([r[step] for r in loop_rows]) for step in STEPS}}
    steps_sum = sum(alone[step]["p50_ms"] for step in STEPS)
    return {"callers": callers, "calls": calls, "cr_domains": cr_domains, "loop": loop,
            "alone": alone,
            "steps_alone_p50_sum_ms": round(steps_sum, 3),
            "overhead_p50_ms": round(loop["total"]["p50_ms"] - steps_sum, 3),
            "requests_per_second": round(len(loop_rows) / seconds, 1)}


def one_vs_three(rows: list[dict]) -> list[dict]:
    """For each backend and concurrency measured both ways: the loop's p50 and throughput with
    one upstream call per request against three."""
    out = []
    by_key = {(r["backend"], r["callers"], r["calls"]): r for r in rows}
    for (backend, callers, calls), one in by_key.items():
        three = by_key.get((backend, callers, 3))
        if calls != 1 or three is None:
            continue
        out.append({"backend": backend, "callers": callers,
                    "p50_ms": (three["loop"]["total"]["p50_ms"], one["loop"]["total"]["p50_ms"]),
                    "throughput_ratio": round(one["requests_per_second"]
                                              / three["requests_per_second"], 3)})
    return out


def format_table(rows: list[dict]) -> str:
    lines = [f"{'store':<8}{'callers':>8}{'calls':>6}{'':>3}{'request p50':>12}{'p99':>9}"
             + "".join(f"{s:>20}" for s in STEPS) + f"{'sum alone':>11}{'overhead':>10}"
             f"{'req/s':>8}"]
    for r in rows:
        loop, alone = r["loop"], r["alone"]
        cells = "".join(f"{loop[s]['p50_ms']:>9.2f} /{alone[s]['p50_ms']:>8.2f}" for s in STEPS)
        lines.append(f"{r['backend']:<8}{r['callers']:>8}{r['calls']:>6}{'':>3}"
                     f"{loop['total']['p50_ms']:>12.2f}"
                     f"{loop['total']['p99_ms']:>9.2f}{cells}"
                     f"{r['steps_alone_p50_sum_ms']:>11.2f}{r['overhead_p50_ms']:>10.2f}"
                     f"{r['requests_per_second']:>8.1f}")
    lines.append("ms; each step: p50 inside the loop / p50 alone; overhead = request p50 - sum "
                 "of the steps' p50 alone")
    for c in one_vs_three(rows):
        lines.append(f"{c['backend']}, {c['callers']} callers: request p50 {c['p50_ms'][0]:.2f} "
                     f"ms with 3 upstream calls, {c['p50_ms'][1]:.2f} ms with 1; throughput "
                     f"x{c['throughput_ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.online_loop",
                           description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--callers", type=int, nargs="+", default=[1, 32])
    p.add_argument("--cr_domains", choices=cr_folding.CHOICES, default=cr_folding.DEFAULT,
                   help="the requests whose CR(u,i) the loop folds into CR(u), CR(i)")
    p.add_argument("--calls", type=int, nargs="+", choices=(1, 3), default=[3, 1],
                   help="upstream calls per request: 3 (the single signatures) and/or 1 "
                        "(the `representations` signature), measured in this order")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.seconds <= 0 or min(args.callers) < 1:
        p.error(f"--seconds must be > 0 and --callers >= 1, got {args.seconds} and "
                f"{args.callers}")

    def loop() -> dict:
        rows, started = [], time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="online-loop-") as work:
            config, records = prepare(work)
            server = ServerProcess(None, None, work, flags=("--grpc_max_threads=64",),
                                   model_config_file=config)
            try:
                target = f"127.0.0.1:{server.grpc_port}"
                with redis_server() as redis_url:
                    backends = {"sqlite": f"sqlite:///{os.path.join(work, 'store.db')}",
                                "redis": redis_url}
                    for backend, url in backends.items():
                        if url is None:
                            continue
                        for callers in args.callers:
                            for calls in args.calls:
                                row = measure(url, target, records, callers, args.seconds,
                                              args.cr_domains, calls)
                                rows.append({"backend": backend, **row})
                                print(json.dumps(rows[-1]), flush=True)
            finally:
                server.stop()
        print(f"online loop with a downstream ranker, batch-1 requests, {args.seconds:g} s per "
              f"row; {platform.machine()}, {os.cpu_count()} CPUs; "
              f"{time.perf_counter() - started:.0f} s")
        print(format_table(rows))
        return {"rows": rows, "one_vs_three": one_vs_three(rows)}

    return cli.run(loop, args)


if __name__ == "__main__":
    sys.exit(main())
