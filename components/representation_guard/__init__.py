"""Monitoring statistics of upstream representations and the publish guard (paper Sec. 4.3.2),
in Beam. The statistics and the judge themselves (no Beam) are
`common.representations.statistics`; publishing is `components.publishing`."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.representation_guard.beam_transforms import (
    ComputeTableStatistics,
    GuardTable,
    TableStatisticsCombineFn,
)

__all__ = ["ComputeTableStatistics", "GuardTable", "TableStatisticsCombineFn"]
