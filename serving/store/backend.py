"""What a storage back-end of the representation store provides (``Backend``), and its types.

A back-end stores opaque row values (``serving/store/codec.py``) per table and key; the store
(``serving/store/core.py``) computes every value. Back-ends: ``sqlite_backend.SqliteBackend``,
``redis_backend.RedisBackend``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SnapshotInfo:
    """A named snapshot: creation time (unix seconds) and row count per table."""

    name: str
    created_at: float
    rows: dict[str, int] = field(default_factory=dict)


OldRows = Mapping[str, Sequence["bytes | None"]]
NewRows = dict[str, dict[bytes, bytes]]


class Backend(Protocol):
    """What a storage backend provides; every method is atomic."""

    url: str

    def dims(self) -> dict[str, int]: ...

    def count(self, table: str) -> int: ...

    def read(self, table: str, keys: Sequence[bytes]) -> tuple[int | None, list[bytes | None]]:
        """(recorded dim, values of keys: None where absent), read at one instant."""

    def scan(self, table: str) -> tuple[int | None, dict[bytes, bytes]]: ...

    def update(
        self,
        dims: Mapping[str, int],
        keys: Mapping[str, Sequence[bytes]],
        compute: Callable[[OldRows], NewRows],
        blind: bool,
    ) -> None:
        """Checks/records ``dims``, reads ``keys`` (skipped if blind), writes ``compute(old)``.

        No concurrent write to those keys happens in between (compute may run more than once).
        """

    def rewrite(
        self,
        table: str,
        dim: int,
        compute: Callable[[dict[bytes, bytes]], dict[bytes, bytes]],
        replace: bool,
    ) -> None:
        """Reads the whole table, writes ``compute(table)`` (replacing the table if asked)."""

    def clear(self, table: str) -> None: ...

    def snapshot(self, name: str, created_at: float) -> None: ...

    def snapshots(self) -> list[SnapshotInfo]: ...

    def rollback(self, name: str) -> None: ...

    def delete_snapshot(self, name: str) -> None: ...

    def close(self) -> None: ...
