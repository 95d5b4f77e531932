"""tf.Example bytes of a source's columns, written with numpy (deterministic and fast).

A source builds its samples as numpy columns (``BytesColumn`` / ``IntColumn``, one per feature
of ``common.features``) and ``encode_examples`` serializes a chunk of rows as ``tf.Example``s:
the bytes equal ``tf.train.Example.SerializeToString(deterministic=True)`` of each row's
Example, so the same columns always give the same records.

Why not ``tfx_bsl``'s ``RecordBatchToExamplesEncoder``: it serializes the feature map in the
random iteration order of protobuf maps, so two calls give different bytes for the same data.
Its records re-serialized with ``SerializeToString(deterministic=True)`` give this encoder's
bytes (the tests check it) 5-6x slower; ``tfx_bsl``'s own bytes come about as fast (1.2x slower
at 200k records; docs/BENCHMARKS.md "tf.Example encoding", ``benchmarks/example_encoding.py``).
This encoder stays only while it is faster than that deterministic route.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


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


def value_table(vocab: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
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
        tables: ``value_table`` of each ``BytesColumn``'s vocab, to reuse across calls.

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
        data, table_offsets = tables[name] if tables else value_table(col.vocab)
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
