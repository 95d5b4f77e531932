"""Export of the upstream model: one SavedModel with the UR/IR/CR signatures, TF Serving layout.

`<export_dir>/<integer version>/saved_model.pb` + `variables/` + `assets.extra/
tf_serving_warmup_requests`. Every signature takes `examples` (DT_STRING `[batch]` serialized
tf.Examples) and parses only the features it needs (`trainer.signatures.REQUIRED_FEATURES`).
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

from trainer import features as F
from trainer import signatures as S
from trainer.model import LFM4AdsModel

_EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name=S.INPUT_KEY)


class _ServingModule(tf.Module):
    """Holds the trained model and its four signature functions."""

    def __init__(self, model: LFM4AdsModel):
        super().__init__(name="lfm4ads")
        self.model = model

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def serving_default(examples):
            raw = F.parse_examples(examples, S.REQUIRED_FEATURES[S.SERVING_DEFAULT])
            out = model(raw, training=False)
            return {key: out[key] for key in S.OUTPUT_KEYS[S.SERVING_DEFAULT]}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def user_representation(examples):
            raw = F.parse_examples(examples, S.REQUIRED_FEATURES[S.USER_REPRESENTATION])
            ur = tf.cast(model.user_representation(raw), tf.float32)
            return {S.USER_REPRESENTATION: ur}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def item_representation(examples):
            raw = F.parse_examples(examples, S.REQUIRED_FEATURES[S.ITEM_REPRESENTATION])
            ir = tf.cast(model.item_representation(raw), tf.float32)
            return {S.ITEM_REPRESENTATION: ir}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def cross_representation(examples):
            raw = F.parse_examples(examples, S.REQUIRED_FEATURES[S.CROSS_REPRESENTATION])
            return {S.CROSS_REPRESENTATION: model.cross_representation(raw)}

        self.signature_functions = {
            S.SERVING_DEFAULT: serving_default,
            S.USER_REPRESENTATION: user_representation,
            S.ITEM_REPRESENTATION: item_representation,
            S.CROSS_REPRESENTATION: cross_representation,
        }


def next_version(export_dir: str) -> int:
    """A version greater than every integer version already in `export_dir` (unix seconds)."""
    existing = [int(d) for d in tf.io.gfile.listdir(export_dir) if d.strip("/").isdigit()] if (
        tf.io.gfile.exists(export_dir)
    ) else []
    return max([int(time.time())] + [v + 1 for v in existing])


def write_warmup_requests(path: str, serialized_examples: list[bytes]) -> None:
    """TF Serving warmup file: one `PredictionLog` per signature over `serialized_examples`."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    tensor = tf.make_tensor_proto(serialized_examples, dtype=tf.string)
    with tf.io.TFRecordWriter(path) as writer:
        for name in S.OUTPUT_KEYS:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=name),
                inputs={S.INPUT_KEY: tensor},
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_saved_model(
    model: LFM4AdsModel,
    export_dir: str,
    warmup_examples: list[bytes],
    version: int | None = None,
) -> str:
    """Writes `<export_dir>/<version>/` and returns its path.

    The version directory is written under a temporary name and renamed when complete, so a
    server polling `export_dir` never sees a half-written version.
    """
    if not warmup_examples:
        raise ValueError("warmup_examples is empty: give a few serialized tf.Examples")
    version = next_version(export_dir) if version is None else int(version)
    final = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"version {version} already exists in {export_dir}")
    tmp = os.path.join(export_dir, f".tmp-{version}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    module = _ServingModule(model)
    tf.saved_model.save(module, tmp, signatures=module.signature_functions)
    extra = os.path.join(tmp, "assets.extra")
    tf.io.gfile.makedirs(extra)
    write_warmup_requests(os.path.join(extra, S.WARMUP_FILE), list(warmup_examples))
    tf.io.gfile.rename(tmp, final)
    return final
