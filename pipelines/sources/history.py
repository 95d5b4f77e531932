"""User histories (``user_hist_items``) and the ragged arrays ``(offsets, values)`` that hold
list features, computed with numpy for a whole source at once."""

from __future__ import annotations

import numpy as np

from common import features


def user_history(
    user: np.ndarray,
    timestamp: np.ndarray,
    item: np.ndarray,
    positive: np.ndarray,
    cap: int = features.MAX_HISTORY,
) -> tuple[np.ndarray, np.ndarray]:
    """``user_hist_items`` of every event, as a ragged array.

    For event ``i`` the history is the ``item`` of the events ``j`` with ``positive[j]``,
    ``user[j] == user[i]`` and ``timestamp[j] < timestamp[i]`` (strictly: events at the same
    second are not history), newest first (ties in ``timestamp`` among the history: the later
    event index first), at most ``cap`` items. Vectorised: the positives are sorted by
    ``(user, timestamp)`` and one ``np.searchsorted`` counts, for every event, the positives of
    its user strictly before it.

    Args:
        user: ``[n]`` integer user index of each event.
        timestamp: ``[n]`` integer timestamp of each event.
        item: ``[n]`` item of each event (any dtype; values are copied into the result).
        positive: ``[n]`` bool, whether the event is a positive (it then enters later histories).
        cap: maximum history length.

    Returns:
        ``(offsets, values)``: ``offsets`` ``[n + 1]`` int64, ``values`` ``[offsets[-1]]`` of
        ``item``'s dtype; event ``i``'s history is ``values[offsets[i]:offsets[i + 1]]``.

    Example: users ``[0, 0, 0]``, timestamps ``[1, 1, 2]``, items ``[7, 8, 9]``, all positive
    gives histories ``[], [], [8, 7]``.
    """
    user = np.asarray(user)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    item = np.asarray(item)
    positive = np.asarray(positive, dtype=bool)
    n = user.shape[0]
    if not (timestamp.shape == item.shape == positive.shape == (n,)) or user.ndim != 1:
        raise ValueError(
            "user, timestamp, item and positive must be 1-D of one length; got shapes "
            f"{user.shape}, {timestamp.shape}, {item.shape}, {positive.shape}"
        )
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    if n == 0:
        return np.zeros(1, np.int64), item[:0].copy()
    user = user.astype(np.int64)
    if user.min() < 0:
        raise ValueError(f"user indices must be >= 0, got min {user.min()}")
    # One sortable int64 key per event: user-major, then time.
    t_min = int(timestamp.min())
    span = int(timestamp.max()) - t_min + 1
    if (int(user.max()) + 1) * span >= 2**62:
        raise ValueError(f"user x timestamp range too large for an int64 key: {user.max()}, {span}")
    key = user * span + (timestamp - t_min)  # [n]
    pos = np.flatnonzero(positive)
    order = pos[np.argsort(key[pos], kind="stable")]  # positives by (user, time, index)
    pos_key = key[order]
    pos_item = item[order]
    end = np.searchsorted(pos_key, key, side="left")  # positives with a smaller key
    # The user's first positive: one search per user, not per event.
    first = np.searchsorted(pos_key, np.arange(int(user.max()) + 1) * span, side="left")
    lengths = np.minimum(end - first[user], cap)  # [n]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Flat position k of row i takes the positive at end[i] - 1 - (k - offsets[i]).
    index_type = np.int32 if offsets[-1] + len(pos_key) < 2**31 else np.int64
    src = np.repeat((end - 1 + offsets[:-1]).astype(index_type), lengths)
    src -= np.arange(offsets[-1], dtype=index_type)
    return offsets, pos_item[src]


def ragged_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[
    np.ndarray, np.ndarray
]:
    """Rows ``rows`` of the ragged array ``(offsets, values)``, as a new ``(offsets, values)``.

    Example: offsets ``[0, 2, 3]``, values ``[5, 6, 7]``, rows ``[1, 0, 1]`` gives
    ``([0, 1, 3, 4], [7, 5, 6, 7])``.
    """
    offsets = np.asarray(offsets, np.int64)
    rows = np.asarray(rows, np.int64)
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    src = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return new_offsets, np.asarray(values)[src]
