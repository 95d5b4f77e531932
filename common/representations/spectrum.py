"""What a representation holds: dead units and the spectrum of its covariance.

A monitoring mean or variance (`statistics`, paper Sec. 4.3.2) passes a representation that has
collapsed onto a few directions; these numbers do not. For a table X `[rows, d]` (rows with a
non-finite entry are left out), with covariance `C = (X - mean)^T (X - mean) / rows` and its
eigenvalues `lambda_1 >= ... >= lambda_d >= 0` (negative rounding clipped to 0):

    dead_units          = #units j with C[j, j] <= dead_tolerance * max(trace(C) / d, tiny)
                          (a unit that never moves over the rows: a ReLU that is never
                          non-zero, or a constant; for a table whose every unit is constant,
                          all d units)
    top_share           = lambda_1 / sum(lambda)               (1 = one direction)
    participation_ratio = (sum lambda)^2 / sum(lambda^2)       (1 .. d)
    effective_rank      = exp(H(p)),  p = lambda / sum(lambda),  H(p) = -sum p log p
                          (Roy & Vetterli 2007; 1 .. d)

A table with no variance at all (or no finite row) has top_share NaN and participation ratio
and effective rank 0. A vector that is one direction in disguise has top_share near 1 and
both ranks near 1, however wide it is.

`SpectrumAccumulator` is mergeable (Chan et al.'s parallel update of the mean and the
co-moment matrix `M = sum (x - mean)(x - mean)^T`, in float64):

    n = n_a + n_b;  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M = M_a + M_b + outer(delta, delta) * n_a * n_b / n

so chunks, Beam accumulators and a whole table give the same figures up to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# A unit is dead when its variance is at most this share of the mean unit variance.
DEAD_TOLERANCE = 1e-6
SPECTRUM_FIELDS = ("dead_units", "top_share", "participation_ratio", "effective_rank")


@dataclass(frozen=True)
class Spectrum:
    """Width, dead units and spectrum figures of one table (formulas in the module doc)."""

    rows: int
    dim: int
    dead_units: int
    top_share: float
    participation_ratio: float
    effective_rank: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN becomes None)."""
        out: dict[str, Any] = {"rows": self.rows, "dim": self.dim, "dead_units": self.dead_units}
        for name in ("top_share", "participation_ratio", "effective_rank"):
            value = float(getattr(self, name))
            out[name] = value if math.isfinite(value) else None
        return out


class SpectrumAccumulator:
    """Mergeable mean and co-moment matrix of the finite rows of a table (module doc)."""

    def __init__(self) -> None:
        self.dim: int | None = None
        self.count = 0
        self.mean: np.ndarray | None = None  # [d]
        self.comoment: np.ndarray | None = None  # [d, d], sum (x - mean)(x - mean)^T

    def _check_dim(self, d: int) -> None:
        if self.dim is None:
            self.dim = d
            self.mean = np.zeros(d)
            self.comoment = np.zeros((d, d))
        elif d != self.dim:
            raise ValueError(f"dimension mismatch: table has dim {self.dim}, got rows of dim {d}")

    def add(self, matrix: Any) -> SpectrumAccumulator:
        """Folds a chunk `[n, d]` in (rows with a NaN or Inf are skipped)."""
        m = np.asarray(matrix)
        if m.ndim == 1:
            m = m[None, :]
        if m.ndim != 2:
            raise ValueError(f"a table chunk must be 2-D [n, d], got shape {m.shape}")
        if not np.issubdtype(m.dtype, np.number) or np.issubdtype(m.dtype, np.complexfloating):
            raise TypeError(f"table must be real numeric, got dtype {m.dtype}")
        self._check_dim(m.shape[1])
        m = m.astype(np.float64, copy=False)
        m = m[np.isfinite(m).all(axis=1)]  # [n', d]
        if len(m):
            mean = m.mean(axis=0)  # [d]
            centred = m - mean  # [n', d]
            self._merge(len(m), mean, centred.T @ centred)
        return self

    def _merge(self, n_b: int, mean_b: np.ndarray, comoment_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        if n_b == 0:
            return
        delta = mean_b - self.mean  # [d]
        self.mean = self.mean + delta * (n_b / n)
        self.comoment = self.comoment + comoment_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def merge(self, other: SpectrumAccumulator) -> SpectrumAccumulator:
        """Folds `other` in."""
        if other.dim is None:
            return self
        self._check_dim(other.dim)
        self._merge(other.count, other.mean, other.comoment)
        return self

    def covariance(self) -> np.ndarray:
        """The population covariance `[d, d]` of the rows so far (zeros with no row)."""
        if self.dim is None:
            return np.zeros((0, 0))
        return self.comoment / max(self.count, 1)

    def result(self, rows: int | None = None,
               dead_tolerance: float = DEAD_TOLERANCE) -> Spectrum:
        """The figures so far; `rows` overrides the row count reported (e.g. with the
        non-finite rows that were skipped)."""
        d = self.dim or 0
        rows = self.count if rows is None else rows
        if d == 0 or self.count == 0:
            return Spectrum(rows, d, d, math.nan, 0.0, 0.0)
        cov = self.covariance()  # [d, d]
        variances = np.clip(np.diag(cov), 0.0, None)  # [d]
        scale = max(float(variances.sum()) / d, np.finfo(np.float64).tiny)
        dead = int((variances <= dead_tolerance * scale).sum())
        if not variances.any():
            return Spectrum(rows, d, d, math.nan, 0.0, 0.0)
        return Spectrum(rows, d, dead, *_spectrum_figures(np.linalg.eigvalsh(cov)))


def _spectrum_figures(eigenvalues: np.ndarray) -> tuple[float, float, float]:
    """(top_share, participation_ratio, effective_rank) of a covariance's eigenvalues."""
    lam = np.clip(eigenvalues.astype(np.float64), 0.0, None)  # [d]
    total = float(lam.sum())
    if total <= 0:
        return math.nan, 0.0, 0.0
    p = lam / total  # [d]
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    return float(lam.max() / total), total**2 / float((lam**2).sum()), math.exp(entropy)


def spectrum(matrix: Any, dead_tolerance: float = DEAD_TOLERANCE) -> Spectrum:
    """Dead units and spectrum figures of a whole table `[rows, d]` (module doc).

    Example:
      >>> x = np.random.default_rng(0).normal(size=(1000, 8))
      >>> spectrum(x[:, :1] * np.ones(8)).effective_rank  # one direction in disguise
      1.0
    """
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"a table must be 2-D [rows, d], got shape {m.shape}")
    return SpectrumAccumulator().add(m).result(rows=m.shape[0],
                                               dead_tolerance=dead_tolerance)


def eigenvalues(matrix: Any) -> np.ndarray:
    """The covariance's eigenvalues of a table `[rows, d]` (finite rows), largest first: the
    spectrum a plot shows."""
    acc = SpectrumAccumulator().add(np.asarray(matrix))
    return np.clip(np.linalg.eigvalsh(acc.covariance())[::-1], 0.0, None)
