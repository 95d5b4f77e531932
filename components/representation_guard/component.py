"""TFX component: RepresentationGuard (paper Sec. 4.3.2) and the published table layout.

Statistics of each new table (UR, IR, CR(u), CR(i)) are compared with those of the live
published version (`judge`: rates of change and hard limits). Only when every table passes
are the tables published; otherwise nothing changes and the previous version stays live.

Published layout under `publish_root` (what the serving store bulk-loads):

    <publish_root>/<model_version>/{user,item,cross_user,cross_item}/part-*.tfrecord.gz
    <publish_root>/<model_version>/statistics.json     per-table TableStatistics
    <publish_root>/LIVE                                 the live version (one line)

A version directory is written under a temporary name and renamed when complete; `LIVE` is
replaced atomically last, so a reader never sees a half-published version. The verdict, the
reasons and the statistics are custom properties of the output artifact (ML Metadata) and
`verdict.json` in it. With a `store_url`, a published version is then loaded into the
serving store (`serving.store`, a snapshot of the previous tables taken first).
"""


import json
import os
import shutil

import apache_beam as beam
from tfx import v1 as tfx

from components import artifacts as A
from components.representation_guard.beam_transforms import ComputeTableStatistics
from trainer.representations import tables as tables
from trainer.representations.statistics import (
    STATUS_HELD,
    STATUS_PASSED,
    STATUS_PUBLISHED,
    GuardThresholds,
    TableStatistics,
    judge,
)

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

LIVE_FILE = "LIVE"
STATISTICS_FILE = "statistics.json"
VERDICT_FILE = "verdict.json"


def live_version(publish_root: str) -> int | None:
    """The live published version, None before the first publication."""
    path = os.path.join(publish_root, LIVE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(f.read().strip())


def live_statistics(publish_root: str) -> dict[str, TableStatistics]:
    """Per-table statistics of the live version ({} before the first publication)."""
    version = live_version(publish_root)
    if version is None:
        return {}
    with open(os.path.join(publish_root, str(version), STATISTICS_FILE)) as f:
        return {name: TableStatistics.from_dict(d) for name, d in json.load(f).items()}


def _decode_pairs(record: bytes):
    keys, matrix, _, _ = tables.decode_rows([record])
    return keys[0], matrix[0]


def artifact_table_dirs(representations, cross_tables) -> dict[str, str]:
    """The four tables of a candidate version in the extractor's and the aggregator's
    artifacts (`{table: directory}`)."""
    return {
        A.USER_TABLE: os.path.join(representations.uri, A.USER_TABLE),
        A.ITEM_TABLE: os.path.join(representations.uri, A.ITEM_TABLE),
        A.CROSS_USER_TABLE: os.path.join(cross_tables.uri, A.CROSS_USER_TABLE),
        A.CROSS_ITEM_TABLE: os.path.join(cross_tables.uri, A.CROSS_ITEM_TABLE),
    }


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


def publish(publish_root: str, version: int, table_dirs: dict[str, str],
            statistics: dict[str, TableStatistics]) -> str:
    """Copies the tables to `<publish_root>/<version>/` and makes that version live."""
    final = os.path.join(publish_root, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"version {version} is already published at {final}")
    tmp = os.path.join(publish_root, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, directory in table_dirs.items():
        shutil.copytree(directory, os.path.join(tmp, name))
    with open(os.path.join(tmp, STATISTICS_FILE), "w") as f:
        json.dump({name: s.to_dict() for name, s in statistics.items()}, f, indent=1)
    os.rename(tmp, final)
    live_tmp = os.path.join(publish_root, LIVE_FILE + ".tmp")
    with open(live_tmp, "w") as f:
        f.write(f"{version}\n")
    os.replace(live_tmp, os.path.join(publish_root, LIVE_FILE))
    return final


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


def load_into_store(store_url: str, published_path: str, version: int) -> dict[str, int]:
    """Loads a published version into the serving store (`serving.store`), replacing its
    tables; a snapshot named `before-<version>` is taken first so the previous tables can be
    restored with `rollback`. Returns the rows loaded per table."""
    from serving.store import open_store

    store = open_store(store_url)
    try:
        if any(store.count(table) for table in A.TABLES):
            store.snapshot(f"before-{version}")
        loaded = {}
        for table in A.TABLES:
            pattern = os.path.join(published_path, table, "*" + tables.FILE_SUFFIX)
            # The guard above already judged these tables against the live version.
            store.bulk_load(table, pattern, replace=True, guard=None)
            loaded[table] = store.count(table)
        return loaded
    finally:
        store.close()


@tfx.dsl.components.component(use_beam=True)
def RepresentationGuard(  # noqa: N802 (TFX component naming)
    representations: _InputArtifact[A.Representations],
    cross_tables: _InputArtifact[A.CrossRepresentationTables],
    guard_result: _OutputArtifact[A.GuardResult],
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
