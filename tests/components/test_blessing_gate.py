"""BlessingGate: the downstream ranker's blessing from paired comparisons with the `none`
ranker and the last blessed one, and its policy per verdict."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts

from common import features, signatures
from components import blessing_gate
from trainer import paired_comparison

ROWS, USERS = 3000, 400


def _scores(seed=0):
    """Eval rows whose clicks follow a signal; scorers see it with little or much noise
    (`twin`: as little as `good`, independently; `noise`: not at all)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, USERS, ROWS)
    signal = rng.normal(size=ROWS)
    labels = (rng.random(ROWS) < 0.1 * np.exp(signal - 0.5)).astype(np.int64)
    scores = {"good": signal + 0.5 * rng.normal(size=ROWS),
              "twin": signal + 0.5 * rng.normal(size=ROWS),
              "poor": signal + 3.0 * rng.normal(size=ROWS),
              "noise": rng.normal(size=ROWS)}
    return users, labels, scores


def test_the_policy_per_comparison():
    assert [
        blessing_gate.objection(blessing_gate.VS_NONE, v)
        for v in (*paired_comparison.VERDICTS, None)
    ] == [None, "worse than the ranker without representations: not pushed", None, None]
    assert [blessing_gate.objection(blessing_gate.VS_LAST_BLESSED, v)
            for v in (*paired_comparison.VERDICTS, None)] == [
        None, "worse than the last blessed ranker: not pushed",
        "not shown better than the last blessed ranker: the live ranker stays", None]
    with pytest.raises(ValueError, match="unknown baseline 'vs_other'"):
        blessing_gate.objection("vs_other", paired_comparison.BETTER)
    with pytest.raises(ValueError, match="unknown verdict 'fine'"):
        blessing_gate.objection(blessing_gate.VS_NONE, "fine")


@pytest.mark.parametrize("candidate, none, last, blessed, why", [
    # No ranker live yet: pushed unless worse than the ranker without representations.
    ("good", "poor", None, True, None),  # better than none
    ("good", "twin", None, True, None),  # inconclusive against none
    ("poor", "good", None, False, "worse than the ranker without representations"),
    # A ranker live: pushed only when better than it (and not worse than none).
    ("good", "twin", "poor", True, None),
    ("good", "poor", "twin", False, "the live ranker stays"),
    ("poor", "poor", "good", False, "worse than the last blessed ranker"),
    ("poor", "good", "noise", False, "worse than the ranker without representations"),
])
def test_judge_per_verdict(candidate, none, last, blessed, why):
    users, labels, scores = _scores()
    out = blessing_gate.judge(users, labels, scores[candidate],
                  {blessing_gate.VS_NONE: scores[none], blessing_gate.VS_LAST_BLESSED: None
                   if last is None
                   else scores[last]}, resamples=300)
    assert out["blessed"] == blessed, out
    assert set(out["comparisons"]) == ({blessing_gate.VS_NONE} if last is None
                                       else {blessing_gate.VS_NONE, blessing_gate.VS_LAST_BLESSED})
    if why is None:
        assert out["reasons"] == []
    else:
        assert len(out["reasons"]) == 1 and why in out["reasons"][0]
    expected = {"good": {"poor": paired_comparison.BETTER, "twin": paired_comparison.INCONCLUSIVE},
                "poor": {"good": paired_comparison.WORSE,
                         "poor": paired_comparison.INCONCLUSIVE}}[candidate]
    assert out["comparisons"][blessing_gate.VS_NONE]["verdict"] == expected[none]


def test_tolerance_and_too_few_clicks():
    users, labels, scores = _scores()
    lenient = blessing_gate.judge(users, labels, scores["poor"],
                                  {blessing_gate.VS_NONE: scores["good"]},
                      tolerance=0.5, resamples=300)
    assert lenient["blessed"] and lenient["comparisons"][blessing_gate.VS_NONE]["verdict"] == \
        paired_comparison.INCONCLUSIVE
    few = np.zeros(ROWS, np.int64)
    few[:5] = 1
    first = blessing_gate.judge(users, few, scores["good"], {blessing_gate.VS_NONE: scores["poor"],
                                                 blessing_gate.VS_LAST_BLESSED: None})
    assert first["blessed"]  # nothing measured, nothing live: pushed
    later = blessing_gate.judge(users, few, scores["good"], {blessing_gate.VS_NONE: scores["poor"],
                                                 blessing_gate.VS_LAST_BLESSED: scores["poor"]})
    assert not later["blessed"] and "the live ranker stays" in later["reasons"][0]
    assert paired_comparison.describe(later["comparisons"][blessing_gate.VS_LAST_BLESSED]) == (
        "inconclusive: 5 test clicks, too few to compare AUCs (at least 20 needed)")


class _Scorer(tf.Module):
    """A served ranker: `serving_default(examples)` -> `prediction` [batch, 1], the sigmoid of
    one float feature of each example."""

    def __init__(self, feature: str):
        super().__init__()
        self._feature = feature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, examples):
        x = tf.io.parse_example(examples, {self._feature: tf.io.FixedLenFeature([1], tf.float32)})
        return {signatures.DOWNSTREAM_PREDICTION: tf.sigmoid(x[self._feature])}


def _model(root, name: str, feature: str, artifact_id: int):
    model = standard_artifacts.Model()
    model.uri = str(root / name)
    model.id = artifact_id
    scorer = _Scorer(feature)
    tf.saved_model.save(scorer, os.path.join(model.uri, "Format-Serving"),
                        signatures={signatures.SERVING_DEFAULT: scorer.serve})
    return model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    users, labels, scores = _scores()
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    os.makedirs(os.path.join(examples.uri, "Split-eval"))
    with tf.io.TFRecordWriter(os.path.join(examples.uri, "Split-eval", "data.tfrecord.gz"),
                              "GZIP") as writer:
        for r in range(ROWS):
            feature = {features.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(
                           value=[b"u%d" % users[r]])),
                       features.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(
                           value=[labels[r]]))}
            for name, s in scores.items():
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[s[r]]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                         .SerializeToString())
    models = {name: _model(root, name, name, i + 1) for i, name in enumerate(scores)}
    return root, examples, models, (users, labels, scores)


def _run_gate(root, examples, candidate, baseline, last=None, name="blessing", **params):
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(root / name)
    inputs = {"model": [candidate], "examples": [examples], "baseline_model": [baseline]}
    if last is not None:
        inputs["last_blessed_model"] = [last]
    blessing_gate.BlessingGate.EXECUTOR_SPEC.executor_class().Do(inputs, {"blessing": [blessing]},
                                                     {"resamples": 300, **params})
    return blessing


def test_the_component_scores_the_eval_split_with_each_saved_model(artifacts):
    root, examples, models, (users, labels, scores) = artifacts
    first = _run_gate(root, examples, models["good"], models["poor"], name="first")
    assert first.get_int_custom_property("blessed") == 1
    assert first.get_int_custom_property("current_model_id") == models["good"].id
    assert first.get_string_custom_property("current_model") == models["good"].uri
    assert first.get_int_custom_property("last_blessed_model_id") == 0
    assert first.get_string_custom_property("vs_none_comparison") == paired_comparison.BETTER
    assert not first.has_custom_property("vs_last_blessed_comparison")
    # The served predictions are sigmoids of the features: the AUCs are the features' AUCs.
    expected = paired_comparison.paired_comparison(users, labels, scores["good"], scores["poor"],
                                    resamples=300)
    assert first.get_float_custom_property("vs_none_delta") == pytest.approx(expected.delta,
                                                                           abs=1e-5)
    assert first.get_float_custom_property("candidate_auc") == pytest.approx(
        expected.candidate_auc, abs=1e-5)
    assert (first.get_int_custom_property("eval_rows"),
            first.get_int_custom_property("eval_clicks"),
            first.get_int_custom_property("eval_users")) == (ROWS, labels.sum(),
                                                             len(set(users)))
    assert os.path.exists(os.path.join(first.uri, blessing_gate.BLESSED_FILE))
    with open(os.path.join(first.uri, blessing_gate.COMPARISONS_FILE)) as f:
        assert (
            json.load(f)["comparisons"][blessing_gate.VS_NONE]["verdict"]
            == paired_comparison.BETTER
        )
    # A ranker is live now ("twin", as good as the candidate): inconclusive keeps it.
    later = _run_gate(root, examples, models["good"], models["poor"], models["twin"],
                      name="later")
    assert later.get_int_custom_property("blessed") == 0
    assert later.get_int_custom_property("last_blessed_model_id") == models["twin"].id
    assert (
        later.get_string_custom_property("vs_last_blessed_comparison")
        == paired_comparison.INCONCLUSIVE
    )
    assert later.get_float_custom_property("vs_last_blessed_detectable_effect") > abs(
        later.get_float_custom_property("vs_last_blessed_delta"))
    assert "the live ranker stays" in json.loads(later.get_string_custom_property("reasons"))[0]
    assert os.path.exists(os.path.join(later.uri, blessing_gate.NOT_BLESSED_FILE))


def test_an_empty_eval_split_is_named(artifacts, tmp_path):
    root, _, models, _ = artifacts
    empty = standard_artifacts.Examples()
    empty.uri = str(tmp_path / "empty")
    empty.split_names = artifact_utils.encode_split_names(["train", "eval"])
    with pytest.raises(FileNotFoundError, match="no files in the 'eval' split"):
        _run_gate(tmp_path, empty, models["good"], models["poor"])
