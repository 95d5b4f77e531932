"""`UpstreamLayer`: a reusable endpoint of the upstream SavedModel as a Keras layer.

Paper Sec. 3.4 (LFM4Ads, arXiv 2508.14948): the downstream models reuse the upstream's user
tower (UR), item tower (IR) and ad branch (CR) inside their own graphs, either frozen (the
representations as features) or fine-tuned with the downstream loss. The export
(`trainer.export`) carries each as a reusable endpoint in the sense of TF Hub's "Reusable
SavedModel" interface (https://www.tensorflow.org/hub/reusable_saved_models): an attribute of
the loaded object, called as `endpoint(features, training=...)`, with `variables`,
`trainable_variables` and `regularization_losses`. This layer wraps one such endpoint, the way
TF Hub's `KerasLayer` and tf-keras's `ReloadedLayer` wrap theirs.

An export is loaded once per process and version directory (`load_upstream`): every layer on the
same path calls into one loaded object and so shares one set of variables. Fine-tuning through
one layer therefore moves the variables seen by every other layer (and model) on that path.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import tensorflow as tf

from common import signatures
from common.serving_layout import resolve_export_dir

_LOADED: dict[str, Any] = {}  # version directory -> the object loaded from it
_LOCK = threading.Lock()


def load_upstream(export_dir: str) -> tuple[str, Any]:
    """`(version directory, loaded object)` for `export_dir`, loaded once per process and path.

    The cache is keyed by the resolved version directory (`resolve_export_dir`; local paths
    made absolute), so a base path and its highest version directory give the same object.
    """
    path = resolve_export_dir(export_dir)
    key = path if "://" in path else os.path.realpath(path)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = tf.saved_model.load(path)
        return path, _LOADED[key]


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class UpstreamLayer(tf.keras.layers.Layer):
    """The upstream's user tower, item tower or ad module as a (frozen or fine-tuned) layer.

    `y = endpoint(features, training)`: `user_tower` -> UR, `item_tower` -> IR, `ad_module` ->
    the ad branch's interaction stack and MLP up to `ModelConfig.cr_layer`, i.e. CR(u,i)
    (paper Sec. 3.4; TF Hub's Reusable SavedModel interface, see the module docstring).

    The endpoint's variables become the layer's weights: those the upstream trained as trainable
    weights, the rest non-trainable. With `trainable=False` (Keras's own flag, so it can be
    flipped later) `trainable_weights` is empty, the optimizer never touches the upstream and the
    endpoint runs in inference mode; with `trainable=True` the downstream loss fine-tunes the
    upstream variables, the endpoint runs in training mode when Keras trains (the upstream's
    id dropout and MLP dropout apply) and its `regularization_losses` join the layer's losses.
    Every layer on one export path shares the same variables (`load_upstream`).

    The variables keep their upstream names, `<model>/<part>/.../<weight>:0` with `<model>` the
    upstream model's name (`lfm4_ads_model` for the process's first model), so a warm start
    finds them by the part after it. Among `ad_module`'s, with `branches="dual"` (the ad branch
    is `shared_branch` with `branches="shared"`):

        by_part = {v.name.split(":")[0].split("/", 1)[1]: v for v in layer.weights}
        by_part["ad_branch/cross_1/kernel"]      # [d0, d0]: W^T of cross layer 1 (full rank;
                                                 # `v_kernel`, `u_kernel` when low rank)
        by_part["ad_branch/cross_1/bias"]        # [d0]
        by_part["ad_branch/mlp/dense_1/kernel"]  # [d0, mlp_hidden[0]], and `.../bias`
        by_part["feature_embeddings/user_id_embedding"], by_part["user/representation/kernel"]

    Only the layers up to `cr_layer` are there (not the logits). The towers' hidden layers sit
    under a Keras-numbered scope (`user/mlp/dense_1` or `user/mlp_<n>/dense_1`).

    Args:
      export_dir: a version directory (holding `saved_model.pb`) or a model base path in TF
        Serving layout, resolved to its highest integer version when the layer is made, so a
        reloaded model picks the newest version: give a version directory to pin one.
      endpoint: one of `common.signatures.ENDPOINTS`: `user_tower`, `item_tower`, `ad_module`.
      trainable: fine-tune the upstream variables (True) or keep them frozen (False).
      **kwargs: `tf.keras.layers.Layer` arguments (`name`, ...).

    Call args:
      features: dict of dense raw features as `common.features.parse_examples` gives them
        (scalars `[batch]`, list features `[batch, LIST_LENGTHS]` padded with `b""`, `[batch, 1]`
        scalars are accepted too), at least the endpoint's `feature_spec`; others are ignored.
      training: Keras's training flag; only used when the layer is trainable.

    Returns:
      `[batch, d]` float32: UR `[batch, d_ur]`, IR `[batch, d_ir]` or CR `[batch, d_cr]`.

    Raises:
      FileNotFoundError: `export_dir` is missing or holds no SavedModel (`resolve_export_dir`).
      ValueError: the export has no reusable endpoints (written before they existed), or
        `endpoint` is not one of those it has (the message lists them).

    Example:
      >>> ur_layer = UpstreamLayer("/models/lfm4ads", "user_tower")  # frozen, newest version
      >>> inputs = {name: tf.keras.Input(spec.shape[1:], dtype=spec.dtype, name=name)
      ...           for name, spec in ur_layer.feature_spec.items()}
      >>> logit = tf.keras.layers.Dense(1)(ur_layer(inputs))
      >>> ranker = tf.keras.Model(inputs, logit)
    """

    def __init__(self, export_dir: str, endpoint: str, trainable: bool = False, **kwargs: Any):
        if not isinstance(trainable, bool):
            raise ValueError(f"trainable must be a bool, got {trainable!r}")
        super().__init__(trainable=trainable, **kwargs)
        self.export_dir = os.fspath(export_dir)
        self.endpoint = endpoint
        path, loaded = load_upstream(self.export_dir)
        self.export_path = path
        where = path if path == self.export_dir else (
            f"{path} (the highest version under {self.export_dir})")
        available = [name for name in signatures.ENDPOINTS if hasattr(loaded, name)]
        if not available:
            raise ValueError(
                f"upstream export {where} has no reusable endpoints {list(signatures.ENDPOINTS)}: "
                "it was written before trainer.export added them, or is not an LFM4Ads upstream "
                "export; export it again with trainer.export.export_saved_model"
            )
        if endpoint not in available:
            raise ValueError(f"unknown endpoint {endpoint!r} of upstream export {where}; "
                             f"available endpoints: {available}")
        function = getattr(loaded, endpoint)
        if not all(hasattr(function, a) for a in (
                "variables", "trainable_variables", "regularization_losses")):
            raise ValueError(f"endpoint {endpoint!r} of upstream export {where} lacks the "
                             "reusable SavedModel attributes (variables, trainable_variables, "
                             "regularization_losses)")
        self._function = function
        signature = function.__call__.concrete_functions[0].structured_input_signature
        self._feature_spec = dict(signature[0][0])
        # The weights exist already (loaded), so they are registered here rather than in
        # `build`: `trainable_weights` and checkpoint restoration see them before the first call.
        trainable_ids = {id(v) for v in function.trainable_variables}
        for variable in function.variables:
            self._add_existing_weight(variable, trainable=id(variable) in trainable_ids)
        for loss in function.regularization_losses:
            self.add_loss(self._loss_if_trainable(loss))
        self.built = True

    @property
    def feature_spec(self) -> dict[str, tf.TensorSpec]:
        """Feature name -> `tf.TensorSpec` of the dense raw features the endpoint reads."""
        return dict(self._feature_spec)

    def _add_existing_weight(self, variable: tf.Variable, trainable: bool) -> None:
        """Registers a loaded variable as a weight (`add_weight` with a getter creates none)."""
        self.add_weight(name=variable.name, shape=variable.shape, dtype=variable.dtype,
                        trainable=trainable, experimental_autocast=False,
                        getter=lambda *_, **__: variable)

    def _loss_if_trainable(self, loss):
        return lambda: loss() if self.trainable else tf.constant(0.0)

    def call(self, features: dict[str, tf.Tensor], training=None) -> tf.Tensor:
        missing = sorted(set(self._feature_spec) - set(features))
        if missing:
            raise ValueError(f"endpoint {self.endpoint!r} of {self.export_path} needs the "
                             f"features {missing}")
        inputs = {}
        for name, spec in self._feature_spec.items():
            value = features[name]
            if spec.shape.rank == 1 and value.shape.rank == 2 and value.shape[-1] == 1:
                value = tf.squeeze(value, axis=-1)  # [batch, 1] -> [batch]
            inputs[name] = value
        if not self.trainable or training is None:
            training = False
        return tf.__internal__.smart_cond.smart_cond(
            training,
            lambda: self._function(inputs, training=True),
            lambda: self._function(inputs, training=False))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "export_dir": self.export_dir, "endpoint": self.endpoint}
