"""tf.Example encoding: the sources' numpy encoder against tfx_bsl's and Python protobuf's.

    python -m benchmarks.example_encoding [--records 20000] [--repeats 5] [--seed 0] [--json]

The records are the project's schema as the synthetic source writes them
(`pipelines.sources.synthetic.simulate`: every feature of `common.features`, with the user
histories). Each method turns the same numpy columns into one serialized tf.Example per row:

* `numpy` (`pipelines.sources.example_encoder.encode_examples`, what the sources use, in
  chunks of `pipelines.sources.shards.CHUNK_SIZE` rows as they do): protobuf's deterministic
  serialization written directly with numpy;
* `tfx_bsl` (`tfx_bsl.coders.example_coder.RecordBatchToExamplesEncoder`): the columns as a
  pyarrow RecordBatch (the conversion is timed with it), encoded in C++ in the same chunks;
  its feature map comes out in protobuf's unordered map order, so its bytes differ from call
  to call;
* `tfx_bsl_deterministic`: `tfx_bsl`, then each record parsed and re-serialized with
  `SerializeToString(deterministic=True)`, what the sources would need to keep their
  byte-identical output;
* `protobuf`: one `tf.train.Example` built per row in Python, `SerializeToString(
  deterministic=True)`.

Before timing, every method's records are checked: `numpy`, `tfx_bsl_deterministic` and
`protobuf` give the same bytes; `tfx_bsl`'s parse to the same Examples. The methods are timed
in turn, `--repeats` rounds; the table gives each one's median wall-clock seconds, records per
second and its time over `numpy`'s, and the same for the process's CPU time (less moved by
other processes on a shared machine; the load average is printed). `--json` ends with one JSON
object.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Mapping

import numpy as np

from common import cli
from pipelines.sources import synthetic
from pipelines.sources.example_encoder import (
    BytesColumn,
    Column,
    IntColumn,
    encode_examples,
    value_table,
)
from pipelines.sources.shards import CHUNK_SIZE

REFERENCE = "numpy"


@dataclasses.dataclass(frozen=True)
class EncodingBenchmark:
    """What `run` measures."""

    records: int = dataclasses.field(default=20_000,
                                     metadata={"help": "records of the schema to encode"})
    repeats: int = dataclasses.field(default=5, metadata={"help": "timed runs per method"})
    seed: int = dataclasses.field(default=0, metadata={"help": "the synthetic source's seed"})

    def __post_init__(self):
        if self.records < 1 or self.repeats < 1:
            raise ValueError(f"records and repeats must be >= 1, got {self.records}, "
                             f"{self.repeats}")


def _example_class():
    from tensorflow.core.example import example_pb2  # tf.train.Example, without the runtime

    return example_pb2.Example


def encode_numpy(columns: Mapping[str, Column]) -> list[bytes]:
    """As `pipelines.sources.shards` encodes: chunks of `CHUNK_SIZE` rows, the vocabularies'
    value tables built once."""
    tables = {name: value_table(col.vocab) for name, col in columns.items()
              if isinstance(col, BytesColumn)}
    n, out = len(next(iter(columns.values()))), []
    for start in range(0, n, CHUNK_SIZE):
        data, offsets = encode_examples(columns, start, min(start + CHUNK_SIZE, n), tables)
        out += [data[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(),
                                          strict=True)]
    return out


def record_batch(columns: Mapping[str, Column]):
    """The columns as a pyarrow RecordBatch of list columns (one list per row)."""
    import pyarrow as pa

    arrays, n = [], len(next(iter(columns.values())))
    one = pa.array(np.arange(n + 1, dtype=np.int32))
    for name in sorted(columns):
        col = columns[name]
        if isinstance(col, IntColumn):
            values = pa.array(np.asarray(col.values, np.int64))
        else:
            values = pa.array(list(col.vocab), pa.binary()).take(pa.array(col.indices))
        offsets = one if getattr(col, "offsets", None) is None else pa.array(
            np.asarray(col.offsets, np.int32))
        arrays.append(pa.ListArray.from_arrays(offsets, values))
    return pa.RecordBatch.from_arrays(arrays, names=sorted(columns))


def encode_tfx_bsl(columns: Mapping[str, Column]) -> list[bytes]:
    """One RecordBatch, encoded in slices of `CHUNK_SIZE` rows (as `encode_numpy`)."""
    from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

    batch, encoder = record_batch(columns), RecordBatchToExamplesEncoder()
    out = []
    for start in range(0, batch.num_rows, CHUNK_SIZE):
        out += encoder.encode(batch.slice(start, CHUNK_SIZE))
    return out


def encode_tfx_bsl_deterministic(columns: Mapping[str, Column]) -> list[bytes]:
    example = _example_class()
    return [example.FromString(r).SerializeToString(deterministic=True)
            for r in encode_tfx_bsl(columns)]


def encode_protobuf(columns: Mapping[str, Column]) -> list[bytes]:
    example_class = _example_class()
    n = len(next(iter(columns.values())))
    rows = []  # (name, kind, per-row values)
    for name in sorted(columns):
        col = columns[name]
        if isinstance(col, IntColumn):
            rows.append((name, "int", np.asarray(col.values).tolist()))
            continue
        values = [col.vocab[i] for i in np.asarray(col.indices).tolist()]
        if col.offsets is None:
            rows.append((name, "bytes", values))
        else:
            bounds = np.asarray(col.offsets).tolist()
            rows.append((name, "list", [values[bounds[i]:bounds[i + 1]] for i in range(n)]))
    out = []
    for i in range(n):
        example = example_class()
        feature = example.features.feature
        for name, kind, values in rows:
            if kind == "int":
                feature[name].int64_list.value.append(values[i])
            elif kind == "bytes":
                feature[name].bytes_list.value.append(values[i])
            else:
                feature[name].bytes_list.value.extend(values[i])
        out.append(example.SerializeToString(deterministic=True))
    return out


METHODS: dict[str, Callable[[Mapping[str, Column]], list[bytes]]] = {
    "numpy": encode_numpy,
    "tfx_bsl": encode_tfx_bsl,
    "tfx_bsl_deterministic": encode_tfx_bsl_deterministic,
    "protobuf": encode_protobuf,
}


def check_same_records(encoded: Mapping[str, list[bytes]]) -> None:
    """The deterministic methods give `numpy`'s bytes; `tfx_bsl`'s parse to the same Examples.
    Raises AssertionError naming the method and the first row that differs."""
    example = _example_class()
    reference = encoded[REFERENCE]
    for method, records in encoded.items():
        if len(records) != len(reference):
            raise AssertionError(f"{method}: {len(records)} records, {REFERENCE} "
                                 f"{len(reference)}")
        for i, (mine, theirs) in enumerate(zip(reference, records, strict=True)):
            same = (mine == theirs if method != "tfx_bsl"
                    else example.FromString(mine) == example.FromString(theirs))
            if not same:
                raise AssertionError(f"{method}: row {i} differs from {REFERENCE}'s")


def run(config: EncodingBenchmark) -> dict:
    columns = synthetic.simulate(config.records, seed=config.seed).columns
    check_same_records({name: method(columns) for name, method in METHODS.items()})
    wall: dict[str, list[float]] = {name: [] for name in METHODS}
    cpu: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(config.repeats):  # round robin: a change in the machine's load hits all
        for name, method in METHODS.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            method(columns)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    seconds = {name: float(np.median(t)) for name, t in wall.items()}
    cpu_seconds = {name: float(np.median(t)) for name, t in cpu.items()}
    sizes = encode_numpy(columns)
    return {
        "records": config.records, "repeats": config.repeats, "seed": config.seed,
        "mean_record_bytes": round(float(np.mean([len(r) for r in sizes])), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": round(os.getloadavg()[0], 2),
        "methods": {name: {"median_seconds": round(seconds[name], 4),
                           "median_cpu_seconds": round(cpu_seconds[name], 4),
                           "records_per_second": round(config.records / seconds[name]),
                           "ratio_to_numpy": round(seconds[name] / seconds[REFERENCE], 2),
                           "cpu_ratio_to_numpy": round(
                               cpu_seconds[name] / cpu_seconds[REFERENCE], 2)}
                    for name in METHODS},
    }


def format_table(result: dict) -> str:
    lines = [f"{result['records']} records of the schema ({result['mean_record_bytes']} bytes "
             f"each on average), medians of {result['repeats']} runs, {result['machine']}, "
             f"load average {result['load_average']}",
             "| method | wall s | records/s | wall / numpy's | CPU s | CPU / numpy's |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in result["methods"].items():
        lines.append(f"| {name} | {row['median_seconds']:.4f} | "
                     f"{row['records_per_second']:,} | {row['ratio_to_numpy']:.2f} | "
                     f"{row['median_cpu_seconds']:.4f} | {row['cpu_ratio_to_numpy']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m benchmarks.example_encoding",
                                description=__doc__.split("\n")[0])
    flags = cli.add_dataclass_flags(parser, EncodingBenchmark)
    args = parser.parse_args(argv)
    config = flags.build(args)
    return cli.run(lambda: run(config), args, show=format_table)


if __name__ == "__main__":
    raise SystemExit(main())
