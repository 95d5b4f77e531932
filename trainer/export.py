"""Export of the upstream model: one SavedModel with the UR/IR/CR signatures, TF Serving layout.

`<export_dir>/<integer version>/saved_model.pb` + `variables/` + `assets.extra/
tf_serving_warmup_requests`. Every signature takes `examples` (DT_STRING `[batch]` serialized
tf.Examples) and parses only the features it needs (`common.signatures.REQUIRED_FEATURES`).

Beside the signatures, the loaded object has three reusable endpoints (TF Hub's "Reusable
SavedModel" interface; paper Sec. 3.4: the upstream reused inside downstream models),
`common.signatures.ENDPOINTS`, each a `ReusableEndpoint`:

    loaded = tf.saved_model.load(path)
    ur = loaded.user_tower(raw, training=False)  # [batch, d_ur] float32
    ir = loaded.item_tower(raw, training=False)  # [batch, d_ir] float32
    cr = loaded.ad_module(raw, training=False)   # [batch, d_cr] float32, = the CR signature

`raw` is the dense dict of `features.parse_examples` holding exactly the features the matching
signature parses (`REQUIRED_FEATURES[USER_REPRESENTATION]`, `[ITEM_REPRESENTATION]`,
`[CROSS_REPRESENTATION]` plus the parser's `context_inputs`). Each also has `variables`,
`trainable_variables` and `regularization_losses`; the variables keep the model's names
(`<model>/ad_branch/cross_1/kernel:0`, `<model>/ad_branch/mlp/dense_1/kernel:0`, ...: see
`trainer.downstream.upstream_layer.UpstreamLayer`, which wraps an endpoint as a Keras layer).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable

import tensorflow as tf

from common import features, signatures
from common.serving_layout import save_versioned
from trainer.config import ModelConfig
from trainer.model import LFM4AdsModel

_EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name=signatures.INPUT_KEY)


class RawParser(tf.Module):
    """Serialized tf.Examples -> the model's input features: the raw schema, parsed densely."""

    # Raw features the mix-tower signatures read beyond `REQUIRED_FEATURES`.
    context_inputs: tuple[str, ...] = ()

    def __call__(self, examples: tf.Tensor, names) -> dict[str, tf.Tensor]:
        return features.parse_examples(examples, names)

    def from_dense(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The model's inputs from the dense raw features of `parse_examples`: themselves."""
        return dict(raw)


class TransformParser(tf.Module):
    """Serialized tf.Examples -> ids through the pipeline's TFT Transform graph.

    Parses `names` with the raw feature spec the Transform was built on (a missing required
    feature or a wrong type still fails naming the feature), then applies the Transform layer;
    features a signature does not parse are supplied by TFT with defaults and not used.
    """

    # The Transform derives hour/day buckets from the request's timestamp.
    context_inputs = (features.TIMESTAMP,)

    def __init__(self, tft_output):
        super().__init__(name="transform_parser")
        self.tft_layer = tft_output.transform_features_layer()
        self.raw_spec = dict(tft_output.raw_feature_spec())

    def __call__(self, examples: tf.Tensor, names) -> dict[str, tf.Tensor]:
        unknown = sorted(set(names) - set(self.raw_spec))
        if unknown:
            raise ValueError(f"features {unknown} are not in the Transform's raw schema")
        parsed = tf.io.parse_example(examples, {name: self.raw_spec[name] for name in names})
        return self.tft_layer(parsed)

    def from_dense(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The Transform's ids from the dense raw features of `features.parse_examples`.

        The Transform layer expects the raw spec's own form, so each feature is brought back
        to it: a VarLen list `[batch, LIST_LENGTHS]` becomes a SparseTensor without the `b""`
        padding, a FixedLen feature is reshaped to `[batch, *shape]` (`[batch, 1]`).
        """
        unknown = sorted(set(raw) - set(self.raw_spec))
        if unknown:
            raise ValueError(f"features {unknown} are not in the Transform's raw schema")
        inputs = {}
        for name, value in raw.items():
            spec = self.raw_spec[name]
            if isinstance(spec, tf.io.VarLenFeature):
                inputs[name] = tf.sparse.from_dense(value)  # drops b"" (and 0) padding
            else:
                inputs[name] = tf.reshape(value, [-1, *spec.shape])
        return self.tft_layer(inputs)


def _dense_spec(names: tuple[str, ...]) -> dict[str, tf.TensorSpec]:
    """Input spec of an endpoint: `names` as `parse_examples` gives them, lists padded."""
    spec = {}
    for name, feature in features.feature_spec(names).items():
        shape = [None, features.LIST_LENGTHS[name]] if name in features.LIST_FEATURES else [None]
        spec[name] = tf.TensorSpec(shape, feature.dtype, name=name)
    return spec


def _variables_reached(concrete) -> list[tf.Variable]:
    """The variables whose values the outputs of the traced function `concrete` depend on.

    Walks the graph back from the outputs along data edges: a variable counts when the
    placeholder of its captured handle is reached. So an endpoint that computes the whole ad
    branch but returns its CR layer does not list the logit layers or the MLP layers after CR.
    """
    reached, stack = set(), [t.op for t in concrete.outputs]
    while stack:
        op = stack.pop()
        if op.name not in reached:
            reached.add(op.name)
            stack.extend(t.op for t in op.inputs)
    placeholder = {id(external): internal for external, internal in concrete.graph.captures}
    return [v for v in concrete.variables if placeholder[id(v.handle)].op.name in reached]


def _weight_regularizers(model: tf.keras.Model) -> list[tuple[tf.Variable, Callable]]:
    """`(variable, zero-arg loss)` for every weight regularizer of `model`'s layers.

    Keras keeps a weight regularizer as a zero-arg loss bound to its variable,
    `functools.partial(loss, variable)`, wrapped once more by `add_loss` (the layer's
    `_callable_losses`, which Keras's own SavedModel export reads too). Zero-arg losses bound to
    no variable are left out, and so are activity penalties such as `ModelConfig.embedding_l2`,
    which depend on the batch.
    """
    out = []
    for layer in model.submodules:
        for loss in getattr(layer, "_callable_losses", ()):
            inner = loss
            while isinstance(inner, functools.partial) and inner.args:
                if isinstance(inner.args[0], tf.Variable):
                    out.append((inner.args[0], loss))
                    break
                inner = inner.args[0]
    return out


class ReusableEndpoint(tf.__internal__.tracking.AutoTrackable):
    """One reusable part of the upstream model: TF Hub's "Reusable SavedModel" interface.

    `endpoint(features, training=False)` runs `forward(features, training)`; `features` is the
    dense raw-feature dict of `input_spec` (`features.parse_examples`'s form, list features
    `[batch, LIST_LENGTHS]`), `training` a Python bool (both values are traced, so both survive
    the export). The attributes the interface asks for are saved with it:

      * `variables`: every variable the outputs depend on (`_variables_reached` over both
        traces), sorted by name, named as in the model, e.g. `<model>/ad_branch/cross_1/
        kernel:0`;
      * `trainable_variables`: those of them that the model trains (`trainable_ids`);
      * `regularization_losses`: a zero-arg `tf.function` per weight regularizer of one of
        `variables` (`_weight_regularizers`), each returning a scalar; often empty.

    They are plain attributes: SavedModel keeps an object's attributes, not computed properties
    such as `tf.Module.variables` (which cannot be assigned), hence an `AutoTrackable` (the base
    of `tf.Module`) rather than a `tf.Module`.

    Args:
      forward: `(features, training) -> Tensor`, the computation, e.g. the user tower.
      input_spec: feature name -> `tf.TensorSpec` of the dense raw feature.
      trainable_ids: `id()` of the model's trainable variables.
      regularizers: `(variable, zero-arg loss)` pairs, from `_weight_regularizers(model)`.
    """

    def __init__(self, forward: Callable, input_spec: dict[str, tf.TensorSpec],
                 trainable_ids: set[int], regularizers: list[tuple[tf.Variable, Callable]]):
        self._forward = forward
        found, captured = {}, {}
        for training in (False, True):
            concrete = self.__call__.get_concrete_function(input_spec, training=training)
            for variable in _variables_reached(concrete):
                found.setdefault(id(variable), variable)
            for variable in concrete.variables:
                captured.setdefault(id(variable), variable)
        self.variables = sorted(found.values(), key=lambda v: v.name)
        # Read by the traced graph but not by its outputs (e.g. the logits, which `MixBranch`
        # computes in the same call): tracked too, so that a model reusing the endpoint can
        # itself be saved as a SavedModel (every captured variable must be tracked).
        self._captured_variables = sorted(captured.values(), key=lambda v: v.name)
        self.trainable_variables = [v for v in self.variables if id(v) in trainable_ids]
        losses = []
        for variable, loss in regularizers:
            if id(variable) in found:
                fn = tf.function(loss, input_signature=[])
                fn.get_concrete_function()
                losses.append(fn)
        self.regularization_losses = losses

    @tf.function
    def __call__(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self._forward(features, training)


class _ServingModule(tf.Module):
    """Holds the trained model, its input parser, the signature functions and the endpoints."""

    def __init__(self, model: LFM4AdsModel, parser: tf.Module | None = None):
        super().__init__(name="lfm4ads")
        self.model = model
        self.parser = parser = parser or RawParser()

        def forward_pass(name: str):
            """A signature that runs the whole model once (its `call`) and returns the
            outputs `OUTPUT_KEYS[name]` names."""

            @tf.function(input_signature=[_EXAMPLES_SPEC])
            def signature(examples):
                raw = parser(examples,
                             signatures.REQUIRED_FEATURES[name] + parser.context_inputs)
                out = model(raw, training=False)
                return {key: out[key] for key in signatures.OUTPUT_KEYS[name]}

            return signature

        serving_default = forward_pass(signatures.SERVING_DEFAULT)

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def user_representation(examples):
            raw = parser(examples, signatures.REQUIRED_FEATURES[signatures.USER_REPRESENTATION])
            ur = tf.cast(model.user_representation(raw), tf.float32)
            return {signatures.USER_REPRESENTATION: ur}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def item_representation(examples):
            raw = parser(examples, signatures.REQUIRED_FEATURES[signatures.ITEM_REPRESENTATION])
            ir = tf.cast(model.item_representation(raw), tf.float32)
            return {signatures.ITEM_REPRESENTATION: ir}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def cross_representation(examples):
            raw = parser(
                examples,
                signatures.REQUIRED_FEATURES[signatures.CROSS_REPRESENTATION]
                + parser.context_inputs,
            )
            return {signatures.CROSS_REPRESENTATION: model.cross_representation(raw)}

        # One forward pass for UR, IR, CR(u,i) and the ad prediction (paper Fig. 4).
        representations = forward_pass(signatures.REPRESENTATIONS)

        self.signature_functions = {
            signatures.SERVING_DEFAULT: serving_default,
            signatures.USER_REPRESENTATION: user_representation,
            signatures.ITEM_REPRESENTATION: item_representation,
            signatures.CROSS_REPRESENTATION: cross_representation,
            signatures.REPRESENTATIONS: representations,
        }
        if isinstance(parser, TransformParser):

            @tf.function(input_signature=[_EXAMPLES_SPEC])
            def transform_features(examples):
                # For TFMA (`preprocessing_function_names`): the derived features it can slice
                # on (e.g. item_cold_start). Transformed features that share a raw feature's
                # name are left out, so slices by domain or scenario use the raw values.
                out = parser(examples, sorted(parser.raw_spec))
                return {k: v for k, v in out.items() if k not in parser.raw_spec}

            self.signature_functions[signatures.TRANSFORM_FEATURES] = transform_features

        def on_dense(represent):
            return lambda raw, training: tf.cast(represent(parser.from_dense(raw), training),
                                                 tf.float32)

        endpoints = {
            signatures.USER_TOWER_ENDPOINT: (
                signatures.REQUIRED_FEATURES[signatures.USER_REPRESENTATION],
                on_dense(lambda x, training: model.user_representation(x, training=training)),
            ),
            signatures.ITEM_TOWER_ENDPOINT: (
                signatures.REQUIRED_FEATURES[signatures.ITEM_REPRESENTATION],
                on_dense(lambda x, training: model.item_representation(x, training=training)),
            ),
            signatures.AD_MODULE_ENDPOINT: (
                signatures.REQUIRED_FEATURES[signatures.CROSS_REPRESENTATION]
                + parser.context_inputs,
                on_dense(lambda x, training: model.cross_representation(x, training=training)),
            ),
        }
        trainable = {id(v) for v in model.trainable_variables}
        regularizers = _weight_regularizers(model)
        for name, (names, forward) in endpoints.items():
            setattr(self, name,
                    ReusableEndpoint(forward, _dense_spec(names), trainable, regularizers))


MODEL_CONFIG_FILE = "lfm4ads_model_config.json"  # in assets.extra/: the upstream ModelConfig
TRAINING_FILE = "lfm4ads_training.json"  # in assets.extra/: facts of the training run


def read_training_facts(saved_model_dir: str) -> dict:
    """What `export_saved_model(..., training_facts=)` recorded (e.g. `train_end`, the end of
    the data the model was trained on, unix seconds); `{}` when nothing was."""
    path = os.path.join(saved_model_dir, "assets.extra", TRAINING_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_model_config(saved_model_dir: str) -> ModelConfig:
    """The `ModelConfig` an export was built with (`assets.extra/lfm4ads_model_config.json`),
    e.g. for the downstream Isomorphic Interaction Module, which copies its ad branch."""
    path = os.path.join(saved_model_dir, "assets.extra", MODEL_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{saved_model_dir!r} has no {MODEL_CONFIG_FILE} (exported "
                                "before the model config was written beside it?)")
    with tf.io.gfile.GFile(path) as f:
        config = json.load(f)
    return ModelConfig.from_dict(config)


def export_saved_model(
    model: LFM4AdsModel,
    export_dir: str,
    warmup_examples: list[bytes],
    version: int | None = None,
    parser: tf.Module | None = None,
    versioned: bool = True,
    training_facts: dict | None = None,
) -> str:
    """Writes `<export_dir>/<version>/` and returns its path (`serving_layout.save_versioned`:
    written under a temporary name and renamed when complete, so a server polling
    `export_dir` never sees a half-written version; warmup requests for the four signatures;
    the `ModelConfig` as `assets.extra/lfm4ads_model_config.json`).

    `parser` turns serialized examples into model inputs (default `RawParser`; the pipeline
    gives a `TransformParser`, which also adds the `transform_features` signature). Both
    parsers give the reusable endpoints (`ReusableEndpoint`, module docstring).
    `versioned=False` writes the SavedModel into `export_dir` itself (TFX Trainer's
    `serving_model_dir`; Pusher versions it). `training_facts` (JSON-serialisable) are written as
    `assets.extra/lfm4ads_training.json` (`read_training_facts`), e.g. the training window,
    which downstream training checks to refuse an upstream that saw the downstream rows.
    """
    if not warmup_examples:
        raise ValueError("warmup_examples is empty: give a few serialized tf.Examples")
    parser = parser or RawParser()
    if not model.built:  # built under its own name scope, before the endpoints are traced
        model(
            parser(
                tf.constant(list(warmup_examples)),
                signatures.REQUIRED_FEATURES[signatures.SERVING_DEFAULT] + parser.context_inputs,
            )
        )
    module = _ServingModule(model, parser)
    config = json.dumps(dataclasses.asdict(model.config), indent=1)
    return save_versioned(module, module.signature_functions, export_dir, warmup_examples,
                          version=version, versioned=versioned,
                          warmup_signatures=tuple(signatures.OUTPUT_KEYS),
                          extra_assets={MODEL_CONFIG_FILE: config,
                                        **({TRAINING_FILE: json.dumps(training_facts)}
                                           if training_facts else {})})
