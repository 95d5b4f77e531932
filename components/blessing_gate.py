"""TFX component: BlessingGate, one `ModelBlessing` from several evaluations of one model.

TFMA compares a candidate with one baseline per evaluation; a model that must be at least as
good as two (the downstream ranker: the `none` baseline of its own run and the last blessed
ranker) gets one Evaluator per baseline, and this gate blesses it only when every one of them
did. An evaluation without a verdict (the Evaluator had no baseline: nothing was blessed
before) holds nothing back. The output has the custom properties the Pusher and
`LatestBlessedModelStrategy` read (`blessed`, `current_model`, `current_model_id`) and
`reasons` (the evaluations that did not bless it).
"""

import json
import os

from tfx import v1 as tfx
from tfx.types import standard_artifacts

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact

BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"


def gate_reasons(model_id: int, evaluations: dict) -> list[str]:
    """Why `evaluations` (`{name: ModelBlessing}`) do not together bless model `model_id`;
    empty when they do (module doc)."""
    reasons = []
    for name, evaluation in evaluations.items():
        if not evaluation.has_custom_property("current_model_id"):
            # The Evaluator gave no verdict: it had no baseline to compare with (no ranker
            # was blessed before), so this comparison holds nothing back.
            continue
        if evaluation.get_int_custom_property("current_model_id") != model_id:
            reasons.append(f"the {name} evaluation is of another model")
        elif not int(evaluation.get_int_custom_property("blessed") or 0):
            reasons.append(f"not blessed by the {name} evaluation ({evaluation.uri})")
    return reasons


@tfx.dsl.components.component
def BlessingGate(  # noqa: N802 (TFX component naming)
    model: _InputArtifact[standard_artifacts.Model],
    first: _InputArtifact[standard_artifacts.ModelBlessing],
    second: _InputArtifact[standard_artifacts.ModelBlessing],
    blessing: _OutputArtifact[standard_artifacts.ModelBlessing],
) -> None:
    """Blessed iff `first` and `second` both blessed `model` (module doc)."""
    reasons = gate_reasons(model.id, {"first": first, "second": second})
    blessed = not reasons
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("reasons", json.dumps(reasons))
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE),
              "w"):
        pass
