"""TFX component: RepresentationExtractor (paper Sec. 3.2, Fig. 4 offline half).

Runs the pushed (blessed) SavedModel's UR/IR/CR signatures over the examples with the Beam
transform `ExtractRepresentations` and writes the UR and IR tables (latest per key) and the
CR(u,i) event stream (`components.representation_tables` formats). A model the Pusher did not
push (not blessed) is not run: the output is marked `skipped` and holds no tables.
"""


import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

from common.representations import tables
from components import artifacts, representation_tables
from components.representation_extractor.beam_transforms import (
    CROSS_EVENTS,
    ITEM,
    USER,
    ExtractRepresentations,
)

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter


def pushed_model_dir(pushed_model) -> tuple[str, int] | None:
    """(directory, version) of a Pusher output, None when nothing was pushed."""
    if not int(pushed_model.get_int_custom_property("pushed") or 0):
        return None
    destination = pushed_model.get_string_custom_property("pushed_destination")
    version = int(pushed_model.get_string_custom_property("pushed_version") or 0)
    return destination, version


def split_patterns(examples, splits: str) -> list[str]:
    """File patterns of the named splits (comma separated) of an Examples artifact."""
    names = [s.strip() for s in splits.split(",") if s.strip()]
    have = artifact_utils.decode_split_names(examples.split_names)
    unknown = [s for s in names if s not in have]
    if unknown:
        raise ValueError(f"splits {unknown} not in the examples; they have {have}")
    return [os.path.join(artifact_utils.get_split_uri([examples], s), "*") for s in names]


@tfx.dsl.components.component(use_beam=True)
def RepresentationExtractor(  # noqa: N802 (TFX component naming)
    examples: _InputArtifact[standard_artifacts.Examples],
    pushed_model: _InputArtifact[standard_artifacts.PushedModel],
    representations: _OutputArtifact[artifacts.Representations],
    splits: _Parameter[str] = "train,eval",
    max_batch_size: _Parameter[int] = 1024,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """UR, IR tables and CR(u,i) events of the pushed model over `splits` of `examples`."""
    pushed = pushed_model_dir(pushed_model)
    if pushed is None:
        representations.set_int_custom_property("skipped", 1)
        return
    model_dir, version = pushed
    representations.set_int_custom_property("skipped", 0)
    representations.set_int_custom_property("model_version", version)
    root = representations.uri
    with beam_pipeline as p:
        # One read of every split's files: a Flatten of one read per split would be held whole
        # in memory by the DirectRunner (it materializes a Flatten of several inputs).
        records = (p | "Patterns" >> beam.Create(split_patterns(examples, splits))
                   | "Read" >> beam.io.ReadAllFromTFRecord(compression_type="gzip"))
        out = records | "Extract" >> ExtractRepresentations(
            model_dir, min_batch_size=min(64, max_batch_size), max_batch_size=max_batch_size)
        for name, table in ((USER, artifacts.USER_TABLE), (ITEM, artifacts.ITEM_TABLE)):
            _ = out[name] | f"Write[{table}]" >> representation_tables.WriteRepresentationTable(
                os.path.join(root, table, artifacts.TABLE_PREFIX), version)
        _ = (
            out[CROSS_EVENTS]
            | "EncodeEvents" >> beam.Map(tables.encode_event_batch)
            | "WriteEvents" >> beam.io.WriteToTFRecord(
                os.path.join(root, artifacts.CROSS_EVENTS, artifacts.TABLE_PREFIX),
                file_name_suffix=tables.FILE_SUFFIX, compression_type="gzip")
        )
    for table in (artifacts.USER_TABLE, artifacts.ITEM_TABLE):
        keys, *_ = tables.read_table(os.path.join(root, table, "*" + tables.FILE_SUFFIX))
        representations.set_int_custom_property(f"{table}_rows", int(len(keys)))
