"""BlessingGate: one blessing from the ranker's two evaluations."""

from tfx.types import standard_artifacts

from components.blessing_gate import gate_reasons


def _blessing(model_id=None, blessed=None):
    artifact = standard_artifacts.ModelBlessing()
    artifact.uri = "/evaluations/x"
    if model_id is not None:
        artifact.set_int_custom_property("current_model_id", model_id)
    if blessed is not None:
        artifact.set_int_custom_property("blessed", blessed)
    return artifact


def test_both_must_bless_the_same_model():
    assert gate_reasons(7, {"a": _blessing(7, 1), "b": _blessing(7, 1)}) == []
    assert gate_reasons(7, {"a": _blessing(7, 1), "b": _blessing(7, 0)}) == [
        "not blessed by the b evaluation (/evaluations/x)"]
    assert gate_reasons(7, {"a": _blessing(8, 1), "b": _blessing(7, 1)}) == [
        "the a evaluation is of another model"]


def test_an_evaluation_without_a_baseline_holds_nothing_back():
    """The Evaluator writes no verdict when it had nothing to compare with (no ranker was
    blessed before): only the other evaluation decides."""
    assert gate_reasons(7, {"vs none": _blessing(7, 1), "vs last": _blessing()}) == []
    assert gate_reasons(7, {"vs none": _blessing(7, 0), "vs last": _blessing()}) != []
