"""The downstream ranker: every mode trains, masking, errors, the served export, the CLI."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from common import features, signatures
from common.downstream_requests import example_with_representations
from tests.trainer.downstream.conftest import DAY, publish
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream import train as downstream_train
from trainer.downstream.export import export_ranker
from trainer.downstream.ranker import FIELDS, DownstreamRanker
from trainer.export import TRAINING_FILE

SMALL = downstream_config.DownstreamConfig(embedding_dim=4, mlp_hidden=(16,), linear_fusion_units=4)
FIVE_EPOCHS = downstream_config.DownstreamTrainConfig(epochs=5, batch_size=64)

pytestmark = pytest.mark.slow  # every test trains rankers on the trained `upstream`


@pytest.mark.parametrize("mode", downstream_config.RANKER_MODES)
def test_every_ranker_mode_trains(upstream, mode):
    config = dataclasses.replace(SMALL, mode=mode)
    train = upstream.rows["train"]
    model, fit = downstream_train.train_ranker(config, FIVE_EPOCHS, train,
                                               upstream_config=upstream.config,
                                 upstream_export=upstream.export)
    # It learns its training rows: better than the constant click rate it starts from
    # (TFRS reports each epoch's last batch loss, too noisy to compare epochs with).
    rate = np.full(ranker_data.size(train), train[features.LABEL].mean())
    assert downstream_train.logloss(
        train[features.LABEL], downstream_train.predict(model, train)
    ) < downstream_train.logloss(train[features.LABEL], rate)
    assert fit["epochs"] == fit["best_epoch"] == 5  # no validation rows: no early stopping
    scores = downstream_train.predict(model, upstream.rows["test"])
    assert scores.shape == (ranker_data.size(upstream.rows["test"]),)
    assert np.all((scores > 0) & (scores < 1))
    metrics = downstream_train.evaluate(upstream.rows["test"], scores)
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["logloss"] > 0


def test_early_stopping_keeps_the_best_validation_epoch(upstream):
    model, fit = downstream_train.train_ranker(
        dataclasses.replace(SMALL, mode=downstream_config.UR),
        downstream_config.DownstreamTrainConfig(epochs=4, patience=1, batch_size=64),
        upstream.rows["train"],
        upstream.rows["validation"],
    )
    history = model.history.history["val_auc"]  # exact AUCs (ExactValidationAUC)
    assert fit["best_epoch"] == int(np.argmax(history)) + 1 <= fit["epochs"] <= 4
    got = downstream_train.evaluate(
        upstream.rows["validation"], downstream_train.predict(model, upstream.rows["validation"])
    )
    assert got["auc"] == pytest.approx(max(history), abs=1e-6)  # the best weights are back
    # the label prior: an untrained ranker starts at the training click rate
    rate = float(upstream.rows["train"][features.LABEL].mean())
    fresh = DownstreamRanker(dataclasses.replace(SMALL, mode=downstream_config.NONE),
                             downstream_train.make_preprocessor(upstream.rows["train"]),
                             label_prior=rate)
    start = downstream_train.predict(fresh, upstream.rows["test"])
    assert abs(float(np.median(start)) - rate) < 0.02


def _batch(rows, n=64):
    return {k: tf.constant(v[:n]) for k, v in rows.items()}


def test_masking_zeroes_the_inputs(upstream):
    config = dataclasses.replace(SMALL, mode=downstream_config.LFM4ADS)
    model, _ = downstream_train.train_ranker(config,
                                             downstream_config.DownstreamTrainConfig(epochs=1),
                                             upstream.rows["train"])
    batch = _batch(upstream.rows["test"])
    zeroed = dict(batch)
    for name in (signatures.UR_FEATURE, signatures.CR_USER_FEATURE):
        zeroed[name] = tf.zeros_like(batch[name])
        zeroed[signatures.found_feature(name)] = tf.zeros_like(
            batch[signatures.found_feature(name)]
        )
    masked = model.forward(batch, masked=frozenset({signatures.UR_FEATURE,
                                                    signatures.CR_USER_FEATURE}))
    np.testing.assert_allclose(masked["logit"], model(zeroed)["logit"], rtol=1e-6)
    assert not np.allclose(masked["logit"], model(batch)["logit"])  # the inputs matter
    # masking a field zeroes its embedding: the same as an untrained (zero) id row
    with pytest.raises(ValueError, match=r"cannot mask \['nope'\]"):
        model.forward(batch, masked=frozenset({"nope"}))


def test_ranker_errors(upstream):
    preprocessor = downstream_train.make_preprocessor(upstream.rows["train"])
    with pytest.raises(ValueError, match=r"reads the representation features \['ur', 'ir', "
                                         r"'cr_user', 'cr_item'\]"):
        DownstreamRanker(dataclasses.replace(SMALL, mode=downstream_config.LFM4ADS), preprocessor,
                         {})
    with pytest.raises(ValueError, match="needs the upstream's ModelConfig"):
        DownstreamRanker(dataclasses.replace(SMALL, mode=downstream_config.IIM), preprocessor,
                         {signatures.UR_FEATURE: 8, signatures.IR_FEATURE: 8})
    with pytest.raises(ValueError, match="mode 'retrieval' is a model of its own"):
        DownstreamRanker(dataclasses.replace(SMALL, mode=downstream_config.RETRIEVAL), preprocessor,
                         {})
    with pytest.raises(ValueError, match="mode must be one of"):
        downstream_config.DownstreamConfig(mode="sum")
    with pytest.raises(ValueError, match="use_ur_ir=False applies to the modes"):
        downstream_config.DownstreamConfig(mode=downstream_config.IIM, use_ur_ir=False)


def _requests(rows, features, n):
    return [example_with_representations(
        {name: rows[name][r] for name in FIELDS},
        {name: rows[name][r] for name in features}) for r in range(n)]


def test_export_serves_the_model_with_representations_from_requests(upstream, tmp_path):
    config = dataclasses.replace(SMALL, mode=downstream_config.LFM4ADS)
    model, _ = downstream_train.train_ranker(config,
                                             downstream_config.DownstreamTrainConfig(epochs=1),
                                             upstream.rows["train"])
    test = upstream.rows["test"]
    features = [f for name in config.representation_features
                for f in (name, signatures.found_feature(name))]
    requests = _requests(test, features, 32)
    path = export_ranker(model, str(tmp_path / "ranker"), requests[:4], version=3)
    assert os.path.exists(os.path.join(path, "assets.extra", signatures.WARMUP_FILE))
    serve = tf.saved_model.load(path).signatures[signatures.SERVING_DEFAULT]
    got = serve(examples=tf.constant(requests))[signatures.DOWNSTREAM_PREDICTION].numpy()[:, 0]
    want = downstream_train.predict(model, ranker_data.select(test, np.arange(32)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # A request without CR(u) is a cold start: zeros and found 0.
    cold = ranker_data.select(test, np.arange(4))
    cold[signatures.CR_USER_FEATURE] = np.zeros_like(cold[signatures.CR_USER_FEATURE])
    cold[signatures.found_feature(signatures.CR_USER_FEATURE)] = np.zeros(4, np.float32)
    without = _requests(test, [f for f in features if not f.startswith(signatures.CR_USER_FEATURE)],
                        4)
    np.testing.assert_allclose(
        serve(examples=tf.constant(without))[signatures.DOWNSTREAM_PREDICTION].numpy()[:, 0],
        downstream_train.predict(model, cold), rtol=1e-5, atol=1e-6)

    wrong = tf.train.Example.FromString(requests[0])
    wrong.features.feature[signatures.CR_USER_FEATURE].float_list.value.append(1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cr_user"):
        serve(examples=tf.constant([wrong.SerializeToString()]))


def test_export_over_grpc(upstream, tmp_path):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.model_server import ModelServer

    model, _ = downstream_train.train_ranker(dataclasses.replace(SMALL, mode=downstream_config.UR),
                               downstream_config.DownstreamTrainConfig(epochs=1),
                                             upstream.rows["train"])
    test = upstream.rows["test"]
    requests = _requests(test, [signatures.UR_FEATURE,
                                signatures.found_feature(signatures.UR_FEATURE)], 16)
    export_ranker(model, str(tmp_path / "ranker"), requests[:2], version=1)
    with ModelServer(model_name="ranker", model_base_path=str(tmp_path / "ranker"), port=0,
                     rest_api_port=None) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "ranker"
            request.inputs[signatures.INPUT_KEY].CopyFrom(tf.make_tensor_proto(requests, tf.string))
            response = stub.Predict(request, timeout=30)
    got = tf.make_ndarray(response.outputs[signatures.DOWNSTREAM_PREDICTION])[:, 0]
    np.testing.assert_allclose(
        got,
        downstream_train.predict(model, ranker_data.select(test, np.arange(16))),
        rtol=1e-5,
        atol=1e-6,
    )


def test_cli_trains_evaluates_and_exports(upstream, tmp_path, capsys):
    train_start = upstream.windows["train"][0]
    tables = publish(upstream.source, str(tmp_path / "publish"), 5, before=train_start)
    out = tmp_path / "ranker"
    argv = ["--data", upstream.data, "--upstream", os.path.dirname(upstream.export),
            "--tables", tables, "--mode", downstream_config.LFM4ADS, "--export_dir", str(out),
            "--epochs", "2",
            "--embedding_dim", "4", "--json"]
    assert downstream_train.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("auc", "gauc", "logloss", "auc_cold_start", "expected_auc"):
        assert key in result
    assert result["expected_auc"] is not None  # the synthetic oracle is there
    assert result["train_rows"] > 0 and result["rows"] > 0
    # the tables end before day 4, so the downstream trains from their newest row on
    assert result["windows"]["train"][0] <= train_start
    assert os.path.exists(os.path.join(result["export_path"], "saved_model.pb"))

    argv_retrieval = argv[:6] + ["--mode", downstream_config.RETRIEVAL, "--export_dir",
                                 str(tmp_path / "ret"),
                                 "--epochs", "2", "--top_k", "5", "--json"]
    assert downstream_train.main(argv_retrieval) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["logloss"] is None and result["recall_at_10"] is not None
    served = tf.saved_model.load(result["export_path"]).signatures[signatures.SERVING_DEFAULT]
    assert set(served.structured_outputs) == {signatures.TOP_K_IDS, signatures.TOP_K_SCORES}

    other = publish(upstream.source, str(tmp_path / "other"), 9, before=train_start)
    assert downstream_train.main(argv[:4] + ["--tables", other, "--mode", "ur"]) == 2
    assert "the tables" in capsys.readouterr().err
    assert downstream_train.main(["--data", upstream.data, "--upstream", upstream.export]) == 2
    assert "give --tables" in capsys.readouterr().err

    # An upstream whose training data reach into the downstream window is refused.
    leaky = tmp_path / "leaky" / "5"
    shutil.copytree(upstream.export, leaky)
    (leaky / "assets.extra" / TRAINING_FILE).write_text(json.dumps({"train_end": 2**40}))
    assert downstream_train.main(["--data", upstream.data, "--upstream", str(leaky),
                    "--downstream_days", "1"]) == 2
    assert "it has seen the downstream rows" in capsys.readouterr().err


def test_cli_daily_protocol_scores_each_row_with_an_earlier_version(upstream, tmp_path,
                                                                     capsys):
    """`--upstream_protocol daily`: versions trained up to days 3, 3.5 and 5; the ranker trains
    from where the oldest version's data end, the modes that load the upstream read the newest
    version trained before the validation window, and a version that cannot say what it
    trained on is refused."""
    lo = upstream.windows["train"][0] - 3 * DAY
    base = tmp_path / "daily"
    for version, day in ((1, 3), (2, 3.5), (3, 5)):
        shutil.copytree(upstream.export, base / str(version))
        (base / str(version) / "assets.extra" / TRAINING_FILE).write_text(
            json.dumps({"train_end": lo + int(day * DAY)}))
    argv = ["--data", upstream.data, "--upstream", str(base), "--upstream_protocol", "daily",
            "--mode", downstream_config.DISTILL, "--epochs", "1", "--embedding_dim", "4", "--json"]
    assert downstream_train.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["upstream_protocol"] == "daily" and result["auc"] is not None
    assert result["windows"]["train"][0] == lo + 3 * DAY  # the oldest version's train_end
    # the newest version trained before the validation window (the last day but one)
    assert result["windows"]["validation"][0] < lo + 5 * DAY
    assert result["upstream"] == str(base / "2")
    assert downstream_train.main(argv + ["--tables", str(tmp_path)]) == 2
    assert "leave --tables out" in capsys.readouterr().err
    (base / "1" / "assets.extra" / TRAINING_FILE).unlink()
    assert downstream_train.main(argv) == 2
    assert "does not record the end of the data" in capsys.readouterr().err


def test_point_in_time_rows_never_see_their_own_time(upstream):
    """Every representation a downstream row carries was written strictly before the row."""
    rows = upstream.rows["test"]
    checks = {signatures.UR_FEATURE: ("user", features.USER_ID),
              signatures.CR_ITEM_FEATURE: ("cross_item", features.ITEM_ID)}
    for feature, (table, side) in checks.items():
        looked = upstream.source.lookup(table, rows[side], rows[features.TIMESTAMP])
        assert np.all(looked.updated_at[looked.found] < rows[features.TIMESTAMP][looked.found])
        np.testing.assert_array_equal(looked.vectors, rows[feature])
    assert (
        rows[signatures.found_feature(signatures.IR_FEATURE)].min() == 0
    )  # some items are new that day
