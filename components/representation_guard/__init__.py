"""Monitoring statistics of upstream representations and the publish guard (paper Sec. 4.3.2)."""

from trainer import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.representation_guard.beam_transforms import (
    ComputeTableStatistics,
    GuardTable,
    TableStatisticsCombineFn,
)
from trainer.representations.statistics import (
    RATE_STATISTICS,
    STATUS_HELD,
    STATUS_PUBLISHED,
    GuardThresholds,
    StatisticsAccumulator,
    TableStatistics,
    Verdict,
    judge,
    rate_of_change,
    table_statistics,
)

__all__ = [
    "RATE_STATISTICS",
    "STATUS_HELD",
    "STATUS_PUBLISHED",
    "ComputeTableStatistics",
    "GuardTable",
    "GuardThresholds",
    "StatisticsAccumulator",
    "TableStatistics",
    "TableStatisticsCombineFn",
    "Verdict",
    "judge",
    "rate_of_change",
    "table_statistics",
]
