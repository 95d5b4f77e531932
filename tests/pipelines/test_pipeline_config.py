"""`PipelineConfig`: the runners' flags build it (`--preset` first, then the flags given), and
`create_pipeline`'s keyword arguments of before build the same config."""

import pytest

from common import cli
from common.representations.statistics import GuardThresholds
from pipelines import configs
from pipelines.pipeline_config import PipelineConfig, VertexTraining, add_flags
from trainer.config import TrainConfig, from_preset
from trainer.downstream.config import DownstreamTrainConfig


def _config(argv: list[str]) -> PipelineConfig:
    parser = cli.ArgumentParser(prog="runner")
    return add_flags(parser).build(parser.parse_args(argv))


def test_flags_build_the_config_over_the_preset():
    config = _config(["--data", "d", "--preset", "paper", "--dropout", "0.1", "--epochs", "1",
                      "--guard_mean", "0.7", "--downstream_epochs", "3", "--lee_tolerance",
                      "none", "--downstream_mode", "none", "--cr_domains", "all"])
    paper_model, _ = from_preset("paper")
    assert config.data_root == "d" and config.preset == "paper"
    assert config.model == from_preset("paper", {"dropout": 0.1})[0] != paper_model
    assert config.train == TrainConfig(epochs=1)
    assert config.guard_thresholds == GuardThresholds(mean=0.7)
    assert config.downstream_train == DownstreamTrainConfig(epochs=3)
    assert (config.lee_tolerance, config.downstream_mode, config.cr_domains) == (None, None,
                                                                                 "all")
    # the Trainer gets the preset's name and what differs from it (and the pipeline's epochs)
    assert config.trainer_custom_config() == {"preset": "paper", "model": {"dropout": 0.1},
                                              "train": {"epochs": 1}}


def test_no_flag_is_the_defaults_and_legacy_arguments_build_the_same_config():
    assert _config([]) == PipelineConfig()
    assert PipelineConfig().trainer_custom_config() == {
        "preset": configs.PRESET, "model": configs.MODEL_OVERRIDES,
        "train": configs.TRAIN_OVERRIDES}
    legacy = PipelineConfig.from_arguments(
        "p", "root", "data", "serving", preset="paper", model_overrides={"dropout": 0.1},
        train_overrides={"epochs": 1}, guard_thresholds={"mean": 0.7},
        downstream_train_overrides={"epochs": 3},
        vertex_training={"project": "proj", "strategy": "multi_worker", "workers": 2})
    assert legacy == PipelineConfig(
        pipeline_name="p", pipeline_root="root", data_root="data", serving_root="serving",
        preset="paper", model=from_preset("paper", {"dropout": 0.1})[0],
        train=TrainConfig(epochs=1), guard_thresholds=GuardThresholds(mean=0.7),
        downstream_train=DownstreamTrainConfig(epochs=3),
        vertex=VertexTraining("proj", strategy="multi_worker", workers=2))
    assert PipelineConfig.from_arguments(legacy, eval_days=3.0).eval_days == 3.0


@pytest.mark.parametrize("argv, message", [
    (["--eval_days", "0"], "argument --eval_days: the eval window must be a positive number"),
    (["--mlp_hidden", ""], "mlp_hidden must have at least one layer, got ()"),
    (["--downstream_mode", "nope"], "downstream_mode must be one of"),
    (["--guard_mean", "-1"], "GuardThresholds.mean must be >= 0, got -1.0"),
    (["--cr_domains", "some"], "argument --cr_domains: invalid choice: 'some'"),
])
def test_a_bad_flag_is_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        _config(argv)
    assert error.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and message in line
