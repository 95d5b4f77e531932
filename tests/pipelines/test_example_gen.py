"""The time split of ExampleGen: train strictly before the cut, eval from the cut on."""

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.example_gen import SplitByTime, split_cut


def _example(ts: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[ts])),
    })).SerializeToString()


def test_split_by_time_uses_the_last_days():
    day = 86_400
    times = [0, 5, day, 2 * day - 1, 2 * day, 3 * day - 7, 3 * day]
    cut = split_cut(max(times), 1.0)
    assert cut == 2 * day + 1
    with TestPipeline() as p:
        train, eval_ = p | beam.Create([_example(t) for t in times]) | SplitByTime(1.0)
        assert_that(train, equal_to([_example(t) for t in times if t < cut]), label="train")
        assert_that(eval_, equal_to([_example(t) for t in times if t >= cut]), label="eval")


def test_parsed_examples_are_accepted_and_bad_timestamps_named():
    ex = tf.train.Example.FromString(_example(10))
    with TestPipeline() as p:
        train, eval_ = p | beam.Create([ex]) | SplitByTime(1.0)
        assert_that(eval_, equal_to([ex]), label="eval")
    bad = tf.train.Example().SerializeToString()
    with pytest.raises(Exception, match="timestamp"):
        with TestPipeline() as p:
            _ = p | beam.Create([bad]) | SplitByTime(1.0)
