"""The `distill` mode (ExFM): the upstream's ad prediction of each row attached to the rows, as
the ranker's input and the soft target of its auxiliary head, in the export and the CLI."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.downstream.conftest import publish
from trainer import features as F
from trainer import signatures as S
from trainer.downstream import config as C
from trainer.downstream import data as D
from trainer.downstream import train as DT
from trainer.downstream.export import export_ranker
from trainer.downstream.ranker import FIELDS, DownstreamRanker
from trainer.downstream.requests import example_with_representations
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

P_UP = S.UPSTREAM_AD_PREDICTION_FEATURE
DISTILL = C.DownstreamConfig(mode=C.DISTILL, embedding_dim=4, mlp_hidden=(16,))


def _bce(target: np.ndarray, logit: np.ndarray) -> float:
    """Naive mean binary cross-entropy of soft `target`s against `logit`s."""
    p = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
    return float(np.mean(-(target * np.log(p) + (1.0 - target) * np.log(1.0 - p))))


def _batch(rows, n=64):
    return {k: tf.constant(v[:n]) for k, v in rows.items()}


def _requests(rows, features, n):
    return [example_with_representations(
        {name: rows[name][r] for name in FIELDS},
        {name: rows[name][r] for name in features}) for r in range(n)]


def test_distill_config():
    config = C.DownstreamConfig(mode=C.DISTILL)
    # the prediction is no point-in-time representation: no lookup, no found indicator
    assert config.representation_features == config.dense_features == ()
    assert config.prediction_features == (P_UP,) == C.MODE_FEATURES[C.DISTILL]
    assert C.DISTILL in C.RANKER_MODES and C.MODES[-1] == C.RETRIEVAL
    assert C.DownstreamConfig(mode=C.LFM4ADS).prediction_features == ()
    with pytest.raises(ValueError, match=r"distill_loss_weight must be >= 0, got -0.5"):
        C.DownstreamConfig(mode=C.DISTILL, distill_loss_weight=-0.5)


def test_with_upstream_prediction_batches_and_checks(upstream):
    rows = D.select(upstream.rows["test"], np.arange(10))
    del rows[P_UP]
    sizes = []

    def predict(raw):
        assert set(raw) == set(F.ALL_FEATURES)
        sizes.append(int(raw[F.TIMESTAMP].shape[0]))
        return (raw[F.TIMESTAMP].numpy() % 7 / 10.0)[:, None]  # [batch, 1]

    got = D.with_upstream_prediction(rows, predict, batch_size=4)
    assert sizes == [4, 4, 2]
    np.testing.assert_allclose(got[P_UP], rows[F.TIMESTAMP] % 7 / 10.0, rtol=1e-6)
    assert got[P_UP].dtype == np.float32 and P_UP not in rows  # `rows` is left as it was
    with pytest.raises(ValueError, match=r"predict gave 3 values for 10 rows"):
        D.with_upstream_prediction(rows, lambda raw: np.zeros(1), batch_size=4)
    with pytest.raises(ValueError, match=r"predict gave 10 values outside \[0, 1\] \(e.g. 1.5\)"):
        D.with_upstream_prediction(rows, lambda raw: np.full(raw[F.LABEL].shape, 1.5))


def test_keras_and_saved_model_predictions_agree(upstream, tmp_path):
    model = LFM4AdsModel(upstream.config)  # untrained: random, so the rows differ
    rows = D.select(upstream.rows["test"], np.arange(40))
    keras = D.with_upstream_prediction(rows, D.keras_ad_prediction_fn(model), batch_size=16)
    path = export_saved_model(model, str(tmp_path / "up"), _requests(rows, (), 2), version=2)
    saved = D.with_upstream_prediction(
        rows, D.saved_model_ad_prediction_fn(os.path.dirname(path)), batch_size=16)
    np.testing.assert_allclose(saved[P_UP], keras[P_UP], rtol=1e-5, atol=1e-6)
    assert np.std(saved[P_UP]) > 0
    tf.saved_model.save(tf.Module(), str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"has no 'serving_default' signature with the output "
                                         r"'ad_prediction'; it has \[\]"):
        D.saved_model_ad_prediction_fn(str(tmp_path / "empty"))


def test_distill_loss_adds_the_soft_target_term(upstream):
    train = upstream.rows["train"]
    batch = _batch(train)
    label, p_up = batch[F.LABEL].numpy(), batch[P_UP].numpy()
    preprocessor = DT.make_preprocessor(train)
    logits, losses = [], []
    for weight in (0.0, 2.0):
        tf.keras.utils.set_random_seed(0)
        model = DownstreamRanker(dataclasses.replace(DISTILL, distill_loss_weight=weight),
                                 preprocessor)
        out = model(batch)
        loss = float(model.compute_loss(batch))
        want = _bce(label[:, None], out["logit"].numpy())  # [batch, 1]
        if weight:  # + weight * BCE(p_up, σ(distill_logit)): the upstream's probability
            want += weight * _bce(p_up[:, None], out["distill_logit"].numpy())
        else:
            assert "distill_logit" not in out  # no head without its loss
        assert loss == pytest.approx(want, rel=1e-5)
        np.testing.assert_allclose(out["prediction"], tf.sigmoid(out["logit"]), rtol=1e-6)
        logits.append(out["logit"].numpy())
        losses.append(loss)
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6)  # same main head, seed 0
    assert losses[1] > losses[0]


def test_distill_input_is_the_logit_of_the_prediction(upstream):
    model, fit = DT.train_ranker(DISTILL, C.DownstreamTrainConfig(epochs=3, batch_size=64),
                                 upstream.rows["train"])
    # one input column and the head `h -> 1` beyond `none`
    baseline, _ = DT.train_ranker(dataclasses.replace(DISTILL, mode=C.NONE),
                                  C.DownstreamTrainConfig(epochs=1), upstream.rows["train"])
    assert fit["trainable_parameters"] - DT.trainable_parameters(baseline) > 16 + 1
    batch = _batch(upstream.rows["test"])
    half = {**batch, P_UP: tf.fill(tf.shape(batch[P_UP]), 0.5)}  # logit(0.5) = 0
    masked = model.forward(batch, masked=frozenset({P_UP}))
    np.testing.assert_allclose(masked["logit"], model(half)["logit"], rtol=1e-6)
    assert not np.allclose(model(batch)["logit"], model(half)["logit"])  # the input matters
    # probabilities are clipped to [1e-6, 1 - 1e-6] before the logit
    zero = {**batch, P_UP: tf.zeros_like(batch[P_UP])}
    tiny = {**batch, P_UP: tf.fill(tf.shape(batch[P_UP]), 1e-9)}
    np.testing.assert_allclose(model(zero)["logit"], model(tiny)["logit"], rtol=1e-6)
    # the auxiliary head learned its target: closer to p_up than the constant it started from
    p_up = batch[P_UP].numpy()[:, None]
    start = np.log(upstream.rows["train"][F.LABEL].mean() /
                   (1 - upstream.rows["train"][F.LABEL].mean()))
    assert _bce(p_up, model(batch)["distill_logit"].numpy()) < _bce(
        p_up, np.full_like(p_up, start))
    del batch[P_UP]
    with pytest.raises(ValueError, match=r"mode 'distill' reads the feature "
                                         r"'upstream_ad_prediction'"):
        model(batch)


def test_distill_export_reads_the_prediction_from_requests(upstream, tmp_path):
    model, _ = DT.train_ranker(DISTILL, C.DownstreamTrainConfig(epochs=1),
                               upstream.rows["train"])
    test = upstream.rows["test"]
    requests = _requests(test, (P_UP,), 16)
    path = export_ranker(model, str(tmp_path / "ranker"), requests[:2], version=1)
    serve = tf.saved_model.load(path).signatures[S.SERVING_DEFAULT]
    got = serve(examples=tf.constant(requests))[S.DOWNSTREAM_PREDICTION].numpy()[:, 0]
    np.testing.assert_allclose(got, DT.predict(model, D.select(test, np.arange(16))),
                               rtol=1e-5, atol=1e-6)
    # no cold-start default: a request without the prediction is refused, by name
    without = _requests(test, (), 2)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"mode distill reads the feature upstream_ad_prediction .* from "
                             r"every request: one lacks it"):
        serve(examples=tf.constant(without))


def test_cli_distill(upstream, tmp_path, capsys):
    tables = publish(upstream.source, str(tmp_path / "publish"), 5,
                     before=upstream.windows["train"][0])
    argv = ["--data", upstream.data, "--upstream", os.path.dirname(upstream.export),
            "--tables", tables, "--mode", C.DISTILL, "--export_dir", str(tmp_path / "ranker"),
            "--epochs", "1", "--embedding_dim", "4", "--json"]
    assert DT.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == C.DISTILL and result["auc"] is not None
    # the CLI's rows carry the upstream export's prediction, as the fixture's do
    test = D.select(upstream.rows["test"], np.arange(8))
    serve = tf.saved_model.load(result["export_path"]).signatures[S.SERVING_DEFAULT]
    got = serve(examples=tf.constant(_requests(test, (P_UP,), 8)))[S.DOWNSTREAM_PREDICTION]
    assert got.shape == (8, 1)
