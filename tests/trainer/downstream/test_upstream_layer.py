"""UpstreamLayer: frozen and fine-tuned reuse of the upstream endpoints, shared variables per
export path, save/load inside a downstream model, and the error paths.

One tiny untrained upstream is exported once (`tiny_upstream_export`). Every `UpstreamLayer` on
one path shares that path's loaded variables (module cache of `load_upstream`), so a test that
changes them (fine-tuning, assigning) works on its own copy of the export (`_own_copy`); the
others only read the shared one.
"""

import functools
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from common import features, signatures
from pipelines.sources import synthetic
from trainer import data_input
from trainer.config import ModelConfig
from trainer.downstream.upstream_layer import UpstreamLayer, load_upstream
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

TINY = ModelConfig(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16),
                   tower_hidden=(16,), representation_dim=8, embedding_dim=4, cr_layer="mlp_1")
L2 = 1e-3  # the weight regularizer put on the ad branch's cross_1 kernel

pytestmark = pytest.mark.slow  # nearly every test reads a 10 s export; some train or save


def _l2(variable: tf.Variable) -> tf.Tensor:
    return L2 * tf.reduce_sum(tf.square(variable))


@pytest.fixture(scope="module")
def tiny_upstream_export(tmp_path_factory):
    """`(base path, rows, model)`: a tiny untrained upstream exported as `<base>/3`, 128 rows of
    dense raw features (with `label`) and the exported model."""
    data = tmp_path_factory.mktemp("tiny_upstream_data")
    synthetic.generate(str(data), examples=400, seed=3, days=2, progress=False)
    records = [r.numpy() for r in
               tf.data.TFRecordDataset(data_input.list_files(str(data)), "GZIP").take(128)]
    tf.keras.utils.set_random_seed(0)
    model = LFM4AdsModel(TINY)
    model(features.parse_examples(tf.constant(records[:8])))
    # Random id rows (the model starts them at zero), so that the training mode's id dropout
    # changes UR.
    for name in features.ID_FEATURES:
        table = model.embeddings.tables[name]
        table.assign(tf.random.normal(table.shape, stddev=0.5))
    # A weight regularizer in the form Keras keeps one: a zero-arg loss bound to its variable.
    cross = model.ad_branch.interactions[0]
    cross.add_loss(functools.partial(_l2, cross.kernel))
    base = str(tmp_path_factory.mktemp("tiny_upstream_export") / "lfm4ads")
    export_saved_model(model, base, warmup_examples=records[:4], version=3)
    return base, features.parse_examples(tf.constant(records)), model


def _own_copy(base: str, tmp_path) -> str:
    """A copy of the export whose variables no other test's layers share."""
    return shutil.copytree(base, str(tmp_path / "lfm4ads"))


def _ranker(layer: UpstreamLayer) -> tf.keras.Model:
    """A downstream model: the layer's representation -> one logit."""
    inputs = {name: tf.keras.Input(spec.shape[1:], dtype=spec.dtype, name=name)
              for name, spec in layer.feature_spec.items()}
    logit = tf.keras.layers.Dense(1, name="head")(layer(inputs))
    model = tf.keras.Model(inputs, logit)
    model.compile(tf.keras.optimizers.Adam(0.01),
                  tf.keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def _fit_data(layer: UpstreamLayer, rows: dict) -> tuple[dict, tf.Tensor]:
    x = {name: rows[name] for name in layer.feature_spec}
    return x, tf.cast(rows[features.LABEL], tf.float32)[:, None]


def _values(variables) -> list[np.ndarray]:
    return [v.numpy().copy() for v in variables]


def test_frozen_variables_are_bit_identical_after_fit(tiny_upstream_export):
    base, rows, _ = tiny_upstream_export
    layer = UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT)
    ranker = _ranker(layer)
    before, head = _values(layer.weights), _values(ranker.get_layer("head").weights)
    assert layer.weights and not layer.trainable_weights
    ranker.fit(*_fit_data(layer, rows), batch_size=32, epochs=2, verbose=0)
    for old, new in zip(before, _values(layer.weights), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not np.array_equal(head[0], ranker.get_layer("head").weights[0].numpy())


def test_fine_tuning_moves_the_upstream_and_lowers_the_loss(tiny_upstream_export, tmp_path):
    base, rows, _ = tiny_upstream_export
    layer = UpstreamLayer(_own_copy(base, tmp_path), signatures.USER_TOWER_ENDPOINT, trainable=True)
    ranker = _ranker(layer)
    _, loaded = load_upstream(layer.export_path)
    assert {id(w) for w in layer.trainable_weights} == {
        id(v) for v in loaded.user_tower.trainable_variables}
    x, y = _fit_data(layer, rows)
    before, loss_before = _values(layer.weights), ranker.evaluate(x, y, verbose=0)
    ranker.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert ranker.evaluate(x, y, verbose=0) < loss_before
    moved = {w.name for w, old in zip(layer.weights, before, strict=True)
             if not np.array_equal(w.numpy(), old)}
    assert any("/user/representation/kernel" in name for name in moved), moved
    assert any("user_id_embedding" in name for name in moved), moved


def test_gradients_reach_the_upstream_variables(tiny_upstream_export):
    base, rows, _ = tiny_upstream_export
    layer = UpstreamLayer(base, signatures.AD_MODULE_ENDPOINT, trainable=True)
    x, _ = _fit_data(layer, rows)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x, training=False)))
    grads = tape.gradient(loss, layer.trainable_weights)
    assert layer.trainable_weights
    for weight, grad in zip(layer.trainable_weights, grads, strict=True):
        assert grad is not None, weight.name
        assert tf.reduce_any(tf.convert_to_tensor(grad) != 0), weight.name
    frozen = UpstreamLayer(base, signatures.AD_MODULE_ENDPOINT)
    assert frozen.trainable_weights == []  # nothing for an optimizer to move


def test_training_mode_only_when_trainable(tiny_upstream_export):
    base, rows, _ = tiny_upstream_export
    x = {name: rows[name] for name in features.USER_FEATURES}
    frozen = UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT)
    np.testing.assert_array_equal(frozen(x, training=True), frozen(x, training=False))
    tuned = UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT, trainable=True)
    # Training mode: the upstream's id dropout (p = 0.5) hides about half of the user ids.
    assert not np.array_equal(tuned(x, training=True), tuned(x, training=False))
    np.testing.assert_array_equal(tuned(x, training=False), frozen(x))


def test_outputs_match_the_exported_model(tiny_upstream_export):
    base, rows, model = tiny_upstream_export
    expected = model(rows)
    for endpoint, key in ((signatures.USER_TOWER_ENDPOINT, signatures.USER_REPRESENTATION),
                          (signatures.ITEM_TOWER_ENDPOINT, signatures.ITEM_REPRESENTATION),
                          (signatures.AD_MODULE_ENDPOINT, signatures.CROSS_REPRESENTATION)):
        out = UpstreamLayer(base, endpoint)(rows)  # extra features are ignored
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out, expected[key], rtol=1e-5, atol=1e-6)
    # [batch, 1] scalars, as from tf.keras.Input(shape=(1,)), are accepted too.
    layer = UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT)
    column = {n: rows[n][:, None] if n not in features.LIST_FEATURES else rows[n]
              for n in features.USER_FEATURES}
    np.testing.assert_allclose(layer(column), expected[signatures.USER_REPRESENTATION], rtol=1e-5,
                               atol=1e-6)


def test_two_layers_on_one_path_share_variables(tiny_upstream_export, tmp_path):
    base = _own_copy(tiny_upstream_export[0], tmp_path)
    rows = tiny_upstream_export[1]
    user = UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT)  # base path: its highest version, 3
    ad = UpstreamLayer(os.path.join(base, "3"), signatures.AD_MODULE_ENDPOINT)
    assert user.export_path == ad.export_path == os.path.join(base, "3")
    kernel = next(w for w in user.weights if "/user/representation/kernel" in w.name)
    assert any(w is kernel for w in ad.weights)
    ur, cr = user(rows), ad(rows)
    kernel.assign(tf.zeros_like(kernel))  # through one layer's weight: both outputs change
    assert not np.allclose(user(rows), ur) and not np.allclose(ad(rows), cr)


def test_regularization_losses_only_when_trainable(tiny_upstream_export):
    base, _, model = tiny_upstream_export
    expected = _l2(model.ad_branch.interactions[0].kernel)
    tuned = UpstreamLayer(base, signatures.AD_MODULE_ENDPOINT, trainable=True)
    assert len(tuned.losses) == 1
    np.testing.assert_allclose(tuned.losses[0], expected, rtol=1e-6)
    assert float(tf.add_n(UpstreamLayer(base, signatures.AD_MODULE_ENDPOINT).losses)) == 0.0
    assert UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT, trainable=True).losses == []


def test_config_round_trip(tiny_upstream_export):
    base, rows, _ = tiny_upstream_export
    layer = UpstreamLayer(base, signatures.ITEM_TOWER_ENDPOINT, trainable=True, name="ir")
    config = layer.get_config()
    assert {k: config[k] for k in ("export_dir", "endpoint", "trainable", "name")} == {
        "export_dir": base, "endpoint": signatures.ITEM_TOWER_ENDPOINT, "trainable": True,
        "name": "ir"}
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(clone) is UpstreamLayer and clone.get_config() == config
    np.testing.assert_array_equal(clone(rows), layer(rows))


@pytest.mark.parametrize("file_name", ["ranker.keras", "ranker_savedmodel"])
def test_downstream_model_saves_and_reloads(tiny_upstream_export, tmp_path, file_name):
    base, rows, _ = tiny_upstream_export
    layer = UpstreamLayer(_own_copy(base, tmp_path), signatures.AD_MODULE_ENDPOINT, trainable=True)
    ranker = _ranker(layer)
    x, y = _fit_data(layer, rows)
    ranker.fit(x, y, batch_size=64, epochs=1, verbose=0)  # fine-tuned values to save
    expected = ranker.predict(x, verbose=0)
    path = str(tmp_path / file_name)
    ranker.save(path)
    for weight in layer.weights:  # the reload must restore the saved values
        weight.assign(tf.zeros_like(weight))
    reloaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    inner = next(lay for lay in reloaded.layers if isinstance(lay, UpstreamLayer))
    assert inner.trainable and inner.endpoint == signatures.AD_MODULE_ENDPOINT


def test_unknown_endpoint_lists_the_available_ones(tiny_upstream_export):
    base = tiny_upstream_export[0]
    message = (r"unknown endpoint 'content_module' of upstream export .*lfm4ads/3 \(the highest "
               r"version under .*\); available endpoints: \['user_tower', 'item_tower', "
               r"'ad_module'\]")
    with pytest.raises(ValueError, match=message):
        UpstreamLayer(base, "content_module")


def test_export_without_reusable_endpoints(tmp_path):
    """An export written before the endpoints existed: signatures only."""
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.serve = tf.function(lambda examples: {"y": module.scale * tf.ones_like(examples)},
                               input_signature=[tf.TensorSpec([None], tf.float32)])
    path = str(tmp_path / "old" / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with pytest.raises(ValueError, match=re.escape(
            f"upstream export {path} has no reusable endpoints "
            "['user_tower', 'item_tower', 'ad_module']")):
        UpstreamLayer(path, signatures.USER_TOWER_ENDPOINT)


def test_missing_or_empty_export_dir(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f"export '{missing}' does not exist")):
        UpstreamLayer(missing, signatures.USER_TOWER_ENDPOINT)
    (tmp_path / "empty" / "not_a_version").mkdir(parents=True)
    empty = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f"'{empty}' holds neither saved_model.pb nor an integer")):
        UpstreamLayer(empty, signatures.USER_TOWER_ENDPOINT)
    with pytest.raises(ValueError, match="trainable must be a bool, got 'yes'"):
        UpstreamLayer(empty, signatures.USER_TOWER_ENDPOINT, trainable="yes")


def test_missing_feature_is_named(tiny_upstream_export):
    base, rows, _ = tiny_upstream_export
    layer = UpstreamLayer(base, signatures.USER_TOWER_ENDPOINT)
    inputs = {n: rows[n] for n in features.USER_FEATURES if n != features.USER_GEO}
    with pytest.raises(ValueError, match=r"endpoint 'user_tower' of .* needs the features "
                                         r"\['user_geo'\]"):
        layer(inputs)
