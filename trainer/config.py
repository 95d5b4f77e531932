"""Hyperparameters of the upstream model and of training, as data (one place reads them)."""

from __future__ import annotations

import dataclasses
import re

from common import cli

INTERACTIONS = ("cross", "cross_mix", "fm")
BRANCHES = ("dual", "shared")
MLP_NORMALIZATIONS = ("none", "layer")  # trainer.mlp.NORMALIZATIONS
CR_ACTIVATIONS = ("post", "pre")
CR_NORMALIZATIONS = ("none", "l2")
STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")  # trainer.distribute
_CR_LAYER = re.compile(r"^(embedding|cross_(\d+)|mlp_(\d+))$")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The triple-tower model (paper Sec. 3.1, Fig. 2).

    `cr_layer` picks where the cross representation CR(u,i) is read in the ad branch
    (paper Sec. 3.3 and 5.1.3): `embedding` (the branch input: [UR, IR, field embeddings]),
    `cross_<l>` (output of interaction layer l, 1-based) or `mlp_<l>` (output of hidden MLP
    layer l, 1-based). `None` means the paper's choice, the penultimate MLP layer, i.e. the
    last hidden layer before the logit. How it is read:
      * `cr_activation`: `post` (the layer's output) or `pre` (an MLP layer's input to its
        ReLU, so no unit reads as a constant 0; the embedding and the interaction layers have
        no activation and read the same either way);
      * `cr_normalization`: `none` or `l2` (each CR(u,i) scaled to unit length);
      * `mlp_normalization`: `none` or `layer` (a LayerNormalization before every ReLU of the
        branches' MLPs: part of the model, not of the read; `trainer.mlp.MLP`).
    The read CR is the `cr` output of `trainer.mix_tower.MixBranch`. The default reads the
    FIRST hidden MLP layer before its ReLU (`cr_layer="mlp_1"`, `cr_activation="pre"`): the
    paper's reading (the `paper` preset: the last hidden layer after its ReLU) collapses here,
    with half its units dead and one direction holding 90-99% of the variance, and the default
    is the one reading of those measured that has no dead unit and a participation ratio at
    least half of UR's on the simulator's two worlds and MovieLens-100K; the downstream
    validation windows did not tell the readings apart (docs/BENCHMARKS.md, "Where CR is
    read").

    Choices this implementation adds to the paper's Fig. 2, each measured in
    `docs/BENCHMARKS.md` (small ad data over-fits through ids):
      * `ur_ir_product`: the branch input also holds `UR * IR` (elementwise);
      * `affinity_logit`: each head's logit adds a learned weighting of `UR * IR`, i.e. a
        weighted `<UR, IR>`, so both domains train the towers' user-item affinity;
      * `mix_id_fields`: whether the `user_id`/`item_id` embeddings also enter the branches
        directly (default: no, ids reach them only through UR and IR);
      * `id_dropout`: in training, each `user_id`/`item_id` is hidden (mapped to the learned
        "missing" id) with this probability; id tables start at zero, so an id never trained
        contributes nothing (cold start). 1.0 trains on features and history only.
      * `ad_tower_gradient_scale`: scale of the ad branch's gradient into the shared towers and
        embeddings (1.0: the paper, both domains train UR/IR; 0.0: only content trains them and
        the ad branch learns on top, which over-fits far less when ad data is small). Dual
        branches only.
      * `feature_path`: every head's logit also adds the shallow path of
        `trainer.feature_path` (`alpha_h * cos(U, V)` of user- and item-feature embeddings
        `feature_path_dim` wide, plus scenario and advertiser biases on the click heads, with an
        L2 penalties `feature_path_bias_l2 * sum(b^2)` on the biases and
        `feature_path_embedding_l2 * sum(E^2)` on the embedding tables); it has
        no ids and learns from both domains. `feature_path_user_fields`,
        `feature_path_item_fields` and `feature_path_bias_fields` name the fields of `U`, `V`
        and the biases (defaults: the demographic, category/tag and scenario/advertiser
        fields: the fields the simulator draws clicks from, see `docs/BENCHMARKS.md`).
        `TrainConfig.feature_path_epochs` trains it first, alone, and then keeps it fixed
        while `fit` trains the rest on top.
    `embedding_l2` adds `l2 * mean_batch(sum_f ||e_f||^2)` to the loss.
    """

    embedding_dim: int = 16
    embedding_l2: float = 0.0
    id_dropout: float = 0.5
    ad_tower_gradient_scale: float = 1.0
    feature_path: bool = False
    feature_path_dim: int = 8
    feature_path_bias_l2: float = 1e-4
    feature_path_embedding_l2: float = 1e-3
    feature_path_user_fields: tuple[str, ...] = ("user_age", "user_gender", "user_geo")
    feature_path_item_fields: tuple[str, ...] = ("item_category", "item_tags")
    feature_path_bias_fields: tuple[str, ...] = ("scenario", "item_advertiser")
    user_id_buckets: int = 100_000
    item_id_buckets: int = 50_000
    category_buckets: int = 1_000
    tag_buckets: int = 2_000
    advertiser_buckets: int = 2_000
    geo_buckets: int = 1_000
    gender_buckets: int = 16
    scenario_buckets: int = 64
    age_buckets: int = 16
    tower_hidden: tuple[int, ...] = (128,)
    representation_dim: int = 32
    ur_ir_product: bool = True
    affinity_logit: bool = True
    mix_id_fields: bool = False
    interaction: str = "cross"
    num_interaction_layers: int = 2
    cross_projection_dim: int | None = None
    num_experts: int = 4
    low_rank: int = 32
    mlp_hidden: tuple[int, ...] = (256, 128, 64)
    branches: str = "dual"
    cr_layer: str | None = "mlp_1"
    cr_activation: str = "pre"
    cr_normalization: str = "none"
    mlp_normalization: str = "none"
    dropout: float = 0.0

    def __post_init__(self):
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if not self.mlp_hidden:
            raise ValueError("mlp_hidden must have at least one layer, got ()")
        for name, allowed in (("cr_activation", CR_ACTIVATIONS),
                              ("cr_normalization", CR_NORMALIZATIONS),
                              ("mlp_normalization", MLP_NORMALIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("embedding_dim", "representation_dim", "num_interaction_layers",
                     "feature_path_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("feature_path_user_fields", "feature_path_item_fields"):
            if not getattr(self, name):
                raise ValueError(f"{name} must name at least one feature, got ()")
        for name in ("feature_path_bias_l2", "feature_path_embedding_l2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.id_dropout <= 1.0:
            raise ValueError(f"id_dropout must be in [0, 1], got {self.id_dropout}")
        if not 0.0 <= self.ad_tower_gradient_scale <= 1.0:
            raise ValueError(
                f"ad_tower_gradient_scale must be in [0, 1], got {self.ad_tower_gradient_scale}"
            )
        if self.branches == "shared" and self.ad_tower_gradient_scale != 1.0:
            raise ValueError(
                "ad_tower_gradient_scale needs branches='dual' (one shared branch serves both "
                f"domains), got {self.ad_tower_gradient_scale} with branches='shared'"
            )
        self.resolved_cr_layer()  # validates cr_layer

    @classmethod
    def from_dict(cls, config: dict) -> ModelConfig:
        """From `dataclasses.asdict` output read back from JSON (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    @property
    def num_cross_outputs(self) -> int:
        return 1 if self.interaction == "fm" else self.num_interaction_layers

    def cr_output(self) -> str:
        """The `MixBranch` output the CR is read from before `cr_normalization`:
        `resolved_cr_layer()`, or `pre_mlp_<l>` with `cr_activation='pre'` (the embedding and
        the interaction layers have no activation: `pre` reads them as they are)."""
        layer = self.resolved_cr_layer()
        return f"pre_{layer}" if self.cr_activation == "pre" and layer.startswith("mlp_") else (
            layer)

    def resolved_cr_layer(self) -> str:
        """The CR extraction point as `embedding`, `cross_<l>` or `mlp_<l>`."""
        if self.cr_layer is None:
            return f"mlp_{len(self.mlp_hidden)}"
        match = _CR_LAYER.match(self.cr_layer)
        if not match:
            raise ValueError(
                f"cr_layer must be 'embedding', 'cross_<l>' or 'mlp_<l>', got {self.cr_layer!r}"
            )
        if match.group(2) is not None and not 1 <= int(match.group(2)) <= self.num_cross_outputs:
            raise ValueError(
                f"cr_layer {self.cr_layer!r} is out of range: the interaction stack has "
                f"{self.num_cross_outputs} layer(s), numbered from 1"
            )
        if match.group(3) is not None and not 1 <= int(match.group(3)) <= len(self.mlp_hidden):
            raise ValueError(
                f"cr_layer {self.cr_layer!r} is out of range: the MLP has "
                f"{len(self.mlp_hidden)} hidden layer(s), numbered from 1"
            )
        return self.cr_layer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training and evaluation (time-based split: the last `eval_days` are held out)."""

    epochs: int = 2
    batch_size: int = 1024
    learning_rate: float = 2e-3
    eval_days: float = 1.0
    # > 0: the data's last `skip_last_days` are left out entirely before the split (a backtest
    # on an earlier window; `trainer.train` only).
    skip_last_days: float = 0.0
    # > 0: the `validation_days` before the eval window are held out of training; training
    # stops when the validation ad AUC has not improved for `patience` epochs and keeps the
    # best epoch's weights (at most `epochs` epochs).
    validation_days: float = 0.0
    patience: int = 2
    shuffle_buffer: int = 100_000
    conversion_loss_weight: float = 0.5
    retrieval_loss_weight: float = 0.0
    # With ModelConfig.feature_path: > 0 trains the path alone for this many epochs first
    # (Adam, learning rate cosine-decayed from `feature_path_learning_rate` to 0), then freezes
    # it for `fit`; 0 trains it jointly with the rest in `fit`.
    feature_path_epochs: int = 30
    feature_path_learning_rate: float = 0.02
    # `trainer.train` only: ids of the string features from vocabularies counted on the
    # training split, as the pipeline's Transform computes them (`trainer.vocabulary`), rather
    # than hashed into `ModelConfig.*_buckets` (hashing merges colliding values). The TFX
    # pipeline always uses its Transform's vocabularies.
    vocabularies: bool = True
    seed: int = 0
    # Distribution (`trainer.distribute`): one of STRATEGIES, the cluster from TF_CONFIG.
    # Under `parameter_server`, variables of at least `min_shard_bytes` are split across at
    # most `variable_shards` parameter servers (0: all of them), and an epoch is
    # `steps_per_epoch` steps of `batch_size` (0: one pass over the training rows).
    strategy: str = "default"
    variable_shards: int = 0
    min_shard_bytes: int = 256 << 10
    steps_per_epoch: int = 0
    # `trainer.train` only: TensorBoard summaries (each epoch's loss and metrics) go to a
    # directory per run, named by its start time, in this directory under `--export_dir` (an
    # absolute path or URL as is); empty: none. The TFX Trainer writes them to its
    # `model_run_dir` instead.
    tensorboard_dir: str = "logs"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "min_shard_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("variable_shards", "steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; strategies: {list(STRATEGIES)}")
        if self.skip_last_days < 0:
            raise ValueError(f"skip_last_days must be >= 0, got {self.skip_last_days}")
        if self.feature_path_epochs < 0:
            raise ValueError(f"feature_path_epochs must be >= 0, got {self.feature_path_epochs}")
        if self.feature_path_learning_rate <= 0:
            raise ValueError(
                f"feature_path_learning_rate must be > 0, got {self.feature_path_learning_rate}")


# Named starting points; a CLI flag or a `custom_config` entry overrides any field of them.
# Measured side by side by `benchmarks.presets` (docs/BENCHMARKS.md, "Presets on two data
# sets"): no preset is best on both the simulator and MovieLens-100K; choose on a validation
# window of your own data.
PRESETS: dict[str, dict[str, dict]] = {
    # This implementation's defaults: the paper's model plus the small-data choices of
    # `ModelConfig` (UR * IR in the branches and as a logit term, ids only through UR/IR, id
    # dropout). Second of the three on both data sets.
    "default": {"model": {}, "train": {}},
    # Fig. 2 as published: the branches take [UR, IR, every field embedding, ids included], no
    # id dropout, both domains train the shared towers, no additions, and CR read where the
    # paper reads it (the last hidden MLP layer, after its ReLU). Best on MovieLens-100K, last
    # on the simulator.
    "paper": {"model": {"ur_ir_product": False, "affinity_logit": False, "mix_id_fields": True,
                        "cr_layer": None, "cr_activation": "post",
                        "id_dropout": 0.0}, "train": {}},
    # Tuned to the simulator, whose clicks are drawn from exactly these feature fields: the
    # shallow cos(U, V) path trained first, and the ad loss kept out of the shared towers. Best
    # on the simulator, last on MovieLens-100K.
    "feature_path": {"model": {"feature_path": True, "ad_tower_gradient_scale": 0.0},
                     "train": {}},
}


def from_preset(name: str = "default", model: dict | None = None,
                train: dict | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The preset's configs with `model` / `train` field overrides on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    for kind, cls, overrides in (("model", ModelConfig, model), ("train", TrainConfig, train)):
        unknown = sorted(set(overrides or {}) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {kind} config fields {unknown}")
    preset = PRESETS[name]
    return (ModelConfig.from_dict({**preset["model"], **(model or {})}),
            TrainConfig(**{**preset["train"], **(train or {})}))


# Flags: one per field of ModelConfig and TrainConfig, generated (`add_config_flags`).
FLAG_HELP = {
    "tensorboard_dir": "TensorBoard summaries: <export_dir>/<this>/<start time>/ (an absolute "
                       "path or URL as is; empty: none)",
    "epochs": "training epochs (at most, with --validation_days)",
    "eval_days": "the data's last days held out for evaluation",
    "skip_last_days": "leave the data's last days out (evaluate on an earlier window)",
    "validation_days": "days before the eval window held out for early stopping (0: none)",
    "interaction": "the mix tower's interaction layers",
    "branches": "dual (the paper) or shared (one branch for both domains)",
    "cr_layer": "where CR is read: embedding | cross_<l> | mlp_<l> | none (none: the last "
                "hidden MLP layer, the paper's)",
    "cr_activation": "read an MLP layer's output (post) or its input to the ReLU (pre)",
    "cr_normalization": "none, or l2: every CR(u,i) scaled to unit length",
    "mlp_normalization": "none, or layer: LayerNormalization before every ReLU of the branches",
    "id_dropout": "probability of hiding user_id/item_id in training (1.0: features only)",
    "ad_tower_gradient_scale": "scale of the ad loss's gradient into the shared towers "
                               "(0: content alone trains them)",
    "feature_path": "add the shallow cos(U, V) + bias path to every head's logit",
    "feature_path_epochs": "epochs that train the feature path alone before fit (0: jointly)",
    "retrieval_loss_weight": "weight of an in-batch softmax loss on UR . IR",
    "vocabularies": "ids from vocabularies of the training split, as the pipeline's Transform "
                    "(--no-vocabularies: hash into the *_buckets)",
    "strategy": "tf.distribute strategy; the cluster comes from TF_CONFIG (docs/GUIDE.md)",
    "variable_shards": "parameter_server: shards per large variable (0: one per server)",
    "min_shard_bytes": "parameter_server: variables smaller than this are not split",
    "steps_per_epoch": "parameter_server: steps per epoch (0: one pass over the rows)",
    "mlp_hidden": "hidden sizes of each branch's MLP, comma-separated",
    "tower_hidden": "hidden sizes of the user and item towers, comma-separated",
}
FLAG_CHOICES = {"interaction": INTERACTIONS, "branches": BRANCHES, "strategy": STRATEGIES,
                "cr_activation": CR_ACTIVATIONS, "cr_normalization": CR_NORMALIZATIONS,
                "mlp_normalization": MLP_NORMALIZATIONS}


def add_config_flags(parser) -> None:
    """Adds `--preset` and one flag per field of ModelConfig and TrainConfig (`common.cli`);
    a flag left out keeps the preset's value (`configs_from_flags`)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="the configuration to start from (default: %(default)s)")
    for cls in (ModelConfig, TrainConfig):
        cli.add_dataclass_flags(parser, cls, help_texts=FLAG_HELP, choices=FLAG_CHOICES,
                                title=f"{cls.__name__} fields (over the preset)")


def configs_from_flags(args) -> tuple[ModelConfig, TrainConfig]:
    """The configs that `add_config_flags`' parsed flags describe: the preset, then the fields
    given on the command line; a value a config refuses is a bad flag (`common.cli.fail`)."""
    model, train = (cli.ConfigFlags(cls, {f.name: f.name for f in dataclasses.fields(cls)})
                    for cls in (ModelConfig, TrainConfig))
    try:
        return from_preset(args.preset, model.given(args), train.given(args))
    except ValueError as e:
        cli.fail(str(e))
