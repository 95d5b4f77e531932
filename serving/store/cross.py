"""The time-aware EMA of cross representations (paper Eq. 1-2), folded into stored rows.

    CR(k) <- beta(t - updated_at(k)) * CR(k) + (1 - beta(t - updated_at(k))) * CR(u,i)

with the same semantics as ``ema.aggregate_sequential`` (``common/representations/ema.py``):
the first event of a key initialises it, and the events of one key in one second are averaged
and applied once (TIE RULE), also when they arrive in different ``update_cross`` calls. An
event older than its key's ``updated_at`` is LATE: it is skipped and counted.

A CR row (``serving/store/codec.py``) keeps ``tie_sum``/``tie_count`` of second ``updated_at``
and the float64 ``base`` state after every earlier second (``base_at`` its time, -1 if none), so

    CR(k) = tie_sum / tie_count                                               if base_at < 0
    CR(k) = b * base + (1 - b) * tie_sum / tie_count, b = beta(updated_at - base_at)  otherwise

which lets a later event of the same second re-average the tie group exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.representations.ema import Beta, evaluate_beta
from serving.store.codec import decode_rows, encode_rows, row_dtype


def _beta_at(beta: Beta, dt: int) -> float:
    """beta(dt) for one dt, checked to lie in [0, 1] (``ema.evaluate_beta``)."""
    return float(evaluate_beta(beta, np.array([dt], dtype=np.float64))[0])


@dataclass
class Tie:
    """The events of one key in one second: their timestamp, CR(u,i) sum [d], count."""

    t: int
    total: np.ndarray
    count: int


def tie_groups(keys: list[bytes], t: np.ndarray, x: np.ndarray) -> dict[bytes, list[Tie]]:
    """Events grouped by key, then by second (the tie rule), seconds ascending."""
    by_key: dict[bytes, dict[int, list[int]]] = {}
    for i, (k, ti) in enumerate(zip(keys, t.tolist(), strict=True)):
        by_key.setdefault(k, {}).setdefault(ti, []).append(i)
    return {
        k: [Tie(ti, x[idx].sum(axis=0), len(idx)) for ti, idx in sorted(by_t.items())]
        for k, by_t in by_key.items()
    }


def _cross_values(records: np.ndarray, beta: Beta) -> np.ndarray:
    """CR(k) [n, d] float64 of CR records [n] (formula of the module docstring).

    One vectorised beta call for all rows; row by row the same float64 arithmetic as
    ``aggregate_sequential``'s ``b * prev + (1 - b) * x``.
    """
    mean = records["tie_sum"] / records["tie_count"][:, None]  # [n, d]
    has_base = records["base_at"] >= 0  # [n]
    if not has_base.any():
        return mean  # the first second of a key initialises it
    dt = (records["updated_at"] - records["base_at"])[has_base].astype(np.float64)
    b = np.zeros(records.shape[0], dtype=np.float64)  # [n]
    b[has_base] = evaluate_beta(beta, dt)
    ema = b[:, None] * records["base"] + (1.0 - b)[:, None] * mean  # Eq. 1 / Eq. 2
    return np.where(has_base[:, None], ema, mean)


@dataclass
class _Ema:
    """EMA state of one CR key in float64 (the CR fields of the row layout).

    ``current``: CR(k) [d] when known (computed lazily, dropped when the state changes).
    """

    updated_at: int
    tie_count: int
    tie_sum: np.ndarray  # [d]
    base_at: int
    base: np.ndarray  # [d]
    current: np.ndarray | None = None

    @classmethod
    def from_record(cls, rec: np.void, current: np.ndarray) -> _Ema:
        return cls(int(rec["updated_at"]), int(rec["tie_count"]), rec["tie_sum"].copy(),
                   int(rec["base_at"]), rec["base"].copy(), current)

    def value(self, beta: Beta) -> np.ndarray:
        """CR(k) [d] float64."""
        if self.current is None:
            mean = self.tie_sum / self.tie_count
            if self.base_at < 0:
                return mean
            b = _beta_at(beta, self.updated_at - self.base_at)
            self.current = b * self.base + (1.0 - b) * mean  # Eq. 1 / Eq. 2
        return self.current

    def add(self, tie: Tie, beta: Beta) -> bool:
        """Folds one second's events in; False (nothing changes) if they are late."""
        if tie.t < self.updated_at:
            return False
        if tie.t == self.updated_at:  # tie rule: re-average the second's events
            self.tie_sum = self.tie_sum + tie.total
            self.tie_count += tie.count
        else:  # a later second: the state so far becomes the base of Eq. 1
            self.base, self.base_at = self.value(beta), self.updated_at
            self.updated_at, self.tie_sum, self.tie_count = tie.t, tie.total, tie.count
        self.current = None
        return True

    def write(self, rec: np.void, model_version: int) -> None:
        """Fills a record, all but its representation (``_cross_values`` computes those)."""
        rec["updated_at"], rec["model_version"] = self.updated_at, model_version
        rec["tie_count"], rec["tie_sum"] = self.tie_count, self.tie_sum
        rec["base_at"], rec["base"] = self.base_at, self.base


def fold_cross(
    table: str,
    dim: int,
    groups: dict[bytes, list[Tie]],
    old: Sequence[bytes | None],
    beta: Beta,
    model_version: int,
) -> tuple[dict[bytes, bytes], int]:
    """New values of the keys of ``groups`` (old values aligned with them) and #late events."""
    stored = decode_rows(table, dim, [v for v in old if v is not None])  # [m]
    stored_values = iter(_cross_values(stored, beta))  # [m, d]
    stored_rows = iter(stored)
    records = np.zeros(len(groups), dtype=row_dtype(dim, cross=True))  # [k]
    changed = np.zeros(len(groups), dtype=bool)  # [k]
    late = 0
    for r, (ties, value) in enumerate(zip(groups.values(), old, strict=True)):
        if value is not None:
            state, rest = _Ema.from_record(next(stored_rows), next(stored_values)), ties
        else:  # the first event of a key initialises it
            first, rest = ties[0], ties[1:]
            state = _Ema(first.t, first.count, first.total, -1, np.zeros(dim))
            changed[r] = True
        for tie in rest:
            if state.add(tie, beta):
                changed[r] = True
            else:
                late += tie.count
        if changed[r]:
            state.write(records[r], model_version)
    records = records[changed]
    records["representation"] = _cross_values(records, beta).astype(np.float32)
    keys = [k for k, c in zip(groups, changed, strict=True) if c]
    return dict(zip(keys, encode_rows(records), strict=True)), late
