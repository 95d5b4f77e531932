"""The TFX Trainer's `run_fn`: the upstream model trained on the Transform component's output.

The Trainer component is given `run_fn="trainer.tfx.upstream_module.run_fn"`, the transformed
examples and the Transform graph. `custom_config` may name a `preset` of
`trainer.config.PRESETS` and hold `model` and `train` dicts of `ModelConfig` / `TrainConfig`
fields over it; `train: {"strategy": ...}` trains under a `tf.distribute` strategy on the
cluster of `TF_CONFIG` (`trainer.distribute`), and only the chief exports. The SavedModel
written to `serving_model_dir` keeps the signature contract of docs/ARCHITECTURE.md (raw
serialized tf.Examples in, the Transform graph inside) and adds `transform_features` for TFMA.
TensorBoard summaries of each epoch go to `model_run_dir` (`train/`, `validation/`).
"""

from __future__ import annotations

import sys

import tensorflow as tf

from common import features
from trainer import distribute
from trainer.config import from_preset
from trainer.export import TransformParser, export_saved_model
from trainer.model import LFM4AdsModel
from trainer.transform import TransformPreprocessor, vocabulary_sizes


def transformed_dataset(
    file_patterns: list[str],
    feature_spec: dict,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of transformed feature dicts from the Transform component's gzip TFRecords."""
    files = _files(file_patterns)
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_patterns}")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda s: tf.io.parse_example(s, feature_spec),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _files(file_patterns: list[str]) -> list[str]:
    return sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))


def _count(file_patterns: list[str]) -> int:
    records = tf.data.TFRecordDataset(_files(file_patterns), compression_type="GZIP")
    return int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def warmup_examples(raw_spec: dict, count: int = 4) -> list[bytes]:
    """Valid raw tf.Examples for the warmup file, built from the raw feature spec alone.

    The Trainer sees only transformed examples, so it makes its own: every feature of the
    raw spec gets one value (`b"warmup"` or `0`; lists `count` long so they are padded/cut).
    """
    examples = []
    for row in range(count):
        feature = {}
        for name, spec in sorted(raw_spec.items()):
            n = 1 if isinstance(spec, tf.io.FixedLenFeature) else row + 1
            if spec.dtype == tf.string:
                values = [f"warmup-{name}-{row}-{j}".encode() for j in range(n)]
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[row] * n))
        if features.DOMAIN in feature:
            domain = features.DOMAIN_AD if row % 2 else features.DOMAIN_CONTENT
            feature[features.DOMAIN] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[domain])
            )
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature))
                        .SerializeToString())
    return examples


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (`tfx.components.Trainer(run_fn=...)`)."""
    import tensorflow_transform as tft

    custom = dict(fn_args.custom_config or {})
    model_config, train_config = from_preset(custom.get("preset", "default"),
                                             custom.get("model"), custom.get("train"))
    # Under parameter_server, the worker and ps tasks serve here and never return.
    strategy = distribute.strategy_for(train_config)
    name = distribute.strategy_name(strategy)
    distribute.check_supported(name, model_config, train_config)
    tf.keras.utils.set_random_seed(train_config.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    spec = tft_output.transformed_feature_spec()
    sizes = vocabulary_sizes(tft_output)
    train_batches = distribute.training_batches(lambda drop_remainder: transformed_dataset(
        fn_args.train_files, spec, train_config.batch_size,
        shuffle_buffer=train_config.shuffle_buffer, seed=train_config.seed,
        drop_remainder=drop_remainder).cache())

    def build() -> LFM4AdsModel:
        return LFM4AdsModel(model_config, train_config, preprocessor=TransformPreprocessor(sizes))

    with strategy.scope():
        model = build()
    if model.feature_path is not None and train_config.feature_path_epochs:
        model.fit_feature_path(train_batches(), verbose=True)  # first stage; frozen for `fit`
    with strategy.scope():
        model.compile(optimizer=tf.keras.optimizers.Adam(train_config.learning_rate))
    fit_args = {}
    if name != "parameter_server":
        fit_args["validation_data"] = transformed_dataset(fn_args.eval_files, spec, 4096)
    rows = _count(fn_args.train_files) if name == "parameter_server" else 0
    # TensorBoard summaries where TFX users look for them, the Trainer's `model_run` artifact,
    # written by the chief (the one that exports).
    log_dir = getattr(fn_args, "model_run_dir", None) if distribute.is_chief(strategy) else None
    distribute.fit(model, strategy, train_batches, rows, train_config,
                   verbose=1 if sys.stdout.isatty() else 2, log_dir=log_dir, **fit_args)
    if name != "default":  # exported as one plain model, and only by the chief
        first = next(iter(transformed_dataset(fn_args.eval_files, spec, 64)))
        model = distribute.unsharded_copy(model, build, first)
    if distribute.is_chief(strategy):
        _export(model, fn_args, tft_output)
    # TFX checks the export on every worker (a shared file system, as on Vertex AI): the
    # other workers of multi_worker return once the chief has written it.
    distribute.barrier(strategy)


def _export(model: LFM4AdsModel, fn_args, tft_output) -> None:
    export_saved_model(
        model,
        fn_args.serving_model_dir,
        warmup_examples=warmup_examples(tft_output.raw_feature_spec()),
        parser=TransformParser(tft_output),
        versioned=False,
    )
