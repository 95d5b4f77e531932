"""TensorBoard summaries: `trainer.train` under its export directory, the TFX ranker Trainer in
its `model_run_dir` (each epoch's loss and validation metric, read back from the event files)."""

import glob
import os
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from common import signatures
from common.downstream_requests import with_representations
from common.serving_layout import resolve_export_dir
from trainer import data_input
from trainer.config import ModelConfig, TrainConfig
from trainer.tfx import ranker_module
from trainer.train import summaries_dir, train_and_export

SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(16,), tower_hidden=(8,),
             representation_dim=8, embedding_dim=4)


def scalars(directory: str) -> dict[str, list[float]]:
    """Every scalar of the event files in `directory`, by tag, in step order."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return {tag: [v for _, v in sorted(points)] for tag, points in found.items()}


@pytest.mark.slow
def test_trainer_train_writes_epoch_scalars_under_the_export_dir(small_data, tmp_path):
    export_dir = str(tmp_path / "lfm4ads")
    result = train_and_export(small_data, export_dir, ModelConfig(**SMALL),
                              TrainConfig(epochs=2, batch_size=256, validation_days=1.0,
                                          patience=2, vocabularies=False), verbose=0)
    (run,) = glob.glob(os.path.join(export_dir, "logs", "*"))  # one directory per run
    assert re.fullmatch(r"\d{8}-\d{6}", os.path.basename(run))
    train = scalars(os.path.join(run, "train"))
    validation = scalars(os.path.join(run, "validation"))
    # one point per epoch; the last training loss is the one `fit` reported
    assert len(train["epoch_loss"]) == result["epochs"] == 2
    assert train["epoch_loss"][-1] == pytest.approx(result["final_loss"], rel=1e-6)
    assert len(validation["epoch_ad_auc"]) == 2
    assert int(np.argmax(validation["epoch_ad_auc"])) + 1 == result["best_epoch"]
    # the model base path still resolves to its version: `logs/` is not an integer version
    assert resolve_export_dir(export_dir) == result["export_path"]


def test_the_summaries_directory_is_under_the_export_dir_unless_absolute():
    started = time.mktime((2026, 3, 1, 14, 5, 9, 0, 0, -1))  # local time, as the name
    assert summaries_dir("build/export", "logs", started) == "build/export/logs/20260301-140509"
    assert summaries_dir("build/export", "/tmp/tb/", started) == "/tmp/tb/20260301-140509"
    assert summaries_dir("gs://b/export", "gs://b/tb", started) == "gs://b/tb/20260301-140509"
    assert summaries_dir("build/export", "", started) is None  # none written
    assert TrainConfig().tensorboard_dir == "logs"


@pytest.mark.slow
def test_the_ranker_trainer_writes_epoch_scalars_to_model_run_dir(small_data, tmp_path, capsys):
    """The TFX ranker Trainer's `run_fn` on requests carrying the four representations (random
    vectors: a row's UR found for 2 of 3 rows); its validation scalar is the exact AUC that
    early stopping reads, so its best epoch is the one the Trainer reports."""
    files = data_input.list_files(small_data)
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP")]
    rng = np.random.default_rng(0)
    n = len(raw)
    found = np.arange(n) % 3 > 0
    representations = {name: (rng.normal(size=(n, 4)).astype(np.float32),
                              found if name == signatures.UR_FEATURE else np.ones(n, bool))
                       for name in ranker_module.REPRESENTATIONS}
    examples = tmp_path / "examples"
    examples.mkdir()
    with tf.io.TFRecordWriter(str(examples / "part-0.gz"), "GZIP") as writer:
        for record in with_representations(raw, representations):
            writer.write(record)
    fn_args = SimpleNamespace(
        custom_config={"mode": "lfm4ads", "train": {"epochs": 3, "batch_size": 256,
                                                    "patience": 3}},
        train_files=[str(examples / "*")], serving_model_dir=str(tmp_path / "serving_model"),
        model_run_dir=str(tmp_path / "model_run"))
    ranker_module.run_fn(fn_args)
    train = scalars(os.path.join(fn_args.model_run_dir, "train"))
    validation = scalars(os.path.join(fn_args.model_run_dir, "validation"))
    assert len(train["epoch_loss"]) == 3 and all(np.isfinite(train["epoch_loss"]))
    assert len(validation["epoch_auc"]) == 3
    assert all(0.0 <= v <= 1.0 for v in validation["epoch_auc"])
    best = int(np.argmax(validation["epoch_auc"])) + 1
    assert f"best epoch {best}/3" in capsys.readouterr().out
    assert tf.io.gfile.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb"))
