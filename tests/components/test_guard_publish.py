"""RepresentationGuard's publish step: corrupted tables are held and the live version stays."""

import hashlib
import os
import shutil

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf

from common.representations import tables
from common.representations.statistics import GuardThresholds
from components import artifacts
from components.publishing import LIVE_FILE, live_statistics, live_version
from components.representation_guard.component import guard_and_publish, verdict_statistics

pytestmark = pytest.mark.slow  # every test runs the guard's Beam pipeline (2-4 s each)


def _write_tables(root, matrices: dict[str, np.ndarray], version: int) -> dict[str, str]:
    dirs = {}
    for name, matrix in matrices.items():
        directory = root / name
        directory.mkdir(parents=True)
        rows = [tables.encode_row(f"k{i}", matrix[i], 1000 + i, version)
                for i in range(matrix.shape[0])]
        with tf.io.TFRecordWriter(str(directory / f"part-00000-of-00001{tables.FILE_SUFFIX}"),
                                  "GZIP") as w:
            for r in rows:
                w.write(r)
        dirs[name] = str(directory)
    return dirs


def _tables(seed: int, rows: int = 200, d: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(rows, d)).astype(np.float32) for name in artifacts.TABLES}


def _tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            h.update(path.encode())
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _guard(tmp_path, name, matrices, version, publish_root):
    dirs = _write_tables(tmp_path / name, matrices, version)
    work = tmp_path / f"{name}-work"
    work.mkdir()
    return guard_and_publish(dirs, version, str(publish_root), GuardThresholds(),
                             beam.Pipeline(), str(work))


@pytest.fixture(scope="module")
def first_publication(tmp_path_factory):
    """Version 1 guarded and published once for the module; each test gets its own copy."""
    tmp_path = tmp_path_factory.mktemp("first_publication")
    publish_root = tmp_path / "published"
    verdict = _guard(tmp_path, "v1", _tables(0), 1, publish_root)
    assert verdict["status"] == "published", verdict["reasons"]
    return publish_root


@pytest.fixture()
def published(tmp_path, first_publication):
    """A publish root of the test's own with version 1 live."""
    publish_root = tmp_path / "published"
    shutil.copytree(first_publication, publish_root)
    return publish_root


def test_first_version_is_published(published):
    assert live_version(str(published)) == 1
    stats = live_statistics(str(published))
    assert set(stats) == set(artifacts.TABLES) and stats["user"].rows == 200
    keys, matrix, _, versions = tables.read_table(
        str(published / "1" / "user" / ("*" + tables.FILE_SUFFIX)))
    assert len(keys) == 200 and set(versions.tolist()) == {1}
    np.testing.assert_allclose(np.sort(matrix, axis=None),
                               np.sort(_tables(0)["user"], axis=None))


def test_a_normal_new_version_is_published(tmp_path, published):
    verdict = _guard(tmp_path, "v2", _tables(1), 2, published)
    assert verdict["status"] == "published", verdict["reasons"]
    assert live_version(str(published)) == 2
    assert set(verdict["tables"]["user"]["rates"]) >= {"mean", "variance"}


def _first_principal_component(m: np.ndarray) -> np.ndarray:
    """`m` replaced by its projection on its first principal component, rescaled so that the
    entries' variance is unchanged: a collapse that mean, variance, L1 and extremes pass."""
    mean = m.mean(axis=0)
    centred = m - mean
    v = np.linalg.eigh(np.cov(centred, rowvar=False))[1][:, -1]  # [d], the top direction
    projected = np.outer(centred @ v, v)  # [rows, d]
    return (mean + projected * centred.std() / projected.std()).astype(np.float32)


@pytest.mark.parametrize("corruption, table", [
    ("nan", "user"), ("scaled_x100", "cross_item"), ("all_zeros", "item"),
    ("first_principal_component", "cross_user")])
def test_corrupted_tables_are_held(tmp_path, published, corruption, table):
    before = _tree_digest(str(published))
    matrices = _tables(2)
    m = matrices[table]
    if corruption == "nan":
        m[::7, 3] = np.nan
    elif corruption == "scaled_x100":
        matrices[table] = m * 100
    elif corruption == "first_principal_component":
        matrices[table] = _first_principal_component(m)
    else:
        matrices[table] = np.zeros_like(m)
    verdict = _guard(tmp_path, "bad", matrices, 3, published)
    assert verdict["status"] == "held"
    assert verdict["reasons"] and all(r.startswith(f"{table}:") for r in verdict["reasons"])
    if corruption == "first_principal_component":  # held for the collapse alone
        assert len(verdict["reasons"]) == 1 and "collapse: effective_rank" in verdict["reasons"][0]
        assert verdict["tables"][table]["statistics"]["effective_rank"] == pytest.approx(1.0)
    assert _tree_digest(str(published)) == before  # nothing written, nothing lost
    assert live_version(str(published)) == 1
    assert not (published / "3").exists()
    with open(published / LIVE_FILE) as f:
        assert f.read().strip() == "1"


def test_republishing_a_version_is_refused(tmp_path, published):
    verdict = _guard(tmp_path, "again", _tables(0), 1, published)
    assert verdict["status"] == "held"
    assert any("already published" in r for r in verdict["reasons"])


def test_passed_tables_are_left_for_the_evaluator_to_publish(tmp_path, published):
    """With `publish_tables=False` (the pipeline, when the embedding evaluator follows), tables
    that pass are marked `passed` with their statistics, and nothing is published."""
    before = _tree_digest(str(published))
    dirs = _write_tables(tmp_path / "v2", _tables(1), 2)
    (tmp_path / "v2-work").mkdir()
    verdict = guard_and_publish(dirs, 2, str(published), GuardThresholds(), beam.Pipeline(),
                                str(tmp_path / "v2-work"), publish_tables=False)
    assert verdict["status"] == "passed" and verdict["published_path"] is None
    assert _tree_digest(str(published)) == before and live_version(str(published)) == 1
    stats = verdict_statistics(verdict)
    assert set(stats) == set(artifacts.TABLES) and stats["user"].rows == 200
