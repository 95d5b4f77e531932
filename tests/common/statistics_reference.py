"""Reference statistics of a representation table (`common.representations.statistics`),
shared by the statistics' tests and the Beam transforms' tests: the formulas written directly
in numpy, and random tables."""

import numpy as np
import pytest

from common.representations.statistics import TableStatistics


def numpy_statistics(m: np.ndarray) -> dict:
    """Reference: the formulas of `common.representations.statistics`' docstring written
    directly in numpy."""
    m = np.asarray(m, dtype=np.float64)
    f = m[np.isfinite(m)]
    ok = np.isfinite(m).all(axis=1)
    return {
        "rows": m.shape[0],
        "dim": m.shape[1],
        "mean": f.mean(),
        "variance": f.var(),
        "l1_norm": np.abs(m[ok]).sum(axis=1).mean(),
        "min": f.min(),
        "max": f.max(),
        "max_abs": np.abs(f).max(),
        "nan_count": int(np.isnan(m).sum()),
        "inf_count": int(np.isinf(m).sum()),
        "zero_rows": int((m == 0).all(axis=1).sum()),
    }


def assert_statistics_match(stats: TableStatistics, ref: dict) -> None:
    for k, v in ref.items():
        got = getattr(stats, k)
        if isinstance(v, int):
            assert got == v, k
        else:
            assert got == pytest.approx(v, rel=1e-9, abs=1e-12), k


def random_table(seed: int, rows: int = 1000, dim: int = 16, loc: float = 0.3, scale: float = 1.5):
    return np.random.default_rng(seed).normal(loc, scale, size=(rows, dim)).astype(np.float32)
