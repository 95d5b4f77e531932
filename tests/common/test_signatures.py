"""`signatures.representations_fn`: one call of the combined signature, or the three single
ones for an older export; a clear error when a SavedModel has neither."""

from __future__ import annotations

import pytest

from common import signatures

UR, IR, CR = (signatures.USER_REPRESENTATION, signatures.ITEM_REPRESENTATION,
              signatures.CROSS_REPRESENTATION)


class _Loaded:
    """The part of a loaded SavedModel the helper reads: `.signatures`, each recording its calls."""

    def __init__(self, names):
        self.calls: list[str] = []
        self.signatures = {name: self._signature(name) for name in names}

    def _signature(self, name):
        def call(**inputs):
            assert list(inputs) == [signatures.INPUT_KEY]
            self.calls.append(name)
            return {key: f"{name}:{key}:{inputs[signatures.INPUT_KEY]}"
                    for key in signatures.OUTPUT_KEYS[name]}
        return call


def test_the_combined_signature_is_called_once_when_the_export_has_it():
    loaded = _Loaded([UR, IR, CR, signatures.REPRESENTATIONS])
    out = signatures.representations_fn(loaded, "/m/1")("batch")
    assert loaded.calls == [signatures.REPRESENTATIONS]
    assert set(out) == {UR, IR, CR, signatures.AD_PREDICTION}
    assert out[CR] == f"{signatures.REPRESENTATIONS}:{CR}:batch"


def test_an_older_export_is_asked_its_three_single_signatures():
    loaded = _Loaded([UR, IR, CR, signatures.SERVING_DEFAULT])
    out = signatures.representations_fn(loaded, "/m/1")("batch")
    assert loaded.calls == [UR, IR, CR]
    assert out == {name: f"{name}:{name}:batch" for name in (UR, IR, CR)}


def test_a_savedmodel_without_the_representation_signatures_is_refused_by_name():
    with pytest.raises(ValueError, match=r"'/m/7' lacks the signatures \['item_representation', "
                                         r"'cross_representation'\]; it has \['serving_default', "
                                         r"'user_representation'\]"):
        signatures.representations_fn(_Loaded([UR, signatures.SERVING_DEFAULT]), "/m/7")
