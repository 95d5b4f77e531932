"""`benchmarks.cr_choice`: the CR readings compared on the validation window, with intervals."""

import json

import pytest

from benchmarks import cr_choice

pytestmark = pytest.mark.slow  # trains an upstream per CR reading


def test_cr_choice_runs_on_tiny_data(downstream_data, capsys):
    assert cr_choice.main(["--data", downstream_data, "--split_days", "3,1,1", "--seeds", "1",
                           "--variants", "last,mlp_1_pre", "--upstream_epochs", "1",
                           "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["metric"] == "expected_auc" and result["cr_domains"] == "ad"
    default, candidate = result["summary"]
    assert (default["variant"], candidate["variant"]) == ("last", "mlp_1_pre")
    assert candidate["cr"]["dim"] == 256 and default["cr"]["dim"] == 64
    assert candidate["cr"]["dead_units"] == 0  # before the ReLU nothing is constant
    assert default["vs_first"]["mean"] == 0.0
    for row in result["summary"]:
        assert 0.0 <= row["validation"] <= 1.0
        assert row["vs_first"]["low"] <= row["vs_first"]["mean"] <= row["vs_first"]["high"]
    assert "vs first" in out and "test" not in json.dumps(result["runs"])
