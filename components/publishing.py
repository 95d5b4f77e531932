"""Publishing representation tables: the published layout, the LIVE pointer, the serving store.

A candidate version (the four tables of paper Fig. 4 in the extractor's and the aggregator's
artifacts) goes live when the RepresentationGuard publishes it (`publish_tables=1`) or, after
the guard passed it, when the LightweightEmbeddingEvaluator blesses it. Both publish with this
module. Published layout under `publish_root` (what the serving store bulk-loads):

    <publish_root>/<model_version>/{user,item,cross_user,cross_item}/part-*.tfrecord.gz
    <publish_root>/<model_version>/statistics.json     per-table TableStatistics
    <publish_root>/LIVE                                 the live version (one line)

A version directory is written under a temporary name and renamed when complete; `LIVE` is
replaced atomically last, so a reader never sees a half-published version. With a
`store_url`, a published version is then loaded into the serving store (`serving.store`, a
snapshot of the previous tables taken first).
"""

import json
import os
import shutil

from common.representations import tables
from common.representations.statistics import TableStatistics
from components import artifacts

LIVE_FILE = tables.LIVE_FILE
STATISTICS_FILE = "statistics.json"


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


def artifact_table_dirs(representations, cross_tables) -> dict[str, str]:
    """The four tables of a candidate version in the extractor's and the aggregator's
    artifacts (`{table: directory}`)."""
    return {
        artifacts.USER_TABLE: os.path.join(representations.uri, artifacts.USER_TABLE),
        artifacts.ITEM_TABLE: os.path.join(representations.uri, artifacts.ITEM_TABLE),
        artifacts.CROSS_USER_TABLE: os.path.join(cross_tables.uri, artifacts.CROSS_USER_TABLE),
        artifacts.CROSS_ITEM_TABLE: os.path.join(cross_tables.uri, artifacts.CROSS_ITEM_TABLE),
    }


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


def load_into_store(store_url: str, published_path: str, version: int) -> dict[str, int]:
    """Loads a published version into the serving store (`serving.store`), replacing its
    tables; a snapshot named `before-<version>` is taken first so the previous tables can be
    restored with `rollback`. Returns the rows loaded per table."""
    from serving.store import open_store

    store = open_store(store_url)
    try:
        if any(store.count(table) for table in artifacts.TABLES):
            store.snapshot(f"before-{version}")
        loaded = {}
        for table in artifacts.TABLES:
            pattern = os.path.join(published_path, table, "*" + tables.FILE_SUFFIX)
            # The guard already judged these tables against the live version.
            store.bulk_load(table, pattern, replace=True, guard=None)
            loaded[table] = store.count(table)
        return loaded
    finally:
        store.close()
