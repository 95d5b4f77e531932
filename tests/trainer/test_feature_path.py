"""The shallow feature-affinity path: its formula, its learning rate, and its place in the model."""

import numpy as np
import pytest
import tensorflow as tf

from common import features
from trainer import data_input
from trainer.config import ModelConfig, TrainConfig
from trainer.feature_path import (
    ALPHA_INIT,
    BIAS_FIELDS,
    ITEM_FIELDS,
    USER_FIELDS,
    FeatureAffinityPath,
)
from trainer.model import LFM4AdsModel

SIZES = {name: 10 for name in USER_FIELDS + ITEM_FIELDS + BIAS_FIELDS}
SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16), tower_hidden=(16,),
             representation_dim=8, embedding_dim=4)


def _ids(batch: int = 6, seed: int = 0) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(seed)
    ids = {name: tf.constant(rng.integers(0, 10, batch)) for name in SIZES}
    tags = rng.integers(1, 10, (batch, 3))
    tags[:, 2] = 0  # padding
    tags[0, 1:] = 0
    ids[features.ITEM_TAGS] = tf.constant(tags)
    return ids


def _path(**kwargs) -> FeatureAffinityPath:
    layer = FeatureAffinityPath(SIZES, heads=("ad", "content", "conversion"),
                                bias_heads=("ad", "content"), embedding_dim=4, **kwargs)
    layer.build()
    return layer


def test_matches_the_formula():
    layer = _path()
    ids = _ids()
    for name in BIAS_FIELDS:  # non-zero biases and intercepts, so that they are checked too
        layer.biases[name].assign(np.linspace(-1, 1, 10))
    layer.intercept.assign([-2.0, 0.5, -4.0])
    np.testing.assert_allclose(layer.alpha.numpy(), ALPHA_INIT)
    layer.alpha.assign([1.5, -2.0, 0.5])
    out = layer(ids)
    w = {name: t.numpy() for name, t in layer.tables.items()}
    b = {name: t.numpy() for name, t in layer.biases.items()}
    n = {k: v.numpy() for k, v in ids.items()}
    u = sum(w[f][n[f]] for f in USER_FIELDS)
    tags = n[features.ITEM_TAGS]
    tag_mean = np.stack([w[features.ITEM_TAGS][row[row != 0]].mean(0) for row in tags])
    v = w[features.ITEM_CATEGORY][n[features.ITEM_CATEGORY]] + tag_mean
    cos = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    bias = sum(b[f][n[f]] for f in BIAS_FIELDS)
    for i, head in enumerate(("ad", "content", "conversion")):
        biases = bias if head != "conversion" else 0.0
        expected = layer.alpha.numpy()[i] * cos + layer.intercept.numpy()[i] + biases
        np.testing.assert_allclose(out[head][:, 0], expected, rtol=1e-5, atol=1e-5)


def test_bias_penalty_is_a_layer_loss():
    layer = _path(bias_l2=0.5)
    layer.biases[features.SCENARIO].assign(np.full(10, 1.0))
    layer(_ids())
    assert float(tf.add_n(layer.losses)) == pytest.approx(0.5 * 10, rel=1e-5)


def test_embedding_penalty_is_a_layer_loss():
    layer = _path(bias_l2=0.0, embedding_l2=0.5)
    for table in layer.tables.values():
        table.assign(np.full(table.shape, 2.0))
    layer(_ids())
    fields = len(USER_FIELDS + ITEM_FIELDS)
    assert float(tf.add_n(layer.losses)) == pytest.approx(0.5 * fields * 10 * 4 * 4.0, rel=1e-5)
    unpenalised = _path(bias_l2=0.0)
    unpenalised(_ids())
    assert unpenalised.losses == []


def test_model_config_sets_the_penalties():
    model = LFM4AdsModel(ModelConfig(feature_path=True, feature_path_bias_l2=0.01,
                                     feature_path_embedding_l2=0.02, **SMALL))
    assert (model.feature_path.bias_l2, model.feature_path.embedding_l2) == (0.01, 0.02)
    assert ModelConfig().feature_path_embedding_l2 > 0  # on by default


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"lacks the feature path's fields \['item_tags'\]"):
        FeatureAffinityPath({k: v for k, v in SIZES.items() if k != features.ITEM_TAGS},
                            heads=("ad",))
    with pytest.raises(ValueError, match=r"bias_heads \['click'\] are not among heads"):
        FeatureAffinityPath(SIZES, heads=("ad",), bias_heads=("click",))
    with pytest.raises(ValueError, match="embedding_dim must be >= 1, got 0"):
        FeatureAffinityPath(SIZES, heads=("ad",), embedding_dim=0)
    with pytest.raises(ValueError, match="embedding_l2 must be >= 0, got -1"):
        FeatureAffinityPath(SIZES, heads=("ad",), embedding_l2=-1)
    with pytest.raises(ValueError, match="feature_path_embedding_l2 must be >= 0, got -0.1"):
        ModelConfig(feature_path_embedding_l2=-0.1)
    with pytest.raises(ValueError, match="feature_path_dim must be >= 1, got 0"):
        ModelConfig(feature_path=True, feature_path_dim=0)
    with pytest.raises(ValueError, match="feature_path_epochs must be >= 0, got -1"):
        TrainConfig(feature_path_epochs=-1)
    with pytest.raises(ValueError, match="feature_path_learning_rate must be > 0, got 0"):
        TrainConfig(feature_path_learning_rate=0.0)


def test_config_round_trip():
    layer = _path(bias_l2=0.25, embedding_l2=0.125)
    again = FeatureAffinityPath.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_model_adds_the_path_to_every_head(small_batch):
    with_path = LFM4AdsModel(ModelConfig(feature_path=True, **SMALL))
    out = with_path(small_batch)
    _, _, ad, content, path = with_path._forward(small_batch, training=False)
    assert set(path) == {"ad", "content", "conversion"}
    np.testing.assert_allclose(out["ad_logit"], ad["logit_label"] + path["ad"], atol=1e-5)
    np.testing.assert_allclose(out["content_logit"], content["logit_label"] + path["content"],
                               atol=1e-5)
    np.testing.assert_allclose(out["conversion_logit"],
                               ad["logit_conversion"] + path["conversion"], atol=1e-5)
    assert float(tf.reduce_max(tf.abs(path["ad"]))) > 0.1  # not a zero contribution
    assert len([v for v in with_path.variables if "feature_path" in v.name]) == 9
    # Without the option, no path and no variables of it.
    plain = LFM4AdsModel(ModelConfig(**SMALL))
    plain(small_batch)
    assert plain.feature_path is None
    assert not [v for v in plain.variables if "feature_path" in v.name]


def test_path_ignores_ids_and_learns_from_both_domains(small_batch):
    model = LFM4AdsModel(ModelConfig(feature_path=True, **SMALL))
    model(small_batch)
    # No ids: other user and item ids give the same contribution (cold start).
    renamed = dict(small_batch)
    renamed[features.USER_ID] = tf.strings.join([small_batch[features.USER_ID], b"-new"])
    renamed[features.ITEM_ID] = tf.strings.join([small_batch[features.ITEM_ID], b"-new"])
    before = model._forward(small_batch, training=False)[-1]
    after = model._forward(renamed, training=False)[-1]
    for head in before:
        np.testing.assert_allclose(before[head], after[head], rtol=1e-6)
    # Content rows move the content alpha only, ad rows the ad (and conversion) ones; both
    # domains train the shared feature embeddings.
    for domain, moved in ((features.DOMAIN_CONTENT, [1]), (features.DOMAIN_AD, [0, 2])):
        keep = small_batch[features.DOMAIN].numpy() == domain
        rows = {k: tf.boolean_mask(v, keep) for k, v in small_batch.items()}
        with tf.GradientTape() as tape:
            loss = model.compute_loss(rows, training=True)
        alpha, geo = tape.gradient(
            loss, [model.feature_path.alpha, model.feature_path.tables[features.USER_GEO]])
        assert sorted(np.flatnonzero(alpha.numpy())) == moved, domain
        assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(geo)))) > 0, domain


@pytest.mark.slow
def test_fit_feature_path_trains_the_path_alone_then_freezes_it(small_data):
    files = data_input.list_files(small_data)
    ds = data_input.make_dataset(files, 256, cache=True)
    model = LFM4AdsModel(ModelConfig(feature_path=True, **SMALL),
                         TrainConfig(feature_path_epochs=4, feature_path_learning_rate=0.05))
    batch = next(iter(ds))
    model(batch)
    path_before = [v.numpy().copy() for v in model.feature_path.variables]
    rest_before = [v.numpy().copy() for v in model.variables
                   if "feature_path" not in v.name]
    history = model.fit_feature_path(ds)
    assert len(history) == 4 and history[-1] < history[0]
    moved = [not np.array_equal(a, v.numpy())
             for a, v in zip(path_before, model.feature_path.variables, strict=True)]
    assert all(moved)
    rest_after = [v.numpy() for v in model.variables if "feature_path" not in v.name]
    for a, b in zip(rest_before, rest_after, strict=True):
        np.testing.assert_array_equal(a, b)
    # Frozen: `fit` trains the rest on top of it and leaves the path as it is.
    assert not model.feature_path.trainable_variables
    fitted = [v.numpy().copy() for v in model.feature_path.variables]
    model.compile(tf.keras.optimizers.Adam(1e-2))
    model.fit(ds, epochs=1, verbose=0)
    for a, v in zip(fitted, model.feature_path.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())
    assert any(not np.array_equal(a, b) for a, b in zip(
        rest_after, [v.numpy() for v in model.variables if "feature_path" not in v.name],
        strict=True))


@pytest.mark.slow
def test_fit_feature_path_errors(small_batch):
    with pytest.raises(ValueError, match=r"needs ModelConfig\(feature_path=True\)"):
        LFM4AdsModel(ModelConfig(**SMALL)).fit_feature_path(
            tf.data.Dataset.from_tensors(small_batch), 1, 0.01)
    model = LFM4AdsModel(ModelConfig(feature_path=True, **SMALL))
    with pytest.raises(ValueError, match="needs a finite dataset"):
        model.fit_feature_path(tf.data.Dataset.from_tensors(small_batch).repeat(), 1, 0.01)
    with pytest.raises(ValueError, match="got an empty dataset"):
        model.fit_feature_path(tf.data.Dataset.from_tensors(small_batch).take(0), 1, 0.01)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        model.fit_feature_path(tf.data.Dataset.from_tensors(small_batch), 0, 0.01)
    model.compile(tf.keras.optimizers.Adam(1e-3))
    with pytest.raises(RuntimeError, match=r"must run before compile\(\)"):
        model.fit_feature_path(tf.data.Dataset.from_tensors(small_batch), 1, 0.01)
    model.fit_feature_path(tf.data.Dataset.from_tensors(small_batch), 1, 0.01, freeze=False)


@pytest.mark.slow
def test_two_stages_under_mixed_precision(small_data):
    files = data_input.list_files(small_data)
    ds = data_input.make_dataset(files, 256, cache=True).take(3)
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = LFM4AdsModel(ModelConfig(feature_path=True, **SMALL))
        history = model.fit_feature_path(ds, 2, 0.05)
        model.compile(tf.keras.optimizers.Adam(1e-3))
        model.fit(ds, epochs=1, verbose=0)
        out = model(next(iter(ds)))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(history))
    assert out["ad_logit"].dtype == tf.float32
    assert np.isfinite(out["ad_logit"].numpy()).all()
    assert model.feature_path.alpha.dtype == tf.float32  # variables stay float32


def test_fields_are_configuration():
    """Other fields than the defaults: U from the user's geo only, V from the category only,
    no biases; the model passes ModelConfig's fields through."""
    layer = FeatureAffinityPath(SIZES, heads=("ad",), user_fields=(features.USER_GEO,),
                                item_fields=(features.ITEM_CATEGORY,), bias_fields=())
    ids = _ids()
    out = layer(ids)["ad"].numpy()[:, 0]
    assert set(layer.tables) == {features.USER_GEO, features.ITEM_CATEGORY} and layer.biases == {}
    u = layer.tables[features.USER_GEO].numpy()[ids[features.USER_GEO].numpy()]
    v = layer.tables[features.ITEM_CATEGORY].numpy()[ids[features.ITEM_CATEGORY].numpy()]
    cos = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    np.testing.assert_allclose(out, layer.alpha.numpy()[0] * cos, rtol=1e-5, atol=1e-5)
    assert FeatureAffinityPath.from_config(layer.get_config()).item_fields == (
        features.ITEM_CATEGORY,
    )
    model = LFM4AdsModel(
        ModelConfig(
            feature_path=True,
            feature_path_user_fields=(features.USER_AGE,),
            feature_path_bias_fields=(features.SCENARIO,),
            **SMALL,
        )
    )
    assert model.feature_path.user_fields == (features.USER_AGE,)
    assert model.feature_path.bias_fields == (features.SCENARIO,)
    with pytest.raises(ValueError, match="feature_path_user_fields must name at least one"):
        ModelConfig(feature_path_user_fields=())
    with pytest.raises(ValueError, match=r"lacks the feature path's fields \['user_bogus'\]"):
        FeatureAffinityPath(SIZES, heads=("ad",), user_fields=("user_bogus",))
