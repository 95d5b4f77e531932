"""Monitoring statistics of an upstream representation table and the publish guard (Sec. 4.3.2).

Paper Sec. 4.3.2 ("False Tolerance and System Monitoring"): the upstream representations are
monitored with mean, variance, L1 norm and extreme values; "if the rate of change of any metric
exceeds a certain threshold, we immediately stop updating the representations", and storage
keeps daily snapshots to roll back to the most recent normal one. This module computes those
statistics (mergeable, so they work on chunks and as a Beam CombineFn) and judges a new table
against the last published one.

Statistics of a table X [rows, d] (F = set of finite entries, R = set of rows with all d
entries finite):

    mean      = sum_{x in F} x / |F|
    variance  = sum_{x in F} (x - mean)^2 / |F|              (population variance)
    l1_norm   = sum_{r in R} sum_j |X[r, j]| / |R|           (mean row L1 norm)
    min, max  = min / max over F;   max_abs = max(|min|, |max|)
    nan_count = #NaN entries;  inf_count = #(+-Inf) entries
    zero_rows = #rows whose d entries are all exactly 0
    dead_units, top_share, participation_ratio, effective_rank
              = what the table holds, from the covariance of its finite rows
                (`common.representations.spectrum`)

Statistics with no finite entry (or no finite row) to average are NaN.

Chunks are merged with Chan et al.'s parallel update of (n, mean, M2), M2 = sum (x - mean)^2:

    n = n_a + n_b;  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

all in float64, so a merge of chunks equals the statistics of the whole table up to rounding.

Rate of change of statistic s (s in mean, variance, l1_norm, max_abs), old = last published:

    rate_s = |new_s - old_s| / max(|old_s|, floor_s)
    floor_mean = max(sqrt(old.variance), eps)   # a mean near 0 is measured in old std units
    floor_s    = eps                            # variance, l1_norm, max_abs

A decrease gives rate <= 1 (a collapse to 0 gives exactly 1), an increase by a factor k gives
k - 1. The table is held when rate_s > threshold_s (NaN rates count as exceeded) or when a hard
limit fails: any NaN/Inf entry, an empty table, zero_rows / rows > max_zero_row_share, a
dimension change, (old.rows - new.rows) / old.rows > max_row_shrink, or a collapse:

    old.effective_rank / new.effective_rank > effective_rank_drop

(the rates above pass a table whose vectors have fallen onto one direction with the same mean,
variance and norms; the effective rank does not). Statistics written before the spectrum
figures existed read back as NaN, and the collapse check is then skipped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.representations.spectrum import SPECTRUM_FIELDS, SpectrumAccumulator

STATUS_PUBLISHED = "published"
STATUS_HELD = "held"
# The guard passed the tables but leaves publishing to a later check (the embedding evaluator).
STATUS_PASSED = "passed"
RATE_STATISTICS = ("mean", "variance", "l1_norm", "max_abs")
_FLOAT_FIELDS = ("mean", "variance", "l1_norm", "min", "max", "max_abs", "top_share",
                 "participation_ratio", "effective_rank")
_INT_FIELDS = ("rows", "dim", "nan_count", "inf_count", "zero_rows")
_OPTIONAL_FIELDS = SPECTRUM_FIELDS  # absent from statistics written before they existed


@dataclass(frozen=True)
class TableStatistics:
    """Monitoring statistics of one representation table (formulas in the module docstring)."""

    rows: int
    dim: int
    mean: float
    variance: float
    l1_norm: float
    min: float
    max: float
    max_abs: float
    nan_count: int
    inf_count: int
    zero_rows: int
    dead_units: int = -1  # -1: unknown (statistics written before the spectrum figures)
    top_share: float = math.nan
    participation_ratio: float = math.nan
    effective_rank: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ints stay ints, non-finite floats (no finite entries) become None."""
        out: dict[str, Any] = {k: int(getattr(self, k)) for k in (*_INT_FIELDS, "dead_units")}
        for k in _FLOAT_FIELDS:
            v = float(getattr(self, k))
            out[k] = v if math.isfinite(v) else None
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableStatistics:
        """Inverse of ``to_dict`` (None -> NaN); raises KeyError naming a missing field. The
        spectrum figures may be absent (statistics written before them): unknown."""
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in d and f.name not in _OPTIONAL_FIELDS]
        if missing:
            raise KeyError(f"statistics dict is missing fields {missing}")
        kwargs: dict[str, Any] = {k: int(d[k]) for k in _INT_FIELDS}
        kwargs["dead_units"] = int(d.get("dead_units", -1))
        for k in _FLOAT_FIELDS:
            kwargs[k] = math.nan if d.get(k) is None else float(d[k])
        return cls(**kwargs)


class StatisticsAccumulator:
    """Mergeable accumulator of ``TableStatistics`` (float64 sums, Chan's parallel variance).

    ``add(matrix [n, d])`` folds a chunk in; ``add_row(vector [d])`` buffers single rows and folds
    them in as one chunk every ``batch_size`` rows (so a per-element Beam input is still
    vectorised); ``merge(other)`` folds another accumulator in; ``result()`` reads them out.
    """

    def __init__(self, batch_size: int = 1024) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.dim: int | None = None
        self.rows = 0
        self.count = 0  # |F|
        self.mean = 0.0  # mean over F
        self.m2 = 0.0  # sum over F of (x - mean)^2
        self.l1_sum = 0.0  # sum over R of row L1 norms
        self.finite_rows = 0  # |R|
        self.min = math.inf
        self.max = -math.inf
        self.nan_count = 0
        self.inf_count = 0
        self.zero_rows = 0
        self.spectrum = SpectrumAccumulator()  # covariance of the finite rows
        self._pending: list[np.ndarray] = []  # buffered rows, each [d]

    def _check_dim(self, d: int) -> None:
        if self.dim is None:
            self.dim = d
        elif d != self.dim:
            raise ValueError(f"dimension mismatch: table has dim {self.dim}, got rows of dim {d}")

    def add_row(self, vector: Any) -> StatisticsAccumulator:
        """Buffers one row [d]; folded in once ``batch_size`` rows are pending."""
        v = np.asarray(vector)
        if v.ndim != 1:
            raise ValueError(f"a row must be 1-D [d], got shape {v.shape}")
        self._check_dim(v.shape[0])
        self._pending.append(v)
        if len(self._pending) >= self.batch_size:
            self.flush()
        return self

    def flush(self) -> StatisticsAccumulator:
        """Folds the buffered rows in as one chunk."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._add_chunk(np.stack(pending))
        return self

    def add(self, matrix: Any) -> StatisticsAccumulator:
        """Folds a chunk [n, d] in (a 1-D input is one row)."""
        m = np.asarray(matrix)
        if m.ndim == 1:
            return self.add_row(m)
        if m.ndim != 2:
            raise ValueError(f"a table chunk must be 2-D [n, d], got shape {m.shape}")
        self._check_dim(m.shape[1])
        self._add_chunk(m)
        return self

    def _add_chunk(self, m: np.ndarray) -> None:
        if not np.issubdtype(m.dtype, np.number) or np.issubdtype(m.dtype, np.complexfloating):
            raise TypeError(f"table must be real numeric, got dtype {m.dtype}")
        m = m.astype(np.float64, copy=False)  # [n, d]
        n = m.shape[0]
        if n == 0:
            return
        finite = np.isfinite(m)  # [n, d]
        nan = np.isnan(m)  # [n, d]
        self.rows += n
        self.nan_count += int(nan.sum())
        self.inf_count += int((~finite & ~nan).sum())
        self.zero_rows += int((m == 0).all(axis=1).sum())
        row_ok = finite.all(axis=1)  # [n]
        self.finite_rows += int(row_ok.sum())
        self.l1_sum += float(np.abs(m[row_ok]).sum())
        self.spectrum.add(m[row_ok])
        vals = m[finite]  # [|F_chunk|]
        if vals.size:
            c_mean = float(vals.mean())
            c_m2 = float(((vals - c_mean) ** 2).sum())
            self._merge_moments(int(vals.size), c_mean, c_m2)
            self.min = min(self.min, float(vals.min()))
            self.max = max(self.max, float(vals.max()))

    def _merge_moments(self, n_b: int, mean_b: float, m2_b: float) -> None:
        n_a = self.count
        n = n_a + n_b
        if n == 0:
            return
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n

    def merge(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        """Folds ``other`` in (other's buffered rows included; other is flushed, not emptied)."""
        other.flush()
        self.flush()
        if other.dim is not None:
            self._check_dim(other.dim)
        self.rows += other.rows
        self._merge_moments(other.count, other.mean, other.m2)
        self.l1_sum += other.l1_sum
        self.finite_rows += other.finite_rows
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count
        self.zero_rows += other.zero_rows
        self.spectrum.merge(other.spectrum)
        return self

    def result(self) -> TableStatistics:
        """The statistics so far (flushes the buffered rows first)."""
        acc = self.flush()
        has_f = acc.count > 0
        lo = acc.min if has_f else math.nan
        hi = acc.max if has_f else math.nan
        spectrum = acc.spectrum.result(rows=acc.rows)
        return TableStatistics(
            rows=acc.rows,
            dim=acc.dim or 0,
            mean=acc.mean if has_f else math.nan,
            variance=acc.m2 / acc.count if has_f else math.nan,
            l1_norm=acc.l1_sum / acc.finite_rows if acc.finite_rows else math.nan,
            min=lo,
            max=hi,
            max_abs=max(abs(lo), abs(hi)) if has_f else math.nan,
            nan_count=acc.nan_count,
            inf_count=acc.inf_count,
            zero_rows=acc.zero_rows,
            dead_units=spectrum.dead_units,
            top_share=spectrum.top_share,
            participation_ratio=spectrum.participation_ratio,
            effective_rank=spectrum.effective_rank,
        )


def table_statistics(matrix: Any) -> TableStatistics:
    """Statistics of a whole table [rows, d]."""
    return StatisticsAccumulator().add(matrix).result()


@dataclass(frozen=True)
class GuardThresholds:
    """Max rate of change per statistic (rate defined in the module docstring) + hard limits.

    mean 0.5: the mean may move by half an old standard deviation (or half of |old mean|);
    variance 1.0 / l1_norm 0.5 / max_abs 2.0: relative change (doubling the variance, +50% mean
    row L1 norm, tripling the largest |entry| are the first values held). Hard limits:
    ``allow_non_finite`` False holds any NaN/Inf; ``max_zero_row_share`` 0.01 of rows all zero;
    ``max_row_shrink`` 0.5 = the table may lose at most half its rows; ``eps`` is the floor of
    the rate denominators. ``effective_rank_drop`` 2.0: a table whose effective rank falls to
    less than half the live version's is held (a collapse onto fewer directions).
    """

    mean: float = 0.5
    variance: float = 1.0
    l1_norm: float = 0.5
    max_abs: float = 2.0
    max_zero_row_share: float = 0.01
    max_row_shrink: float = 0.5
    effective_rank_drop: float = 2.0
    allow_non_finite: bool = False
    eps: float = 1e-12

    def __post_init__(self) -> None:
        for name in (*RATE_STATISTICS, "max_zero_row_share", "max_row_shrink", "eps",
                     "effective_rank_drop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"GuardThresholds.{name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"GuardThresholds.{name} must be >= 0, got {v!r}")
        for name in ("max_zero_row_share", "max_row_shrink"):
            if getattr(self, name) > 1:
                v = getattr(self, name)
                raise ValueError(f"GuardThresholds.{name} must be in [0, 1], got {v!r}")
        if self.eps <= 0:
            raise ValueError(f"GuardThresholds.eps must be > 0, got {self.eps!r}")
        if self.effective_rank_drop < 1:
            raise ValueError("GuardThresholds.effective_rank_drop must be >= 1 (a factor), got "
                             f"{self.effective_rank_drop!r}")


@dataclass(frozen=True)
class Verdict:
    """Whether to publish a new table version; ``reasons`` names every failed check."""

    publish: bool
    status: str  # STATUS_PUBLISHED or STATUS_HELD
    reasons: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # empty without a previous version

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (a NaN/Inf rate becomes None)."""
        return {
            "publish": self.publish,
            "status": self.status,
            "reasons": list(self.reasons),
            "rates": {k: (v if math.isfinite(v) else None) for k, v in self.rates.items()},
        }


def rate_of_change(
    name: str, new: TableStatistics, old: TableStatistics, eps: float = 1e-12
) -> float:
    """|new_s - old_s| / max(|old_s|, floor_s); floor_mean = max(sqrt(old.variance), eps)."""
    a = float(getattr(old, name))
    b = float(getattr(new, name))
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    floor = eps
    if name == "mean" and math.isfinite(old.variance):
        floor = max(math.sqrt(old.variance), eps)
    return abs(b - a) / max(abs(a), floor)


def judge(
    new: TableStatistics,
    previous: TableStatistics | None,
    thresholds: GuardThresholds | None = None,
) -> Verdict:
    """Publish ``new`` unless a hard limit fails or a rate vs ``previous`` exceeds its threshold.

    Without a previous version only the hard limits on ``new`` itself are checked.
    """
    t = thresholds or GuardThresholds()
    reasons: list[str] = []
    if new.rows == 0:
        reasons.append("rows is 0 (empty table)")
    if not t.allow_non_finite:
        if new.nan_count:
            reasons.append(f"nan_count {new.nan_count} > 0")
        if new.inf_count:
            reasons.append(f"inf_count {new.inf_count} > 0")
    if new.rows:
        share = new.zero_rows / new.rows
        if share > t.max_zero_row_share:
            reasons.append(
                f"zero_rows share {share:.4g} ({new.zero_rows}/{new.rows}) "
                f"> max_zero_row_share {t.max_zero_row_share:.4g}"
            )
    rates: dict[str, float] = {}
    if previous is not None:
        if new.dim != previous.dim:
            reasons.append(f"dim changed ({previous.dim} -> {new.dim})")
        if previous.rows:
            shrink = (previous.rows - new.rows) / previous.rows
            if shrink > t.max_row_shrink:
                reasons.append(
                    f"rows shrank by {shrink:.4g} ({previous.rows} -> {new.rows}), "
                    f"max_row_shrink {t.max_row_shrink:.4g}"
                )
        old_rank, new_rank = previous.effective_rank, new.effective_rank
        if (math.isfinite(old_rank) and math.isfinite(new_rank) and old_rank > 0
                and old_rank > t.effective_rank_drop * new_rank):
            reasons.append(
                f"collapse: effective_rank fell {old_rank / max(new_rank, t.eps):.4g}x "
                f"({old_rank:.4g} -> {new_rank:.4g}; top direction holds "
                f"{new.top_share:.1%} of the variance, {new.dead_units} of {new.dim} units "
                f"dead), effective_rank_drop {t.effective_rank_drop:.4g}")
        for name in RATE_STATISTICS:
            rate = rate_of_change(name, new, previous, t.eps)
            rates[name] = rate
            limit = getattr(t, name)
            if not rate <= limit:  # NaN counts as exceeded
                reasons.append(
                    f"{name} changed by {rate:.6g}x ({getattr(previous, name):.6g} -> "
                    f"{getattr(new, name):.6g}), threshold {limit:.6g}"
                )
    publish = not reasons
    return Verdict(
        publish=publish,
        status=STATUS_PUBLISHED if publish else STATUS_HELD,
        reasons=reasons,
        rates=rates,
    )
