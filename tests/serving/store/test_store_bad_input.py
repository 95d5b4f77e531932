"""Bad input is refused with an error naming the problem; the stored bytes do not change."""

import numpy as np
import pytest

from serving.store import UR, DimensionError

OK = np.ones((2, 4), np.float32)
NAN = np.array([[1, 2, 3, 4], [1, np.nan, 3, 4]], np.float32)
INF = np.array([[1, 2, 3, 4], [1, 2, -np.inf, 4]], np.float32)
HUGE = np.array([[1, 2, 3, 4], [1, 2, 3, 1e39]], np.float64)  # Inf once stored as float32

BAD_PUTS = [
    ("dimension", dict(representations=np.ones((2, 5), np.float32)), DimensionError,
     r"^table 'user' has dimension 4, got representations of dimension 5$"),
    ("nan", dict(representations=NAN), ValueError,
     r"^representations row 1 is not finite in float32 \(NaN, Inf or overflow\)$"),
    ("inf", dict(representations=INF), ValueError, r"^representations row 1 is not finite"),
    ("overflow", dict(representations=HUGE), ValueError, r"^representations row 1 is not finite"),
    ("rows vs keys", dict(representations=np.ones((3, 4), np.float32)), ValueError,
     r"^representations must have shape \(2, d\), one row per key, got \(3, 4\)$"),
    ("1-D", dict(representations=np.ones(4, np.float32)), ValueError,
     r"^representations must have shape \(2, d\), one row per key, got \(4,\)$"),
    ("ragged", dict(representations=[[1.0, 2.0], [1.0]]), ValueError,
     r"^representations must be a rectangular \[n, d\] float array"),
    ("int dtype", dict(representations=np.ones((2, 4), np.int64)), TypeError,
     r"^representations must be a float array, got dtype int64$"),
    ("str dtype", dict(representations=np.full((2, 4), "x")), TypeError,
     r"^representations must be a float array, got dtype <U1$"),
    ("updated_at length", dict(updated_at=[1, 2, 3]), ValueError,
     r"^updated_at must have shape \(2,\), one per key, got \(3,\)$"),
    ("updated_at dtype", dict(updated_at=[1.5, 2.0]), TypeError,
     r"^updated_at must be integers, got dtype float64$"),
    ("model_version dtype", dict(model_version="3"), TypeError,
     r"^model_version must be integers, got dtype <U1$"),
    ("key type", dict(keys=[b"a", 7]), TypeError, r"^keys\[1\] must be bytes or str, got int$"),
    ("single key", dict(keys=b"ab"), TypeError,
     r"^keys must be a sequence of ids, got a single bytes$"),
    ("duplicate key", dict(keys=[b"a", "a"]), ValueError,
     r"^keys: key b'a' appears more than once in the batch$"),
    ("table", dict(table="users"), ValueError, r"^unknown table 'users'; tables are \("),
]

BAD_UPDATES = [
    ("dimension", dict(cr=np.ones((2, 3), np.float32)), DimensionError,
     r"^table 'cross_user' has dimension 4, got representations of dimension 3$"),
    ("nan", dict(cr=NAN), ValueError, r"^cr row 1 is not finite in float32"),
    ("inf", dict(cr=INF), ValueError, r"^cr row 1 is not finite in float32"),
    ("items vs users", dict(item_ids=[b"i"]), ValueError,
     r"^item_ids has 1 ids, user_ids has 2: one per event$"),
    ("cr rows", dict(cr=np.ones((1, 4), np.float32)), ValueError,
     r"^cr must have shape \(2, d\), one row per key, got \(1, 4\)$"),
    ("timestamps length", dict(timestamps=[1]), ValueError,
     r"^timestamps must have shape \(2,\), one per key, got \(1,\)$"),
    ("timestamps dtype", dict(timestamps=np.array([1.0, 2.0])), TypeError,
     r"^timestamps must be integers, got dtype float64$"),
    ("timestamps scalar", dict(timestamps=5), ValueError,
     r"^timestamps must have shape \(2,\), one per key, got \(\)$"),
    ("domains length", dict(domains=[b"ad"]), ValueError,
     r"^domains has 1 values, user_ids has 2: one per event$"),
    ("domain type", dict(domains=[b"ad", 1]), TypeError,
     r"^domains\[1\] must be bytes or str, got int$"),
    ("cr_domains", dict(domains=[b"ad", b"ad"], cr_domains="ads"), ValueError,
     r"^cr_domains must be one of \['ad', 'all'\], got 'ads'$"),
    ("cr dtype", dict(cr=np.ones((2, 4), bool)), TypeError,
     r"^cr must be a float array, got dtype bool$"),
    ("user id type", dict(user_ids=[b"u", None]), TypeError,
     r"^user_ids\[1\] must be bytes or str, got NoneType$"),
    ("model_version", dict(model_version=1.0), TypeError,
     r"^model_version must be integers, got dtype float64$"),
]


@pytest.fixture
def filled(store):
    """A store with rows in UR and in both CR tables (dimension 4)."""
    store.put(UR, [b"a", b"b"], OK, updated_at=[1, 2], model_version=1)
    store.update_cross([b"u", b"v"], [b"i", b"j"], OK * 2, [10, 11])
    return store


@pytest.mark.parametrize("change, error, match", [c[1:] for c in BAD_PUTS],
                         ids=[c[0] for c in BAD_PUTS])
def test_bad_put_is_refused_and_nothing_changes(filled, fingerprint, change, error, match):
    state = fingerprint()
    args = dict(table=UR, keys=[b"a", b"new"], representations=OK, updated_at=[5, 5],
                model_version=2)
    args.update(change)
    with pytest.raises(error, match=match):
        filled.put(**args)
    assert fingerprint() == state


@pytest.mark.parametrize("change, error, match", [c[1:] for c in BAD_UPDATES],
                         ids=[c[0] for c in BAD_UPDATES])
def test_bad_update_cross_is_refused_and_nothing_changes(filled, fingerprint, change, error,
                                                         match):
    state = fingerprint()
    args = dict(user_ids=[b"u", b"new"], item_ids=[b"i", b"new"], cr=OK, timestamps=[20, 20],
                model_version=2)
    args.update(change)
    with pytest.raises(error, match=match):
        filled.update_cross(**args)
    assert fingerprint() == state


def test_the_fingerprint_sees_a_one_value_change(filled, fingerprint):
    # The check above can fail: one float changed in one row changes the stored bytes.
    state = fingerprint()
    filled.put(UR, [b"a"], np.array([[1, 1, 1, 1.5]], np.float32), updated_at=1, model_version=1)
    assert fingerprint() != state
