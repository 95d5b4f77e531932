"""Hyperparameters of the downstream ranker and of its training, as data; the transfer modes."""

from __future__ import annotations

import dataclasses

from common import signatures

NONE = "none"
UR = "ur"
UR_SAME_BRANCH = "ur_same_branch"
UR_IR = "ur_ir"
CR_LINEAR = "cr_linear"
CR_LATEST = "cr_latest"
LFM4ADS = "lfm4ads"
IIM = "iim"
LFM4ADS_IIM = "lfm4ads_iim"
DISTILL = "distill"
FINETUNE = "finetune"
RETRIEVAL = "retrieval"
MODES = (NONE, UR, UR_SAME_BRANCH, UR_IR, CR_LINEAR, CR_LATEST, LFM4ADS, IIM, LFM4ADS_IIM,
         DISTILL, FINETUNE, RETRIEVAL)
RANKER_MODES = MODES[:-1]  # `retrieval` is a model of its own (StandaloneRetrieval)

# What each mode reads of the upstream (paper Table 1, Sec. 3.4):
#   none            the downstream features alone (the baseline)
#   ur              UR as a feature (SUM, dual-branch upstream)
#   ur_same_branch  the same, UR from an upstream trained with one shared branch
#   ur_ir           UR and IR as features, no CR: lfm4ads - ur_ir is CR's own share (lfm4ads -
#                   ur mixes IR in)
#   cr_linear       UR, IR as features, CR(u), CR(i) linearly fused (LinearFusion)
#   cr_latest       UR, IR as features, the adapter on the latest CR(u,i) of the user and of
#                   the item before the row (no aggregation)
#   lfm4ads         UR, IR as features, the adapter on CR(u), CR(i) (Eq. 3-4)
#   iim             UR, IR through the Isomorphic Interaction Module only (Eq. 5)
#   lfm4ads_iim     lfm4ads + the module
#   distill         none + the upstream's predicted click probability of the row itself, as
#                   an input (its logit) and a soft target of an auxiliary head (ExFM, the
#                   anchors' alternative to representation transfer); no UR, IR or CR
#   finetune        lfm4ads with UR, IR computed by the upstream towers inside the ranker,
#                   fine-tuned with the downstream loss (UpstreamLayer(trainable=True))
#   retrieval       cosine of adapted UR, IR, InfoNCE (Eq. 6; StandaloneRetrieval)
_UR_IR = (signatures.UR_FEATURE, signatures.IR_FEATURE)
_CRS = (signatures.CR_USER_FEATURE, signatures.CR_ITEM_FEATURE)
MODE_FEATURES = {
    NONE: (),
    UR: (signatures.UR_FEATURE,),
    UR_SAME_BRANCH: (signatures.UR_FEATURE,),
    UR_IR: _UR_IR,
    CR_LINEAR: _UR_IR + _CRS,
    CR_LATEST: _UR_IR + (signatures.CR_LATEST_USER_FEATURE, signatures.CR_LATEST_ITEM_FEATURE),
    LFM4ADS: _UR_IR + _CRS,
    IIM: _UR_IR,
    LFM4ADS_IIM: _UR_IR + _CRS,
    DISTILL: (signatures.UPSTREAM_AD_PREDICTION_FEATURE,),
    FINETUNE: _CRS,
    RETRIEVAL: _UR_IR,
}
# The representation features each mode concatenates into the ranker's input as they are.
MODE_DENSE_FEATURES = {
    NONE: (), UR: (signatures.UR_FEATURE,), UR_SAME_BRANCH: (signatures.UR_FEATURE,), UR_IR: _UR_IR,
    CR_LINEAR: _UR_IR,
    CR_LATEST: _UR_IR, LFM4ADS: _UR_IR, IIM: (), LFM4ADS_IIM: _UR_IR, DISTILL: (), FINETUNE: (),
    RETRIEVAL: (),
}
# Features computed per row by the live upstream at request time (not representations looked
# up as of before the row: no `<name>_found`, not in `representation_features`).
PREDICTION_FEATURES = (signatures.UPSTREAM_AD_PREDICTION_FEATURE,)
ADAPTER_MODES = frozenset({CR_LATEST, LFM4ADS, LFM4ADS_IIM, FINETUNE})
IIM_MODES = frozenset({IIM, LFM4ADS_IIM})
CR_MODES = frozenset({CR_LINEAR, CR_LATEST, LFM4ADS})


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    """The downstream ranker: a DCN-v2 on the ad domain's own field embeddings (ids included)
    plus what `mode` takes from the upstream (`MODE_FEATURES`).

    `x0 = [E' flattened, dense representations, their found indicators, LinearFusion(...)]`,
    `num_cross_layers` CrossNetV2 layers, then `[x_L, IIM(UR, IR)]` through the ReLU MLP
    `mlp_hidden` to one logit. `E' = E` except in the adapter modes (`E ⊙ σ(CR · M)`).
    `iim_aux_loss_weight` weighs the module's own loss (Sec. 5.2.2); `iim_warm_start` starts
    it from the upstream's ad branch instead of re-initialising it (the paper).
    `distill_loss_weight` weighs the `distill` mode's auxiliary loss (the cross-entropy of an
    extra head on h against the upstream's predicted probability).
    """

    mode: str = LFM4ADS
    embedding_dim: int = 16
    embedding_l2: float = 0.0
    # In training, each user_id / item_id is hidden (mapped to the "missing" id 0) with this
    # probability, so the ranker must also predict from the features (as the upstream's
    # ModelConfig.id_dropout): small downstream data over-fit through ids.
    id_dropout: float = 0.0
    num_cross_layers: int = 2
    cross_projection_dim: int | None = None
    mlp_hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    adapter_activation: str = "sigmoid"
    adapter_per_field: bool = False
    linear_fusion_units: int = 16
    iim_aux_loss_weight: float = 1.0
    iim_warm_start: bool = False
    distill_loss_weight: float = 1.0
    # False: the CR modes (cr_linear, cr_latest, lfm4ads) without UR and IR as features, i.e.
    # the CR alone on top of the baseline (the layer study of Sec. 5.1.3).
    use_ur_ir: bool = True
    # retrieval (Eq. 6): adapters' hidden widths and output width
    retrieval_hidden: tuple[int, ...] = (64,)
    retrieval_dim: int = 32

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("embedding_dim", "linear_fusion_units", "retrieval_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cross_layers < 0:
            raise ValueError(f"num_cross_layers must be >= 0, got {self.num_cross_layers}")
        for name in ("embedding_l2", "iim_aux_loss_weight", "distill_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.id_dropout <= 1.0:
            raise ValueError(f"id_dropout must be in [0, 1], got {self.id_dropout}")
        if any(w < 1 for w in self.mlp_hidden):
            raise ValueError(f"mlp_hidden widths must be >= 1, got {self.mlp_hidden}")
        if not self.use_ur_ir and self.mode not in CR_MODES:
            raise ValueError(f"use_ur_ir=False applies to the modes {sorted(CR_MODES)}, "
                             f"not {self.mode!r}")

    @property
    def representation_features(self) -> tuple[str, ...]:
        """The representation features this mode reads from each row (as of before it)."""
        return tuple(f for f in MODE_FEATURES[self.mode]
                     if f not in self._dropped and f not in PREDICTION_FEATURES)

    @property
    def prediction_features(self) -> tuple[str, ...]:
        """The upstream's predictions on the row itself this mode reads (`PREDICTION_FEATURES`)."""
        return tuple(f for f in MODE_FEATURES[self.mode] if f in PREDICTION_FEATURES)

    @property
    def dense_features(self) -> tuple[str, ...]:
        """The representation features concatenated into the ranker's input as they are."""
        return tuple(f for f in MODE_DENSE_FEATURES[self.mode] if f not in self._dropped)

    @property
    def _dropped(self) -> tuple[str, ...]:
        return () if self.use_ur_ir else _UR_IR


@dataclasses.dataclass(frozen=True)
class DownstreamTrainConfig:
    """Training of a downstream model: Adam, at most `epochs`, early stopping on the
    validation window's AUC with `patience` (the best epoch's weights are kept)."""

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
