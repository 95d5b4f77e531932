"""Pieces shared by the data sources: user history, tf.Example writing, manifest, AUC.

A source builds its samples as numpy columns (``BytesColumn`` / ``IntColumn``, one per feature
of ``trainer.features``), in timestamp order, and calls ``write_examples``: ``encode_examples``
serializes chunks of rows as ``tf.Example``s with numpy (deterministic bytes: the same columns
always give the same records) and ``tf.io.TFRecordWriter`` writes gzip (level 1) shards
``data-00000-of-000NN.tfrecord.gz``, shard 0 holding the earliest records. Shards are written by
a ``fork`` process pool of ``min(2, cpus)`` workers.

Why not ``tfx_bsl``'s ``RecordBatchToExamplesEncoder``: it serializes the feature map in the
random iteration order of protobuf maps, so two runs give different bytes for the same data;
re-serializing deterministically through Python protobuf runs at ~40k examples/s. The numpy
encoder writes protobuf's deterministic serialization directly (the tests check it against
``tfx_bsl`` + ``SerializeToString(deterministic=True)``) and is faster than ``tfx_bsl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from trainer import features
from trainer.oracle import ORACLE_FILE, USERS_FILE

MANIFEST = "manifest.json"
SHARD_PATTERN = "data-*-of-*.tfrecord.gz"
_SHARD_RE = re.compile(r"data-\d{5}-of-\d{5}\.tfrecord\.gz")
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


# ----------------------------------------------------------------------------- user history


def user_history(
    user: np.ndarray,
    timestamp: np.ndarray,
    item: np.ndarray,
    positive: np.ndarray,
    cap: int = features.MAX_HISTORY,
) -> tuple[np.ndarray, np.ndarray]:
    """``user_hist_items`` of every event, as a ragged array.

    For event ``i`` the history is the ``item`` of the events ``j`` with ``positive[j]``,
    ``user[j] == user[i]`` and ``timestamp[j] < timestamp[i]`` (strictly: events at the same
    second are not history), newest first (ties in ``timestamp`` among the history: the later
    event index first), at most ``cap`` items. Vectorised: the positives are sorted by
    ``(user, timestamp)`` and one ``np.searchsorted`` counts, for every event, the positives of
    its user strictly before it.

    Args:
        user: ``[n]`` integer user index of each event.
        timestamp: ``[n]`` integer timestamp of each event.
        item: ``[n]`` item of each event (any dtype; values are copied into the result).
        positive: ``[n]`` bool, whether the event is a positive (it then enters later histories).
        cap: maximum history length.

    Returns:
        ``(offsets, values)``: ``offsets`` ``[n + 1]`` int64, ``values`` ``[offsets[-1]]`` of
        ``item``'s dtype; event ``i``'s history is ``values[offsets[i]:offsets[i + 1]]``.

    Example: users ``[0, 0, 0]``, timestamps ``[1, 1, 2]``, items ``[7, 8, 9]``, all positive
    gives histories ``[], [], [8, 7]``.
    """
    user = np.asarray(user)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    item = np.asarray(item)
    positive = np.asarray(positive, dtype=bool)
    n = user.shape[0]
    if not (timestamp.shape == item.shape == positive.shape == (n,)) or user.ndim != 1:
        raise ValueError(
            "user, timestamp, item and positive must be 1-D of one length; got shapes "
            f"{user.shape}, {timestamp.shape}, {item.shape}, {positive.shape}"
        )
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    if n == 0:
        return np.zeros(1, np.int64), item[:0].copy()
    user = user.astype(np.int64)
    if user.min() < 0:
        raise ValueError(f"user indices must be >= 0, got min {user.min()}")
    # One sortable int64 key per event: user-major, then time.
    t_min = int(timestamp.min())
    span = int(timestamp.max()) - t_min + 1
    if (int(user.max()) + 1) * span >= 2**62:
        raise ValueError(f"user x timestamp range too large for an int64 key: {user.max()}, {span}")
    key = user * span + (timestamp - t_min)  # [n]
    pos = np.flatnonzero(positive)
    order = pos[np.argsort(key[pos], kind="stable")]  # positives by (user, time, index)
    pos_key = key[order]
    pos_item = item[order]
    end = np.searchsorted(pos_key, key, side="left")  # positives with a smaller key
    # The user's first positive: one search per user, not per event.
    first = np.searchsorted(pos_key, np.arange(int(user.max()) + 1) * span, side="left")
    lengths = np.minimum(end - first[user], cap)  # [n]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Flat position k of row i takes the positive at end[i] - 1 - (k - offsets[i]).
    index_type = np.int32 if offsets[-1] + len(pos_key) < 2**31 else np.int64
    src = np.repeat((end - 1 + offsets[:-1]).astype(index_type), lengths)
    src -= np.arange(offsets[-1], dtype=index_type)
    return offsets, pos_item[src]


# ----------------------------------------------------------------------------- columns


@dataclasses.dataclass(frozen=True)
class BytesColumn:
    """A bytes feature stored as indices into a vocabulary.

    Attributes:
        vocab: the distinct values.
        indices: flat indices into ``vocab``.
        offsets: ``[n + 1]`` row offsets into ``indices`` for a list feature; ``None`` when
            every example has exactly one value (``indices`` is then ``[n]``).
    """

    vocab: Sequence[bytes]
    indices: np.ndarray
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices) if self.offsets is None else len(self.offsets) - 1


@dataclasses.dataclass(frozen=True)
class IntColumn:
    """An int64 feature with exactly one value per example."""

    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


Column = BytesColumn | IntColumn


def ragged_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[
    np.ndarray, np.ndarray
]:
    """Rows ``rows`` of the ragged array ``(offsets, values)``, as a new ``(offsets, values)``.

    Example: offsets ``[0, 2, 3]``, values ``[5, 6, 7]``, rows ``[1, 0, 1]`` gives
    ``([0, 1, 3, 4], [7, 5, 6, 7])``.
    """
    offsets = np.asarray(offsets, np.int64)
    rows = np.asarray(rows, np.int64)
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    src = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return new_offsets, np.asarray(values)[src]


# ----------------------------------------------------------------------------- tf.Example bytes
#
# Wire format (tensorflow/core/example/{example,feature}.proto), as protobuf's deterministic
# serialization writes it (map entries sorted by key):
#   Example  = 0x0a len Features
#   Features = for each feature name, sorted: 0x0a len (0x0a len name 0x12 len Feature)
#   Feature  = 0x0a len BytesList | 0x1a len Int64List
#   BytesList = (0x0a len value)*;  Int64List = 0x0a len (varint value)*  (packed)


def _as_uint64(x: np.ndarray) -> np.ndarray:
    """int64 values as the uint64 protobuf varint-encodes (negative: two's complement)."""
    return np.asarray(x).astype(np.int64).view(np.uint64)


def _varint_length(x: np.ndarray) -> np.ndarray:
    """Bytes of the varint of each value of ``x`` (1..10)."""
    x = _as_uint64(x) >> np.uint64(7)
    length = np.ones(x.shape, np.int64)
    while x.any():
        length += x != 0
        x = x >> np.uint64(7)
    return length


def _varint(value: int) -> bytes:
    """The varint of one non-negative ``value``."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _row_bytes(parts: Sequence[bytes | np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the concatenation of ``parts``: constant bytes, or ``[n]`` ints as varints.

    Returns ``(flat uint8, lengths [n])``; row ``i`` is the ``i``-th run of ``lengths[i]``.
    Example: parts ``[b"*", np.array([1, 300])]`` gives the bytes ``2a 01 2a ac 02``, lengths
    ``[2, 3]``.
    """
    prepared, width = [], 0
    for part in parts:
        if isinstance(part, bytes):
            prepared.append((np.frombuffer(part, np.uint8), None))
            width += len(part)
        else:
            values = _as_uint64(part)
            lengths = _varint_length(values)
            prepared.append((values, lengths))
            width += int(lengths.max()) if n else 1
    matrix = np.empty((n, width), np.uint8)  # [rows, widest row]
    keep = np.ones((n, width), bool)
    col = 0
    for data, lengths in prepared:
        if lengths is None:
            matrix[:, col:col + len(data)] = data
            col += len(data)
            continue
        for k in range(int(lengths.max()) if n else 1):
            low7 = ((data >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
            matrix[:, col] = low7 | ((k + 1 < lengths).astype(np.uint8) << 7)
            keep[:, col] = k < lengths
            col += 1
    return matrix[keep], keep.sum(axis=1)


def _value_table(vocab: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """BytesList entries ``0x0a len value`` of each vocab value: ``(uint8 data, offsets)``."""
    pieces = [b"\x0a" + _varint(len(v)) + v for v in vocab]
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return np.frombuffer(b"".join(pieces), np.uint8), offsets


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x), np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


def encode_examples(columns: Mapping[str, Column], start: int = 0, stop: int | None = None,
                    tables: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    ) -> tuple[bytes, np.ndarray]:
    """Serialized ``tf.Example``s of rows ``[start, stop)`` of ``columns``, deterministic bytes.

    Each row becomes the Example with one feature per column: a ``BytesColumn`` as a
    ``bytes_list``, an ``IntColumn`` as a one-value ``int64_list``. The bytes equal
    ``tf.train.Example.SerializeToString(deterministic=True)`` of that Example.

    Args:
        columns: feature name -> column (any names; all of one length).
        start, stop: the rows to encode (default: all).
        tables: ``_value_table`` of each ``BytesColumn``'s vocab, to reuse across calls.

    Returns:
        ``(data, offsets)``: record ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
    """
    stop = len(next(iter(columns.values()))) if stop is None else stop
    n = stop - start
    sources: list[np.ndarray] = []  # concatenated into one buffer that the records copy from
    size = 0

    def add(buffer: np.ndarray) -> int:
        nonlocal size
        sources.append(buffer)
        size += len(buffer)
        return size - len(buffer)

    # Copy operations of each row, in row order: (ops per row or None for one, starts, lengths).
    groups: list[tuple[np.ndarray | None, np.ndarray, np.ndarray]] = []
    features_length = np.zeros(n, np.int64)  # [n] length of the Features message
    for name in sorted(columns):
        col = columns[name]
        key = name.encode()
        key_part = b"\x0a" + _varint(len(key)) + key + b"\x12"  # map key, then value tag
        if isinstance(col, IntColumn):
            values = col.values[start:stop]
            payload = _varint_length(values)
            list_length = 2 + payload  # 0x0a, payload length (<= 10: one byte), payload
            feature_length = 1 + _varint_length(list_length) + list_length
            entry_length = len(key_part) + _varint_length(feature_length) + feature_length
            flat, lengths = _row_bytes([b"\x0a", entry_length, key_part, feature_length,
                                        b"\x1a", list_length, b"\x0a", payload, values], n)
            groups.append((None, add(flat) + _exclusive_cumsum(lengths), lengths))
            features_length += lengths
            continue
        data, table_offsets = tables[name] if tables else _value_table(col.vocab)
        base = add(data)
        if col.offsets is None:
            counts, idx = None, np.asarray(col.indices[start:stop])
        else:
            lo, hi = col.offsets[start], col.offsets[stop]
            counts, idx = np.diff(col.offsets[start:stop + 1]), np.asarray(col.indices[lo:hi])
        value_starts = base + table_offsets[idx]
        value_lengths = table_offsets[idx + 1] - table_offsets[idx]
        if counts is None:
            list_length = value_lengths
        else:
            cumulative = np.concatenate([[0], np.cumsum(value_lengths)])
            list_length = np.diff(cumulative[np.concatenate([[0], np.cumsum(counts)])])
        feature_length = 1 + _varint_length(list_length) + list_length
        entry_length = len(key_part) + _varint_length(feature_length) + feature_length
        flat, lengths = _row_bytes([b"\x0a", entry_length, key_part, feature_length, b"\x0a",
                                    list_length], n)
        groups.append((None, add(flat) + _exclusive_cumsum(lengths), lengths))
        groups.append((counts, value_starts, value_lengths))
        features_length += lengths + list_length
    flat, lengths = _row_bytes([b"\x0a", features_length], n)
    groups.insert(0, (None, add(flat) + _exclusive_cumsum(lengths), lengths))

    # Interleave the groups: row i's ops are group 0's, then group 1's, ...
    ops_per_row = sum(np.ones(n, np.int64) if c is None else c for c, _, _ in groups)
    row_ops = np.zeros(n + 1, np.int64)
    np.cumsum(ops_per_row, out=row_ops[1:])
    op_start = np.empty(row_ops[-1], np.int64)
    op_length = np.empty(row_ops[-1], np.int64)
    cursor = row_ops[:-1].copy()  # [n] next op position of each row
    for counts, starts, lens in groups:
        if counts is None:
            position = cursor
            cursor = cursor + 1
        else:
            position = np.repeat(cursor - _exclusive_cumsum(counts), counts) + np.arange(
                len(starts))
            cursor = cursor + counts
        op_start[position] = starts
        op_length[position] = lens
    buffer = np.concatenate(sources)
    out_offsets = np.zeros(len(op_length) + 1, np.int64)
    np.cumsum(op_length, out=out_offsets[1:])
    index_type = np.int32 if max(len(buffer), out_offsets[-1]) < 2**31 else np.int64
    index = np.repeat((op_start - out_offsets[:-1]).astype(index_type), op_length)
    index += np.arange(out_offsets[-1], dtype=index_type)
    return buffer[index].tobytes(), out_offsets[row_ops]


def _check_columns(columns: Mapping[str, Column]) -> int:
    """Checks that ``columns`` fit the schema of ``trainer.features``; returns their length."""
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
    tables = {name: _value_table(col.vocab) for name, col in columns.items()
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
        columns: one ``BytesColumn``/``IntColumn`` per feature of ``trainer.features``, all of
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


# ----------------------------------------------------------------------------- output dir


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Creates ``out_dir``, or empties a previous source's output in it.

    A directory that exists must be empty, unless ``overwrite``: then the shards,
    ``manifest.json``, ``oracle.npz`` and ``users.npz`` of a previous run are deleted (other
    files are left alone, so a wrong path never loses unrelated data silently: it is refused
    without ``overwrite``).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {str(out)!r} is not empty; pass --overwrite (overwrite=True) to replace "
                "the shards, manifest.json, oracle.npz and users.npz of a previous run"
            )
        for path in out.iterdir():
            if _SHARD_RE.fullmatch(path.name) or path.name in (MANIFEST, ORACLE_FILE, USERS_FILE):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON of ``value``: numpy scalars/arrays become Python values, NaN becomes null."""
    return json.dumps(_plain(value), indent=indent, allow_nan=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_manifest(out_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Writes ``manifest`` as ``out_dir/manifest.json`` (strict JSON, NaN as null)."""
    path = Path(out_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(to_json(manifest, indent=2) + "\n", "utf-8")
    tmp.replace(path)
    return path
