"""The `distill` mode (ExFM): the upstream's ad prediction of each row attached to the rows, as
the ranker's input and the soft target of its auxiliary head, in the export and the CLI."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common import features, signatures
from common.downstream_requests import example_with_representations
from tests.trainer.downstream.conftest import publish
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream import train as downstream_train
from trainer.downstream.export import export_ranker
from trainer.downstream.ranker import FIELDS, DownstreamRanker
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

P_UP = signatures.UPSTREAM_AD_PREDICTION_FEATURE
DISTILL = downstream_config.DownstreamConfig(mode=downstream_config.DISTILL, embedding_dim=4,
                                             mlp_hidden=(16,))


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
    config = downstream_config.DownstreamConfig(mode=downstream_config.DISTILL)
    # the prediction is no point-in-time representation: no lookup, no found indicator
    assert config.representation_features == config.dense_features == ()
    assert (
        config.prediction_features
        == (P_UP,)
        == downstream_config.MODE_FEATURES[downstream_config.DISTILL]
    )
    assert (
        downstream_config.DISTILL in downstream_config.RANKER_MODES
        and downstream_config.MODES[-1] == downstream_config.RETRIEVAL
    )
    assert (
        downstream_config.DownstreamConfig(mode=downstream_config.LFM4ADS).prediction_features == ()
    )
    with pytest.raises(ValueError, match=r"distill_loss_weight must be >= 0, got -0.5"):
        downstream_config.DownstreamConfig(mode=downstream_config.DISTILL, distill_loss_weight=-0.5)


@pytest.mark.slow
def test_with_upstream_prediction_batches_and_checks(upstream):
    rows = ranker_data.select(upstream.rows["test"], np.arange(10))
    del rows[P_UP]
    sizes = []

    def predict(raw):
        assert set(raw) == set(features.ALL_FEATURES)
        sizes.append(int(raw[features.TIMESTAMP].shape[0]))
        return (raw[features.TIMESTAMP].numpy() % 7 / 10.0)[:, None]  # [batch, 1]

    got = ranker_data.with_upstream_prediction(rows, predict, batch_size=4)
    assert sizes == [4, 4, 2]
    np.testing.assert_allclose(got[P_UP], rows[features.TIMESTAMP] % 7 / 10.0, rtol=1e-6)
    assert got[P_UP].dtype == np.float32 and P_UP not in rows  # `rows` is left as it was
    with pytest.raises(ValueError, match=r"predict gave 3 values for 10 rows"):
        ranker_data.with_upstream_prediction(rows, lambda raw: np.zeros(1), batch_size=4)
    with pytest.raises(ValueError, match=r"predict gave 10 values outside \[0, 1\] \(e.g. 1.5\)"):
        ranker_data.with_upstream_prediction(
            rows, lambda raw: np.full(raw[features.LABEL].shape, 1.5)
        )


@pytest.mark.slow
def test_keras_and_saved_model_predictions_agree(upstream, tmp_path):
    model = LFM4AdsModel(upstream.config)  # untrained: random, so the rows differ
    rows = ranker_data.select(upstream.rows["test"], np.arange(40))
    keras = ranker_data.with_upstream_prediction(rows, ranker_data.keras_ad_prediction_fn(model),
                                                 batch_size=16)
    path = export_saved_model(model, str(tmp_path / "up"), _requests(rows, (), 2), version=2)
    saved = ranker_data.with_upstream_prediction(
        rows, ranker_data.saved_model_ad_prediction_fn(os.path.dirname(path)), batch_size=16)
    np.testing.assert_allclose(saved[P_UP], keras[P_UP], rtol=1e-5, atol=1e-6)
    assert np.std(saved[P_UP]) > 0
    tf.saved_model.save(tf.Module(), str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"has no 'serving_default' signature with the output "
                                         r"'ad_prediction'; it has \[\]"):
        ranker_data.saved_model_ad_prediction_fn(str(tmp_path / "empty"))


@pytest.mark.slow
def test_distill_loss_adds_the_soft_target_term(upstream):
    train = upstream.rows["train"]
    batch = _batch(train)
    label, p_up = batch[features.LABEL].numpy(), batch[P_UP].numpy()
    preprocessor = downstream_train.make_preprocessor(train)
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


@pytest.mark.slow
def test_distill_input_is_the_logit_of_the_prediction(upstream):
    model, fit = downstream_train.train_ranker(
        DISTILL,
        downstream_config.DownstreamTrainConfig(epochs=3, batch_size=64),
        upstream.rows["train"],
    )
    # one input column and the head `h -> 1` beyond `none`
    baseline, _ = downstream_train.train_ranker(
        dataclasses.replace(DISTILL, mode=downstream_config.NONE),
        downstream_config.DownstreamTrainConfig(epochs=1),
        upstream.rows["train"],
    )
    assert fit["trainable_parameters"] - downstream_train.trainable_parameters(baseline) > 16 + 1
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
    start = np.log(upstream.rows["train"][features.LABEL].mean() /
                   (1 - upstream.rows["train"][features.LABEL].mean()))
    assert _bce(p_up, model(batch)["distill_logit"].numpy()) < _bce(
        p_up, np.full_like(p_up, start))
    del batch[P_UP]
    with pytest.raises(ValueError, match=r"mode 'distill' reads the feature "
                                         r"'upstream_ad_prediction'"):
        model(batch)


@pytest.mark.slow
def test_distill_export_reads_the_prediction_from_requests(upstream, tmp_path):
    model, _ = downstream_train.train_ranker(DISTILL,
                                             downstream_config.DownstreamTrainConfig(epochs=1),
                               upstream.rows["train"])
    test = upstream.rows["test"]
    requests = _requests(test, (P_UP,), 16)
    path = export_ranker(model, str(tmp_path / "ranker"), requests[:2], version=1)
    serve = tf.saved_model.load(path).signatures[signatures.SERVING_DEFAULT]
    got = serve(examples=tf.constant(requests))[signatures.DOWNSTREAM_PREDICTION].numpy()[:, 0]
    np.testing.assert_allclose(
        got,
        downstream_train.predict(model, ranker_data.select(test, np.arange(16))),
        rtol=1e-5,
        atol=1e-6,
    )
    # no cold-start default: a request without the prediction is refused, by name
    without = _requests(test, (), 2)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"mode distill reads the feature upstream_ad_prediction .* from "
                             r"every request: one lacks it"):
        serve(examples=tf.constant(without))


@pytest.mark.slow
def test_cli_distill(upstream, tmp_path, capsys):
    tables = publish(upstream.source, str(tmp_path / "publish"), 5,
                     before=upstream.windows["train"][0])
    argv = ["--data", upstream.data, "--upstream", os.path.dirname(upstream.export),
            "--tables", tables, "--mode", downstream_config.DISTILL, "--export_dir",
            str(tmp_path / "ranker"),
            "--epochs", "1", "--embedding_dim", "4", "--json"]
    assert downstream_train.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == downstream_config.DISTILL and result["auc"] is not None
    # the CLI's rows carry the upstream export's prediction, as the fixture's do
    test = ranker_data.select(upstream.rows["test"], np.arange(8))
    serve = tf.saved_model.load(result["export_path"]).signatures[signatures.SERVING_DEFAULT]
    got = serve(examples=tf.constant(_requests(test, (P_UP,), 8)))[signatures.DOWNSTREAM_PREDICTION]
    assert got.shape == (8, 1)
