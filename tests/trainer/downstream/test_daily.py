"""An upstream moved forward one day at a time (`trainer.downstream.daily`) and requests scored
by upstream versions (`replay.run_versions`): every request from the first update on is
scored by a model trained only on earlier days."""

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.downstream.conftest import DAY, TINY
from trainer import data_input
from trainer.config import TrainConfig
from trainer.downstream import daily, replay
from trainer.train import fit_and_evaluate


@pytest.fixture(scope="module")
def pretrained(downstream_data):
    """A compiled upstream trained on days 1-2 and the six days' requests."""
    model, _, _ = fit_and_evaluate(downstream_data, TINY,
                                   TrainConfig(epochs=1, skip_last_days=3), verbose=0)
    files = data_input.list_files(downstream_data)
    records = [r.numpy() for r in data_input.records_in_window(files)]
    lo, _ = data_input.time_range(files)
    return model, records, lo + 2 * DAY


def _outputs(model, records):
    return replay.run_upstream(replay.keras_model_fn(model), records).outputs


@pytest.mark.slow
def test_each_day_is_scored_by_yesterdays_model_then_trained_on(pretrained):
    model, records, start = pretrained
    stamps = replay.record_timestamps(records)
    before = {}  # window -> UR of that day's requests by the model as the day begins

    def before_day(m, window):
        day = [r for r, t in zip(records, stamps, strict=True) if window[0] <= t < window[1]]
        before[window] = _outputs(m, day)[replay.UR] if day else None

    frozen = _outputs(model, records)
    weights = [w.copy() for w in model.get_weights()]
    events = daily.replay_daily(model, records, start, before_day=before_day, seed=3)
    assert len(events) == len(records)
    np.testing.assert_array_equal(events.timestamp, stamps)  # input order
    # the history before the updates is the pretrained model's
    old = stamps < start
    np.testing.assert_allclose(events.outputs[replay.UR][old], frozen[replay.UR][old], atol=1e-6)
    assert (events.trained_until[old] == start).all()
    windows = daily.day_windows(start, int(stamps.max()) + 1)
    assert list(before) == windows and len(windows) == 4
    for d0, d1 in windows:
        day = (stamps >= d0) & (stamps < d1)
        # scored by the model as the day began (before its own update), which trained on data
        # before d0 only
        np.testing.assert_allclose(events.outputs[replay.UR][day], before[(d0, d1)], atol=1e-5)
        assert (events.trained_until[day] == d0).all()
    # the updates moved the model: the last day differs from the pretrained model's scores
    last = stamps >= windows[-1][0]
    assert not np.allclose(events.outputs[replay.UR][last], frozen[replay.UR][last], atol=1e-4)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, model.get_weights(),
                                                           strict=True))
    replay.check_unseen(events, start)  # nothing scored by a model that had seen it


@pytest.mark.slow
def test_updates_train_only_on_the_requests_given(pretrained):
    model, records, start = pretrained
    weights = [w.copy() for w in model.get_weights()]
    frozen = _outputs(model, records)
    events = daily.replay_daily(model, records, start,
                                trains_on=np.zeros(len(records), bool))
    np.testing.assert_allclose(events.outputs[replay.CR], frozen[replay.CR], atol=1e-6)
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="trains_on has shape"):
        daily.replay_daily(model, records, start, trains_on=np.zeros(3, bool))
    with pytest.raises(ValueError, match="outside the requests' time range"):
        daily.replay_daily(model, records, int(replay.record_timestamps(records).max()) + 10)


@pytest.mark.slow
def test_run_versions_scores_each_request_with_the_newest_earlier_version(pretrained):
    model, records, start = pretrained
    stamps = replay.record_timestamps(records)

    def constant(value):
        def fn(examples):
            n = tf.shape(examples)[0]
            return {
                name: tf.fill([n, 2], float(value)) for name in (replay.UR, replay.IR, replay.CR)
            }

        return fn

    cut = start + DAY
    events = replay.run_versions([(cut, constant(2)), (start, constant(1))], records)
    np.testing.assert_array_equal(events.timestamp, stamps)  # input order
    expected = np.where(stamps >= cut, 2.0, 1.0)  # before `start`: the first version
    np.testing.assert_array_equal(events.outputs[replay.UR][:, 0], expected)
    np.testing.assert_array_equal(events.trained_until, np.where(stamps >= cut, cut, start))
    replay.check_unseen(events, start)
    with pytest.raises(ValueError, match="scored by a model that had trained on them"):
        replay.check_unseen(events, start - DAY)  # the first version's own training days
    with pytest.raises(ValueError, match="do not record which model"):
        replay.check_unseen(replay.run_upstream(constant(0), records[:5]), start)
    with pytest.raises(ValueError, match="no upstream versions"):
        replay.run_versions([], records)


def test_day_windows():
    assert daily.day_windows(0, 2 * DAY + 5) == [(0, DAY), (DAY, 2 * DAY), (2 * DAY, 2 * DAY + 5)]
    assert daily.day_windows(0, DAY, days=0.5) == [(0, DAY // 2), (DAY // 2, DAY)]
    with pytest.raises(ValueError, match="days must be > 0"):
        daily.day_windows(0, DAY, days=0)
