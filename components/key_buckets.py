"""Stable key buckets: how the CR aggregator and DownstreamExamples split their work by key.

A key's bucket is ``zlib.crc32(key) % num_buckets``: the same in every process and run
(Python's ``hash()`` of bytes is salted per process), so the events and the queries of one key
meet in one bucket wherever they were split.
"""

import zlib

import numpy as np


def key_buckets(keys: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket of each bytes key: ``zlib.crc32(key) % num_buckets``.

    Args:
        keys: ``[n]`` object array of bytes.
        num_buckets: number of buckets (>= 1).

    Returns:
        ``[n]`` int64 in ``[0, num_buckets)``.

    Example: ``key_buckets(np.array([b"a", b"b"], object), 4)`` is ``[3, 1]``
    (crc32 ``0xe8b7be43`` and ``0x71beeff9``).
    """
    return np.fromiter(
        (zlib.crc32(k) % num_buckets for k in keys), dtype=np.int64, count=keys.shape[0]
    )
