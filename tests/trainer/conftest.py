"""Small synthetic data shared by the upstream-model tests (generated once per session)."""

import pytest

from pipelines.sources import synthetic
from trainer import data_input


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(out), examples=3000, seed=7, days=6)
    return str(out)


@pytest.fixture(scope="session")
def small_batch(small_data):
    files = data_input.list_files(small_data)
    return next(iter(data_input.make_dataset(files, 256)))
