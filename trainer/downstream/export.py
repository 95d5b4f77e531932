"""Export of the downstream ranker in TF Serving's layout.

`<export_dir>/<version>/` with one signature, `serving_default`: `examples` (DT_STRING
`[batch]` serialized tf.Examples) -> `prediction` `[batch, 1]`. Each example carries the raw
features of the ranker's fields and the mode's representation features as float lists
(`common.signatures.REPRESENTATION_FEATURES`, each with its int64 `<name>_found`), which a
serving host fills from the representation store (paper Fig. 4). A representation feature that
is absent parses as zeros with found 0 (a cold start); one of the wrong length fails with
TensorFlow's parse error, which names the feature.

A `distill` ranker also reads `upstream_ad_prediction` (float, one per example: the upstream's
`ad_prediction` on that very request, which the serving host gets from the live upstream
before calling the ranker). It has no cold-start default: a request without it fails with an
`InvalidArgumentError` that names the mode and the feature.
"""

from __future__ import annotations

import tensorflow as tf

from common import features, signatures
from common.serving_layout import save_versioned
from trainer.downstream.ranker import FIELDS, DownstreamRanker

_EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name=signatures.INPUT_KEY)
_ABSENT = -1.0  # parsed for an absent prediction feature: not a probability


def ranker_feature_spec(model: DownstreamRanker) -> dict:
    """`tf.io.parse_example` spec of what the ranker reads from a serving request."""
    spec = features.feature_spec(FIELDS)
    for name, dim in model.representation_dims.items():
        spec[name] = tf.io.FixedLenFeature([dim], tf.float32, default_value=[0.0] * dim)
        spec[signatures.found_feature(name)] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    for name in model.prediction_features:
        spec[name] = tf.io.FixedLenFeature([], tf.float32, default_value=_ABSENT)
    return spec


class _RankerModule(tf.Module):
    def __init__(self, model: DownstreamRanker):
        super().__init__(name="downstream_ranker")
        self.model = model
        spec = ranker_feature_spec(model)

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def serving_default(examples):
            parsed = features.densify(tf.io.parse_example(examples, spec))
            for name in model.representation_dims:
                parsed[signatures.found_feature(name)] = tf.cast(
                    parsed[signatures.found_feature(name)], tf.float32
                )
            checks = [
                tf.debugging.assert_greater_equal(
                    parsed[name],
                    0.0,
                    message=f"mode {model.mode} reads the feature {name} (the "
                    f"{signatures.AD_PREDICTION} of the upstream on that request, a "
                    "probability) from every request: one lacks it",
                )
                for name in model.prediction_features
            ]
            with tf.control_dependencies(checks):
                out = model(parsed, training=False)
            return {signatures.DOWNSTREAM_PREDICTION: out["prediction"]}

        self.signature_functions = {signatures.SERVING_DEFAULT: serving_default}


def export_ranker(model: DownstreamRanker, export_dir: str, warmup_examples: list[bytes],
                  version: int | None = None, versioned: bool = True) -> str:
    """Writes `<export_dir>/<version>/` (module doc; `versioned=False`: `export_dir` itself,
    as the TFX Trainer's `serving_model_dir`) and returns its path."""
    module = _RankerModule(model)
    return save_versioned(module, module.signature_functions, export_dir, warmup_examples,
                          version=version, versioned=versioned)
