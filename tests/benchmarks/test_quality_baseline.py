"""`benchmarks.quality_baseline`: the simulator-shaped reference model trains on the same
time split as `trainer.train` and reports AUCs next to the oracle's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import quality_baseline
from pipelines.sources import synthetic

pytestmark = pytest.mark.slow  # every test trains the reference model


@pytest.fixture(scope="module")
def data_20k(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synthetic20k")
    synthetic.generate(str(out), examples=20_000, seed=5, days=14, progress=False)
    return str(out)


def test_the_baseline_learns_and_reports_the_oracle(data_20k):
    result = quality_baseline.run(data_20k, epochs=10, seed=0, verbose=False)
    assert len(result["history"]) == 10
    for key in ("auc_ad", "auc_content", "oracle_auc_ad", "oracle_auc_content"):
        assert 0.0 <= result[key] <= 1.0
    # 16k content rows are enough to learn the shared structure: close to the oracle there
    # (this run: 0.735 against 0.788)
    assert result["auc_content"] > 0.7
    assert result["oracle_auc_content"] - result["auc_content"] < 0.08


def test_runs_are_deterministic_by_seed(small_data):
    first = quality_baseline.run(small_data, epochs=1, seed=3, verbose=False)
    second = quality_baseline.run(small_data, epochs=1, seed=3, verbose=False)
    np.testing.assert_allclose(first["auc_content"], second["auc_content"])


def test_cli_json(small_data, capsys):
    assert quality_baseline.main(["--data", small_data, "--epochs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"auc_ad", "oracle_auc_ad", "history"} <= set(result)
    with pytest.raises(SystemExit):
        quality_baseline.main(["--data", small_data, "--epochs", "0"])
