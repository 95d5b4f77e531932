"""`IsomorphicInteractionModule`: the module-level usage of UR and IR (paper Sec. 3.4.2).

Source: LFM4Ads (arXiv 2508.14948), Eq. (5) and Sec. 5.2.2:

    CR'(u,i) = f_DNN(f_inter(UR(u), IR(i); Ω_Down); W_Down)

`f_inter` and `f_DNN` have the structure of the upstream's ad branch (the same interaction
stack and MLP as the upstream `ModelConfig`: CrossNetV2 / CrossNetMix / FM layers, then the
ReLU MLP), applied to UR and IR alone, so the user-item correlation the upstream learned is
transferred without mixing UR and IR with the downstream features. The paper re-initialises
Ω_Down and W_Down and trains them with the downstream loss plus an auxiliary loss of the
module's own head on the downstream label (Sec. 5.2.2); `warm_start_from` optionally starts
them from the upstream ad branch instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.config import ModelConfig
from trainer.mix_tower import CR_OUTPUT, MixBranch

AUX_HEAD = "label"  # the module's head has the upstream click head's name (and shape)
_BRANCH = re.compile(r"(?:^|/)(?:ad|shared)_branch/(.*?)(?::\d+)?$")


def _model_config(config: ModelConfig | dict) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if not isinstance(config, dict):
        raise ValueError(f"upstream_config must be a ModelConfig or its dict, got {config!r}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"upstream_config has unknown fields {unknown}")
    return ModelConfig.from_dict(config)


def branch_path(variable_name: str) -> str | None:
    """The path of a variable inside an ad (or shared) branch, e.g. `cross_1/kernel` for
    `model/ad_branch/cross_1/kernel:0`; None outside a branch."""
    match = _BRANCH.search(variable_name)
    return match.group(1) if match else None


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class IsomorphicInteractionModule(tf.keras.layers.Layer):
    """`CR'(u,i) = f_DNN(f_inter(UR, IR))` with the upstream ad branch's architecture (Eq. 5).

    The branch input is `x0 = [UR, IR, UR ⊙ IR]` (`[UR, IR]` without the upstream's
    `ur_ir_product`), i.e. the upstream's `x0` without the field embeddings; the module's
    output is the branch's output at the upstream's CR layer (`ModelConfig.cr_layer`; by
    default the last hidden MLP layer, Eq. 5's `f_DNN`), and its head gives the logit of the
    auxiliary loss (Sec. 5.2.2).

    Args:
      upstream_config: the upstream `ModelConfig` (or its `dataclasses.asdict`): interaction,
        layers, MLP widths, `ur_ir_product`, `affinity_logit`, `cr_layer`.

    Call args:
      inputs: `(UR [batch, d_ur], IR [batch, d_ir])`.
      training: Keras training flag (MLP dropout).

    Returns:
      `{"representation": [batch, d_cr'], "logit": [batch, 1]}` float32.

    Example:
      >>> iim = IsomorphicInteractionModule(ModelConfig(mlp_hidden=(64, 32)))
      >>> out = iim((tf.random.normal([8, 32]), tf.random.normal([8, 32])))
      >>> out["representation"].shape, out["logit"].shape
      (TensorShape([8, 32]), TensorShape([8, 1]))
    """

    def __init__(self, upstream_config: ModelConfig | dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream_config = _model_config(upstream_config)
        self.output_layer = self.upstream_config.resolved_cr_layer()
        # The upstream's layer names, so that `warm_start_from` can match variables by path.
        self.branch = MixBranch(self.upstream_config, (AUX_HEAD,), name="ad_branch")

    def build(self, input_shape) -> None:
        ur_shape, ir_shape = (tf.TensorShape(s) for s in input_shape)
        if self.upstream_config.ur_ir_product and ur_shape[-1] != ir_shape[-1]:
            raise ValueError(f"UR and IR must have one width for UR ⊙ IR (ur_ir_product), got "
                             f"{ur_shape[-1]} and {ir_shape[-1]}")
        super().build(input_shape)

    def call(self, inputs, training: bool = False) -> dict[str, tf.Tensor]:
        ur, ir = (tf.cast(x, tf.float32) for x in inputs)
        out = self.branch((ur, ir), [], training=training)
        return {"representation": tf.cast(out[CR_OUTPUT], tf.float32),
                "logit": tf.cast(out[f"logit_{AUX_HEAD}"], tf.float32)}

    def warm_start_from(self, variables: Sequence[tf.Variable]) -> list[str]:
        """Copies the upstream ad branch's weights into the module (call it once built).

        `variables`: e.g. the upstream SavedModel's `ad_module.variables`. Each module
        variable takes the upstream variable with the same path inside the branch
        (`branch_path`); where the upstream's is larger (its `x0` also holds the field
        embeddings, after UR, IR and UR ⊙ IR), the leading block is taken: the upstream's
        interaction restricted to the UR/IR dimensions, i.e. the upstream module with the
        field embeddings set to zero. Variables the output does not depend on (the auxiliary
        head, which the upstream's `ad_module` stops before) are copied when the upstream has
        them and re-initialised otherwise. Returns the paths copied.

        Raises ValueError for the FM interaction (its MLP input appends the FM output after
        the whole `x0`, so no leading block matches), for a variable the output depends on
        that the upstream lacks, or for an upstream variable smaller than the module's.
        """
        if not self.built:
            raise ValueError("warm_start_from needs a built module: call it on (UR, IR) first")
        if self.upstream_config.interaction == "fm":
            raise ValueError("warm_start_from supports the interactions 'cross' and "
                             "'cross_mix', not 'fm'")
        upstream = {}
        for variable in variables:
            path = branch_path(variable.name)
            if path is not None:
                upstream[path] = variable
        copied = []
        for variable in self.branch.variables:
            path = branch_path(variable.name)
            if path not in upstream:
                if self._needed(path):
                    raise ValueError(f"the upstream has no ad-branch variable {path!r} (from "
                                     f"{variable.name!r}); it has {sorted(upstream)}")
                continue  # e.g. the head, which the upstream's ad module stops before
            source = upstream[path]
            if len(source.shape) != len(variable.shape) or any(
                    s < t for s, t in zip(source.shape, variable.shape, strict=True)):
                raise ValueError(f"upstream variable {source.name!r} has shape {source.shape}, "
                                 f"smaller than the module's {variable.shape}")
            block = tuple(slice(0, int(d)) for d in variable.shape)
            variable.assign(np.asarray(source.numpy())[block])
            copied.append(path)
        return copied

    def _needed(self, path: str) -> bool:
        """Whether the module's output depends on the variable at `path` (the interaction
        layers and the MLP layers up to the output layer; not the head, nor later layers)."""
        if self.output_layer == "embedding":
            return False
        kind, _, number = self.output_layer.partition("_")
        if path.startswith("cross_"):
            return kind == "mlp" or int(path.split("/")[0][6:]) <= int(number)
        match = re.match(r"mlp/(?:dense|norm)_(\d+)/", path)
        return bool(match) and kind == "mlp" and int(match.group(1)) <= int(number)

    def get_config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.upstream_config)
        return {**super().get_config(),
                "upstream_config": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in config.items()}}
