"""An upstream that moves forward one day at a time, as production runs it (paper Fig. 4,
Sec. 4.3.1): pretrained on the first days, then, for each later day, that day's requests are
scored by the model as it stood at the end of the day before (yesterday's model), and the
model is then updated on that day (warm start: the same weights and optimizer state, one
pass over the day's requests of every domain).

    model_0 = pretrained on [lo, start)
    events of day d = model_d(requests of day d)         d = start, start + 1 day, ...
    model_{d+1} = model_d + one pass over the requests of day d

Every request from `start` on is then scored by a model that never trained on it
(`UpstreamEvents.trained_until`, checked by `replay.check_unseen`). The requests before
`start` are scored by the pretrained model (they are the tables' history, not rows to
evaluate). `before_day(model, (d0, d1))` runs before each day is scored, e.g. to export the
model that a downstream window will load or to read its predictions on that day's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from common import features
from trainer.downstream import replay

DAY = features.DAY
# How a downstream study or ranker sees the upstream: `frozen`, one model trained before the
# downstream windows; `daily`, a model moved forward one day at a time (module doc), or, for a
# trained upstream's exports, each request scored by the newest version trained before it.
FROZEN, DAILY = "frozen", "daily"
PROTOCOLS = (FROZEN, DAILY)


def day_windows(start: int, end: int, days: float = 1.0) -> list[tuple[int, int]]:
    """Half-open windows of `days` from `start` until `end` (the last one cut at `end`)."""
    step = int(round(days * DAY))
    if step < 1:
        raise ValueError(f"days must be > 0, got {days}")
    return [(t, min(t + step, end)) for t in range(start, end, step)]


def replay_daily(model, records: Sequence[bytes], start: int, *, batch_size: int = 1024,
                 shuffle_buffer: int = 100_000, seed: int = 0, days: float = 1.0,
                 model_fn: Callable = replay.keras_model_fn, before_day: Callable | None = None,
                 trains_on: np.ndarray | None = None,
                 log: Callable[[str], None] | None = None) -> replay.UpstreamEvents:
    """Scores `records` day by day with the model as it stood before each day and updates it
    on the day after scoring it (module doc). `model` is a compiled `LFM4AdsModel` pretrained
    on the requests before `start`; it is updated in place and ends trained on every request.
    `model_fn(model)` is the `RepresentationFn` that scores (e.g. with `cr_layers`). Returns
    the events in input order. `trains_on` (bool [n]): the requests the updates train on
    (default all; e.g. one domain's for an upstream of that domain), all of them scored."""
    records = list(records)
    stamps = replay.record_timestamps(records)
    if trains_on is not None and np.shape(trains_on) != stamps.shape:
        raise ValueError(f"trains_on has shape {np.shape(trains_on)}, the records "
                         f"{stamps.shape}")
    if not stamps.size:
        raise ValueError("replay_daily got no records")
    if not stamps.min() < start <= stamps.max():
        raise ValueError(f"the daily updates start at {start}, outside the requests' time "
                         f"range [{stamps.min()}, {stamps.max()}]: nothing to pretrain on or "
                         "nothing to update on")
    fn = model_fn(model)
    parts, order = [], []
    history = np.flatnonzero(stamps < start)
    parts.append(replay.run_upstream(fn, [records[j] for j in history]).scored_by(start))
    order.append(history)
    windows = day_windows(start, int(stamps.max()) + 1, days)
    for k, (d0, d1) in enumerate(windows):
        if before_day is not None:
            before_day(model, (d0, d1))
        day = np.flatnonzero((stamps >= d0) & (stamps < d1))
        if not day.size:
            continue
        parts.append(replay.run_upstream(fn, [records[j] for j in day]).scored_by(d0))
        order.append(day)
        learn = day if trains_on is None else day[trains_on[day]]
        if k + 1 < len(windows) and learn.size:  # the last day's update would score nothing
            update(model, [records[j] for j in learn], batch_size, shuffle_buffer, seed + k)
        if log is not None:
            log(f"    day {k + 1}/{len(windows)}: {day.size} requests scored, then trained on")
    events = replay.concatenate(parts)
    return events.select(np.argsort(np.concatenate(order), kind="stable"))


def update(model, records: Sequence[bytes], batch_size: int, shuffle_buffer: int,
           seed: int) -> None:
    """One pass of `model` (compiled) over `records`, shuffled."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(records), tf.string))
    if shuffle_buffer:
        ds = ds.shuffle(min(shuffle_buffer, len(records)), seed=seed)
    ds = ds.batch(batch_size).map(features.parse_examples, num_parallel_calls=tf.data.AUTOTUNE)
    model.fit(ds.prefetch(tf.data.AUTOTUNE), epochs=1, verbose=0)
