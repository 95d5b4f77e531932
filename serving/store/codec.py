"""Table names, the packed row of every back-end, and the checks of the store's inputs.

Tables (names as in the published layout, ``common/representations/tables.py``): ``user``
(UR), ``item`` (IR), ``cross_user`` (CR(u)), ``cross_item`` (CR(i)). A row is key (bytes; str
is UTF-8 encoded) -> representation float32 [d] (d recorded on the table's first write and
checked after), ``updated_at`` (int seconds) and ``model_version`` (int).

Row value layout (little-endian, the same bytes in both back-ends):

    int64 updated_at | int64 model_version | float32[d] representation
    CR tables also:    int64 tie_count | int64 base_at | float64[d] tie_sum | float64[d] base

``tie_sum``/``tie_count`` are the sum and number of the CR(u,i) of second ``updated_at`` and
``base`` the float64 state after every earlier second (``base_at`` its time, -1 if none); see
``serving/store/cross.py`` for how CR(k) follows from them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.representations import tables
from serving.store.errors import StoreError

UR = tables.USER_TABLE
IR = tables.ITEM_TABLE
CR_USER = tables.CROSS_USER_TABLE
CR_ITEM = tables.CROSS_ITEM_TABLE
TABLES = tables.TABLES
CROSS_TABLES = tables.CROSS_TABLES
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# ------------------------------------------------------------------------------ row codec


def row_dtype(dim: int, cross: bool) -> np.dtype:
    """The packed little-endian record of one row (layout in the module docstring)."""
    fields: list[tuple[Any, ...]] = [
        ("updated_at", "<i8"),
        ("model_version", "<i8"),
        ("representation", "<f4", (dim,)),
    ]
    if cross:
        fields += [
            ("tie_count", "<i8"),
            ("base_at", "<i8"),
            ("tie_sum", "<f8", (dim,)),
            ("base", "<f8", (dim,)),
        ]
    return np.dtype(fields)


def encode_rows(records: np.ndarray) -> list[bytes]:
    """One bytes value per record [n]."""
    raw, size = records.tobytes(), records.dtype.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(records.shape[0])]


def decode_rows(table: str, dim: int, values: Sequence[bytes]) -> np.ndarray:
    """Records [n] (read-only) from stored values; StoreError naming a malformed one."""
    dtype = row_dtype(dim, table in CROSS_TABLES)
    for v in values:
        if len(v) != dtype.itemsize:
            raise StoreError(
                f"table {table!r}: a stored row has {len(v)} bytes, expected {dtype.itemsize} "
                f"for dimension {dim}"
            )
    return np.frombuffer(b"".join(values), dtype=dtype)


def new_records(
    table: str, vectors: np.ndarray, updated_at: np.ndarray, model_version: np.ndarray
) -> np.ndarray:
    """Records of put rows; in a CR table each row is one event at its updated_at."""
    n, d = vectors.shape
    rec = np.zeros(n, dtype=row_dtype(d, table in CROSS_TABLES))
    rec["updated_at"], rec["model_version"], rec["representation"] = (
        updated_at, model_version, vectors)
    if table in CROSS_TABLES:
        rec["tie_count"], rec["base_at"] = 1, -1
        rec["tie_sum"] = vectors.astype(np.float64)
    return rec


# ------------------------------------------------------------------------ input checking


def check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables are {TABLES}")
    return table


def check_keys(name: str, keys: Any) -> list[bytes]:
    """Ids [n] (bytes or str, str UTF-8 encoded) -> list of bytes."""
    if isinstance(keys, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ids, got a single {type(keys).__name__}")
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {keys.shape}")
        keys = keys.tolist()
    out = []
    for i, k in enumerate(keys):
        if isinstance(k, str):
            out.append(k.encode("utf-8"))
        elif isinstance(k, bytes):
            out.append(bytes(k))
        else:
            raise TypeError(f"{name}[{i}] must be bytes or str, got {type(k).__name__}")
    return out


def check_matrix(name: str, value: Any, n: int) -> np.ndarray:
    """A finite float matrix [n, d], d >= 1 (finite also once cast to float32)."""
    try:
        m = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular [n, d] float array: {e}") from None
    if m.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, d), one row per key, got {m.shape}")
    if m.shape[1] < 1:
        raise ValueError(f"{name} must have dimension d >= 1, got shape {m.shape}")
    with np.errstate(over="ignore"):
        finite = np.isfinite(m.astype(np.float32)).all(axis=1)  # [n]
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name} row {i} is not finite in float32 (NaN, Inf or overflow)")
    return m


def check_ints(name: str, value: Any, n: int, scalar_ok: bool) -> np.ndarray:
    """Integers [n] (a scalar is repeated n times when scalar_ok) -> int64 [n]."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    if a.ndim == 0 and scalar_ok:
        a = np.full(n, a, dtype=np.int64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one per key, got {a.shape}")
    return a.astype(np.int64)


def check_unique(name: str, keys: list[bytes]) -> None:
    seen: set[bytes] = set()
    for k in keys:
        if k in seen:
            raise ValueError(f"{name}: key {k!r} appears more than once in the batch")
        seen.add(k)


def check_snapshot_name(name: str) -> str:
    if not (isinstance(name, str) and _SNAPSHOT_NAME.fullmatch(name)):
        raise ValueError(
            f"snapshot name must be 1-64 characters of [A-Za-z0-9_.-] starting with a letter "
            f"or digit, got {name!r}"
        )
    return name
