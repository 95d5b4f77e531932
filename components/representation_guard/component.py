"""TFX component: RepresentationGuard (paper Sec. 4.3.2).

Statistics of each new table (UR, IR, CR(u), CR(i)) are compared with those of the live
published version (`judge`: rates of change and hard limits). Only when every table passes
are the tables published (`components.publishing`: the layout under `publish_root`, `LIVE`
replaced last, and with a `store_url` the serving store loaded); otherwise nothing changes
and the previous version stays live. With `publish_tables=0`, tables that pass are only
marked `passed` and the embedding evaluator (`components.lee`) publishes them. The verdict,
the reasons and the statistics are custom properties of the output artifact (ML Metadata) and
`verdict.json` in it.
"""


import json
import os

import apache_beam as beam
from tfx import v1 as tfx

from common.representations import tables
from common.representations.statistics import (
    STATUS_HELD,
    STATUS_PASSED,
    STATUS_PUBLISHED,
    GuardThresholds,
    TableStatistics,
    judge,
)
from components import artifacts
from components.publishing import (
    artifact_table_dirs,
    live_statistics,
    live_version,
    load_into_store,
    publish,
)
from components.representation_guard.beam_transforms import ComputeTableStatistics

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

VERDICT_FILE = "verdict.json"


def _decode_pairs(record: bytes):
    keys, matrix, _, _ = tables.decode_rows([record])
    return keys[0], matrix[0]


def table_statistics_beam(pipeline, table_dirs: dict[str, str], out_dir: str) -> dict:
    """Statistics of each table directory, computed with `ComputeTableStatistics` in Beam."""
    with pipeline as p:
        for name, directory in table_dirs.items():
            _ = (
                p
                | f"Read[{name}]" >> beam.io.ReadFromTFRecord(
                    os.path.join(directory, "*" + tables.FILE_SUFFIX), compression_type="gzip")
                | f"Decode[{name}]" >> beam.Map(_decode_pairs)
                | f"Statistics[{name}]" >> ComputeTableStatistics()
                | f"Json[{name}]" >> beam.Map(lambda s: json.dumps(s.to_dict()))
                | f"Write[{name}]" >> beam.io.WriteToText(
                    os.path.join(out_dir, f"statistics-{name}"), num_shards=1,
                    shard_name_template="", file_name_suffix=".json")
            )
    out = {}
    for name in table_dirs:
        with open(os.path.join(out_dir, f"statistics-{name}.json")) as f:
            out[name] = TableStatistics.from_dict(json.loads(f.read()))
    return out


def _record(result, verdict: dict) -> None:
    result.set_string_custom_property("verdict", verdict["status"])
    result.set_string_custom_property("reasons", json.dumps(verdict["reasons"]))
    result.set_string_custom_property("statistics", json.dumps(verdict["tables"]))
    result.set_int_custom_property("live_version", int(verdict["live_version"] or 0))
    if verdict.get("published_path"):
        result.set_string_custom_property("published_path", verdict["published_path"])
    os.makedirs(result.uri, exist_ok=True)
    with open(os.path.join(result.uri, VERDICT_FILE), "w") as f:
        json.dump(verdict, f, indent=1)


def guard_and_publish(
    table_dirs: dict[str, str],
    version: int,
    publish_root: str,
    thresholds: GuardThresholds,
    pipeline: beam.Pipeline,
    work_dir: str,
    publish_tables: bool = True,
) -> dict:
    """Judges the tables in `table_dirs` against the live version; publishes them if all pass
    (with `publish_tables=False` the status is then `passed` and a later check publishes).

    Returns the verdict dict (`status`, `reasons`, per-table `tables`, `live_version`,
    `candidate_version`, `published_path`). When held, nothing under `publish_root` changes.
    """
    os.makedirs(publish_root, exist_ok=True)
    verdict = {"status": STATUS_HELD, "reasons": [], "tables": {},
               "live_version": live_version(publish_root), "candidate_version": int(version),
               "published_path": None}
    statistics = table_statistics_beam(pipeline, table_dirs, work_dir)
    previous = live_statistics(publish_root)
    for name, stats in statistics.items():
        table_verdict = judge(stats, previous.get(name), thresholds)
        verdict["tables"][name] = {"statistics": stats.to_dict(), **table_verdict.to_dict()}
        verdict["reasons"] += [f"{name}: {reason}" for reason in table_verdict.reasons]
    if os.path.exists(os.path.join(publish_root, str(version))):
        verdict["reasons"].append(f"version {version} is already published")
    if not verdict["reasons"] and not publish_tables:
        verdict["status"] = STATUS_PASSED
    elif not verdict["reasons"]:
        verdict["published_path"] = publish(publish_root, version, table_dirs, statistics)
        verdict.update(status=STATUS_PUBLISHED, live_version=int(version))
    return verdict


def verdict_statistics(verdict: dict) -> dict[str, TableStatistics]:
    """The per-table statistics a verdict recorded (what `publish` writes beside the tables)."""
    return {name: TableStatistics.from_dict(table["statistics"])
            for name, table in verdict["tables"].items()}


def read_verdict(guard_result) -> dict:
    """The verdict a RepresentationGuard recorded in its output artifact."""
    with open(os.path.join(guard_result.uri, VERDICT_FILE)) as f:
        return json.load(f)


@tfx.dsl.components.component(use_beam=True)
def RepresentationGuard(  # noqa: N802 (TFX component naming)
    representations: _InputArtifact[artifacts.Representations],
    cross_tables: _InputArtifact[artifacts.CrossRepresentationTables],
    guard_result: _OutputArtifact[artifacts.GuardResult],
    publish_root: _Parameter[str],
    thresholds_json: _Parameter[str] = "{}",
    store_url: _Parameter[str] = "",
    publish_tables: _Parameter[int] = 1,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Publishes the four tables unless a statistic moved past its threshold (module doc);
    with `store_url`, a published version is also loaded into the serving store. With
    `publish_tables=0`, tables that pass are only marked `passed` (the embedding evaluator
    publishes them)."""
    thresholds = GuardThresholds(**json.loads(thresholds_json or "{}"))
    if int(representations.get_int_custom_property("skipped") or 0):
        verdict = {"status": STATUS_HELD, "tables": {}, "candidate_version": None,
                   "live_version": live_version(publish_root), "published_path": None,
                   "reasons": ["the model was not pushed (not blessed): nothing to publish"]}
        _record(guard_result, verdict)
        return
    table_dirs = artifact_table_dirs(representations, cross_tables)
    verdict = guard_and_publish(
        table_dirs, int(representations.get_int_custom_property("model_version")),
        publish_root, thresholds, beam_pipeline, guard_result.uri, bool(publish_tables))
    if store_url and verdict["published_path"]:
        verdict["store_rows"] = load_into_store(
            store_url, verdict["published_path"], int(verdict["candidate_version"]))
        guard_result.set_string_custom_property("store_url", store_url)
    _record(guard_result, verdict)
