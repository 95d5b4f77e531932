"""The gzip TFRecord shards a source writes: names, how many, and writing them in parallel.

``write_examples`` checks the columns against the schema of ``common.features``, encodes chunks
of rows with ``example_encoder.encode_examples`` and writes gzip (level 1) shards
``data-00000-of-000NN.tfrecord.gz`` with ``tf.io.TFRecordWriter``, shard 0 holding the earliest
records. Shards are written by a ``fork`` process pool of ``min(2, cpus)`` workers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from tqdm import tqdm

from common import features
from pipelines.sources.example_encoder import (
    BytesColumn,
    Column,
    IntColumn,
    encode_examples,
    value_table,
)

SHARD_PATTERN = "data-*-of-*.tfrecord.gz"
SHARD_RE = re.compile(r"data-\d{5}-of-\d{5}\.tfrecord\.gz")
# Examples encoded at once: bounds the memory of one chunk of serialized examples.
CHUNK_SIZE = 32_768
# Examples per shard when the caller does not choose the number of shards.
EXAMPLES_PER_SHARD = 250_000


def shard_name(index: int, num_shards: int) -> str:
    """File name of shard ``index`` of ``num_shards``: ``data-00000-of-00004.tfrecord.gz``."""
    return f"data-{index:05d}-of-{num_shards:05d}.tfrecord.gz"


def default_num_shards(examples: int) -> int:
    """An even number of shards (so 2 workers get equal work), about 250k examples each."""
    return max(2, 2 * math.ceil(examples / (2 * EXAMPLES_PER_SHARD)))


def _check_columns(columns: Mapping[str, Column]) -> int:
    """Checks that ``columns`` fit the schema of ``common.features``; returns their length."""
    missing = set(features.ALL_FEATURES) - set(columns)
    extra = set(columns) - set(features.ALL_FEATURES)
    if missing or extra:
        raise ValueError(f"columns must be exactly the schema's features; missing "
                         f"{sorted(missing)}, unknown {sorted(extra)}")
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns have different lengths: {lengths}")
    for name, col in columns.items():
        want_list = name in features.LIST_FEATURES
        if features.FEATURE_TYPES[name] is bytes:
            ok = isinstance(col, BytesColumn) and (col.offsets is not None) == want_list
        else:
            ok = isinstance(col, IntColumn) and not want_list
        if not ok:
            raise ValueError(f"column {name!r}: a {type(col).__name__} of this shape does not "
                             f"fit the schema ({features.FEATURE_TYPES[name].__name__}, "
                             f"list={want_list})")
    return next(iter(lengths.values()))


# The work of the pool, inherited by the forked workers (never pickled).
_WORK: dict[str, Any] = {}


def _write_shard(shard: int) -> int:
    """Encodes and writes shard ``shard`` of ``_WORK``; returns its number of records."""
    columns, bounds, paths, counter = (_WORK[k] for k in ("columns", "bounds", "paths",
                                                           "counter"))
    tables = {name: value_table(col.vocab) for name, col in columns.items()
              if isinstance(col, BytesColumn)}
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)
    lo, hi = bounds[shard], bounds[shard + 1]
    with tf.io.TFRecordWriter(paths[shard], options) as writer:
        for start in range(lo, hi, CHUNK_SIZE):
            stop = min(start + CHUNK_SIZE, hi)
            data, offsets = encode_examples(columns, start, stop, tables)
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
                writer.write(data[a:b])
            if counter is not None:
                with counter.get_lock():
                    counter.value += stop - start
    return hi - lo


def write_examples(
    out_dir: str | os.PathLike,
    columns: Mapping[str, Column],
    num_shards: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Writes the examples of ``columns`` (already in timestamp order) as gzip TFRecord shards.

    Args:
        out_dir: existing directory to write into.
        columns: one ``BytesColumn``/``IntColumn`` per feature of ``common.features``, all of
            the same length ``n``.
        num_shards: number of shards; default ``default_num_shards(n)``. Contiguous slices, so
            shard 0 holds the first records. The bytes written do not depend on ``workers``.
        workers: processes writing shards; default ``min(2, cpu count, num_shards)``. ``1``
            writes in this process.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The shard file names, in record order.
    """
    n = _check_columns(columns)
    num_shards = default_num_shards(n) if num_shards is None else num_shards
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, num_shards))
    names = [shard_name(i, num_shards) for i in range(num_shards)]
    bounds = [round(i * n / num_shards) for i in range(num_shards + 1)]
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0) if progress else None
    _WORK.update(columns=columns, bounds=bounds, counter=counter,
                 paths=[os.path.join(out_dir, name) for name in names])
    bar = tqdm(total=n, unit="ex", file=sys.stderr, disable=not progress, desc="writing",
               smoothing=0.1)
    try:
        if workers == 1:
            for shard in range(num_shards):
                _write_shard(shard)
                bar.update(bounds[shard + 1] - bar.n)
        else:
            with ctx.Pool(workers) as pool:
                result = pool.map_async(_write_shard, range(num_shards))
                while not result.ready():
                    result.wait(0.2)
                    if counter is not None:
                        bar.update(counter.value - bar.n)
                result.get()  # re-raises a worker's error
            bar.update(n - bar.n)
    finally:
        bar.close()
        _WORK.clear()
    return names
