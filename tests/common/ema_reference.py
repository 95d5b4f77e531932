"""Reference cases for the time-aware EMA (`common.representations.ema`), shared by its tests
and the Beam transforms' tests: random events with skewed keys and many ties, and a naive
point-in-time (as-of) lookup."""

import numpy as np

from common.representations.ema import aggregate_sequential, half_life_decay

BETA10 = half_life_decay(10.0)


def random_events(seed: int, n: int = 600, d: int = 4, n_keys: int = 30, t_range: int = 40):
    """Skewed keys (Zipf-like), many ties (timestamps from a small range)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_keys + 1)
    users = np.array([b"u%d" % k for k in rng.choice(n_keys, size=n, p=p / p.sum())], object)
    items = np.array([b"i%d" % k for k in rng.integers(0, n_keys // 2, size=n)], object)
    ts = rng.integers(1_000, 1_000 + t_range, size=n).astype(np.int64)
    crs = rng.normal(size=(n, d)).astype(np.float32)
    return users, items, ts, crs


def naive_as_of(keys, ts, crs, qk, qt, beta, d):
    """CR of each query `(qk[q], qt[q])` from the events of its key strictly before `qt[q]`,
    by `aggregate_sequential` one query at a time: (`[q, d]` float, NaN without an event;
    `[q]` updated_at, -1 without an event)."""
    out = np.full((len(qk), d), np.nan)
    upd = np.full(len(qk), -1)
    for q, (k, t) in enumerate(zip(qk.tolist(), qt.tolist(), strict=True)):
        sel = (keys == k).astype(bool) & (ts < t)
        ref = aggregate_sequential(keys[sel], ts[sel], crs[sel], beta)
        if k in ref:
            out[q], upd[q] = ref[k]
    return out, upd
