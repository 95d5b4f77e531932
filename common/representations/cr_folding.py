"""Which requests fold their CR(u,i) into CR(u) and CR(i) (paper Sec. 4.3.1).

LFM4Ads computes a cross representation event CR(u,i) when a user meets an **ad**: the ad
branch of the mix tower scores the pair, and that event is folded into the user-level CR(u) and
the item-level CR(i) with the time-aware EMA of Eq. 1-2 (``common.representations.ema``).
Content requests (about 80% of the traffic) update UR(u) and IR(i) only. The setting:

    "ad"   fold the CR(u,i) of ad requests only (``domain == b"ad"``; the paper, the default)
    "all"  fold the CR(u,i) of every request (content included; the behaviour before)

Every place that folds CR events reads it from here: the aggregator's Beam transforms
(`components.cr_aggregation`), `DownstreamExamples`, the downstream replay
(`trainer.downstream.replay.histories`) and the online loop (`serving.online.OnlineLoop`,
which filters before the store's `update_cross`). UR and IR do not depend on it.

Example::

    check("ad")                                              # -> "ad"
    fold_mask(np.array([b"ad", b"content"], object), "ad")   # -> [True, False]
"""

from __future__ import annotations

import numpy as np

from common import features
from common.representations import tables

AD = "ad"
ALL = "all"
CHOICES = (AD, ALL)
DEFAULT = AD


def check(cr_domains: str) -> str:
    """`cr_domains` if it is one of `CHOICES`, else ValueError naming the bad value."""
    if not isinstance(cr_domains, str) or cr_domains not in CHOICES:
        raise ValueError(f"cr_domains must be one of {list(CHOICES)}, got {cr_domains!r}")
    return cr_domains


def needs_domains(cr_domains: str) -> bool:
    """Whether the setting reads each event's domain (`"all"` folds every event unread)."""
    return check(cr_domains) != ALL


def fold_mask(domains, cr_domains: str) -> np.ndarray:
    """bool [n]: the events whose CR(u,i) is folded into CR(u) and CR(i).

    Args:
      domains: [n] each event's `domain` feature (bytes; str is UTF-8 encoded). Under `"all"`
        only its length is read.
      cr_domains: one of `CHOICES`.
    Raises:
      ValueError: a bad `cr_domains`, or `domains` that is not 1-D; TypeError: domains that
        are not bytes or str.
    """
    fold_all = not needs_domains(cr_domains)
    values = np.asarray(domains)
    if values.ndim != 1:
        raise ValueError(f"domains must be 1-D, got shape {values.shape}")
    if fold_all:
        return np.ones(values.shape[0], dtype=bool)
    if values.size == 0:
        return np.zeros(0, dtype=bool)
    if values.dtype.kind not in "SUO":
        raise TypeError(f"domains must be bytes or str, got dtype {values.dtype}")
    if values.dtype.kind == "U":
        values = np.char.encode(values, "utf-8")  # [n] bytes
    mask = np.asarray(values == features.DOMAIN_AD, dtype=bool)  # [n]
    if values.dtype == object:  # str among bytes: compared as its UTF-8 bytes
        mask |= np.asarray(values == features.DOMAIN_AD.decode(), dtype=bool)
    return mask


def select_events(batch: dict, cr_domains: str) -> dict:
    """The events of a CR(u,i) batch (`tables.decode_event_batch`'s dict: every entry has one
    row per event) that fold under `cr_domains`; the batch itself under `"all"`.

    Raises:
      TableError: `cr_domains` needs the domains and the batch has none (a stream written
        before the extractor recorded them: re-extract, or fold with `"all"`).
    """
    if not needs_domains(cr_domains):
        return batch
    if tables.EVENT_DOMAIN not in batch:
        raise tables.TableError(
            f"the CR(u,i) event batch has no {tables.EVENT_DOMAIN!r} field (written before the "
            f"extractor recorded each event's domain), so cr_domains={cr_domains!r} cannot "
            "select its events: run the RepresentationExtractor again, or fold every event "
            f"with cr_domains={ALL!r}")
    keep = fold_mask(batch[tables.EVENT_DOMAIN], cr_domains)  # [n]
    if keep.all():
        return batch
    rows = np.flatnonzero(keep)  # [m]
    return {name: values[rows] if isinstance(values, np.ndarray)
            else [values[i] for i in rows.tolist()] for name, values in batch.items()}
