"""The representation store's errors: every failed operation leaves the store unchanged."""

from __future__ import annotations

from common.representations.statistics import Verdict


class StoreError(Exception):
    """A store operation that cannot be done; the store is unchanged."""


class DimensionError(StoreError, ValueError):
    """Representations whose dimension differs from the table's recorded one."""

    def __init__(self, table: str, stored: int, got: int) -> None:
        super().__init__(
            f"table {table!r} has dimension {stored}, got representations of dimension {got}"
        )
        self.table, self.stored, self.got = table, stored, got


class GuardRefusedError(StoreError):
    """The guard held a bulk write: a statistic changed too fast or a hard limit failed."""

    def __init__(self, table: str, verdict: Verdict) -> None:
        super().__init__(
            f"guard refused the write to table {table!r}: " + "; ".join(verdict.reasons)
        )
        self.table, self.verdict = table, verdict


class SnapshotNotFoundError(StoreError, LookupError):
    """No snapshot has that name."""


class SnapshotExistsError(StoreError):
    """A snapshot with that name already exists."""


class ConflictError(StoreError):
    """An optimistic transaction kept conflicting with concurrent writers and gave up."""
