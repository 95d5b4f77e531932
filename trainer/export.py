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


class RawParser(tf.Module):
    """Serialized tf.Examples -> the model's input features: the raw schema, parsed densely."""

    # Raw features the mix-tower signatures read beyond `REQUIRED_FEATURES`.
    context_inputs: tuple[str, ...] = ()

    def __call__(self, examples: tf.Tensor, names) -> dict[str, tf.Tensor]:
        return F.parse_examples(examples, names)


class TransformParser(tf.Module):
    """Serialized tf.Examples -> ids through the pipeline's TFT Transform graph.

    Parses `names` with the raw feature spec the Transform was built on (a missing required
    feature or a wrong type still fails naming the feature), then applies the Transform layer;
    features a signature does not parse are supplied by TFT with defaults and not used.
    """

    # The Transform derives hour/day buckets from the request's timestamp.
    context_inputs = (F.TIMESTAMP,)

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


class _ServingModule(tf.Module):
    """Holds the trained model, its input parser and the signature functions."""

    def __init__(self, model: LFM4AdsModel, parser: tf.Module | None = None):
        super().__init__(name="lfm4ads")
        self.model = model
        self.parser = parser = parser or RawParser()

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def serving_default(examples):
            raw = parser(examples, S.REQUIRED_FEATURES[S.SERVING_DEFAULT] + parser.context_inputs)
            out = model(raw, training=False)
            return {key: out[key] for key in S.OUTPUT_KEYS[S.SERVING_DEFAULT]}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def user_representation(examples):
            raw = parser(examples, S.REQUIRED_FEATURES[S.USER_REPRESENTATION])
            ur = tf.cast(model.user_representation(raw), tf.float32)
            return {S.USER_REPRESENTATION: ur}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def item_representation(examples):
            raw = parser(examples, S.REQUIRED_FEATURES[S.ITEM_REPRESENTATION])
            ir = tf.cast(model.item_representation(raw), tf.float32)
            return {S.ITEM_REPRESENTATION: ir}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def cross_representation(examples):
            raw = parser(examples,
                         S.REQUIRED_FEATURES[S.CROSS_REPRESENTATION] + parser.context_inputs)
            return {S.CROSS_REPRESENTATION: model.cross_representation(raw)}

        self.signature_functions = {
            S.SERVING_DEFAULT: serving_default,
            S.USER_REPRESENTATION: user_representation,
            S.ITEM_REPRESENTATION: item_representation,
            S.CROSS_REPRESENTATION: cross_representation,
        }
        if isinstance(parser, TransformParser):

            @tf.function(input_signature=[_EXAMPLES_SPEC])
            def transform_features(examples):
                # For TFMA (`preprocessing_function_names`): the derived features it can slice
                # on (e.g. item_cold_start). Transformed features that share a raw feature's
                # name are left out, so slices by domain or scenario use the raw values.
                out = parser(examples, sorted(parser.raw_spec))
                return {k: v for k, v in out.items() if k not in parser.raw_spec}

            self.signature_functions[S.TRANSFORM_FEATURES] = transform_features


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
    parser: tf.Module | None = None,
    versioned: bool = True,
) -> str:
    """Writes `<export_dir>/<version>/` and returns its path.

    The version directory is written under a temporary name and renamed when complete, so a
    server polling `export_dir` never sees a half-written version. `parser` turns serialized
    examples into model inputs (default `RawParser`; the pipeline gives a `TransformParser`,
    which also adds the `transform_features` signature). `versioned=False` writes the
    SavedModel into `export_dir` itself (TFX Trainer's `serving_model_dir`; Pusher versions it).
    """
    if not warmup_examples:
        raise ValueError("warmup_examples is empty: give a few serialized tf.Examples")
    if versioned:
        version = next_version(export_dir) if version is None else int(version)
        final = os.path.join(export_dir, str(version))
        tmp = os.path.join(export_dir, f".tmp-{version}")
    else:
        final = export_dir.rstrip("/")
        tmp = final + ".tmp"
    if tf.io.gfile.exists(final) and (versioned or tf.io.gfile.listdir(final)):
        what = f"version {version}" if versioned else "a SavedModel"
        raise FileExistsError(f"{what} already exists at {final}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    module = _ServingModule(model, parser)
    tf.saved_model.save(module, tmp, signatures=module.signature_functions)
    extra = os.path.join(tmp, "assets.extra")
    tf.io.gfile.makedirs(extra)
    write_warmup_requests(os.path.join(extra, S.WARMUP_FILE), list(warmup_examples))
    if tf.io.gfile.exists(final):  # an empty directory made for us (TFX serving_model_dir)
        tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(tmp, final)
    return final
