"""What the pipeline is built from, as one frozen dataclass (`PipelineConfig`), and its flags.

`pipelines.pipeline.create_pipeline(config)` builds the pipeline of a `PipelineConfig`; both
runners build theirs from flags (`add_flags`, `PipelineFlags.build`): one flag per field
(`--data` for `data_root`), `--preset` and the fields of `ModelConfig` and `TrainConfig` for
the Trainer (as `python -m trainer.train`: a flag over the preset), `--guard_<field>` for
the RepresentationGuard's `GuardThresholds` and `--downstream_<field>` for the downstream
ranker's `DownstreamTrainConfig`. Every default is `pipelines.configs`'.

    config = PipelineConfig(data_root="data/synthetic", preset="paper",
                            train=TrainConfig(epochs=1), lee_tolerance=None)
    pipeline = create_pipeline(config, beam_pipeline_args=[...])
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from common import cli
from common.representations import cr_folding
from common.representations.statistics import GuardThresholds
from pipelines import configs
from trainer import config as trainer_config
from trainer.config import PRESETS, ModelConfig, TrainConfig, from_preset
from trainer.downstream import config as downstream_config
from trainer.downstream.config import DownstreamTrainConfig


@dataclasses.dataclass(frozen=True)
class VertexTraining:
    """The Trainer as a Vertex AI custom job (`pipelines.pipeline.vertex_trainer_config`): a
    chief, `workers` and `parameter_servers` of `machine_type`, each running `image`."""

    project: str
    region: str = "us-central1"
    image: str = ""
    strategy: str = "default"
    workers: int = 1
    parameter_servers: int = 0
    machine_type: str = "n1-standard-8"

    def __post_init__(self):
        strategy, workers, servers = self.strategy, self.workers, self.parameter_servers
        if strategy == "parameter_server" and (workers < 1 or servers < 1):
            raise ValueError("the parameter_server strategy needs workers >= 1 and "
                             f"parameter_servers >= 1, got {workers} and {servers}")
        if strategy != "parameter_server" and servers:
            raise ValueError(f"parameter_servers={servers} needs the parameter_server "
                             f"strategy, not {strategy!r}")
        if strategy in ("default", "mirrored") and workers != 1:
            raise ValueError(f"strategy {strategy!r} runs on one machine; workers={workers} "
                             "needs multi_worker or parameter_server")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Every input of `create_pipeline` but the run's ML Metadata and Beam arguments.

    Pushed models go to `<serving_root>/<model_name>/<version>`; the guarded representation
    tables to `publish_root` (default `<serving_root>/representations`) and, with `store_url`
    (`sqlite:///...` or `redis://...`), into the serving store. The last `eval_days` of the
    data are the eval split: the test rows of every gate.

    The Trainer trains `model` and `train` (None: the `preset`'s, with
    `configs.MODEL_OVERRIDES` / `configs.TRAIN_OVERRIDES` over it); its `custom_config` holds
    the preset's name and the fields that differ from it (`trainer_custom_config`), which
    `trainer.tfx.upstream_module.run_fn` reads with `trainer.config.from_preset`. The
    Evaluator blesses a model whose ad AUC is at least `auc_threshold` and not more than
    `auc_max_drop` below the last blessed one's.

    CR(u), CR(i) fold the CR(u,i) of the requests `cr_domains` selects (`"ad"`, paper Sec.
    4.3.1, or `"all"`) with half-life `cr_half_life_seconds`; `point_in_time_splits` get them
    as of before each row. The guard holds tables that moved more than `guard_thresholds`
    allow. Tables it passes are published when the embedding evaluator's paired comparison
    allows it (`components.lee`: shown better than the live tables or, with none live, not
    shown worse than no representations by more than `lee_tolerance`; `lee_config`:
    `components.lee.LeeConfig` field overrides); with `lee_tolerance=None` there is no
    evaluator and the guard publishes. When the tables went live, a downstream ranker in
    `downstream_mode` (None: none) trains with `downstream_train` on the last
    `downstream_train_days` before the eval split, is compared with the `none` baseline and
    the last blessed ranker (`components.blessing_gate`, tolerance `downstream_max_drop`) and
    pushed to `<serving_root>/<downstream_model_name>/<version>`. `vertex`: the Trainer runs
    as a Vertex AI custom job.
    """

    pipeline_name: str = configs.PIPELINE_NAME
    pipeline_root: str = configs.PIPELINE_ROOT
    data_root: str = configs.DATA_ROOT
    serving_root: str = configs.SERVING_ROOT
    model_name: str = configs.MODEL_NAME
    schema_file: str = configs.SCHEMA_FILE
    eval_days: float = configs.EVAL_DAYS
    preset: str = configs.PRESET
    model: ModelConfig | None = None
    train: TrainConfig | None = None
    auc_threshold: float = configs.AUC_AD_THRESHOLD
    auc_max_drop: float = configs.AUC_MAX_DROP
    cr_half_life_seconds: float = configs.CR_HALF_LIFE_SECONDS
    cr_domains: str = configs.CR_DOMAINS
    point_in_time_splits: str = configs.POINT_IN_TIME_SPLITS
    guard_thresholds: GuardThresholds = dataclasses.field(
        default_factory=lambda: GuardThresholds(**configs.GUARD_THRESHOLDS))
    lee_tolerance: float | None = configs.LEE_TOLERANCE
    lee_config: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: dict(configs.LEE_CONFIG))
    downstream_mode: str | None = configs.DOWNSTREAM_MODE
    downstream_model_name: str = configs.DOWNSTREAM_MODEL_NAME
    downstream_train_days: float = configs.DOWNSTREAM_TRAIN_DAYS
    downstream_train: DownstreamTrainConfig = dataclasses.field(
        default_factory=lambda: DownstreamTrainConfig(**configs.DOWNSTREAM_TRAIN_OVERRIDES))
    downstream_max_drop: float = configs.DOWNSTREAM_MAX_DROP
    publish_root: str | None = None
    store_url: str = ""
    enable_cache: bool = False
    vertex: VertexTraining | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets: {sorted(PRESETS)}")
        if not self.eval_days > 0:
            raise ValueError(f"eval_days must be a positive number of days, got "
                             f"{self.eval_days}")
        cr_folding.check(self.cr_domains)
        if self.downstream_mode is not None and \
                self.downstream_mode not in downstream_config.RANKER_MODES:
            raise ValueError(f"downstream_mode must be one of {downstream_config.RANKER_MODES} "
                             f"or None, got {self.downstream_mode!r}")
        for name, cls in (("model", ModelConfig), ("train", TrainConfig),
                          ("guard_thresholds", GuardThresholds),
                          ("downstream_train", DownstreamTrainConfig),
                          ("vertex", VertexTraining)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {value!r}")

    @classmethod
    def from_arguments(cls, *args: Any, **kwargs: Any) -> PipelineConfig:
        """A config from `create_pipeline`'s arguments: a `PipelineConfig` (with field
        overrides as keywords), or the fields as arguments, the first six also by position
        (`pipeline_name, pipeline_root, data_root, serving_root, model_name, schema_file`).
        The override dicts of before are taken too: `model_overrides`, `train_overrides`
        (over the preset), `guard_thresholds` and `downstream_train_overrides` (field dicts)
        and `vertex_training` (`VertexTraining` fields)."""
        base = None
        if args and isinstance(args[0], PipelineConfig):
            base, args = args[0], args[1:]
        positional = ("pipeline_name", "pipeline_root", "data_root", "serving_root",
                      "model_name", "schema_file")
        if (base is not None and args) or len(args) > len(positional):
            raise TypeError(f"positional arguments: a PipelineConfig, or at most "
                            f"{positional}; got {args!r}")
        both = sorted(set(positional[:len(args)]) & set(kwargs))
        if both:
            raise TypeError(f"{both} given by position and by name")
        kwargs = {**dict(zip(positional[:len(args)], args, strict=True)), **kwargs}
        preset = kwargs.get("preset", base.preset if base is not None else configs.PRESET)
        model_overrides = kwargs.pop("model_overrides", None)
        train_overrides = kwargs.pop("train_overrides", None)
        if model_overrides is not None or train_overrides is not None:
            model, train = from_preset(
                preset, configs.MODEL_OVERRIDES if model_overrides is None else model_overrides,
                configs.TRAIN_OVERRIDES if train_overrides is None else train_overrides)
            if model_overrides is not None:
                kwargs["model"] = model
            if train_overrides is not None:
                kwargs["train"] = train
        if isinstance(kwargs.get("guard_thresholds"), Mapping):
            kwargs["guard_thresholds"] = GuardThresholds(**kwargs["guard_thresholds"])
        overrides = kwargs.pop("downstream_train_overrides", None)
        if overrides is not None:
            kwargs["downstream_train"] = DownstreamTrainConfig(**overrides)
        vertex = kwargs.pop("vertex_training", None)
        if vertex is not None:
            kwargs["vertex"] = VertexTraining(**vertex)
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)

    def arguments(self, *leave_out: str) -> dict[str, Any]:
        """The fields as keyword arguments (of `create_pipeline`, or a runner's `run` that
        passes them on), but `leave_out`; sub-configs as they are (not as dicts)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in leave_out}

    def trainer_configs(self) -> tuple[ModelConfig, TrainConfig]:
        """The configs the Trainer trains with."""
        model, train = from_preset(self.preset, configs.MODEL_OVERRIDES, configs.TRAIN_OVERRIDES)
        return self.model or model, self.train or train

    def trainer_custom_config(self) -> dict:
        """The Trainer's `custom_config`: the preset's name, and the `model` / `train` fields
        that differ from it or that `configs.MODEL_OVERRIDES` / `TRAIN_OVERRIDES` set (the
        pipeline's own defaults, always stated)."""
        model, train = from_preset(self.preset)
        model_config, train_config = self.trainer_configs()
        return {
            "preset": self.preset,
            "model": {**{k: getattr(model_config, k) for k in configs.MODEL_OVERRIDES},
                      **changed_fields(model_config, model)},
            "train": {**{k: getattr(train_config, k) for k in configs.TRAIN_OVERRIDES},
                      **changed_fields(train_config, train)},
        }


def changed_fields(config: Any, reference: Any) -> dict[str, Any]:
    """The fields of the dataclass `config` whose value differs from `reference`'s."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(reference, f.name)}


# --------------------------------------------------------------------------------------- flags

FLAG_HELP = {
    "pipeline_name": "the pipeline's name in ML Metadata",
    "pipeline_root": "artifacts (and, locally, the SQLite ML Metadata file)",
    "data_root": "directory of the data's TFRecord shards",
    "serving_root": "pushed models go to <serving_root>/<model_name>/<version>",
    "model_name": "the upstream model's name under --serving_root",
    "schema_file": "the curated schema (schema.pbtxt)",
    "eval_days": "the eval window: the last days of the data, every gate's test rows (more "
                 "clicks in it resolve smaller differences; LFM4ADS_EVAL_DAYS)",
    "preset": "the Trainer's configuration to start from (trainer.config.PRESETS)",
    "auc_threshold": "the Evaluator blesses an ad AUC of at least this",
    "auc_max_drop": "the Evaluator blesses an ad AUC at most this below the last blessed "
                    "model's",
    "cr_half_life_seconds": "half-life of the CR(u), CR(i) aggregation (Eq. 1-2)",
    "cr_domains": "the requests whose CR(u,i) folds into CR(u), CR(i): ad (paper Sec. 4.3.1) "
                  "or all (content too); the aggregator, DownstreamExamples and the online "
                  "check alike",
    "point_in_time_splits": "splits whose rows get CR(u), CR(i) as of before each row",
    "lee_tolerance": "the embedding evaluator's tolerance (none: no evaluator, the guard "
                     "publishes)",
    "downstream_mode": "the downstream ranker's mode (none: no ranker)",
    "downstream_model_name": "the downstream ranker's name under --serving_root",
    "downstream_train_days": "days before the eval split the downstream ranker trains on",
    "downstream_max_drop": "the BlessingGate's tolerance (AUC)",
    "publish_root": "where guarded tables are published (none: "
                    "<serving_root>/representations)",
    "store_url": "the serving store the published tables go into (sqlite:///... or "
                 "redis://...; empty: none)",
    "enable_cache": "TFX's component cache",
}
# TrainConfig fields the TFX Trainer does not read (`trainer.tfx.upstream_module.run_fn`): the
# pipeline splits the data (`eval_days` is the pipeline's own flag), Transform computes the
# vocabularies, and the Trainer's summaries go to its model_run_dir.
TRAIN_FIELDS_NOT_IN_THE_PIPELINE = ("eval_days", "skip_last_days", "validation_days", "patience",
                                    "vocabularies", "tensorboard_dir")
_SUB_CONFIGS = ("model", "train", "guard_thresholds", "lee_config", "downstream_train",
                "vertex")


def positive_days(text: str) -> float:
    """A flag's number of days: refused at parse time unless positive."""
    days = float(text)
    if not days > 0:
        raise argparse.ArgumentTypeError(f"the eval window must be a positive number of days, "
                                         f"got {text}")
    return days


@dataclasses.dataclass(frozen=True)
class PipelineFlags:
    """The flags `add_flags` made: reads a `PipelineConfig` back from the parsed namespace."""

    pipeline: cli.ConfigFlags
    model: cli.ConfigFlags
    train: cli.ConfigFlags
    guard: cli.ConfigFlags
    downstream_train: cli.ConfigFlags

    def given(self, args: argparse.Namespace) -> set[str]:
        """The `PipelineConfig` fields given on the command line."""
        return set(self.pipeline.given(args))

    def build(self, args: argparse.Namespace, **fields: Any) -> PipelineConfig:
        """The config: the defaults, `fields`, then the flags given (the Trainer's: the preset,
        `configs.MODEL_OVERRIDES` / `TRAIN_OVERRIDES`, then the model and train flags given); a
        value refused is a bad flag (`common.cli.fail`)."""
        values = {**fields, **self.pipeline.given(args)}
        model, train = self.model.given(args), self.train.given(args)
        try:
            if model or train:
                values["model"], values["train"] = from_preset(
                    values.get("preset", configs.PRESET), {**configs.MODEL_OVERRIDES, **model},
                    {**configs.TRAIN_OVERRIDES, **train})
        except ValueError as e:
            cli.fail(str(e))
        values["guard_thresholds"] = self.guard.build(args, values.get(
            "guard_thresholds", GuardThresholds(**configs.GUARD_THRESHOLDS)))
        values["downstream_train"] = self.downstream_train.build(args, values.get(
            "downstream_train", DownstreamTrainConfig(**configs.DOWNSTREAM_TRAIN_OVERRIDES)))
        try:
            return PipelineConfig(**values)
        except (TypeError, ValueError) as e:
            cli.fail(str(e))


def add_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = (),
              help_texts: Mapping[str, str] | None = None) -> PipelineFlags:
    """The runners' flags (module doc): `PipelineConfig`'s fields but `skip`, `--data` for
    `data_root`, and the Trainer's, the guard's and the downstream ranker's."""
    return PipelineFlags(
        pipeline=cli.add_dataclass_flags(
            parser, PipelineConfig, skip=(*_SUB_CONFIGS, *skip), rename={"data_root": "data"},
            help_texts={**FLAG_HELP, **(help_texts or {})},
            choices={"preset": sorted(PRESETS), "cr_domains": cr_folding.CHOICES},
            converters={"eval_days": positive_days}, title="the pipeline"),
        model=cli.add_dataclass_flags(parser, ModelConfig, help_texts=trainer_config.FLAG_HELP,
                                      choices=trainer_config.FLAG_CHOICES,
                                      title="the Trainer's ModelConfig fields (over --preset)"),
        train=cli.add_dataclass_flags(parser, TrainConfig, skip=TRAIN_FIELDS_NOT_IN_THE_PIPELINE,
                                      help_texts=trainer_config.FLAG_HELP,
                                      choices=trainer_config.FLAG_CHOICES,
                                      title="the Trainer's TrainConfig fields (over --preset)"),
        guard=cli.add_dataclass_flags(parser, GuardThresholds, prefix="guard_",
                                      title="the RepresentationGuard's GuardThresholds"),
        downstream_train=cli.add_dataclass_flags(
            parser, DownstreamTrainConfig, prefix="downstream_",
            title="the downstream ranker's DownstreamTrainConfig"),
    )
