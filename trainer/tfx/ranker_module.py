"""The TFX Trainer's `run_fn` for a downstream ranker (paper Sec. 3.4) in the pipeline.

The Trainer is given `run_fn="trainer.tfx.ranker_module.run_fn"` and the
`DownstreamExamples` artifact: the ad rows of the downstream window with UR, IR, CR(u), CR(i)
as of before each row, as the ranker's serving requests. `custom_config`:

    mode             a ranker mode of `trainer.downstream.config` (`lfm4ads`, or `none` for
                     the baseline)
    model            `DownstreamConfig` field overrides
    train            `DownstreamTrainConfig` field overrides
    validation_days  the training split's last days, held out for early stopping (default 1)

The ranker is exported to `serving_model_dir` with `trainer.downstream.export`'s signature
(serialized tf.Examples with the representation features in, `prediction` out), which the
Evaluator (TFMA) and the model server call. TensorBoard summaries of each epoch go to
`model_run_dir` (`train/`, and `validation/` with the exact AUC).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from common import features, signatures
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream.export import export_ranker
from trainer.downstream.train import train_ranker

REPRESENTATIONS = signatures.REPRESENTATION_FEATURES[:4]


def _dims(files: list[str]) -> dict[str, int]:
    """Width of each representation feature, from the first example that has it."""
    dims: dict[str, int] = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        for name in REPRESENTATIONS:
            if name not in dims and len(feature[name].float_list.value):
                dims[name] = len(feature[name].float_list.value)
        if len(dims) == len(REPRESENTATIONS):
            return dims
    missing = [n for n in REPRESENTATIONS if n not in dims]
    raise ValueError(f"no downstream example in {files[:3]}... carries {missing}: every row "
                     "is a cold start; the downstream window is too short")


def read_rows(file_patterns: list[str], dims: dict[str, int]) -> ranker_data.Rows:
    """Raw features and representation features `[n, d]` / found `[n]` of the examples."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no downstream examples match {file_patterns}")
    spec = features.feature_spec(features.ALL_FEATURES)
    for name, dim in dims.items():
        spec[name] = tf.io.FixedLenFeature([dim], tf.float32, default_value=[0.0] * dim)
        spec[signatures.found_feature(name)] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    parts: dict[str, list[np.ndarray]] = {}
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
    for batch in ds.map(lambda s: features.densify(tf.io.parse_example(s, spec))):
        for name, value in batch.items():
            parts.setdefault(name, []).append(value.numpy())
    rows = ranker_data.with_bytes_as_objects(
        {name: np.concatenate(values) for name, values in parts.items()})
    for name in dims:
        rows[signatures.found_feature(name)] = rows[signatures.found_feature(name)].astype(
            np.float32
        )
    return rows


def split_validation(
    rows: ranker_data.Rows, validation_days: float
) -> tuple[ranker_data.Rows, ranker_data.Rows]:
    """The rows before the last `validation_days`, and those days."""
    cut = int(rows[features.TIMESTAMP].max()) + 1 - int(round(validation_days * features.DAY))
    early = rows[features.TIMESTAMP] < cut
    if not early.any() or early.all():
        raise ValueError(f"validation_days={validation_days} leaves no training or no "
                         "validation rows in the downstream window")
    return ranker_data.select(rows, early), ranker_data.select(rows, ~early)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (`tfx.components.Trainer(run_fn=...)`)."""
    custom = dict(fn_args.custom_config or {})
    config = dataclasses.replace(downstream_config.DownstreamConfig(**custom.get("model", {})),
                                 mode=custom.get("mode", downstream_config.LFM4ADS))
    # finetune loads the upstream SavedModel; distill reads the upstream's prediction on each
    # row, which DownstreamExamples does not write.
    unsupported = (downstream_config.FINETUNE, downstream_config.DISTILL)
    if config.mode not in downstream_config.RANKER_MODES or config.mode in unsupported:
        raise ValueError(
            f"the pipeline's downstream trainer takes the modes "
            f"{[m for m in downstream_config.RANKER_MODES if m not in unsupported]}, got "
            f"{config.mode!r}"
        )
    train_config = downstream_config.DownstreamTrainConfig(**custom.get("train", {}))
    files = sorted(f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern))
    dims = _dims(files)
    rows = read_rows(fn_args.train_files, dims)
    train, validation = split_validation(rows, float(custom.get("validation_days", 1.0)))
    keep = set(features.ALL_FEATURES) | set(config.representation_features) | {
        signatures.found_feature(n) for n in config.representation_features}
    train = {k: v for k, v in train.items() if k in keep}
    validation = {k: v for k, v in validation.items() if k in keep}
    model, fit = train_ranker(config, train_config, train, validation, verbose=0,
                              log_dir=getattr(fn_args, "model_run_dir", None))
    warmup = [r.numpy() for r in tf.data.TFRecordDataset(files[:1], "GZIP").take(4)]
    export_ranker(model, fn_args.serving_model_dir, warmup, versioned=False)
    print(f"downstream ranker {config.mode!r}: {ranker_data.size(train)} training, "
          f"{ranker_data.size(validation)} validation rows; best epoch {fit['best_epoch']}/"
          f"{fit['epochs']}")
