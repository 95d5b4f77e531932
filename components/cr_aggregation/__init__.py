"""Time-aware EMA of cross representations CR(u,i) into CR(u), CR(i) (paper Sec. 3.3, Eq. 1-2),
in Beam. The EMA itself (no Beam) is `common.representations.ema`."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.cr_aggregation.beam_transforms import (
    AggregateCrossRepresentations,
    PointInTimeCrossRepresentations,
)

__all__ = ["AggregateCrossRepresentations", "PointInTimeCrossRepresentations"]
