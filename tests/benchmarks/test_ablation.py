"""`benchmarks.ablation --quick` end to end on tiny data: every mode, layer, domain and masked
group trains and reports."""

import json

import numpy as np
import pytest

from benchmarks import ablation
from common import signatures
from trainer.downstream import config as downstream_config


@pytest.mark.slow
def test_quick_ablation_reports_every_row(downstream_data, capsys):
    assert ablation.main(["--data", downstream_data, "--split_days", "3,1,1", "--seeds", "1",
                          "--quick", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["rows"]) == set(downstream_config.MODES) | {ablation.IIM_WARM}
    for mode, row in result["rows"].items():
        assert row["runs"] == 1, mode
        assert 0.0 <= row["auc"] <= 1.0, mode
        assert row["expected_auc"] is not None, mode  # the synthetic oracle is read
    assert (
        result["rows"][downstream_config.RETRIEVAL]["logloss"] is None
    )  # a score, not a probability
    assert result["rows"][downstream_config.RETRIEVAL]["recall_at_10"] is not None
    # candidates: every item known before the test window, not only the window's own
    assert result["rows"][downstream_config.RETRIEVAL]["recall_candidates"] > 0
    params = {m: r["trainable_parameters"] for m, r in result["rows"].items()}
    assert (
        params[downstream_config.NONE]
        < params[downstream_config.UR]
        < params[downstream_config.UR_IR]
        < params[downstream_config.LFM4ADS]
        < params[downstream_config.FINETUNE]
    ), params
    assert set(result["transfer_ratio"]) <= set(result["rows"]) | {ablation.IIM_WARM}
    assert set(result["layers"]) == {"embedding", "mlp_3"}
    assert set(result["domains"]) == {"content only", "ads only", "both"}
    assert {"UR", "IR", "CR(u)", "CR(i)", "ids", "all representations"} <= set(
        result["importance"])
    assert result["test_rows"] > 0 and result["train_rows"] > 0
    assert "Table 1" in out and "Fig. 5" in out and "Orderings" in out
    assert {o["worse"] for o in result["orderings"]} >= {downstream_config.NONE,
                                                         downstream_config.UR,
                                                         downstream_config.CR_LINEAR}


def test_orderings_are_paired_by_seed():
    runs = {
        downstream_config.LFM4ADS: [
            {"expected_auc": 0.60, "auc": 0.7},
            {"expected_auc": 0.62, "auc": 0.7},
        ],
        downstream_config.NONE: [
            {"expected_auc": 0.58, "auc": 0.6},
            {"expected_auc": 0.63, "auc": 0.6},
        ],
    }
    (row,) = ablation.orderings(runs)  # the other orderings lack their rows
    assert (row["better"], row["worse"], row["metric"]) == (downstream_config.LFM4ADS,
                                                            downstream_config.NONE, "expected_auc")
    # per seed: +0.02 and -0.01 -> mean 0.005, std 0.015, holds on one seed of two
    assert abs(row["difference"] - 0.005) < 1e-12 and abs(row["std"] - 0.015) < 1e-12
    assert (row["seeds_holding"], row["seeds"]) == (1, 2)
    # its interval: the seeds' spread (ddof 1) with a t quantile, here wide and not resolved
    assert row["interval"]["se"] == pytest.approx(np.std([0.02, -0.01], ddof=1) / np.sqrt(2))
    assert not row["interval"]["holds"] and not row["test_sampling"]
    full = {"mean": 0.005, "low": 0.001, "high": 0.009, "se": 0.002, "holds": True, "seeds": 2}
    (merged,) = ablation.with_intervals([row], {"lfm4ads - none": full})
    assert merged["interval"] == full and merged["test_sampling"]
    (alone,) = ablation.orderings({k: v[:1] for k, v in runs.items()})
    assert alone["interval"] is None  # one seed: no spread to build an interval on
    no_oracle = {k: [{"expected_auc": None, "auc": r["auc"]} for r in v] for k, v in runs.items()}
    assert ablation.orderings(no_oracle)[0]["metric"] == "auc"


def test_ablate_takes_exactly_one_data_source():
    with pytest.raises(ValueError, match="give one of dataset"):
        ablation.ablate()
    with pytest.raises(ValueError, match="give one of dataset"):
        ablation.ablate(dataset="synthetic", data="some/dir")


@pytest.mark.slow
def test_cr_study_under_a_daily_upstream(downstream_data, capsys):
    """`--cr_study --upstream daily` trains only the CR rows (and `distill`) on every row after
    the upstream's first days, with the paper's CR reading given as JSON; the result has the
    masking and ordering intervals and what each representation holds."""
    assert ablation.main(["--data", downstream_data, "--split_days", "2,2,1", "--seeds", "2",
                          "--quick", "--cr_study", "--cr_domains", "all", "--upstream_model",
                          '{"cr_layer": null, "cr_activation": "post"}', "--upstream", "daily",
                          "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert (
        set(result["rows"]) == set(ablation.CR_STUDY_ROWS)
        and downstream_config.DISTILL in result["rows"]
    )
    assert result["layers"] == {} and set(result["domains"]) == {"both"}
    assert result["settings"]["upstream_model"]["cr_layer"] is None
    assert result["settings"]["cr_domains"] == "all"
    assert result["settings"]["upstream"] == "daily" and "upstream daily" in out
    # two seeds, each pretrained on days 1-2 and then updated after days 3, 4 and 5
    assert result["upstream_updates"] == 2 * 3
    split = result["split"]
    assert split["train"][0] == split["upstream_end"]  # the rankers train from day 3 on
    assert {"masked CR(u)+CR(i)", "lfm4ads - cr_latest", "lfm4ads - cr_linear",
            "lfm4ads - ur_ir", "lfm4ads - distill", "distill - none"} <= set(
                result["intervals"])
    for name, i in result["intervals"].items():
        assert i["low"] <= i["mean"] <= i["high"] and i["seeds"] == 2, name
        assert i["holds"] == (i["low"] > 0 or i["high"] < 0), name
    reps = result["representations"]
    assert reps["cr"]["dim"] == 64 and reps["ur"]["rows"] == reps["cr"]["rows"] > 0
    assert "95% intervals" in out and "What each representation holds" in out


def test_ur_ir_reads_ur_and_ir_and_no_cr():
    config = downstream_config.DownstreamConfig(mode=downstream_config.UR_IR)
    assert config.representation_features == config.dense_features == (
        signatures.UR_FEATURE, signatures.IR_FEATURE)
    lfm4ads = downstream_config.DownstreamConfig(mode=downstream_config.LFM4ADS)
    assert set(lfm4ads.representation_features) - set(config.representation_features) == {
        signatures.CR_USER_FEATURE, signatures.CR_ITEM_FEATURE}  # lfm4ads - ur_ir: CR's own share


def test_a_bad_upstream_field_is_named(downstream_data):
    with pytest.raises(TypeError, match="cr_layers"):
        ablation.ablate(data=downstream_data, split_days="3,1,1", seeds=1, quick=True,
                        upstream_model={"cr_layers": "mlp_1"})


def test_transfer_ratio_is_the_share_of_the_upstreams_gain():
    runs = {downstream_config.NONE: [{"expected_auc": 0.60}, {"expected_auc": 0.60}],
            downstream_config.LFM4ADS: [{"expected_auc": 0.62}, {"expected_auc": 0.61}]}
    reference = [{"expected_auc": 0.64}, {"expected_auc": 0.59}]  # seed 2: no upstream gain
    ratios = ablation.transfer_ratios(runs, reference)
    assert ratios[downstream_config.LFM4ADS] == pytest.approx(
        0.5
    )  # (0.62 - 0.60) / (0.64 - 0.60); seed 2 out
    assert ratios[downstream_config.NONE] == 0.0
    assert ablation.transfer_ratios(runs,
                                    [{"expected_auc": 0.5}] * 2)[downstream_config.LFM4ADS] is None


def test_synthetic_studies_read_one_held_out_world_per_seed(monkeypatch, downstream_data):
    """Without --sim_seed, study seed s reads the simulator's world 101 + s; with one, every
    seed reads that world."""
    worlds, runs = [], []
    monkeypatch.setattr(ablation.datasets, "prepare",
                        lambda dataset, cache, examples, seed, world: worlds.append(seed)
                        or downstream_data)
    monkeypatch.setattr(ablation.Ablation, "__init__",
                        lambda self, data, split, seeds, *a, **k: runs.append(seeds))
    monkeypatch.setattr(ablation.Ablation, "run", lambda self, study: {})
    result = ablation.ablate(dataset="synthetic", seeds=3, split_days="3,1,1")
    assert worlds == [101, 102, 103] and runs == [[0], [1], [2]]
    assert result["settings"]["sim_seeds"] == [101, 102, 103]
    worlds.clear(), runs.clear()
    result = ablation.ablate(dataset="synthetic", seeds=3, split_days="3,1,1", sim_seed=1)
    assert worlds == [1] and runs == [[0, 1, 2]] and result["settings"]["sim_seeds"] == [1]
    with pytest.raises(ValueError, match="upstream must be one of"):
        ablation.ablate(dataset="synthetic", upstream="weekly")
