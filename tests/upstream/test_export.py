"""The exported SavedModel: TF Serving layout, every signature, warmup file, input errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from trainer import features as F
from trainer import input as data_input
from trainer import signatures as S
from trainer.config import ModelConfig
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16), tower_hidden=(16,),
             representation_dim=8, embedding_dim=4)


@pytest.fixture(scope="module")
def exported(small_data, tmp_path_factory):
    files = data_input.list_files(small_data)
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP").take(64)]
    model = LFM4AdsModel(ModelConfig(cr_layer="mlp_1", **SMALL))
    raw = F.parse_examples(tf.constant(serialized))
    expected = model(raw)
    base = str(tmp_path_factory.mktemp("export") / "lfm4ads")
    path = export_saved_model(model, base, warmup_examples=serialized[:4], version=7)
    return path, serialized, expected


def test_layout_and_versions(exported, small_batch):
    path, serialized, _ = exported
    base = os.path.dirname(path)
    assert os.path.basename(path) == "7"
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    assert sorted(os.listdir(base)) == ["7"]  # no temporary directory left behind


def test_every_signature_matches_the_model(exported):
    path, serialized, expected = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(S.OUTPUT_KEYS)
    examples = tf.constant(serialized)
    for name, keys in S.OUTPUT_KEYS.items():
        out = loaded.signatures[name](examples=examples)
        assert set(out) == set(keys), name
        for key in keys:
            assert out[key].dtype == tf.float32
            np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-6)
    assert loaded.signatures[S.CROSS_REPRESENTATION](examples=examples)[
        S.CROSS_REPRESENTATION].shape == (64, 32)  # cr_layer="mlp_1"


def test_signatures_read_only_their_features(exported):
    path, serialized, expected = exported
    loaded = tf.saved_model.load(path)
    user_only = []
    for record in serialized[:3]:
        example = tf.train.Example.FromString(record)
        for name in list(example.features.feature):
            if name not in F.USER_FEATURES:
                del example.features.feature[name]
        user_only.append(example.SerializeToString())
    ur = loaded.signatures[S.USER_REPRESENTATION](examples=tf.constant(user_only))
    np.testing.assert_allclose(ur[S.USER_REPRESENTATION], expected[S.USER_REPRESENTATION][:3],
                               rtol=1e-5, atol=1e-6)
    missing = r"Feature: item_\w+ \(data type: string\) is required"
    with pytest.raises(tf.errors.InvalidArgumentError, match=missing):
        loaded.signatures[S.ITEM_REPRESENTATION](examples=tf.constant(user_only))


def test_wrong_type_and_malformed_inputs(exported):
    path, serialized, _ = exported
    loaded = tf.saved_model.load(path)
    example = tf.train.Example.FromString(serialized[0])
    example.features.feature[F.USER_AGE].Clear()
    example.features.feature[F.USER_AGE].bytes_list.value.append(b"thirty")
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_age"):
        loaded.signatures[S.USER_REPRESENTATION](examples=tf.constant([example.SerializeToString()]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Could not parse example input"):
        loaded.signatures[S.USER_REPRESENTATION](examples=tf.constant([b"not a tf.Example"]))


def test_warmup_requests(exported):
    path, serialized, _ = exported
    warmup = os.path.join(path, "assets.extra", S.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(warmup)]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == list(
        S.OUTPUT_KEYS)
    tensor = logs[1].predict_log.request.inputs[S.INPUT_KEY]
    assert list(tf.make_ndarray(tensor)) == serialized[:4]


def test_next_version_is_larger(exported, tmp_path):
    _, serialized, _ = exported
    model = LFM4AdsModel(ModelConfig(**SMALL))
    model(F.parse_examples(tf.constant(serialized[:2])))
    base = str(tmp_path / "m")
    export_saved_model(model, base, serialized[:2], version=2_000_000_000)
    second = export_saved_model(model, base, warmup_examples=serialized[:2])
    assert os.path.basename(second) == "2000000001"
    with pytest.raises(FileExistsError, match="version 2000000000 already exists"):
        export_saved_model(model, base, serialized[:2], version=2_000_000_000)
    with pytest.raises(ValueError, match="warmup_examples is empty"):
        export_saved_model(model, base, [])
