"""Scaling: each component's wall time and peak resident memory as the data grows, and the
training throughput of one against two localhost workers.

    python -m benchmarks.scaling [--examples 200000 1000000] [--part pipeline training]
        [--train_steps 150] [--work DIR] [--json]
    python -m benchmarks.scaling --part stages --root DIR [--stages NAME ...] [--work DIR]

`pipeline`, for each `--examples N`: the simulator writes N examples (seed 1), then the whole
pipeline runs (`python -m pipelines.local_runner`: LocalDagRunner, SQLite ML Metadata, Beam
DirectRunner), each in a child process whose resident memory (with its children's) is sampled
every 0.5 s. Each sample is attributed to the component running at that moment (execution
windows from ML Metadata). Per component: wall seconds, the peak resident memory while it
ran, and its rise over the memory when it started (the orchestrator runs every component in
one process, so memory a component keeps shows up as the next one's baseline).

`training`, on the first size's data: the default model trained for 2 epochs of
`--train_steps` steps of batch 1024, timed on the second epoch (the first traces the
functions), each configuration in its own processes:
* `default`: one process;
* `parameter_server`, 1 and 2 workers: an in-process cluster with 1 parameter server, each
  worker taking whole batches of 1024 (`trainer.distribute.in_process_cluster`);
* `multi_worker`, 2 workers: two processes with their TF_CONFIG, a global batch of 1024 split
  between them.
Throughput is examples per second; the ratios compare 2 workers with 1 in the same run.

`stages`, on the artifacts of a pipeline run (`--root`, e.g. `<work>/root-<N>` of the
`pipeline` part): three components whose memory grew with the data run again on their own,
each in a fresh child process sampled like the pipeline: `RepresentationExtractor` (its
executor, on the pushed model), `DownstreamExamples` (the replay and point-in-time join,
`build`) and `CrossRepresentationAggregator` (its executor, with the point-in-time rows of the
eval split). Besides the peak, the child reports its resident
memory after the stage, and after `malloc_trim` (what the C allocator kept). Run it at two
commits to compare an implementation change on the same data.

With `--json` the last line of stdout is one JSON object with every figure.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from common import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9
SAMPLE_SECONDS = 0.5
BATCH = 1024
TRAINING = (("default", 1), ("parameter_server", 1), ("parameter_server", 2),
            ("multi_worker", 2))


# -- measuring a child process -------------------------------------------------------------
def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of `process` and all its descendants (0 once it has exited)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def measured(command: list[str], env: dict | None = None, log: str | None = None,
             interval: float = SAMPLE_SECONDS) -> dict:
    """Runs `command` from the repository root, sampling its process tree's resident memory.

    Returns `{"seconds", "returncode", "samples": [(epoch seconds, bytes)], "peak_bytes",
    "output"}` (the output's last 20,000 characters; all of it goes to `log` if given).
    """
    out = open(log, "w") if log else tempfile.TemporaryFile("w+")
    started = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                            text=True)
    samples: list[tuple[float, int]] = []
    handle = psutil.Process(proc.pid)
    while proc.poll() is None:
        samples.append((time.time(), tree_rss(handle)))
        time.sleep(interval)
    seconds = time.time() - started
    out.flush()
    if log:
        out.close()
        text = open(log).read()
    else:
        out.seek(0)
        text = out.read()
        out.close()
    return {"seconds": round(seconds, 2), "returncode": proc.returncode, "samples": samples,
            "peak_bytes": max((b for _, b in samples), default=0), "output": text[-20000:]}


def concurrently(runs: list[tuple[list[str], dict, str]]) -> list[dict]:
    """`measured(command, env, log)` of each run, all started together."""
    out: list[dict] = [{} for _ in runs]

    def one(index: int) -> None:
        command, env, log = runs[index]
        out[index] = measured(command, env=env, log=log)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def attribute(samples: list[tuple[float, int]],
              windows: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Per component: its wall seconds, the peak of the samples inside its window and the rise
    of that peak over the last sample before the window (its baseline)."""
    out = {}
    for name, (start, end) in windows.items():
        inside = [b for t, b in samples if start <= t <= end]
        before = [b for t, b in samples if t < start]
        baseline = before[-1] if before else (inside[0] if inside else 0)
        peak = max(inside, default=baseline)
        out[name] = {"seconds": round(end - start, 1), "peak_gb": round(peak / GB, 2),
                     "rise_gb": round(max(0, peak - baseline) / GB, 2)}
    return out


def _json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{text[-3000:]}")


def _checked(run: dict, what: str) -> dict:
    if run["returncode"] != 0:
        raise RuntimeError(f"{what} failed (exit {run['returncode']}):\n{run['output'][-4000:]}")
    return run


# -- the pipeline ----------------------------------------------------------------------------
def data_dir(work: str, examples: int) -> str:
    """Where the data of size `examples` goes: `<work>/data-<N>`."""
    return os.path.join(work, f"data-{examples}")


def run_pipeline(examples: int, work: str) -> dict:
    from pipelines.summary import component_windows, metadata_file, open_metadata

    data = data_dir(work, examples)
    generate = _checked(measured(
        [sys.executable, "-m", "pipelines.sources.synthetic", "--out", data, "--examples",
         str(examples), "--seed", "1", "--overwrite"],
        log=os.path.join(work, f"generate-{examples}.log")), "data generation")
    root = os.path.join(work, f"root-{examples}")
    pipeline = _checked(measured(
        [sys.executable, "-m", "pipelines.local_runner", "--data", data, "--pipeline_root",
         root, "--serving_root", os.path.join(work, f"serving-{examples}"),
         "--online_requests", "0", "--json"],
        log=os.path.join(work, f"pipeline-{examples}.log")), "the pipeline")
    summary = _json_line(pipeline["output"])
    windows = component_windows(open_metadata(metadata_file(root)), "lfm4ads")
    return {
        "examples": examples,
        "generate_seconds": generate["seconds"],
        "generate_peak_gb": round(generate["peak_bytes"] / GB, 2),
        "pipeline_seconds": pipeline["seconds"],
        "pipeline_peak_gb": round(pipeline["peak_bytes"] / GB, 2),
        "components": attribute(pipeline["samples"], windows),
        "auc_ad": summary.get("auc_ad"),
        "pushed": summary.get("pushed"),
    }


# -- training throughput ---------------------------------------------------------------------
def _worker(kind: str, workers: int, data: str, steps: int) -> dict:
    """One training configuration in this process (a child of `run_training`)."""
    import tensorflow as tf

    from trainer import data_input, distribute
    from trainer.config import ModelConfig, TrainConfig
    from trainer.model import LFM4AdsModel

    # First: MultiWorkerMirroredStrategy must be made before TensorFlow runs any op.
    if kind == "parameter_server":
        resolver = distribute.in_process_cluster(num_workers=workers, num_ps=1)
        strategy = distribute.make_strategy(kind, resolver)
    else:
        strategy = distribute.make_strategy(kind)
    files = data_input.list_files(data)
    _, cut, _ = data_input.time_split(files, 1.0)
    config = TrainConfig(batch_size=BATCH, epochs=2, steps_per_epoch=steps,
                         shuffle_buffer=10_000)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = LFM4AdsModel(ModelConfig(), config)  # hashed ids: no vocabulary pass
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))

    def batches(drop_remainder: bool = False) -> tf.data.Dataset:
        return data_input.make_dataset(files, BATCH, end=cut, shuffle_buffer=10_000,
                                       seed=config.seed, drop_remainder=True).repeat()

    class EpochTimes(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    timer = EpochTimes()
    if kind == "parameter_server":
        distribute.fit(model, strategy, batches, steps * BATCH, config, 0, callbacks=[timer])
    else:
        ds = batches()
        if kind == "multi_worker":
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            ds = ds.with_options(options)
        model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return {"kind": kind, "workers": workers, "steps": steps,
            "first_epoch_seconds": round(timer.seconds[0], 2),
            "seconds": round(timer.seconds[1], 2),
            "examples_per_second": round(steps * BATCH / timer.seconds[1], 1)}


def run_training(data: str, steps: int, work: str) -> dict:
    import portpicker

    results = []
    for kind, workers in TRAINING:
        command = [sys.executable, "-m", "benchmarks.scaling", "--_worker", kind, str(workers),
                   data, str(steps)]
        log = os.path.join(work, f"train-{kind}-{workers}.log")
        if kind != "multi_worker":
            run = _checked(measured(command, log=log), f"training ({kind}, {workers})")
            results.append({**_json_line(run["output"]),
                            "peak_gb": round(run["peak_bytes"] / GB, 2)})
            continue
        cluster = {"worker": [f"localhost:{portpicker.pick_unused_port()}"
                              for _ in range(workers)]}
        runs = concurrently([
            (command, {**os.environ, "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}})},
             f"{log}.{index}") for index in range(workers)])
        for index, run in enumerate(runs):
            _checked(run, f"training ({kind}, worker {index})")
        results.append({**_json_line(runs[0]["output"]),
                        "peak_gb": round(sum(r["peak_bytes"] for r in runs) / GB, 2)})
    rate = {(r["kind"], r["workers"]): r["examples_per_second"] for r in results}
    return {
        "results": results,
        "parameter_server_2_vs_1": round(rate[("parameter_server", 2)]
                                         / rate[("parameter_server", 1)], 2),
        "multi_worker_2_vs_default": round(rate[("multi_worker", 2)] / rate[("default", 1)], 2),
        "parameter_server_1_vs_default": round(rate[("parameter_server", 1)]
                                               / rate[("default", 1)], 2),
    }


# -- report ----------------------------------------------------------------------------------
def format_pipeline(results: list[dict]) -> str:
    names = sorted({n for r in results for n in r["components"]},
                   key=lambda n: -max(r["components"].get(n, {}).get("seconds", 0)
                                      for r in results))
    header = f"{'component':34}" + "".join(
        f"{r['examples']:>12,} ex: s / peak GB / rise GB" for r in results)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = []
        for r in results:
            c = r["components"].get(name)
            cells.append("-" if c is None else
                         f"{c['seconds']:8.1f} / {c['peak_gb']:5.2f} / {c['rise_gb']:5.2f}")
        lines.append(f"{name:34}" + "".join(f"{cell:>38}" for cell in cells))
    for label, seconds, peak in (("pipeline (wall, peak)", "pipeline_seconds",
                                  "pipeline_peak_gb"),
                                 ("data generation (wall, peak)", "generate_seconds",
                                  "generate_peak_gb")):
        lines.append(f"{label:34}" + "".join(
            f"{r[seconds]:>21.1f} s / {r[peak]:5.2f} GB{'':>6}" for r in results))
    return "\n".join(lines)


STAGES = ("RepresentationExtractor", "DownstreamExamples", "CrossRepresentationAggregator")


def _artifact(root: str, component: str, name: str) -> str:
    import glob

    found = sorted(glob.glob(os.path.join(root, component, name, "*")),
                   key=lambda p: int(os.path.basename(p)) if os.path.basename(p).isdigit()
                   else -1)
    if not found:
        raise FileNotFoundError(f"{root!r} has no {component}/{name} artifact: run the "
                                "pipeline part first (its root is <work>/root-<N>)")
    return found[-1]


def _examples(uri: str):
    """An Examples artifact of ExampleGen's `train` and `eval` splits at `uri`."""
    from tfx.types import standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = '["train", "eval"]'
    return examples


def _run_executor(component, output, tables, **arguments) -> dict:
    """Runs a function-based component's body in this process (Beam DirectRunner) and returns
    the `<table>_rows` custom properties it set on `output`."""
    import apache_beam as beam

    component.EXECUTOR_SPEC.executor_class._FUNCTION(**arguments, beam_pipeline=beam.Pipeline())
    return {t: int(output.get_int_custom_property(f"{t}_rows")) for t in tables}


def _stage(name: str, root: str, out: str) -> dict:
    """One stage on `root`'s artifacts, in this process (a child of `run_stages`)."""
    import gc
    import glob

    from pipelines import configs, memory

    started = time.perf_counter()
    examples = _artifact(root, "ExampleGen", "examples")
    if name == "RepresentationExtractor":
        from tfx.types import standard_artifacts

        from components import artifacts
        from components.representation_extractor import component as extractor_component
        from pipelines.summary import latest_artifact, metadata_file, open_metadata

        pushed = standard_artifacts.PushedModel()  # its push destination and version
        pushed.set_mlmd_artifact(latest_artifact(open_metadata(metadata_file(root)),
                                                 "PushedModel", "Pusher"))  # the upstream's
        representations = artifacts.Representations()
        representations.uri = out
        rows = _run_executor(extractor_component.RepresentationExtractor, representations,
                             (artifacts.USER_TABLE, artifacts.ITEM_TABLE),
                             examples=_examples(examples),
                             pushed_model=pushed, representations=representations)
    elif name == "DownstreamExamples":
        from components.downstream_examples import component as downstream_examples_component

        split_files = {s: sorted(glob.glob(os.path.join(examples, f"Split-{s}", "*")))
                       for s in downstream_examples_component.SPLITS}
        rows = downstream_examples_component.build(
            split_files,
            _artifact(root, "Pusher", "pushed_model"),
            {s: os.path.join(out, f"Split-{s}") for s in downstream_examples_component.SPLITS},
            configs.DOWNSTREAM_TRAIN_DAYS,
            configs.CR_HALF_LIFE_SECONDS,
        )
    elif name == "CrossRepresentationAggregator":
        from components import artifacts
        from components.cr_aggregation import component as cr_aggregation_component
        representations = artifacts.Representations()
        representations.uri = _artifact(root, "RepresentationExtractor", "representations")
        representations.set_int_custom_property("model_version", 1)
        tables = artifacts.CrossRepresentationTables()
        tables.uri = out
        rows = _run_executor(
            cr_aggregation_component.CrossRepresentationAggregator, tables,
            (artifacts.CROSS_USER_TABLE, artifacts.CROSS_ITEM_TABLE),
            representations=representations, cross_tables=tables, examples=_examples(examples),
            half_life_seconds=configs.CR_HALF_LIFE_SECONDS, num_buckets=64,
            point_in_time_splits=configs.POINT_IN_TIME_SPLITS)
    else:
        raise ValueError(f"unknown stage {name!r}; known: {list(STAGES)}")
    seconds = time.perf_counter() - started
    gc.collect()
    after = psutil.Process().memory_info().rss
    libc = memory._glibc()
    if libc is not None:
        libc.malloc_trim(0)
    return {"stage": name, "rows": rows, "stage_seconds": round(seconds, 1),
            "after_gb": round(after / GB, 2),
            "after_trim_gb": round(psutil.Process().memory_info().rss / GB, 2)}


def run_stages(root: str, work: str, names=STAGES) -> list[dict]:
    results = []
    for name in names:
        out = os.path.join(work, f"stage-{name}")
        if os.path.exists(out):
            import shutil

            shutil.rmtree(out)
        run = _checked(measured([sys.executable, "-m", "benchmarks.scaling", "--_stage", name,
                                 root, out], log=os.path.join(work, f"stage-{name}.log")),
                       name)
        results.append({**_json_line(run["output"]), "seconds": run["seconds"],
                        "peak_gb": round(run["peak_bytes"] / GB, 2)})
    return results


def format_stages(stages: list[dict]) -> str:
    lines = [f"{'stage (alone, on --root)':34}{'s':>8}{'peak GB':>9}{'after GB':>10}"
             f"{'after trim':>11}"]
    for r in stages:
        lines.append(f"{r['stage']:34}{r['seconds']:>8.1f}{r['peak_gb']:>9.2f}"
                     f"{r['after_gb']:>10.2f}{r['after_trim_gb']:>11.2f}")
    return "\n".join(lines)


def format_training(training: dict) -> str:
    lines = [f"{'training':34}{'workers':>8}{'examples/s':>12}{'epoch 2 s':>11}"
             f"{'epoch 1 s':>11}{'peak GB':>9}"]
    for r in training["results"]:
        lines.append(f"{r['kind']:34}{r['workers']:>8}{r['examples_per_second']:>12,.0f}"
                     f"{r['seconds']:>11.1f}{r['first_epoch_seconds']:>11.1f}{r['peak_gb']:>9.2f}")
    lines.append(f"parameter_server, 2 workers / 1: {training['parameter_server_2_vs_1']}x; "
                 f"multi_worker, 2 workers / default: {training['multi_worker_2_vs_default']}x; "
                 f"parameter_server, 1 worker / default: "
                 f"{training['parameter_server_1_vs_default']}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_worker":  # a child of run_training
        kind, workers, data, steps = argv[1:5]
        print(json.dumps(_worker(kind, int(workers), data, int(steps))), flush=True)
        return 0
    if argv and argv[0] == "--_stage":  # a child of run_stages
        print(json.dumps(_stage(*argv[1:4])), flush=True)
        return 0
    p = cli.ArgumentParser(prog="python -m benchmarks.scaling",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, nargs="+", default=[200_000])
    p.add_argument("--part", nargs="+", choices=("pipeline", "training", "stages"),
                   default=["pipeline", "training"])
    p.add_argument("--root", default=None, help="stages: a pipeline root with the artifacts "
                   "(default: <work>/root-<first --examples>)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="stages: which components to run again (default: all)")
    p.add_argument("--train_steps", type=int, default=150)
    p.add_argument("--work", default=None, help="work directory to keep (default: a temporary "
                   "one, removed)")
    args = p.parse_args(argv)
    if min(args.examples) < 1 or args.train_steps < 1:
        p.error(f"--examples and --train_steps must be >= 1, got {args.examples} and "
                f"{args.train_steps}")
    if "stages" in args.part and args.root is not None and not os.path.isdir(args.root):
        p.error(f"--root {args.root}: no such directory")
    work = args.work or tempfile.mkdtemp(prefix="lfm4ads-scaling-")
    os.makedirs(work, exist_ok=True)

    def measure() -> dict:
        machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{psutil.virtual_memory().total / GB:.0f} GB")
        report: dict = {"machine": machine, "pipeline": [], "training": None, "stages": None}
        saved = os.path.join(work, "report.json")  # kept up to date, for a run cut short

        def save() -> None:
            with open(saved, "w") as f:
                json.dump(report, f)

        if "pipeline" in args.part:
            for examples in args.examples:
                report["pipeline"].append(run_pipeline(examples, work))
                save()
                print(f"{examples:,} examples: pipeline "
                      f"{report['pipeline'][-1]['pipeline_seconds']} s, peak "
                      f"{report['pipeline'][-1]['pipeline_peak_gb']} GB", flush=True)
        if "training" in args.part:
            data = data_dir(work, args.examples[0])
            if not os.path.exists(os.path.join(data, "manifest.json")):
                from pipelines.sources import synthetic

                synthetic.generate(data, examples=args.examples[0], seed=1, progress=False,
                                   overwrite=True)
            report["training"] = run_training(data, args.train_steps, work)
            save()
        if "stages" in args.part:
            report["stages"] = run_stages(
                args.root or os.path.join(work, f"root-{args.examples[0]}"), work, args.stages)
            save()
        print(f"\nScaling benchmark on {machine}\n")
        if report["pipeline"]:
            print(format_pipeline(report["pipeline"]) + "\n")
        if report["training"]:
            print(format_training(report["training"]))
        if report["stages"]:
            print(format_stages(report["stages"]))
        return report

    code = cli.run(measure, args)
    if code == 0 and args.work is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
