"""Shared helpers of the store tests: random CR(u,i) events and the sequential reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.representations.ema import aggregate_sequential, half_life_decay
from serving.store import CR_ITEM, CR_USER, RepresentationStore

HALF_LIFE = 10.0  # seconds: the tests' timestamps span a few half-lives


@dataclass
class Events:
    """CR(u,i) events: ids [n] (bytes), cr float32 [n, d], timestamps int64 [n]."""

    users: list[bytes]
    items: list[bytes]
    cr: np.ndarray
    t: np.ndarray

    def __getitem__(self, s) -> Events:
        idx = np.arange(len(self.users))[s]
        return Events([self.users[i] for i in idx], [self.items[i] for i in idx],
                      self.cr[idx], self.t[idx])

    def __add__(self, other: Events) -> Events:
        return Events(self.users + other.users, self.items + other.items,
                      np.concatenate([self.cr, other.cr]), np.concatenate([self.t, other.t]))


def random_events(
    rng: np.random.Generator, n: int, users: int, items: int, seconds: int, dim: int,
    start: int = 0,
) -> Events:
    """n events over few keys and few seconds, so keys repeat and same-second ties are many."""
    return Events(
        [b"u%d" % k for k in rng.integers(0, users, n)],
        [b"i%d" % k for k in rng.integers(0, items, n)],
        rng.normal(size=(n, dim)).astype(np.float32),
        rng.integers(start, start + seconds, n).astype(np.int64),
    )


def assert_matches_sequential(
    store: RepresentationStore, events: Events, half_life: float
) -> None:
    """CR(u) and CR(i) of the store == ema.aggregate_sequential over the same events."""
    beta = half_life_decay(half_life)
    for table, keys in ((CR_USER, events.users), (CR_ITEM, events.items)):
        ref = aggregate_sequential(np.array(keys, dtype=object), events.t, events.cr, beta)
        rows = store.get(table, list(ref))
        assert rows.found.all(), table
        np.testing.assert_allclose(
            rows.representations, np.stack([v for v, _ in ref.values()]), rtol=1e-5, atol=1e-6,
            err_msg=table)
        np.testing.assert_array_equal(rows.updated_at, [t for _, t in ref.values()], table)
        assert store.count(table) == len(ref), table
