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


# Reusable endpoint -> the signature giving the same values.
ENDPOINT_SIGNATURES = {
    S.USER_TOWER_ENDPOINT: S.USER_REPRESENTATION,
    S.ITEM_TOWER_ENDPOINT: S.ITEM_REPRESENTATION,
    S.AD_MODULE_ENDPOINT: S.CROSS_REPRESENTATION,
}


def _parts(variables) -> set[str]:
    """Variable names without the model's scope and `:0`: `ad_branch/cross_1/kernel`."""
    return {v.name.split(":")[0].split("/", 1)[1] for v in variables}


def test_reusable_endpoints_match_the_signatures(exported):
    path, serialized, _ = exported
    loaded = tf.saved_model.load(path)
    raw = F.parse_examples(tf.constant(serialized))
    for endpoint, signature in ENDPOINT_SIGNATURES.items():
        function = getattr(loaded, endpoint)
        features = {name: raw[name] for name in S.REQUIRED_FEATURES[signature]}
        out = function(features, training=False)
        assert out.dtype == tf.float32
        expected = loaded.signatures[signature](examples=tf.constant(serialized))[signature]
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
        assert function(features, training=True).shape == out.shape  # both modes exported


def test_reusable_endpoints_list_the_variables_they_use(exported):
    loaded = tf.saved_model.load(exported[0])
    user = _parts(loaded.user_tower.variables)
    item = _parts(loaded.item_tower.variables)
    ad = _parts(loaded.ad_module.variables)
    # The user tower reads the item table too: the history shares it.
    assert {p for p in user if p.startswith("feature_embeddings/")} == {
        f"feature_embeddings/{name}_embedding" for name in
        (F.USER_ID, F.USER_AGE, F.USER_GENDER, F.USER_GEO, F.ITEM_ID)}
    assert "user/representation/kernel" in user
    assert any(p.startswith("user/mlp") and p.endswith("/dense_1/kernel") for p in user)
    assert not {p for p in user if p.startswith("item/")}
    assert {p for p in item if p.startswith("feature_embeddings/")} == {
        f"feature_embeddings/{name}_embedding" for name in F.ITEM_FEATURES}
    assert "item/representation/kernel" in item
    assert not {p for p in item if p.startswith("user/")}
    # The ad module: both towers, the cross layers and the MLP up to cr_layer="mlp_1"; nothing
    # after it (mlp_2, logits), nothing of the content branch.
    assert user | item | {"feature_embeddings/scenario_embedding", "ad_branch/cross_1/kernel",
                          "ad_branch/cross_2/kernel", "ad_branch/mlp/dense_1/kernel"} <= ad
    assert not {p for p in ad if p.startswith(("ad_branch/mlp/dense_2", "ad_branch/logit",
                                               "ad_branch/affinity", "content_branch"))}
    for endpoint in ENDPOINT_SIGNATURES:
        function = getattr(loaded, endpoint)
        assert _parts(function.trainable_variables) == _parts(function.variables)
        assert list(function.regularization_losses) == []  # no weight regularizers here


def test_ad_branch_outputs_every_layer(exported):
    """Each output against a naive reference from the one below it (DCN-v2 full rank, Eq. 1:
    `x_l = x0 * (x_{l-1} W + b) + x_{l-1}`; ReLU MLP)."""
    raw = F.parse_examples(tf.constant(exported[1]))
    model = LFM4AdsModel(ModelConfig(cr_layer="cross_2", **SMALL))
    out = model.ad_branch_outputs(raw)
    assert sorted(out) == ["cr", "cross_1", "cross_2", "embedding", "mlp_1", "mlp_2",
                           "pre_mlp_1", "pre_mlp_2"]
    assert all(value.dtype == tf.float32 for value in out.values())
    np.testing.assert_array_equal(model.cross_representation(raw), out["cross_2"])
    np.testing.assert_allclose(model(raw)[S.CROSS_REPRESENTATION], out["cross_2"], rtol=1e-6)
    x0 = out["embedding"].numpy()  # [UR, IR, UR * IR, fields]
    d = SMALL["representation_dim"]
    np.testing.assert_allclose(x0[:, :d], model.user_representation(raw), rtol=1e-6)
    x = x0
    for layer, cross in enumerate(model.ad_branch.interactions, 1):
        x = x0 * (x @ cross.kernel.numpy() + cross.bias.numpy()) + x
        np.testing.assert_allclose(out[f"cross_{layer}"], x, rtol=1e-4, atol=1e-6)
    for layer, dense in enumerate(model.ad_branch.mlp.dense_layers, 1):
        pre = x @ dense.kernel.numpy() + dense.bias.numpy()
        np.testing.assert_allclose(out[f"pre_mlp_{layer}"], pre, rtol=1e-4, atol=1e-5)
        x = np.maximum(pre, 0.0)
        np.testing.assert_allclose(out[f"mlp_{layer}"], x, rtol=1e-4, atol=1e-6)


def test_transform_export_has_the_endpoints(tmp_path):
    """The pipeline's export (TransformParser): the endpoints take the same dense raw features
    and give the signatures' values, history and tags included (sparse again, padding
    dropped); the ad module also reads the Transform's hour/day context from `timestamp`."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import metadata_io

    from tests.pipelines.test_transform import _later_rows, _load_schema, _train_rows
    from trainer import transform as T
    from trainer.export import TransformParser

    rows = _train_rows() + _later_rows()  # history, tags, an empty list, unseen values
    metadata = tft.DatasetMetadata(_load_schema())
    out = str(tmp_path / "transform")
    with tft_beam.Context(temp_dir=str(tmp_path / "beam"), force_tf_compat_v1=False):
        transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(T.preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out)
    metadata_io.write_metadata(metadata, os.path.join(out, tft.TFTransformOutput.RAW_METADATA_DIR))
    tft_output = tft.TFTransformOutput(out)

    def example(row):
        feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
                   if F.FEATURE_TYPES[name] is bytes else
                   tf.train.Feature(int64_list=tf.train.Int64List(value=values))
                   for name, values in row.items()}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    serialized = tf.constant([example(row) for row in rows])
    model = LFM4AdsModel(ModelConfig(**SMALL), preprocessor=T.TransformPreprocessor(
        T.vocabulary_sizes(tft_output)))
    parser = TransformParser(tft_output)
    model(parser(serialized, S.REQUIRED_FEATURES[S.SERVING_DEFAULT] + parser.context_inputs))
    table = model.embeddings.tables[F.ITEM_ID]  # zeros at first: random, so history counts
    table.assign(tf.random.normal(table.shape))
    path = export_saved_model(model, str(tmp_path / "export"), [serialized[0].numpy()],
                              parser=parser, version=1)
    loaded = tf.saved_model.load(path)
    raw = F.parse_examples(serialized)
    for endpoint, signature in ENDPOINT_SIGNATURES.items():
        names = S.REQUIRED_FEATURES[signature]
        if endpoint == S.AD_MODULE_ENDPOINT:
            names += parser.context_inputs
        out = getattr(loaded, endpoint)({name: raw[name] for name in names}, training=False)
        expected = loaded.signatures[signature](examples=serialized)[signature]
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert {"feature_embeddings/hour_of_day_embedding",
            "feature_embeddings/day_of_week_embedding"} <= _parts(loaded.ad_module.variables)
