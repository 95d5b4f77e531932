"""ImportExampleGen with a split by time: train = earlier, eval = the last `eval_days`.

TFX's ImportExampleGen splits either by a hash of each record or by file pattern; neither
keeps the eval window strictly later than the training data. This is the same component
(`FileBasedExampleGen` reading TFRecords with ImportExampleGen's reader) with a custom
executor that splits on the `timestamp` feature:

    cut = max(timestamp) + 1 - round(eval_days * 86400)
    train: timestamp < cut        eval: timestamp >= cut

the same rule as `trainer.train` (so the pipeline and the standalone trainer evaluate on the
same window). The cut is computed in Beam (a global max as a side input), nothing is collected
to the driver.
"""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from common import features

DAY = features.DAY
SPLITS = ("train", "eval")
DATA_PATTERN = "*.tfrecord.gz"


def _timestamp(record: bytes | tf.train.Example) -> int:
    """The record's `timestamp` (ImportExampleGen's reader yields parsed tf.Examples)."""
    example = tf.train.Example.FromString(record) if isinstance(record, bytes) else record
    values = example.features.feature[features.TIMESTAMP].int64_list.value
    if len(values) != 1:
        raise ValueError(f"a record has {len(values)} {features.TIMESTAMP!r} values, expected 1")
    return int(values[0])


def split_cut(max_timestamp: int, eval_days: float) -> int:
    """First timestamp of the eval window."""
    return int(max_timestamp) + 1 - int(round(eval_days * DAY))


@beam.ptransform_fn
def SplitByTime(records, eval_days: float):  # noqa: N802 (Beam transform naming)
    """Serialized tf.Examples -> (train, eval) PCollections by the `timestamp` cut."""
    keyed = records | "Timestamp" >> beam.Map(lambda r: (_timestamp(r), r))
    cut = (
        keyed
        | "Times" >> beam.Keys()
        | "Max" >> beam.CombineGlobally(lambda ts: max(ts, default=None))
        | "Cut" >> beam.Map(lambda m: None if m is None else split_cut(m, eval_days))
    )

    def partition(element, _n, cut_value):
        if cut_value is None:
            raise ValueError("no records to split")
        return 1 if element[0] >= cut_value else 0

    train, eval_ = keyed | "Partition" >> beam.Partition(
        partition, 2, beam.pvalue.AsSingleton(cut)
    )
    return (train | "TrainRecords" >> beam.Values(), eval_ | "EvalRecords" >> beam.Values())


def _custom_config(exec_properties: dict[str, Any]) -> dict[str, Any]:
    text = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if not text:
        return {}
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(text, config)
    struct = struct_pb2.Struct()
    if config.HasField("custom_config"):
        config.custom_config.Unpack(struct)
    return json.loads(proto_utils.proto_to_json(struct))


class TimeSplitExecutor(import_executor.Executor):
    """ImportExampleGen's reader, then `SplitByTime` instead of the hash partition."""

    def GenerateExamplesByBeam(self, pipeline, exec_properties):  # noqa: N802 (TFX API)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config
        )
        if len(input_config.splits) != 1:
            raise ValueError("the time split reads one input pattern; got "
                             f"{[s.name for s in input_config.splits]}")
        eval_days = float(_custom_config(exec_properties).get("eval_days", 1.0))
        if eval_days <= 0:
            raise ValueError(f"eval_days must be > 0, got {eval_days}")
        exec_properties["_beam_pipeline_args"] = self._beam_pipeline_args or []
        read = self.GetInputSourceToExamplePTransform()
        records = pipeline | "InputToRecord" >> read(  # pylint: disable=no-value-for-parameter
            exec_properties, input_config.splits[0].pattern
        )
        train, eval_ = records | "SplitByTime" >> SplitByTime(eval_days)
        return {"train": train, "eval": eval_}


def time_split_example_gen(
    input_base: str, eval_days: float = 1.0, pattern: str = DATA_PATTERN
) -> FileBasedExampleGen:
    """The pipeline's ExampleGen: TFRecords under `input_base`, split train/eval by time."""
    struct = struct_pb2.Struct()
    struct.update({"eval_days": float(eval_days)})
    packed = any_pb2.Any()
    packed.Pack(struct)
    return FileBasedExampleGen(
        input_base=input_base,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="all", pattern=pattern)]
        ),
        # Names the output splits; the hash buckets are not used by the time split.
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(splits=[
                example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=1) for name in SPLITS
            ])
        ),
        custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
        custom_executor_spec=executor_spec.BeamExecutorSpec(TimeSplitExecutor),
    ).with_id("ExampleGen")
