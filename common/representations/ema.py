"""Time-aware exponential moving average of cross representations (paper Sec. 3.3, Eq. 1-2).

LFM4Ads (arXiv 2508.14948) aggregates the sample-level cross representations CR(u,i) into a
user-level CR(u) and an item-level CR(i). Whenever a new CR(u,i) arrives:

    CR(u) <- beta(t(u)) * CR(u) + (1 - beta(t(u))) * CR(u,i)        (Eq. 1)
    CR(i) <- beta(t(i)) * CR(i) + (1 - beta(t(i))) * CR(u,i)        (Eq. 2)

where t(k) is the time since key k's last update and beta is non-increasing with beta(0) = 1.
Default beta: ``beta(dt) = 0.5 ** (dt / half_life_seconds)`` (``half_life_decay``).

Semantics implemented here (one key k, user or item alike; timestamps are integer seconds):

* Initialisation: the first event of k sets CR(k) = CR(u,i) and updated_at(k) = t.
* TIE RULE: all events of k with the same timestamp are first averaged (arithmetic mean of
  their CR(u,i)) and applied as ONE event at that timestamp. This makes the result independent
  of the input order. Without it, Eq. 1 with beta(0) = 1 would keep the first event of a second
  and silently drop every later one of that second.
* As of (``as_of``): the value seen by a row (k, t) is the state after all of k's events with
  timestamp STRICTLY before t (no look-ahead leakage); a row with no earlier event of
  k gets a NaN vector and updated_at = -1.

Three implementations of the same arithmetic:

* ``aggregate_sequential`` - plain Python loop, the ground truth for tests and benchmarks.
* ``aggregate_sorted`` - vectorised numpy for one bucket of events (used inside Beam): sort by
  (key, timestamp), collapse ties with ``np.add.reduceat``, then a segmented parallel prefix
  scan (Hillis-Steele) of the affine maps ``s -> a * s + c`` with ``a = beta(dt)`` and
  ``c = (1 - a) * CR(u,i)``; ceil(log2(longest per-key run)) vectorised steps in all.
* ``as_of`` - the same scan, keeping every per-key prefix state, looked up with searchsorted;
  ``prefix_states`` returns those states (the history that downstream point-in-time joins read).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Beta = Callable[[np.ndarray], np.ndarray]
"""A vectorised decay ``beta(dt) -> values in [0, 1]``; dt float64 seconds [m] -> [m]."""


class HalfLifeDecay:
    """``beta(dt) = 0.5 ** (dt / half_life_seconds)``: beta(0) = 1, halves every half-life."""

    def __init__(self, half_life_seconds: float) -> None:
        try:
            h = float(half_life_seconds)
        except (TypeError, ValueError):
            raise ValueError(
                f"half_life_seconds must be a finite number > 0, got {half_life_seconds!r}"
            ) from None
        if not (math.isfinite(h) and h > 0.0):
            raise ValueError(
                f"half_life_seconds must be a finite number > 0, got {half_life_seconds!r}"
            )
        self.half_life_seconds = h

    def __call__(self, dt: np.ndarray) -> np.ndarray:
        return np.power(0.5, np.asarray(dt, dtype=np.float64) / self.half_life_seconds)  # [m]

    def __repr__(self) -> str:
        return f"HalfLifeDecay(half_life_seconds={self.half_life_seconds!r})"


# The default half-life of the pipeline's aggregation and of the serving store's online
# updates: both read it from here so that offline and online CRs decay alike.
DEFAULT_HALF_LIFE_SECONDS = 86_400.0


def half_life_decay(half_life_seconds: float) -> Beta:
    """The default beta of Eq. 1-2: ``beta(dt) = 0.5 ** (dt / half_life_seconds)``.

    Raises ValueError (naming the value) unless half_life_seconds is a finite number > 0.
    """
    return HalfLifeDecay(half_life_seconds)


def evaluate_beta(beta: Beta, dt: np.ndarray) -> np.ndarray:
    """beta(dt) as float64 [m], checked to have dt's shape and values in [0, 1]."""
    b = np.asarray(beta(dt), dtype=np.float64)  # [m]
    if b.shape != dt.shape:
        raise ValueError(f"beta(dt) must return an array of shape {dt.shape}, got {b.shape}")
    bad = ~((b >= 0.0) & (b <= 1.0))  # NaN counts as bad
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"beta(dt) must return values in [0, 1], got {float(b[i])!r} for dt={float(dt[i])!r}"
        )
    return b


def _validate_events(
    keys: np.ndarray, timestamps: np.ndarray, crs: np.ndarray, what: str = "events"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks one set of events; returns (keys object [n], timestamps int64 [n], crs [n, d])."""
    keys = np.asarray(keys, dtype=object)
    if keys.ndim != 1:
        raise ValueError(f"{what}: keys must be 1-D, got shape {keys.shape}")
    n = keys.shape[0]
    timestamps = np.asarray(timestamps)
    if timestamps.dtype.kind not in "iu":
        raise TypeError(f"{what}: timestamps must be integers, got dtype {timestamps.dtype}")
    if timestamps.shape != (n,):
        raise ValueError(
            f"{what}: timestamps must have shape ({n},) like keys, got {timestamps.shape}"
        )
    crs = np.asarray(crs)
    if crs.dtype.kind != "f":
        raise TypeError(f"{what}: crs must be a float array, got dtype {crs.dtype}")
    if crs.ndim != 2 or crs.shape[0] != n:
        raise ValueError(f"{what}: crs must have shape ({n}, d) like keys, got {crs.shape}")
    finite = np.isfinite(crs).all(axis=1)  # [n]
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{what}: crs row {i} is not finite (NaN or Inf)")
    return keys, timestamps.astype(np.int64, copy=False), crs


def aggregate_sequential(
    keys: np.ndarray, timestamps: np.ndarray, crs: np.ndarray, beta: Beta
) -> dict[object, tuple[np.ndarray, int]]:
    """Plain-Python reference of Eq. 1-2 with the tie rule; the ground truth for tests.

    Args:
      keys: [n] user (or item) ids, any hashable, orderable objects (bytes in the pipeline).
      timestamps: [n] integer seconds.
      crs: [n, d] float CR(u,i), finite.
      beta: vectorised decay, e.g. ``half_life_decay(3600)``.

    Returns:
      ``{key: (CR(key) float64 [d], updated_at int)}``: the state after all events.
    """
    keys, timestamps, crs = _validate_events(keys, timestamps, crs)
    # Tie rule: the events of one key in one second are averaged into one event.
    groups: dict[tuple[object, int], list[np.ndarray]] = {}
    for k, t, x in zip(keys.tolist(), timestamps.tolist(), crs, strict=True):
        groups.setdefault((k, t), []).append(x.astype(np.float64))
    state: dict[object, tuple[np.ndarray, int]] = {}
    for (k, t), xs in sorted(groups.items(), key=lambda kv: kv[0][1]):  # by timestamp
        x = np.mean(np.stack(xs), axis=0)  # [d]
        if k not in state:
            state[k] = (x, t)  # the first CR of a key initialises it
            continue
        prev, t_prev = state[k]
        b = float(evaluate_beta(beta, np.array([t - t_prev], dtype=np.float64))[0])
        state[k] = (b * prev + (1.0 - b) * x, t)  # Eq. 1 / Eq. 2
    return state


class _Collapsed:
    """Events sorted by (key, timestamp) with ties averaged, and the per-event prefix states.

    uniq: [n_keys] sorted distinct keys (object); code: [m] index into uniq; t: [m] int64;
    states: [m, d] float64, the state of key code[j] just after event j.
    """

    def __init__(self, keys: np.ndarray, timestamps: np.ndarray, crs: np.ndarray, beta: Beta):
        n, d = crs.shape
        if n == 0:
            self.uniq = np.empty(0, dtype=object)
            self.code = np.empty(0, dtype=np.int64)
            self.t = np.empty(0, dtype=np.int64)
            self.states = np.empty((0, d), dtype=np.float64)
            return
        uniq, code = np.unique(keys, return_inverse=True)
        code = code.reshape(-1).astype(np.int64)  # [n]
        order = np.lexsort((timestamps, code))  # by key, then timestamp
        code_s, t_s = code[order], timestamps[order]  # [n], [n]
        new = np.ones(n, dtype=bool)
        new[1:] = (code_s[1:] != code_s[:-1]) | (t_s[1:] != t_s[:-1])
        starts = np.flatnonzero(new)  # [m] first event of each (key, timestamp) group
        counts = np.diff(np.append(starts, n))  # [m]
        x = np.add.reduceat(crs[order].astype(np.float64), starts, axis=0)  # [m, d] sums
        x /= counts[:, None]  # tie rule: mean of the events of one key in one second
        self.uniq = uniq
        self.code = code_s[starts]  # [m]
        self.t = t_s[starts]  # [m]
        self.states = _segmented_ema_scan(self.code, self.t, x, beta)  # [m, d]


def _segmented_ema_scan(code: np.ndarray, t: np.ndarray, x: np.ndarray, beta: Beta) -> np.ndarray:
    """Prefix states of Eq. 1 within each run of equal ``code`` (t strictly increasing in a run).

    Step j is the affine map s -> a_j * s + c_j with a_j = beta(t_j - t_{j-1}) and
    c_j = (1 - a_j) * x_j; the first event of a key has a = 0, c = x (initialisation).
    Composition is associative, (a1, c1) then (a2, c2) = (a1 * a2, a2 * c1 + c2), so an
    inclusive Hillis-Steele scan gives every prefix state in ceil(log2(longest run)) steps;
    each step only touches events whose window does not yet reach their key's first event.
    """
    m = code.shape[0]
    first = np.ones(m, dtype=bool)
    first[1:] = code[1:] != code[:-1]  # [m]
    seg_start = np.maximum.accumulate(np.where(first, np.arange(m), 0))  # [m]
    pos = np.arange(m) - seg_start  # [m] position of the event within its key
    a = np.zeros(m, dtype=np.float64)  # [m]
    rest = np.flatnonzero(~first)
    if rest.size:
        a[rest] = evaluate_beta(beta, (t[rest] - t[rest - 1]).astype(np.float64))
    c = (1.0 - a)[:, None] * x  # [m, d]
    offset = 1
    while True:
        idx = np.flatnonzero(pos >= offset)  # events whose window misses their key's start
        if idx.size == 0:
            break
        prev = idx - offset  # same key, since pos >= offset
        a_prev, c_prev = a[prev], c[prev]  # copies: read before any write of this step
        a_cur = a[idx]
        c[idx] = a_cur[:, None] * c_prev + c[idx]
        a[idx] = a_prev * a_cur
        offset *= 2
    return c  # a is 0 everywhere now, so the state is c


def aggregate_sorted(
    keys: np.ndarray, timestamps: np.ndarray, crs: np.ndarray, beta: Beta
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised Eq. 1-2 (same semantics as ``aggregate_sequential``) for one bucket of events.

    Args: as ``aggregate_sequential``; the events may come in any order.

    Returns:
      (keys [n_keys] object, sorted; CR float32 [n_keys, d]; updated_at int64 [n_keys]).
    """
    keys, timestamps, crs = _validate_events(keys, timestamps, crs)
    col = _Collapsed(keys, timestamps, crs, beta)
    m = col.code.shape[0]
    last = np.ones(m, dtype=bool)
    last[:-1] = col.code[1:] != col.code[:-1]  # [m] last event of each key
    last_idx = np.flatnonzero(last)  # [n_keys], in code order = order of col.uniq
    return col.uniq, col.states[last_idx].astype(np.float32), col.t[last_idx]


def prefix_states(
    keys: np.ndarray, timestamps: np.ndarray, crs: np.ndarray, beta: Beta
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every state each key goes through: CR(key) just after each of its (tie-collapsed) events.

    The history behind ``as_of``: a downstream row (k, t) sees the last state of k with
    timestamp strictly before t.

    Returns:
      (keys object [m], timestamps int64 [m], CR float32 [m, d]), sorted by (key, timestamp),
      one entry per distinct (key, second) of the events (tie rule).
    """
    keys, timestamps, crs = _validate_events(keys, timestamps, crs)
    col = _Collapsed(keys, timestamps, crs, beta)
    return col.uniq[col.code], col.t.copy(), col.states.astype(np.float32)


def as_of(
    keys_events: np.ndarray,
    timestamps_events: np.ndarray,
    crs_events: np.ndarray,
    query_keys: np.ndarray,
    query_timestamps: np.ndarray,
    beta: Beta,
) -> tuple[np.ndarray, np.ndarray]:
    """Point-in-time CR(key) for each query row (key, t): no look-ahead leakage.

    Row q sees the state after all events of its key with timestamp STRICTLY before t_q (an
    event at exactly t_q is not seen). A row whose key has no earlier event gets a NaN vector
    and updated_at = -1.

    Returns:
      (CR float32 [q, d] (NaN rows where none), updated_at int64 [q] (-1 where none)).
    """
    keys_events, timestamps_events, crs_events = _validate_events(
        keys_events, timestamps_events, crs_events
    )
    query_keys = np.asarray(query_keys, dtype=object)
    if query_keys.ndim != 1:
        raise ValueError(f"queries: keys must be 1-D, got shape {query_keys.shape}")
    query_timestamps = np.asarray(query_timestamps)
    if query_timestamps.dtype.kind not in "iu":
        raise TypeError(f"queries: timestamps must be integers, got dtype {query_timestamps.dtype}")
    nq = query_keys.shape[0]
    if query_timestamps.shape != (nq,):
        raise ValueError(
            f"queries: timestamps must have shape ({nq},) like keys, got {query_timestamps.shape}"
        )
    query_timestamps = query_timestamps.astype(np.int64, copy=False)
    d = crs_events.shape[1]
    out = np.full((nq, d), np.nan, dtype=np.float32)  # [q, d]
    updated_at = np.full(nq, -1, dtype=np.int64)  # [q]
    col = _Collapsed(keys_events, timestamps_events, crs_events, beta)
    n_keys = col.uniq.shape[0]
    if n_keys == 0 or nq == 0:
        return out, updated_at
    j = np.searchsorted(col.uniq, query_keys)  # [q]
    jc = np.minimum(j, n_keys - 1)
    known = (j < n_keys) & (col.uniq[jc] == query_keys).astype(bool)  # [q]
    # (key code, time rank) packed into one int64 that sorts like the pair.
    all_t = np.unique(np.concatenate([col.t, query_timestamps]))  # [R]
    r = np.int64(all_t.shape[0])
    ev = col.code * r + np.searchsorted(all_t, col.t)  # [m], sorted
    q = jc.astype(np.int64) * r + np.searchsorted(all_t, query_timestamps)  # [q]
    idx = np.searchsorted(ev, q, side="left") - 1  # last event before (code, t_q)
    idx_c = np.maximum(idx, 0)
    hit = known & (idx >= 0) & (col.code[idx_c] == jc)  # [q]
    out[hit] = col.states[idx_c[hit]].astype(np.float32)
    updated_at[hit] = col.t[idx_c[hit]]
    return out, updated_at
