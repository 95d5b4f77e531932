"""The exported SavedModel: TF Serving layout, every signature, warmup file, input errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from common import features, signatures
from trainer import data_input
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
    raw = features.parse_examples(tf.constant(serialized))
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
    assert set(loaded.signatures) == set(signatures.OUTPUT_KEYS)
    examples = tf.constant(serialized)
    for name, keys in signatures.OUTPUT_KEYS.items():
        out = loaded.signatures[name](examples=examples)
        assert set(out) == set(keys), name
        for key in keys:
            assert out[key].dtype == tf.float32
            np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-6)
    assert loaded.signatures[signatures.CROSS_REPRESENTATION](examples=examples)[
        signatures.CROSS_REPRESENTATION].shape == (64, 32)  # cr_layer="mlp_1"


def _single_signatures(loaded, examples) -> dict:
    """UR, IR, CR(u,i) and the ad prediction, each from its own signature."""
    out = {name: loaded.signatures[name](examples=examples)[name]
           for name in (signatures.USER_REPRESENTATION, signatures.ITEM_REPRESENTATION,
                        signatures.CROSS_REPRESENTATION)}
    out[signatures.AD_PREDICTION] = loaded.signatures[signatures.SERVING_DEFAULT](
        examples=examples)[signatures.AD_PREDICTION]
    return out


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_representations_equal_the_single_signatures_bit_for_bit(exported, rows):
    """One call of `representations` (one forward pass) returns exactly what the three
    representation signatures and `serving_default` return for the same examples."""
    path, serialized, _ = exported
    loaded = tf.saved_model.load(path)
    examples = tf.constant(serialized[:rows])
    combined = loaded.signatures[signatures.REPRESENTATIONS](examples=examples)
    assert tuple(sorted(combined)) == tuple(sorted(
        signatures.OUTPUT_KEYS[signatures.REPRESENTATIONS]))
    single = _single_signatures(loaded, examples)
    for key, value in single.items():
        assert combined[key].dtype == value.dtype == tf.float32
        np.testing.assert_array_equal(combined[key].numpy(), value.numpy(), err_msg=key)


def test_signatures_read_only_their_features(exported):
    path, serialized, expected = exported
    loaded = tf.saved_model.load(path)
    user_only = []
    for record in serialized[:3]:
        example = tf.train.Example.FromString(record)
        for name in list(example.features.feature):
            if name not in features.USER_FEATURES:
                del example.features.feature[name]
        user_only.append(example.SerializeToString())
    ur = loaded.signatures[signatures.USER_REPRESENTATION](examples=tf.constant(user_only))
    np.testing.assert_allclose(ur[signatures.USER_REPRESENTATION],
                               expected[signatures.USER_REPRESENTATION][:3],
                               rtol=1e-5, atol=1e-6)
    missing = r"Feature: item_\w+ \(data type: string\) is required"
    with pytest.raises(tf.errors.InvalidArgumentError, match=missing):
        loaded.signatures[signatures.ITEM_REPRESENTATION](examples=tf.constant(user_only))


def test_wrong_type_and_malformed_inputs(exported):
    path, serialized, _ = exported
    loaded = tf.saved_model.load(path)
    example = tf.train.Example.FromString(serialized[0])
    example.features.feature[features.USER_AGE].Clear()
    example.features.feature[features.USER_AGE].bytes_list.value.append(b"thirty")
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_age"):
        loaded.signatures[signatures.USER_REPRESENTATION](examples=tf.constant([example.SerializeToString()]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Could not parse example input"):
        loaded.signatures[signatures.USER_REPRESENTATION](
            examples=tf.constant([b"not a tf.Example"])
        )


def test_warmup_requests(exported):
    path, serialized, _ = exported
    warmup = os.path.join(path, "assets.extra", signatures.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(warmup)]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == list(
        signatures.OUTPUT_KEYS)
    tensor = logs[1].predict_log.request.inputs[signatures.INPUT_KEY]
    assert list(tf.make_ndarray(tensor)) == serialized[:4]


@pytest.mark.slow
def test_next_version_is_larger(exported, tmp_path):
    _, serialized, _ = exported
    model = LFM4AdsModel(ModelConfig(**SMALL))
    model(features.parse_examples(tf.constant(serialized[:2])))
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
    signatures.USER_TOWER_ENDPOINT: signatures.USER_REPRESENTATION,
    signatures.ITEM_TOWER_ENDPOINT: signatures.ITEM_REPRESENTATION,
    signatures.AD_MODULE_ENDPOINT: signatures.CROSS_REPRESENTATION,
}


def _parts(variables) -> set[str]:
    """Variable names without the model's scope and `:0`: `ad_branch/cross_1/kernel`."""
    return {v.name.split(":")[0].split("/", 1)[1] for v in variables}


def test_reusable_endpoints_match_the_signatures(exported):
    path, serialized, _ = exported
    loaded = tf.saved_model.load(path)
    raw = features.parse_examples(tf.constant(serialized))
    for endpoint, signature in ENDPOINT_SIGNATURES.items():
        function = getattr(loaded, endpoint)
        inputs = {name: raw[name] for name in signatures.REQUIRED_FEATURES[signature]}
        out = function(inputs, training=False)
        assert out.dtype == tf.float32
        expected = loaded.signatures[signature](examples=tf.constant(serialized))[signature]
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
        assert function(inputs, training=True).shape == out.shape  # both modes exported


def test_reusable_endpoints_list_the_variables_they_use(exported):
    loaded = tf.saved_model.load(exported[0])
    user = _parts(loaded.user_tower.variables)
    item = _parts(loaded.item_tower.variables)
    ad = _parts(loaded.ad_module.variables)
    # The user tower reads the item table too: the history shares it.
    assert {p for p in user if p.startswith("feature_embeddings/")} == {
        f"feature_embeddings/{name}_embedding" for name in
        (features.USER_ID, features.USER_AGE, features.USER_GENDER, features.USER_GEO,
         features.ITEM_ID)}
    assert "user/representation/kernel" in user
    assert any(p.startswith("user/mlp") and p.endswith("/dense_1/kernel") for p in user)
    assert not {p for p in user if p.startswith("item/")}
    assert {p for p in item if p.startswith("feature_embeddings/")} == {
        f"feature_embeddings/{name}_embedding" for name in features.ITEM_FEATURES}
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
    raw = features.parse_examples(tf.constant(exported[1]))
    model = LFM4AdsModel(ModelConfig(cr_layer="cross_2", **SMALL))
    out = model.ad_branch_outputs(raw)
    assert sorted(out) == ["cr", "cross_1", "cross_2", "embedding", "mlp_1", "mlp_2",
                           "pre_mlp_1", "pre_mlp_2"]
    assert all(value.dtype == tf.float32 for value in out.values())
    np.testing.assert_array_equal(model.cross_representation(raw), out["cross_2"])
    np.testing.assert_allclose(model(raw)[signatures.CROSS_REPRESENTATION], out["cross_2"],
                               rtol=1e-6)
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


@pytest.mark.slow
def test_transform_export_has_the_endpoints(tmp_path):
    """The pipeline's export (TransformParser): the endpoints take the same dense raw features
    and give the signatures' values, history and tags included (sparse again, padding
    dropped); the ad module also reads the Transform's hour/day context from `timestamp`."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import metadata_io

    from tests.pipelines.test_transform import _later_rows, _load_schema, _train_rows
    from trainer import transform
    from trainer.export import TransformParser
    from trainer.tfx import transform_module

    rows = _train_rows() + _later_rows()  # history, tags, an empty list, unseen values
    metadata = tft.DatasetMetadata(_load_schema())
    out = str(tmp_path / "transform")
    with tft_beam.Context(temp_dir=str(tmp_path / "beam"), force_tf_compat_v1=False):
        transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(transform_module.preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out)
    metadata_io.write_metadata(metadata, os.path.join(out, tft.TFTransformOutput.RAW_METADATA_DIR))
    tft_output = tft.TFTransformOutput(out)

    def example(row):
        feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
                   if features.FEATURE_TYPES[name] is bytes else
                   tf.train.Feature(int64_list=tf.train.Int64List(value=values))
                   for name, values in row.items()}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    serialized = tf.constant([example(row) for row in rows])
    model = LFM4AdsModel(ModelConfig(**SMALL), preprocessor=transform.TransformPreprocessor(
        transform.vocabulary_sizes(tft_output)))
    parser = TransformParser(tft_output)
    model(parser(serialized,
                 signatures.REQUIRED_FEATURES[signatures.SERVING_DEFAULT] + parser.context_inputs))
    table = model.embeddings.tables[features.ITEM_ID]  # zeros at first: random, so history counts
    table.assign(tf.random.normal(table.shape))
    path = export_saved_model(model, str(tmp_path / "export"), [serialized[0].numpy()],
                              parser=parser, version=1)
    loaded = tf.saved_model.load(path)
    raw = features.parse_examples(serialized)
    for endpoint, signature in ENDPOINT_SIGNATURES.items():
        names = signatures.REQUIRED_FEATURES[signature]
        if endpoint == signatures.AD_MODULE_ENDPOINT:
            names += parser.context_inputs
        out = getattr(loaded, endpoint)({name: raw[name] for name in names}, training=False)
        expected = loaded.signatures[signature](examples=serialized)[signature]
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert {"feature_embeddings/hour_of_day_embedding",
            "feature_embeddings/day_of_week_embedding"} <= _parts(loaded.ad_module.variables)
    # the one-call signature reads the Transform's context features too, bit for bit
    combined = loaded.signatures[signatures.REPRESENTATIONS](examples=serialized)
    for key, value in _single_signatures(loaded, serialized).items():
        np.testing.assert_array_equal(combined[key].numpy(), value.numpy(), err_msg=key)
