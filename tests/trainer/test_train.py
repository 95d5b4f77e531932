"""`python -m trainer.train` end to end on small synthetic data."""

import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from common import signatures
from trainer import data_input


@pytest.mark.slow
def test_cli_trains_evaluates_and_exports(small_data, tmp_path):
    export_dir = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--data", small_data,
         "--export_dir", str(export_dir), "--epochs", "2", "--batch_size", "256", "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A quiet console (common.console): no traceback, not even TensorFlow's at interpreter
    # exit, and no library log line (TensorFlow's C++ "2026-... W tensorflow/..." lines).
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, \
        proc.stderr[-3000:]
    native = re.findall(r"^\d{4}-\d\d-\d\d [\d:.]+: [IWE] .*$", proc.stderr, re.M)
    assert not native, native
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("auc_ad", "auc_content", "auc_cold_start", "oracle_auc_ad",
                "examples_per_second", "export_path"):
        assert key in result, key
    assert "model AUC" in proc.stdout and "oracle AUC" in proc.stdout
    # The simulator's signal is learnable: even 2 epochs on 2.5k rows beat chance on content.
    assert result["auc_content"] > 0.55
    assert 0.5 < result["oracle_auc_ad"] <= 1.0
    assert 0.0 < result["features_only_auc_ad"] <= 1.0  # the window's, from oracle.npz
    assert "from features alone" in proc.stdout
    # The same rows' AUC in expectation over the labels' draw, next to the oracle's.
    for key in ("expected_auc_ad", "oracle_expected_auc_ad", "expected_auc_content",
                "oracle_expected_auc_content"):
        assert 0.0 < result[key] < 1.0, key
    assert result["oracle_expected_auc_content"] > result["expected_auc_content"]
    assert "in expectation over the labels' draw" in proc.stdout
    assert result["examples_per_second"] > 0
    assert result["train_examples"] + result["eval_examples"] == result["examples"] == 3000
    # What each representation holds, on the eval window's ad rows (CR(u), CR(i): one row per
    # user / item seen there), and the same figures in the printed table.
    reps = result["representations"]
    ad_rows = result["eval_ad_examples"]
    assert [reps[k]["rows"] for k in ("ur", "ir", "cr")] == [ad_rows] * 3
    assert 0 < reps["cr_user"]["rows"] < ad_rows and 0 < reps["cr_item"]["rows"] < ad_rows
    assert reps["cr_user"]["dim"] == reps["cr_item"]["dim"] == reps["cr"]["dim"]
    for key, s in reps.items():
        assert 0 <= s["dead_units"] <= s["dim"], key
        live = s["dim"] - s["dead_units"]
        assert 1.0 <= s["effective_rank"] <= live + 1e-6, key
        assert 1.0 <= s["participation_ratio"] <= s["effective_rank"] + 1e-6, key
    assert "eff. rank" in proc.stdout and "CR(u,i)" in proc.stdout
    loaded = tf.saved_model.load(result["export_path"])
    assert set(loaded.signatures) == set(signatures.OUTPUT_KEYS)
    assert os.path.dirname(result["export_path"]) == str(export_dir)


def test_cli_names_the_bad_file(small_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = data_input.list_files(small_data)
    (data / "a.tfrecord.gz").write_bytes(open(files[0], "rb").read())
    with tf.io.TFRecordWriter(str(data / "b.tfrecord.gz"), "GZIP"):
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--data", str(data),
         "--export_dir", str(tmp_path / "export")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode != 0
    assert "b.tfrecord.gz: empty file" in proc.stderr


@pytest.mark.parametrize("eval_days", ["30"])
def test_cli_rejects_an_eval_window_longer_than_the_data(small_data, tmp_path, eval_days):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--data", small_data,
         "--export_dir", str(tmp_path / "export"), "--eval_days", eval_days],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode != 0
    assert "nothing would be left to train on" in proc.stderr


@pytest.mark.slow
def test_early_stopping_on_a_validation_window(small_data, tmp_path):
    """`validation_days` holds the day before the eval window out of training and keeps the
    weights of the best validation epoch."""
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train_and_export

    small = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(16,),
                 tower_hidden=(8,), representation_dim=8, embedding_dim=4)
    plain = train_and_export(small_data, str(tmp_path / "a"), ModelConfig(**small),
                             TrainConfig(epochs=1, batch_size=256, vocabularies=False),
                             verbose=0)
    assert plain["preprocessing"] == "hashing"
    assert plain["vocabulary_sizes"]["item_tags"] == ModelConfig().tag_buckets
    held = train_and_export(small_data, str(tmp_path / "b"), ModelConfig(**small),
                            TrainConfig(epochs=4, batch_size=256, validation_days=1.0,
                                        patience=1), verbose=0)
    # One of the six days is the validation window: fewer training rows, same eval rows.
    assert held["train_examples"] < plain["train_examples"]
    assert held["eval_examples"] == plain["eval_examples"]
    assert 1 <= held["best_epoch"] <= held["epochs"] <= 4
    with pytest.raises(data_input.DataError, match="validation_days"):
        train_and_export(small_data, str(tmp_path / "c"), ModelConfig(**small),
                         TrainConfig(epochs=1, validation_days=5.0), verbose=0)


@pytest.mark.slow
def test_feature_path_two_stage_training_is_what_gets_exported(small_data, tmp_path):
    """`feature_path_epochs` trains the path first; the exported model is the evaluated one,
    path included (its predictions give the AUC that training reports)."""
    import numpy as np

    from common import features
    from trainer.config import ModelConfig, TrainConfig
    from trainer.evaluation import auc
    from trainer.train import train_and_export

    small = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(16,),
                 tower_hidden=(8,), representation_dim=8, embedding_dim=4)
    result = train_and_export(
        small_data, str(tmp_path / "e"), ModelConfig(feature_path=True, **small),
        TrainConfig(epochs=1, batch_size=256, feature_path_epochs=3), verbose=0)
    assert result["feature_path_epochs"] == 3
    assert result["model_config"]["feature_path"] is True
    files = data_input.list_files(small_data)
    # Ids from vocabularies of the training rows only (the default), as the Transform's: the
    # items seen at least twice there (history included) plus the padding id and OOV buckets.
    from collections import Counter

    from trainer.transform import VOCABULARIES

    assert result["preprocessing"] == "vocabulary"
    counts = Counter()
    for batch in data_input.make_dataset(files, 1024, end=result["eval_window"][0]):
        for name in (features.ITEM_ID, features.USER_HIST_ITEMS):
            counts.update(v for v in batch[name].numpy().reshape(-1).tolist() if v)
    kept = sum(n >= VOCABULARIES[features.ITEM_ID][2] for n in counts.values())
    assert (
        result["vocabulary_sizes"][features.ITEM_ID] == 1 + kept + VOCABULARIES[features.ITEM_ID][1]
    )
    serialized = [r.numpy() for r in data_input.records_in_window(
        files, start=result["eval_window"][0])]
    assert len(serialized) == result["eval_examples"]
    loaded = tf.saved_model.load(result["export_path"])
    out = loaded.signatures[signatures.SERVING_DEFAULT](examples=tf.constant(serialized))
    raw = features.parse_examples(tf.constant(serialized))
    ad = raw[features.DOMAIN].numpy() == features.DOMAIN_AD
    label = raw[features.LABEL].numpy()
    assert auc(label[ad], out[signatures.AD_PREDICTION].numpy()[ad, 0]) == pytest.approx(
        result["auc_ad"], abs=1e-6)
    assert auc(label[~ad], out[signatures.CONTENT_PREDICTION].numpy()[~ad, 0]) == pytest.approx(
        result["auc_content"], abs=1e-6)
    assert np.all(np.isfinite(out[signatures.AD_PREDICTION].numpy()))
    # Expected AUC: the exported model's predictions against the simulator's probabilities.
    from trainer.evaluation import expected_auc

    oracle = np.load(os.path.join(small_data, "oracle.npz"))
    window = oracle["timestamp"] >= result["eval_window"][0]
    assert np.array_equal(oracle["label"][window], label)
    p = oracle["p_label"][window]
    assert expected_auc(p[ad], out[signatures.AD_PREDICTION].numpy()[ad, 0]) == pytest.approx(
        result["expected_auc_ad"], abs=1e-6)
    assert expected_auc(p[ad], p[ad]) == pytest.approx(result["oracle_expected_auc_ad"])


def test_cli_feature_path_flags():
    from trainer.train import configs_from_args

    base = ["--data", "d", "--export_dir", "e"]
    _, model, train = configs_from_args(base)
    assert model.feature_path is False
    _, model, train = configs_from_args(base + [
        "--feature_path", "--feature_path_dim", "4", "--feature_path_epochs", "7",
        "--feature_path_learning_rate", "0.05", "--ad_tower_gradient_scale", "0",
        "--feature_path_bias_l2", "0.001", "--feature_path_embedding_l2", "0"])
    assert (model.feature_path, model.feature_path_dim, model.ad_tower_gradient_scale,
            model.feature_path_bias_l2, model.feature_path_embedding_l2) == (True, 4, 0.0, 0.001, 0)
    assert (train.feature_path_epochs, train.feature_path_learning_rate) == (7, 0.05)
    _, model, _ = configs_from_args(base + ["--feature_path", "--no-feature_path"])
    assert model.feature_path is False
    assert train.vocabularies is True
    _, _, train = configs_from_args(base + ["--no-vocabularies", "--skip_last_days", "1"])
    assert train.vocabularies is False and train.skip_last_days == 1.0


def test_cli_flags_are_every_config_field_over_a_preset():
    import dataclasses

    from trainer.config import PRESETS, ModelConfig, TrainConfig
    from trainer.train import configs_from_args, parse_args

    base = ["--data", "d", "--export_dir", "e"]
    args = vars(parse_args(base))
    for cls in (ModelConfig, TrainConfig):  # generated: no field is left without its flag
        assert {f.name for f in dataclasses.fields(cls)} <= set(args)
    _, model, train = configs_from_args(base + ["--preset", "paper"])
    assert (model.mix_id_fields, model.ur_ir_product, model.id_dropout) == (True, False, 0.0)
    assert train == TrainConfig()
    # a flag overrides the preset; tuples and optional ints parse
    _, model, train = configs_from_args(base + [
        "--preset", "feature_path", "--ad_tower_gradient_scale", "0.5", "--mlp_hidden", "32,16",
        "--cross_projection_dim", "8", "--feature_path_item_fields", "item_category",
        "--shuffle_buffer", "10"])
    assert (model.feature_path, model.ad_tower_gradient_scale) == (True, 0.5)
    assert (model.mlp_hidden, model.cross_projection_dim) == ((32, 16), 8)
    assert model.feature_path_item_fields == ("item_category",)
    assert train.shuffle_buffer == 10
    assert set(PRESETS) >= {"default", "paper", "feature_path"}
    with pytest.raises(SystemExit, match="mlp_hidden must have at least one layer"):
        configs_from_args(base + ["--mlp_hidden", ""])
    with pytest.raises(SystemExit):
        configs_from_args(base + ["--preset", "nope"])


def test_presets_reject_unknown_fields():
    from trainer.config import from_preset

    with pytest.raises(ValueError, match=r"unknown model config fields \['bogus'\]"):
        from_preset("default", model={"bogus": 1})
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        from_preset("nope")


@pytest.mark.slow
def test_skip_last_days_evaluates_on_an_earlier_window(small_data, tmp_path):
    """`skip_last_days` leaves the data's last days out: the eval window is the day before
    the last, its oracle AUC is that window's, and no later row is read."""
    import numpy as np

    from trainer.config import ModelConfig, TrainConfig
    from trainer.evaluation import auc
    from trainer.train import DAY, train_and_export

    small = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(16,),
                 tower_hidden=(8,), representation_dim=8, embedding_dim=4)
    result = train_and_export(small_data, str(tmp_path / "s"), ModelConfig(**small),
                              TrainConfig(epochs=1, batch_size=256, skip_last_days=1.0),
                              verbose=0)
    oracle = np.load(os.path.join(small_data, "oracle.npz"))
    stamps = oracle["timestamp"]
    end = stamps.max() + 1 - DAY  # the records kept: timestamp < end
    last = stamps[stamps < end].max()
    cut, hi = result["eval_window"]
    assert (cut, hi) == (last + 1 - DAY, last)
    window = (stamps >= cut) & (stamps <= hi)
    assert result["eval_examples"] == int(window.sum())
    assert result["train_examples"] == int((stamps < cut).sum())
    ad = window & oracle["is_ad"]
    assert result["oracle_auc_ad"] == pytest.approx(auc(oracle["label"][ad], oracle["p_label"][ad]))
    assert result["expected_auc_ad"] is not None  # the rows matched the oracle's window
    with pytest.raises(ValueError, match="skip_last_days must be >= 0"):
        TrainConfig(skip_last_days=-1)
    with pytest.raises(data_input.DataError, match="skip_last_days=30"):
        train_and_export(small_data, str(tmp_path / "t"), ModelConfig(**small),
                         TrainConfig(epochs=1, skip_last_days=30), verbose=0)
