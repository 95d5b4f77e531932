"""BlessingGate: the downstream ranker's blessing from paired comparisons with the `none`
ranker and the last blessed one, and its policy per verdict."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts

from components import blessing_gate as G
from trainer import features as F
from trainer import paired_comparison as PC
from trainer import signatures as S

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
    assert [G.objection(G.VS_NONE, v) for v in (*PC.VERDICTS, None)] == [
        None, "worse than the ranker without representations: not pushed", None, None]
    assert [G.objection(G.VS_LAST_BLESSED, v) for v in (*PC.VERDICTS, None)] == [
        None, "worse than the last blessed ranker: not pushed",
        "not shown better than the last blessed ranker: the live ranker stays", None]
    with pytest.raises(ValueError, match="unknown baseline 'vs_other'"):
        G.objection("vs_other", PC.BETTER)
    with pytest.raises(ValueError, match="unknown verdict 'fine'"):
        G.objection(G.VS_NONE, "fine")


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
    out = G.judge(users, labels, scores[candidate],
                  {G.VS_NONE: scores[none], G.VS_LAST_BLESSED: None if last is None
                   else scores[last]}, resamples=300)
    assert out["blessed"] == blessed, out
    assert set(out["comparisons"]) == ({G.VS_NONE} if last is None
                                       else {G.VS_NONE, G.VS_LAST_BLESSED})
    if why is None:
        assert out["reasons"] == []
    else:
        assert len(out["reasons"]) == 1 and why in out["reasons"][0]
    expected = {"good": {"poor": PC.BETTER, "twin": PC.INCONCLUSIVE},
                "poor": {"good": PC.WORSE, "poor": PC.INCONCLUSIVE}}[candidate]
    assert out["comparisons"][G.VS_NONE]["verdict"] == expected[none]


def test_tolerance_and_too_few_clicks():
    users, labels, scores = _scores()
    lenient = G.judge(users, labels, scores["poor"], {G.VS_NONE: scores["good"]},
                      tolerance=0.5, resamples=300)
    assert lenient["blessed"] and lenient["comparisons"][G.VS_NONE]["verdict"] == \
        PC.INCONCLUSIVE
    few = np.zeros(ROWS, np.int64)
    few[:5] = 1
    first = G.judge(users, few, scores["good"], {G.VS_NONE: scores["poor"],
                                                 G.VS_LAST_BLESSED: None})
    assert first["blessed"]  # nothing measured, nothing live: pushed
    later = G.judge(users, few, scores["good"], {G.VS_NONE: scores["poor"],
                                                 G.VS_LAST_BLESSED: scores["poor"]})
    assert not later["blessed"] and "the live ranker stays" in later["reasons"][0]
    assert PC.describe(later["comparisons"][G.VS_LAST_BLESSED]) == (
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
        return {S.DOWNSTREAM_PREDICTION: tf.sigmoid(x[self._feature])}


def _model(root, name: str, feature: str, artifact_id: int):
    model = standard_artifacts.Model()
    model.uri = str(root / name)
    model.id = artifact_id
    scorer = _Scorer(feature)
    tf.saved_model.save(scorer, os.path.join(model.uri, "Format-Serving"),
                        signatures={S.SERVING_DEFAULT: scorer.serve})
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
            feature = {F.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(
                           value=[b"u%d" % users[r]])),
                       F.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(
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
    G.BlessingGate.EXECUTOR_SPEC.executor_class().Do(inputs, {"blessing": [blessing]},
                                                     {"resamples": 300, **params})
    return blessing


def test_the_component_scores_the_eval_split_with_each_saved_model(artifacts):
    root, examples, models, (users, labels, scores) = artifacts
    first = _run_gate(root, examples, models["good"], models["poor"], name="first")
    assert first.get_int_custom_property("blessed") == 1
    assert first.get_int_custom_property("current_model_id") == models["good"].id
    assert first.get_string_custom_property("current_model") == models["good"].uri
    assert first.get_int_custom_property("last_blessed_model_id") == 0
    assert first.get_string_custom_property("vs_none_comparison") == PC.BETTER
    assert not first.has_custom_property("vs_last_blessed_comparison")
    # The served predictions are sigmoids of the features: the AUCs are the features' AUCs.
    expected = PC.paired_comparison(users, labels, scores["good"], scores["poor"],
                                    resamples=300)
    assert first.get_float_custom_property("vs_none_delta") == pytest.approx(expected.delta,
                                                                           abs=1e-5)
    assert first.get_float_custom_property("candidate_auc") == pytest.approx(
        expected.candidate_auc, abs=1e-5)
    assert (first.get_int_custom_property("eval_rows"),
            first.get_int_custom_property("eval_clicks"),
            first.get_int_custom_property("eval_users")) == (ROWS, labels.sum(),
                                                             len(set(users)))
    assert os.path.exists(os.path.join(first.uri, G.BLESSED_FILE))
    with open(os.path.join(first.uri, G.COMPARISONS_FILE)) as f:
        assert json.load(f)["comparisons"][G.VS_NONE]["verdict"] == PC.BETTER
    # A ranker is live now ("twin", as good as the candidate): inconclusive keeps it.
    later = _run_gate(root, examples, models["good"], models["poor"], models["twin"],
                      name="later")
    assert later.get_int_custom_property("blessed") == 0
    assert later.get_int_custom_property("last_blessed_model_id") == models["twin"].id
    assert later.get_string_custom_property("vs_last_blessed_comparison") == PC.INCONCLUSIVE
    assert later.get_float_custom_property("vs_last_blessed_detectable_effect") > abs(
        later.get_float_custom_property("vs_last_blessed_delta"))
    assert "the live ranker stays" in json.loads(later.get_string_custom_property("reasons"))[0]
    assert os.path.exists(os.path.join(later.uri, G.NOT_BLESSED_FILE))


def test_an_empty_eval_split_is_named(artifacts, tmp_path):
    root, _, models, _ = artifacts
    empty = standard_artifacts.Examples()
    empty.uri = str(tmp_path / "empty")
    empty.split_names = artifact_utils.encode_split_names(["train", "eval"])
    with pytest.raises(FileNotFoundError, match="no files in the 'eval' split"):
        _run_gate(tmp_path, empty, models["good"], models["poor"])
