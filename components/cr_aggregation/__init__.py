"""Time-aware EMA of cross representations CR(u,i) into CR(u), CR(i) (paper Sec. 3.3, Eq. 1-2)."""

from trainer import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.cr_aggregation.beam_transforms import (
    AggregateCrossRepresentations,
    PointInTimeCrossRepresentations,
)
from trainer.representations.ema import (
    HalfLifeDecay,
    aggregate_sequential,
    aggregate_sorted,
    as_of,
    half_life_decay,
)

__all__ = [
    "AggregateCrossRepresentations",
    "HalfLifeDecay",
    "PointInTimeCrossRepresentations",
    "aggregate_sequential",
    "aggregate_sorted",
    "as_of",
    "half_life_decay",
]
