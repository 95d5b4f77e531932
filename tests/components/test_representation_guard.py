"""The Beam transforms of the representation monitoring statistics and the publish guard
(paper Sec. 4.3.2) vs numpy (the statistics and the judge themselves:
tests/common/test_statistics.py)."""

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from common.representations.statistics import STATUS_HELD, GuardThresholds, table_statistics
from components.representation_guard import ComputeTableStatistics, GuardTable
from tests.common.statistics_reference import (
    assert_statistics_match,
    numpy_statistics,
    random_table,
)


def _matches_statistics(ref: dict):
    def _check(actual):
        if len(actual) != 1:
            raise BeamAssertException(f"expected one TableStatistics, got {len(actual)}")
        try:
            assert_statistics_match(actual[0], ref)
        except AssertionError as e:
            raise BeamAssertException(f"statistics differ from numpy: {e}") from e

    return _check


def test_beam_compute_statistics_and_guard():
    m = random_table(30, rows=300, dim=5)
    m[4] = 0.0
    m[8, 2] = np.nan
    keyed = [(b"k%d" % i, row) for i, row in enumerate(m)]
    chunks = [m[:100], m[100:250], m[250:]]
    ref = numpy_statistics(m)
    previous = table_statistics(random_table(31, rows=300, dim=5))

    with BeamTestPipeline() as p:
        from_rows = (
            p | "Rows" >> beam.Create(keyed) | "StatsRows" >> ComputeTableStatistics(batch_size=16)
        )
        from_chunks = (
            p | "Chunks" >> beam.Create(chunks) | "StatsChunks" >> ComputeTableStatistics()
        )
        assert_that(from_rows, _matches_statistics(ref), label="RowsMatchNumpy")
        assert_that(from_chunks, _matches_statistics(ref), label="ChunksMatchNumpy")
        verdicts = from_rows | GuardTable(previous, GuardThresholds())
        assert_that(
            verdicts | beam.Map(lambda v: (v.publish, v.status, v.reasons[0])),
            lambda got: _check_equal(got, [(False, STATUS_HELD, "nan_count 1 > 0")]),
            label="HeldOnNaN",
        )


def _check_equal(got, expected):
    if list(got) != expected:
        raise BeamAssertException(f"{list(got)} != {expected}")


def test_beam_clean_table_is_published():
    previous = table_statistics(random_table(32, rows=200, dim=4))
    new = random_table(33, rows=200, dim=4)
    with BeamTestPipeline() as p:
        verdicts = (
            p
            | beam.Create([(i, row) for i, row in enumerate(new)])
            | ComputeTableStatistics(batch_size=7)
            | GuardTable(previous)
        )
        assert_that(
            verdicts | beam.Map(lambda v: (v.publish, v.reasons)),
            lambda got: _check_equal(got, [(True, [])]),
        )
