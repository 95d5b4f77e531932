"""The guard (paper Sec. 4.3.2): a bulk write whose statistics jump is refused, nothing changes.

Expected verdicts are computed independently with ``judge`` on numpy tables.
"""

import numpy as np
import pytest

from common.representations.statistics import (
    GuardThresholds,
    judge,
    table_statistics,
)
from serving.store import IR, UR, GuardRefusedError


def _table(seed: int, rows: int = 300, dim: int = 8, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0.2, scale, size=(rows, dim))).astype(np.float32)


def _keys(n: int, start: int = 0) -> list[bytes]:
    return [b"k%d" % i for i in range(start, start + n)]


def test_a_jump_is_refused_with_the_verdict_and_nothing_changes(store, fingerprint):
    old = _table(0)
    store.put(UR, _keys(300), old, updated_at=1, model_version=1)
    state = fingerprint()
    new = _table(1, scale=10.0)  # variance x100, mean row L1 x10
    expected = judge(table_statistics(new), table_statistics(old), GuardThresholds())
    assert not expected.publish  # the scenario really is anomalous
    with pytest.raises(GuardRefusedError, match=r"^guard refused the write to table 'user': "
                                                 r".*variance changed by") as err:
        store.put(UR, _keys(300), new, updated_at=2, model_version=2, replace=True,
                  guard=GuardThresholds())
    assert err.value.verdict.reasons == expected.reasons
    assert err.value.verdict.rates == pytest.approx(expected.rates)
    assert fingerprint() == state


def test_a_normal_table_is_written_and_its_verdict_returned(store):
    old, new = _table(0), _table(1)[:250]
    store.put(UR, _keys(300), old, updated_at=1, model_version=1)
    result = store.put(UR, _keys(250, start=100), new, updated_at=2, model_version=2,
                       replace=True, guard=GuardThresholds())
    expected = judge(table_statistics(new), table_statistics(old), GuardThresholds())
    assert result.verdict.publish and result.verdict.rates == pytest.approx(expected.rates)
    assert store.count(UR) == 250  # replaced: keys k0..k99 are gone
    np.testing.assert_array_equal(store.get(UR, _keys(250, start=100)).representations, new)


def test_an_upsert_is_judged_on_the_table_after_the_write(store, fingerprint):
    old = _table(0)
    store.put(IR, _keys(300), old, updated_at=1, model_version=1)
    state = fingerprint()
    patch = _table(2, rows=10) * 40  # 10 of 310 rows, far out: max |x| jumps
    after = np.concatenate([old, patch])
    expected = judge(table_statistics(after), table_statistics(old), GuardThresholds())
    assert not expected.publish
    with pytest.raises(GuardRefusedError) as err:
        store.put(IR, _keys(10, start=300), patch, 2, 2, guard=GuardThresholds())
    assert err.value.verdict.reasons == expected.reasons
    assert fingerprint() == state
    loose = GuardThresholds(mean=1e9, variance=1e9, l1_norm=1e9, max_abs=1e9)
    assert store.put(IR, _keys(10, start=300), patch, 2, 2, guard=loose).verdict.publish
    assert store.count(IR) == 310


def test_a_first_write_is_held_by_the_hard_limits_only(store, fingerprint):
    state = fingerprint()
    zeros = np.zeros((5, 3), np.float32)
    with pytest.raises(GuardRefusedError, match=r"zero_rows share 1 \(5/5\)"):
        store.put(UR, _keys(5), zeros, 1, 1, replace=True, guard=GuardThresholds())
    assert fingerprint() == state and store.dims() == {}
    assert store.put(UR, _keys(5), zeros + 1, 1, 1, guard=GuardThresholds()).verdict.rates == {}


def test_statistics_of_the_stored_table_are_the_guard_statistics(store):
    assert store.statistics(UR) is None
    table = _table(3, rows=40)
    store.put(UR, _keys(40), table, 1, 1)
    # Rows come back in storage order, so sums may round differently in the last bit.
    assert store.statistics(UR).to_dict() == pytest.approx(table_statistics(table).to_dict())
