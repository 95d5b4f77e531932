"""TFX component: CrossRepresentationAggregator (paper Eq. 1-2, Sec. 3.3).

Reads the extractor's CR(u,i) event stream and writes the time-aware EMA tables CR(u) and
CR(i) with `AggregateCrossRepresentations` (per-key state in key buckets, nothing collected to
the driver; tie rule and memory per key in `components.cr_aggregation.beam_transforms`).

`cr_domains` (`common.representations.cr_folding`) picks the events that fold: `ad` (the
default; paper Sec. 4.3.1: only when a user meets an ad) or `all` (content requests too); it
is recorded on the output as the custom property `cr_domains`, beside `half_life_seconds`. An
event stream written before the extractor recorded each event's domain is refused under `ad`,
by name.

With `point_in_time_splits` (names of `examples` splits), it also writes those splits'
examples with CR(u) and CR(i) as of strictly before each row's timestamp
(`AggregateWithPointInTime`: the same rows as `AttachPointInTimeCrossRepresentations`, from
one grouping of the events per side) under `<cross_tables>/point_in_time/Split-<name>/`:
downstream training features without look-ahead leakage.
"""


import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from common.representations import cr_folding, tables
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS
from components import artifacts, representation_tables
from components.cr_aggregation.beam_transforms import (
    AggregateCrossRepresentations,
    AggregateWithPointInTime,
)
from components.representation_extractor.component import split_patterns

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter
POINT_IN_TIME = "point_in_time"



def _first_batch(events_pattern: str) -> dict:
    """The first event batch of the stream."""
    import tensorflow as tf

    for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(events_pattern)), "GZIP"):
        return tables.decode_event_batch(record.numpy())
    raise ValueError(f"no CR events in {events_pattern}")


@tfx.dsl.components.component(use_beam=True)
def CrossRepresentationAggregator(  # noqa: N802 (TFX component naming)
    representations: _InputArtifact[artifacts.Representations],
    cross_tables: _OutputArtifact[artifacts.CrossRepresentationTables],
    examples: _InputArtifact[standard_artifacts.Examples],
    half_life_seconds: _Parameter[float] = DEFAULT_HALF_LIFE_SECONDS,
    num_buckets: _Parameter[int] = 64,
    point_in_time_splits: _Parameter[str] = "",
    cr_domains: _Parameter[str] = cr_folding.DEFAULT,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """CR(u), CR(i) tables from the CR(u,i) events of `representations` (those of
    `cr_domains`)."""
    cr_folding.check(cr_domains)
    if int(representations.get_int_custom_property("skipped") or 0):
        cross_tables.set_int_custom_property("skipped", 1)
        return
    version = int(representations.get_int_custom_property("model_version"))
    cross_tables.set_int_custom_property("skipped", 0)
    cross_tables.set_int_custom_property("model_version", version)
    cross_tables.set_float_custom_property("half_life_seconds", float(half_life_seconds))
    cross_tables.set_string_custom_property("cr_domains", cr_domains)
    events = os.path.join(representations.uri, artifacts.CROSS_EVENTS, "*" + tables.FILE_SUFFIX)
    splits = [s.strip() for s in point_in_time_splits.split(",") if s.strip()]
    # One read of the first batch, only when needed: its domains (a stream without them is
    # refused before Beam runs) and the width of CR(u,i) (the point-in-time rows).
    first = _first_batch(events) if cr_folding.needs_domains(cr_domains) or splits else None
    if cr_folding.needs_domains(cr_domains):
        cr_folding.select_events(first, cr_domains)
    with beam_pipeline as p:
        batches = (
            p
            | "ReadEvents" >> beam.io.ReadFromTFRecord(events, compression_type="gzip")
            | "Decode" >> beam.Map(tables.decode_event_batch)
        )
        if splits:  # the point-in-time rows come from the same grouping of the events
            examples_in = {split: p | f"Read[{split}]" >> beam.io.ReadFromTFRecord(
                pattern, compression_type="gzip") for split, pattern in
                zip(splits, split_patterns(examples, ",".join(splits)), strict=True)}
            out = {"events": batches, "examples": examples_in} | "Aggregate" >> (
                AggregateWithPointInTime(
                    int(first["cross_representation"].shape[1]), half_life_seconds, num_buckets,
                    cr_domains=cr_domains))
            for split, rows in out["point_in_time"].items():
                _ = rows | f"WritePointInTime[{split}]" >> beam.io.WriteToTFRecord(
                    os.path.join(cross_tables.uri, POINT_IN_TIME, f"Split-{split}",
                                 artifacts.TABLE_PREFIX),
                    file_name_suffix=tables.FILE_SUFFIX, compression_type="gzip")
        else:
            out = batches | "Aggregate" >> AggregateCrossRepresentations(
                half_life_seconds, num_buckets, cr_domains=cr_domains)
        for side, table in (
            ("user", artifacts.CROSS_USER_TABLE),
            ("item", artifacts.CROSS_ITEM_TABLE),
        ):
            _ = out[side] | f"Write[{table}]" >> representation_tables.WriteRepresentationTable(
                os.path.join(cross_tables.uri, table, artifacts.TABLE_PREFIX), version)
    cross_tables.set_string_custom_property("point_in_time_splits", ",".join(splits))
    for table in (artifacts.CROSS_USER_TABLE, artifacts.CROSS_ITEM_TABLE):
        keys, *_ = tables.read_table(
            os.path.join(cross_tables.uri, table, "*" + tables.FILE_SUFFIX))
        cross_tables.set_int_custom_property(f"{table}_rows", int(len(keys)))
