"""The published representation table: one tf.Example per key (paper Sec. 4.3.1).

LFM4Ads serves the upstream representations (UR, IR, CR(u), CR(i); Sec. 3.2-3.3) to the
downstream models as look-up tables keyed by user or item id. Every row of such a table is a
serialized ``tf.Example`` with the fields

    key             bytes_list [1]   the user or item id
    representation  float_list [d]   the vector (float32; d is the same for every row)
    updated_at      int64_list [1]   unix seconds of the event the vector was computed from
    model_version   int64_list [1]   the SavedModel version that produced it

Files are gzip TFRecords named ``<prefix>-SSSSS-of-NNNNN.tfrecord.gz``, one directory per
table (`TABLES`) in a published version ``<publish_root>/<version>/<table>/``. The Beam writer
is ``components.representation_tables.WriteRepresentationTable``; this module needs no Beam.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence

import numpy as np

KEY = "key"
REPRESENTATION = "representation"
UPDATED_AT = "updated_at"
MODEL_VERSION = "model_version"
FIELDS = (KEY, REPRESENTATION, UPDATED_AT, MODEL_VERSION)
FILE_SUFFIX = ".tfrecord.gz"
# In a publish root: the one-line file naming the live version (`components.publishing`).
LIVE_FILE = "LIVE"

# The four tables (paper Fig. 4): UR(u), IR(i), CR(u), CR(i); one directory each.
USER_TABLE = "user"
ITEM_TABLE = "item"
CROSS_USER_TABLE = "cross_user"
CROSS_ITEM_TABLE = "cross_item"
TABLES = (USER_TABLE, ITEM_TABLE, CROSS_USER_TABLE, CROSS_ITEM_TABLE)
CROSS_TABLES = (CROSS_USER_TABLE, CROSS_ITEM_TABLE)
DIGEST_SIZE = 16


def sample_digest(serialized: bytes) -> bytes:
    """The tie-break of the latest-per-key rule of UR and IR: among a key's samples with the
    same timestamp, the one with the largest BLAKE2b-128 digest of its serialized bytes wins
    (the extractor, the online loop and the downstream point-in-time join all use it)."""
    return hashlib.blake2b(serialized, digest_size=DIGEST_SIZE).digest()


class TableError(ValueError):
    """A representation table row that does not follow the format above."""


def _example_cls():
    from tensorflow.core.example import example_pb2  # proto only: no TF runtime needed

    return example_pb2.Example


def encode_row(key: bytes | str, vector, updated_at: int, model_version: int) -> bytes:
    """One serialized table row. `vector`: float [d] (stored as float32)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes or str, got {type(key).__name__}")
    vec = np.asarray(vector, dtype=np.float32)  # [d]
    if vec.ndim != 1:
        raise TableError(f"representation of key {key!r} must be 1-D, got shape {vec.shape}")
    example = _example_cls()()
    feature = example.features.feature
    feature[KEY].bytes_list.value.append(key)
    feature[REPRESENTATION].float_list.value.extend(vec.tolist())
    feature[UPDATED_AT].int64_list.value.append(int(updated_at))
    feature[MODEL_VERSION].int64_list.value.append(int(model_version))
    return example.SerializeToString()


def _single(feature, name: str, kind: str, row: int):
    values = getattr(feature[name], kind).value
    if len(values) != 1:
        raise TableError(f"row {row}: field {name!r} must hold exactly one value, got "
                         f"{len(values)}")
    return values[0]


def decode_rows(
    serialized: Sequence[bytes],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parses table rows, keeping their order.

    Returns:
      (keys object [n] of bytes, representations float32 [n, d], updated_at int64 [n],
      model_version int64 [n]). With no rows, the matrix is [0, 0].

    Raises:
      TableError naming the row and field: a missing field, a field of the wrong kind or
      length, representations of different dimensions, or bytes that are not a tf.Example.
    """
    example_cls = _example_cls()
    n = len(serialized)
    keys = np.empty(n, dtype=object)  # [n]
    updated_at = np.empty(n, dtype=np.int64)  # [n]
    versions = np.empty(n, dtype=np.int64)  # [n]
    vectors: list[np.ndarray] = []
    dim = None
    kinds = {KEY: "bytes_list", REPRESENTATION: "float_list", UPDATED_AT: "int64_list",
             MODEL_VERSION: "int64_list"}
    for row, record in enumerate(serialized):
        try:
            example = example_cls.FromString(bytes(record))
        except Exception as e:  # protobuf's DecodeError
            raise TableError(f"row {row} is not a serialized tf.Example: {e}") from e
        feature = example.features.feature
        for name in FIELDS:
            if name not in feature:
                raise TableError(f"row {row} is missing field {name!r}; fields are {FIELDS}")
            if feature[name].WhichOneof("kind") != kinds[name]:
                raise TableError(f"row {row}: field {name!r} must be a {kinds[name]}, got "
                                 f"{feature[name].WhichOneof('kind')}")
        keys[row] = _single(feature, KEY, "bytes_list", row)
        updated_at[row] = _single(feature, UPDATED_AT, "int64_list", row)
        versions[row] = _single(feature, MODEL_VERSION, "int64_list", row)
        vec = np.asarray(feature[REPRESENTATION].float_list.value, dtype=np.float32)  # [d]
        if dim is None:
            dim = vec.shape[0]
        elif vec.shape[0] != dim:
            raise TableError(f"row {row} (key {keys[row]!r}): field {REPRESENTATION!r} has "
                             f"dimension {vec.shape[0]}, earlier rows have {dim}")
        vectors.append(vec)
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)  # [n, d]
    return keys, matrix, updated_at, versions


def read_table(pattern: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads every file matching `pattern` (gzip TFRecords); rows sorted by key.

    Returns the arrays of `decode_rows`. Raises FileNotFoundError if nothing matches and
    TableError if a key appears twice.
    """
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no representation table file matches {pattern!r}")
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    keys, matrix, updated_at, versions = decode_rows(records)
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    order = np.asarray(order, dtype=np.int64)  # [n]
    keys, matrix, updated_at, versions = (
        keys[order], matrix[order], updated_at[order], versions[order])
    dup = [keys[i] for i in range(1, len(keys)) if keys[i] == keys[i - 1]]
    if dup:
        raise TableError(f"key {dup[0]!r} appears more than once in {pattern!r}")
    return keys, matrix, updated_at, versions


# --------------------------------------------------------------------------- CR(u,i) events
# The extractor's CR(u,i) event stream, one record per batch of events (per-event records are
# ~3x slower to read in Beam): a tf.Example with
#     user_id bytes_list [n], item_id bytes_list [n], timestamp int64_list [n],
#     domain bytes_list [n] (each request's `domain`: which events fold, `cr_domains`),
#     dim int64_list [1], cross_representation bytes_list [1] (n * dim float32, little-endian)
# Batches written before the domain was recorded decode without a "domain" entry; the folds
# that need it (`cr_domains="ad"`) refuse them by name (`cr_folding.select_events`).
EVENT_DIM = "dim"
EVENT_DOMAIN = "domain"


def encode_event_batch(batch: dict) -> bytes:
    """A batch `{"user_id", "item_id", "timestamp", "domain", "cross_representation" [n, d]}`
    -> bytes. Raises TableError naming the field that is missing or of the wrong length."""
    example = _example_cls()()
    feature = example.features.feature
    cr = np.asarray(batch["cross_representation"], dtype="<f4")
    n = cr.shape[0]
    for name in ("user_id", "item_id", EVENT_DOMAIN):
        if name not in batch:
            raise TableError(f"event batch is missing field {name!r}")
        keys = [k.encode() if isinstance(k, str) else bytes(k) for k in batch[name]]
        if len(keys) != n:
            raise TableError(f"event batch: {name} has {len(keys)} rows, cross_representation {n}")
        feature[name].bytes_list.value.extend(keys)
    timestamps = np.asarray(batch["timestamp"], dtype=np.int64)
    if timestamps.shape != (n,):
        raise TableError(f"event batch: timestamp shape {timestamps.shape}, expected ({n},)")
    feature["timestamp"].int64_list.value.extend(timestamps.tolist())
    feature[EVENT_DIM].int64_list.value.append(int(cr.shape[1]) if cr.ndim == 2 else 0)
    feature["cross_representation"].bytes_list.value.append(cr.tobytes())
    return example.SerializeToString()


def _objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def decode_event_batch(record: bytes) -> dict:
    """Inverse of `encode_event_batch` (ids and domains as object arrays of bytes). A batch
    written before domains were recorded has no "domain" entry (module comment above)."""
    example = _example_cls().FromString(record)
    feature = example.features.feature
    users = list(feature["user_id"].bytes_list.value)
    dim = int(feature[EVENT_DIM].int64_list.value[0])
    cr = np.frombuffer(feature["cross_representation"].bytes_list.value[0], dtype="<f4")
    cr = cr.reshape(len(users), dim).astype(np.float32)
    out = {
        "user_id": _objects(users),
        "item_id": _objects(feature["item_id"].bytes_list.value),
        "timestamp": np.asarray(feature["timestamp"].int64_list.value, dtype=np.int64),
        "cross_representation": cr,
    }
    if EVENT_DOMAIN in feature:
        domains = feature[EVENT_DOMAIN].bytes_list.value
        if len(domains) != len(users):
            raise TableError(f"event batch: domain has {len(domains)} rows, user_id "
                             f"{len(users)}")
        out[EVENT_DOMAIN] = _objects(domains)
    return out

