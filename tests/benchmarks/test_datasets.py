"""`benchmarks.datasets`: one cached data directory per source, size, seed and world."""

import json
from pathlib import Path

import pytest

from benchmarks import datasets
from pipelines.sources.output_dir import MANIFEST


def test_benchmark_datasets_keep_one_directory_per_world(tmp_path):
    data = datasets.prepare("synthetic", str(tmp_path), examples=600, seed=2, world="dynamic")
    assert Path(data).name == "synthetic-dynamic-600-seed2"
    assert json.loads((Path(data) / MANIFEST).read_text())["world"] == "dynamic"
    data = datasets.prepare("synthetic", str(tmp_path), examples=600, seed=2)
    assert Path(data).name == "synthetic-600-seed2"  # the name it had before worlds
    assert json.loads((Path(data) / MANIFEST).read_text())["world"] == "two_tower"
    with pytest.raises(ValueError, match="unknown world 'static'"):
        datasets.prepare("synthetic", str(tmp_path), world="static")
