"""`tf.data` input for the tf.Example schema, shared by the trainer, the pipeline and the tests.

Files are gzip TFRecords (`*.tfrecord.gz`; plain TFRecords also read with `compression=""`).
`check_files` fails early with an error that names the file (and, through TensorFlow's parser,
the feature); `make_dataset` yields dicts of dense raw features (`common.features.parse_examples`)
for a half-open time window `[start, end)` of `timestamp`.
"""

from __future__ import annotations

import glob
import os

import tensorflow as tf

from common import features


class DataError(ValueError):
    """An input file is missing, empty, unreadable or does not match the schema."""


def list_files(data: str) -> list[str]:
    """The record files of `data`: a directory (its `*.tfrecord*` files), a glob or a file."""
    if os.path.isdir(data):
        files = sorted(glob.glob(os.path.join(data, "*.tfrecord*")))
        where = f"directory {data!r} has no *.tfrecord* files"
    else:
        files = sorted(glob.glob(data))
        where = f"no file matches {data!r}"
    if not files:
        raise DataError(f"No input: {where}")
    return files


def _compression(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def _records(files: list[str]) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(files, compression_type=_compression(files[0]))


def check_files(files: list[str], names=features.ALL_FEATURES, sample: int = 64) -> int:
    """Reads every file through and parses its first `sample` records; returns the record count.

    Raises:
      DataError: naming the file, for an empty file, a corrupt or truncated file, or records
        that miss a feature of `names` or carry it with another type (TensorFlow's message,
        which names the feature, is included).
    """
    total = 0
    for path in files:
        records = tf.data.TFRecordDataset(path, compression_type=_compression(path))
        try:
            count = int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise DataError(f"{path}: corrupt or truncated record file: {e.message}") from e
        if count == 0:
            raise DataError(f"{path}: empty file (no records)")
        for batch in records.batch(sample).take(1):
            try:
                features.parse_examples(batch, names)
            except tf.errors.InvalidArgumentError as e:
                raise DataError(f"{path}: records do not match the schema: {e.message}") from e
        total += count
    return total


def time_range(files: list[str], end: int | None = None) -> tuple[int, int]:
    """(min, max) `timestamp` over all records (with `end`: those with `timestamp < end`),
    computed in one vectorised pass. Raises `DataError` when no record qualifies."""
    spec = {features.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64)}
    stamps = (
        _records(files).batch(8192).map(lambda s: tf.io.parse_example(s, spec)[features.TIMESTAMP])
    )
    if end is not None:
        stamps = stamps.map(lambda t: tf.boolean_mask(t, t < end))
    big = tf.constant(2**62, tf.int64)
    lo, hi = stamps.reduce(
        (big, -big),
        lambda acc, t: (tf.minimum(acc[0], tf.reduce_min(tf.concat([t, [big]], 0))),
                        tf.maximum(acc[1], tf.reduce_max(tf.concat([t, [-big]], 0)))),
    )
    if int(lo) > int(hi):
        raise DataError("no records" if end is None else
                        f"no record has a timestamp before {end}")
    return int(lo), int(hi)


def time_split(files: list[str], eval_days: float,
               skip_last_days: float = 0.0) -> tuple[int, int, int]:
    """(first timestamp, start of the eval window, its last timestamp): the last `eval_days`
    of the data are the eval window. With `skip_last_days`, the records of the data's last
    days are left out first (a backtest on an earlier window): the data then end at the last
    timestamp before that cut."""
    lo, hi = time_range(files)
    if skip_last_days:
        end = hi + 1 - int(round(skip_last_days * features.DAY))
        if end <= lo:
            raise DataError(
                f"the data span {(hi - lo) / features.DAY:.2f} days, not more than "
                f"skip_last_days={skip_last_days}: nothing would be left")
        lo, hi = time_range(files, end=end)
    cut = hi + 1 - int(round(eval_days * features.DAY))
    if cut <= lo:
        raise DataError(
            f"the data span {(hi - lo) / features.DAY:.2f} days, not more than "
            f"eval_days={eval_days}: nothing would be left to train on"
        )
    return lo, cut, hi


def records_in_window(
    files: list[str], start: int | None = None, end: int | None = None
) -> tf.data.Dataset:
    """Serialized records with `start <= timestamp < end`, parsing only `timestamp` per record."""
    ds = _records(files)
    if start is None and end is None:
        return ds
    lo = tf.constant(-(2**62) if start is None else start, tf.int64)
    hi = tf.constant(2**62 if end is None else end, tf.int64)
    spec = {features.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64)}

    def in_window(serialized):
        t = tf.io.parse_single_example(serialized, spec)[features.TIMESTAMP]
        return tf.logical_and(t >= lo, t < hi)

    return ds.filter(in_window)


def make_dataset(
    files: list[str],
    batch_size: int,
    *,
    start: int | None = None,
    end: int | None = None,
    names=features.ALL_FEATURES,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    cache: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of raw feature dicts for the records with `start <= timestamp < end`.

    The time filter parses only `timestamp` per record; each batch is then parsed at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = records_in_window(files, start, end)
    if cache:
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda s: features.parse_examples(s, names), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
