"""TFX component: BlessingGate, the downstream ranker's `ModelBlessing` from paired comparisons.

The candidate ranker (`model`) and each baseline score the same rows, the eval split of
`examples` (which no model trained on); `trainer.paired_comparison` resamples the eval users
and says, per baseline, `better`, `worse` or `inconclusive`, with the smallest difference the
eval split could resolve (`detectable_effect`). The baselines:

- `baseline_model`: the same ranker without representations (`none`), trained in the same run
  on the same rows: do the representations help at all?
- `last_blessed_model`: the ranker this gate blessed last, i.e. the one that is live (the
  resolver gives none before the first blessing): is the candidate worth replacing it?

The policy, per comparison (`objection`), and the candidate is blessed when neither objects:

    baseline          better    inconclusive          worse         (no baseline)
    none ranker       -         -                     not pushed    -
    last blessed      -         the live one stays    not pushed    - (nothing live: push)

`worse` means the interval lies below `-tolerance`. So the first ranker is pushed unless it is
shown worse than the ranker without representations; a later one only when it is shown better
than the live one and not worse than `none`. Too few eval clicks to measure (`min_clicks`)
count as inconclusive: the first ranker is pushed, a live one stays.

The output has the custom properties the Pusher and `LatestBlessedModelStrategy` read
(`blessed`, `current_model`, `current_model_id`), `reasons` (the objections), and per
comparison `<vs>_comparison`, `<vs>_delta`, `<vs>_delta_stderr`, `<vs>_delta_low`,
`<vs>_delta_high`, `<vs>_detectable_effect`, `<vs>_reference_auc` (`<vs>`: `vs_none`,
`vs_last_blessed`), with `candidate_auc`, `eval_rows`, `eval_clicks`, `eval_users`,
`min_clicks`, `tolerance` and `last_blessed_model_id` (0: none); `comparisons.json` in it has
the same.
"""

import glob
import json
import os

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

from common import features, signatures
from trainer import paired_comparison

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"
COMPARISONS_FILE = "comparisons.json"
VS_NONE, VS_LAST_BLESSED = "vs_none", "vs_last_blessed"
_BASELINE_WORDS = {VS_NONE: "the ranker without representations",
                   VS_LAST_BLESSED: "the last blessed ranker"}
_BATCH = 1024


def objection(baseline: str, comparison: str | None) -> str | None:
    """Why the policy (module doc) does not push the candidate after this comparison with
    `baseline` (`vs_none` or `vs_last_blessed`; `comparison` None: no such baseline), or None
    when it has no objection."""
    if baseline not in _BASELINE_WORDS:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of "
                         f"{list(_BASELINE_WORDS)}")
    if comparison is not None and comparison not in paired_comparison.VERDICTS:
        raise ValueError(
            f"unknown verdict {comparison!r}; expected one of {paired_comparison.VERDICTS}"
        )
    if comparison == paired_comparison.WORSE:
        return f"worse than {_BASELINE_WORDS[baseline]}: not pushed"
    if baseline == VS_LAST_BLESSED and comparison == paired_comparison.INCONCLUSIVE:
        return "not shown better than the last blessed ranker: the live ranker stays"
    return None


def judge(users: np.ndarray, labels: np.ndarray, candidate: np.ndarray,
          baselines: dict[str, np.ndarray | None], tolerance: float = 0.0,
          resamples: int = paired_comparison.RESAMPLES, seed: int = 0,
          min_clicks: int = paired_comparison.MIN_CLICKS) -> dict:
    """The gate on scores (module doc): the candidate's `[rows]` scores against each baseline's
    (`{vs_none | vs_last_blessed: [rows] scores, or None when there is no such model}`).

    Returns `blessed`, `reasons` (the objections) and
    `comparisons` (`{baseline: Comparison.as_dict() + objection}`, present baselines only).
    """
    out = {"blessed": True, "reasons": [], "comparisons": {}}
    for name, scores in baselines.items():
        if scores is None:
            objection(name, None)  # checks the name; no baseline objects to nothing
            continue
        c = paired_comparison.paired_comparison(users, labels, candidate, scores,
                                                tolerance=tolerance,
                                 resamples=resamples, seed=seed, min_clicks=min_clicks)
        fields = c.as_dict()
        fields["objection"] = objection(name, c.verdict)
        out["comparisons"][name] = fields
        if fields["objection"]:
            out["blessed"] = False
            out["reasons"].append(fields["objection"])
    return out


def split_records(examples, split: str = "eval") -> list[bytes]:
    """The serialized tf.Examples of `split` of an `Examples` artifact."""
    files = sorted(glob.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
    if not files:
        raise FileNotFoundError(f"no files in the {split!r} split of {examples.uri}")
    return [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP")]


def predictions(model_dir: str, records: list[bytes]) -> np.ndarray:
    """`[rows]` the ranker's click probability (`serving_default`'s `prediction`) of each
    serialized tf.Example, the SavedModel at `model_dir` called as it is served."""
    predict = tf.saved_model.load(model_dir).signatures[signatures.SERVING_DEFAULT]
    out = [
        predict(**{signatures.INPUT_KEY: tf.constant(records[i : i + _BATCH])})[
            signatures.DOWNSTREAM_PREDICTION
        ]
        .numpy()
        .reshape(-1)
        for i in range(0, len(records), _BATCH)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _record(blessing, model, result: dict, last_blessed_id: int, settings: dict) -> None:
    blessing.set_int_custom_property("blessed", int(result["blessed"]))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("reasons", json.dumps(result["reasons"]))
    blessing.set_int_custom_property("last_blessed_model_id", last_blessed_id)
    for name, value in settings.items():
        if isinstance(value, float):
            blessing.set_float_custom_property(name, value)
        else:
            blessing.set_int_custom_property(name, int(value))
    first = next(iter(result["comparisons"].values()), None)
    if first is not None and first["candidate_auc"] is not None:
        blessing.set_float_custom_property("candidate_auc", float(first["candidate_auc"]))
    for vs, c in result["comparisons"].items():
        blessing.set_string_custom_property(f"{vs}_comparison", c["verdict"])
        for key, name in (("delta", "delta"), ("stderr", "delta_stderr"), ("low", "delta_low"),
                          ("high", "delta_high"), ("detectable_effect", "detectable_effect"),
                          ("reference_auc", "reference_auc")):
            if c[key] is not None:
                blessing.set_float_custom_property(f"{vs}_{name}", float(c[key]))
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, BLESSED_FILE if result["blessed"] else NOT_BLESSED_FILE),
              "w"):
        pass
    with open(os.path.join(blessing.uri, COMPARISONS_FILE), "w") as f:
        json.dump({**result, "last_blessed_model_id": last_blessed_id, **settings}, f, indent=1)


@tfx.dsl.components.component
def BlessingGate(  # noqa: N802 (TFX component naming)
    model: _InputArtifact[standard_artifacts.Model],
    examples: _InputArtifact[standard_artifacts.Examples],
    baseline_model: _InputArtifact[standard_artifacts.Model],
    blessing: _OutputArtifact[standard_artifacts.ModelBlessing],
    last_blessed_model: _InputArtifact[standard_artifacts.Model] = None,
    tolerance: _Parameter[float] = 0.0,
    resamples: _Parameter[int] = paired_comparison.RESAMPLES,
    min_clicks: _Parameter[int] = paired_comparison.MIN_CLICKS,
    seed: _Parameter[int] = 0,
) -> None:
    """Blesses `model` when neither baseline objects (module doc); `examples`' eval split is
    the test rows."""
    records = split_records(examples)
    parsed = features.parse_examples(tf.constant(records), (features.USER_ID, features.LABEL))
    users, labels = parsed[features.USER_ID].numpy(), parsed[features.LABEL].numpy()
    candidate = predictions(path_utils.serving_model_path(model.uri), records)
    baselines = {VS_NONE: predictions(path_utils.serving_model_path(baseline_model.uri),
                                      records),
                 VS_LAST_BLESSED: None if last_blessed_model is None else predictions(
                     path_utils.serving_model_path(last_blessed_model.uri), records)}
    result = judge(users, labels, candidate, baselines, tolerance=float(tolerance),
                   resamples=int(resamples), seed=int(seed), min_clicks=int(min_clicks))
    settings = {"eval_rows": len(records), "eval_clicks": int(labels.sum()),
                "eval_users": len(set(users.tolist())), "min_clicks": int(min_clicks),
                "tolerance": float(tolerance)}
    _record(blessing, model, result,
            0 if last_blessed_model is None else int(last_blessed_model.id), settings)
