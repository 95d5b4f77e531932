"""Wall time of the whole TFX pipeline, each component's share, and the CR aggregator's speed.

For each `--examples N`: generate N synthetic examples, run the whole pipeline locally
(`pipelines.local_runner.run`: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner with
`--beam_workers`), and read each component's wall time from ML Metadata. Then, on the CR(u,i)
event stream that run extracted, time in the same process, one after the other and
`--repeats` times each (median reported):

* `beam`: `AggregateCrossRepresentations` (both sides, user and item) on the DirectRunner,
  reading the event batches from the TFRecords the extractor wrote;
* `sequential`: `ema.aggregate_sequential`, the plain-Python reference, on the same events
  already in memory (both sides).

    python -m benchmarks.pipeline [--examples 100000 1000000] [--beam_workers 1] [--json]

With `--json` the last line of stdout is one JSON object with every figure.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import glob
import os
import platform
import shutil
import statistics
import tempfile
import time

import apache_beam as beam
import numpy as np

from common import cli
from common.representations import ema, tables
from components import artifacts
from components.cr_aggregation.beam_transforms import AggregateCrossRepresentations
from pipelines import configs, local_runner
from pipelines.sources import synthetic


def _events(representations_uri: str) -> tuple[list[str], dict]:
    files = sorted(glob.glob(os.path.join(representations_uri, artifacts.CROSS_EVENTS,
                                          "*" + tables.FILE_SUFFIX)))
    import tensorflow as tf

    batches = [tables.decode_event_batch(r.numpy())
               for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return files, merged


def _time_beam(files: list[str], half_life: float, workers: int, out_dir: str) -> float:
    options = beam.options.pipeline_options.PipelineOptions(
        configs.beam_pipeline_args(workers))
    started = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        out = (
            p
            | beam.io.ReadFromTFRecord(os.path.join(os.path.dirname(files[0]), "*"),
                                       compression_type="gzip")
            | beam.Map(tables.decode_event_batch)
            | AggregateCrossRepresentations(half_life)
        )
        for side in ("user", "item"):
            _ = (out[side] | f"Count[{side}]" >> beam.combiners.Count.Globally()
                 | f"Write[{side}]" >> beam.io.WriteToText(os.path.join(out_dir, side)))
    return time.perf_counter() - started


def _time_sequential(events: dict, half_life: float) -> float:
    beta = ema.half_life_decay(half_life)
    started = time.perf_counter()
    for key in ("user_id", "item_id"):
        ema.aggregate_sequential(events[key], events["timestamp"],
                                 events["cross_representation"], beta)
    return time.perf_counter() - started


def run_size(examples: int, workers: int, repeats: int, keep: str | None) -> dict:
    work = keep or tempfile.mkdtemp(prefix=f"lfm4ads-bench-{examples}-")
    data = os.path.join(work, "data")
    started = time.perf_counter()
    synthetic.generate(data, examples=examples, seed=1, overwrite=True, progress=False)
    generate_s = time.perf_counter() - started
    summary = local_runner.run(data, os.path.join(work, "root"), os.path.join(work, "serving"),
                               beam_workers=workers)
    from pipelines.summary import latest_artifact, metadata_file, open_metadata

    store = open_metadata(metadata_file(os.path.join(work, "root")))
    representations = latest_artifact(store, artifacts.Representations.TYPE_NAME)
    if not summary["pushed"]:
        raise RuntimeError(f"the model of the {examples}-example run was not blessed "
                           f"(ad AUC {summary['auc_ad']}): no CR events to time")
    files, events = _events(representations.uri)
    n_events = int(events["timestamp"].shape[0])
    half_life = configs.CR_HALF_LIFE_SECONDS
    beam_s, seq_s = [], []
    for i in range(repeats):
        out_dir = os.path.join(work, f"agg-{i}")
        beam_s.append(_time_beam(files, half_life, workers, out_dir))
        seq_s.append(_time_sequential(events, half_life))
    result = {
        "examples": examples,
        "generate_seconds": round(generate_s, 1),
        "pipeline_seconds": summary["seconds"],
        "component_seconds": summary["component_seconds"],
        "auc_ad": summary["auc_ad"],
        "gauc_ad": summary["gauc_ad"],
        "guard": summary["guard"],
        "lee_blessed": summary.get("lee_blessed"),
        "lee_delta": summary.get("lee_delta"),
        "representations": "published" if summary.get("published") else "held",
        "cr_events": n_events,
        "aggregator_beam_events_per_s": round(n_events / statistics.median(beam_s)),
        "aggregator_sequential_events_per_s": round(n_events / statistics.median(seq_s)),
    }
    result["aggregator_beam_vs_sequential"] = round(
        result["aggregator_beam_events_per_s"] / result["aggregator_sequential_events_per_s"], 2)
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


def format_table(results: list[dict]) -> str:
    names = sorted({n for r in results for n in r["component_seconds"]},
                   key=lambda n: -max(r["component_seconds"].get(n, 0) for r in results))
    header = f"{'component':32}" + "".join(f"{r['examples']:>20,}" for r in results)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = []
        for r in results:
            s = r["component_seconds"].get(name, 0.0)
            cells.append(f"{s:9.1f} s {100 * s / r['pipeline_seconds']:6.1f} %")
        lines.append(f"{name:32}" + "".join(f"{c:>20}" for c in cells))
    for label, key in (("pipeline (wall)", "pipeline_seconds"),
                       ("data generation", "generate_seconds")):
        lines.append(f"{label:32}" + "".join(f"{r[key]:>18.1f} s" for r in results))
    for label, key in (("CR events", "cr_events"),
                       ("aggregator Beam events/s", "aggregator_beam_events_per_s"),
                       ("aggregator sequential events/s", "aggregator_sequential_events_per_s"),
                       ("Beam / sequential", "aggregator_beam_vs_sequential"),
                       ("ad AUC (TFMA)", "auc_ad"), ("guard", "guard"),
                       ("LEE blessed / delta", "lee"), ("representations", "representations")):
        lines.append(f"{label:32}" + "".join(f"{_cell(r, key):>20}" for r in results))
    return "\n".join(lines)


def _cell(result: dict, key: str) -> str:
    if key == "lee":
        return f"{result.get('lee_blessed')} / {result.get('lee_delta')}"
    return str(result.get(key))


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.pipeline",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, nargs="+", default=[100_000])
    p.add_argument("--beam_workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", default=None, help="work directory to keep (one size only)")
    args = p.parse_args(argv)
    if min(args.examples) < 1 or args.beam_workers < 1 or args.repeats < 1:
        p.error(f"--examples, --beam_workers and --repeats must be >= 1, got "
                f"{args.examples}, {args.beam_workers} and {args.repeats}")

    def measure() -> dict:
        results = [run_size(n, args.beam_workers, args.repeats,
                            args.keep if len(args.examples) == 1 else None)
                   for n in args.examples]
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        print(f"\nPipeline benchmark on {machine}, Beam workers {args.beam_workers}\n")
        print(format_table(results))
        return {"machine": machine, "beam_workers": args.beam_workers, "results": results}

    return cli.run(measure, args)


if __name__ == "__main__":
    raise SystemExit(main())
