"""Beam transforms for the representation publish guard (paper Sec. 4.3.2).

``ComputeTableStatistics`` reduces a representation table to one ``TableStatistics`` with
``beam.CombineGlobally`` over a CombineFn wrapping ``StatisticsAccumulator`` (single rows are
buffered and folded in ``batch_size`` at a time; chunks are merged with Chan's update, see
``common.representations.statistics``). ``GuardTable`` maps those statistics to a
``Verdict`` against the last published version, so a pipeline can branch on ``verdict.publish``.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np

from common.representations.statistics import (
    GuardThresholds,
    StatisticsAccumulator,
    TableStatistics,
    judge,
)


def _as_array(element: Any) -> np.ndarray:
    """A ``(key, vector [d])`` pair -> [d]; a vector [d] or a chunk [n, d] as is."""
    if isinstance(element, tuple):
        if len(element) != 2:
            raise ValueError(f"expected a (key, vector) pair, got a tuple of {len(element)}")
        element = element[1]
    arr = np.asarray(element)
    if arr.ndim not in (1, 2):
        raise ValueError(f"expected a vector [d] or a matrix [n, d], got shape {arr.shape}")
    return arr


class TableStatisticsCombineFn(beam.CombineFn):
    """CombineFn: elements (``(key, vector [d])``, ``vector [d]`` or ``matrix [n, d]``) ->
    ``TableStatistics``."""

    def __init__(self, batch_size: int = 1024) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._batch_size = batch_size

    def create_accumulator(self) -> StatisticsAccumulator:
        return StatisticsAccumulator(self._batch_size)

    def add_input(self, accumulator: StatisticsAccumulator, element: Any) -> StatisticsAccumulator:
        return accumulator.add(_as_array(element))

    def merge_accumulators(self, accumulators: Any) -> StatisticsAccumulator:
        it = iter(accumulators)
        first = next(it, None)
        merged = StatisticsAccumulator(self._batch_size) if first is None else first
        for acc in it:
            merged.merge(acc)
        return merged

    def compact(self, accumulator: StatisticsAccumulator) -> StatisticsAccumulator:
        return accumulator.flush()

    def extract_output(self, accumulator: StatisticsAccumulator) -> TableStatistics:
        return accumulator.result()


class ComputeTableStatistics(beam.PTransform):
    """PCollection of ``(key, vector [d])`` / vectors / chunks [n, d] -> one ``TableStatistics``.

    An empty input yields the statistics of an empty table (rows 0), which ``judge`` holds.
    """

    def __init__(self, batch_size: int = 1024, label: str | None = None) -> None:
        super().__init__(label)
        self._batch_size = batch_size

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "CombineStatistics" >> beam.CombineGlobally(
            TableStatisticsCombineFn(self._batch_size)
        )


class GuardTable(beam.PTransform):
    """PCollection of ``TableStatistics`` -> PCollection of ``Verdict`` vs ``previous``."""

    def __init__(
        self,
        previous: TableStatistics | None,
        thresholds: GuardThresholds | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._previous = previous
        self._thresholds = thresholds or GuardThresholds()

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Judge" >> beam.Map(judge, self._previous, self._thresholds)
