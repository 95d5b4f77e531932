"""TFX component: CrossRepresentationAggregator (paper Eq. 1-2, Sec. 3.3).

Reads the extractor's CR(u,i) event stream and writes the time-aware EMA tables CR(u) and
CR(i) with `AggregateCrossRepresentations` (per-key state in key buckets, nothing collected to
the driver; tie rule and memory per key in `components.cr_aggregation.beam_transforms`).
"""


import os

import apache_beam as beam
from tfx import v1 as tfx

from components import artifacts as A
from components import representation_tables as tables
from components.cr_aggregation.beam_transforms import AggregateCrossRepresentations

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

DEFAULT_HALF_LIFE_SECONDS = 86_400.0


@tfx.dsl.components.component(use_beam=True)
def CrossRepresentationAggregator(  # noqa: N802 (TFX component naming)
    representations: _InputArtifact[A.Representations],
    cross_tables: _OutputArtifact[A.CrossRepresentationTables],
    half_life_seconds: _Parameter[float] = DEFAULT_HALF_LIFE_SECONDS,
    num_buckets: _Parameter[int] = 64,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """CR(u), CR(i) tables from the CR(u,i) events of `representations`."""
    if int(representations.get_int_custom_property("skipped") or 0):
        cross_tables.set_int_custom_property("skipped", 1)
        return
    version = int(representations.get_int_custom_property("model_version"))
    cross_tables.set_int_custom_property("skipped", 0)
    cross_tables.set_int_custom_property("model_version", version)
    cross_tables.set_float_custom_property("half_life_seconds", float(half_life_seconds))
    events = os.path.join(representations.uri, A.CROSS_EVENTS, "*" + tables.FILE_SUFFIX)
    with beam_pipeline as p:
        out = (
            p
            | "ReadEvents" >> beam.io.ReadFromTFRecord(events, compression_type="gzip")
            | "Decode" >> beam.Map(tables.decode_event_batch)
            | "Aggregate" >> AggregateCrossRepresentations(half_life_seconds, num_buckets)
        )
        for side, table in (("user", A.CROSS_USER_TABLE), ("item", A.CROSS_ITEM_TABLE)):
            _ = out[side] | f"Write[{table}]" >> tables.WriteRepresentationTable(
                os.path.join(cross_tables.uri, table, A.TABLE_PREFIX), version)
    for table in (A.CROSS_USER_TABLE, A.CROSS_ITEM_TABLE):
        keys, *_ = tables.read_table(
            os.path.join(cross_tables.uri, table, "*" + tables.FILE_SUFFIX))
        cross_tables.set_int_custom_property(f"{table}_rows", int(len(keys)))
