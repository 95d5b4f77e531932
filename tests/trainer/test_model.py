"""The triple-tower model: outputs, CR extraction points, masked losses, branch modes."""

import numpy as np
import pytest
import tensorflow as tf

from common import features
from trainer.config import ModelConfig, TrainConfig, from_preset
from trainer.model import LFM4AdsModel

SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16), tower_hidden=(16,),
             representation_dim=8, embedding_dim=4)
# x0 = UR (8) + IR (8) + UR * IR (8) + 8 field embeddings (4 each): scenario, the 4 user and
# the 3 item features that are not ids (ids reach the branches through UR and IR only).
D0 = 8 + 8 + 8 + 8 * 4


@pytest.mark.parametrize("interaction", ["cross", "cross_mix", "fm"])
@pytest.mark.parametrize("branches", ["dual", "shared"])
def test_outputs_and_shapes(small_batch, interaction, branches):
    model = LFM4AdsModel(ModelConfig(interaction=interaction, branches=branches, **SMALL))
    out = model(small_batch)
    batch = small_batch[features.LABEL].shape[0]
    assert out["ad_prediction"].shape == (batch, 1)
    assert out["user_representation"].shape == (batch, 8)
    assert out["item_representation"].shape == (batch, 8)
    assert out["cross_representation"].shape == (batch, 32)  # default: mlp_1, before its ReLU
    p = out["ad_prediction"].numpy()
    assert np.all((p > 0) & (p < 1))
    same = np.allclose(out["ad_prediction"], out["content_prediction"])
    assert same == (branches == "shared")


@pytest.mark.parametrize(
    "interaction,cr_layer,width",
    [("cross", "embedding", D0), ("cross", "cross_2", D0), ("cross", "mlp_1", 32),
     ("cross_mix", "cross_1", D0), ("fm", "cross_1", D0 + 4)],
)
def test_cr_layer_selects_the_named_output(small_batch, interaction, cr_layer, width):
    model = LFM4AdsModel(ModelConfig(interaction=interaction, cr_layer=cr_layer, **SMALL))
    cr = model.cross_representation(small_batch)
    assert cr.shape == (small_batch[features.LABEL].shape[0], width)
    if cr_layer == "embedding":
        # The embedding CR starts with [UR, IR].
        np.testing.assert_allclose(cr[:, :8], model.user_representation(small_batch), atol=1e-6)
        ir = model.item_representation(small_batch)
        np.testing.assert_allclose(cr[:, 8:16], ir, atol=1e-6)
        np.testing.assert_allclose(cr[:, 16:24], cr[:, :8] * ir, atol=1e-6)


def test_cr_read_before_the_activation_and_normalised(small_batch):
    base = LFM4AdsModel(ModelConfig(cr_layer="mlp_1", cr_activation="post", **SMALL))
    base(small_batch)
    outputs = base.ad_branch_outputs(small_batch)
    # The ReLU of the pre-activation is the layer's output.
    np.testing.assert_allclose(outputs["mlp_1"], tf.nn.relu(outputs["pre_mlp_1"]), atol=1e-6)
    for kwargs, expected in (
            ({"cr_activation": "pre"}, outputs["pre_mlp_1"]),
            ({"cr_normalization": "l2"}, tf.math.l2_normalize(outputs["mlp_1"], axis=-1)),
            ({"cr_activation": "pre", "cr_normalization": "l2"},
             tf.math.l2_normalize(outputs["pre_mlp_1"], axis=-1))):
        model = LFM4AdsModel(ModelConfig(**{"cr_layer": "mlp_1", "cr_activation": "post",
                                            **SMALL, **kwargs}))
        model(small_batch)
        model.set_weights(base.get_weights())  # same weights, another read
        np.testing.assert_allclose(model.cross_representation(small_batch), expected, atol=1e-5)
        np.testing.assert_allclose(model(small_batch)["cross_representation"], expected,
                                   atol=1e-5)


def test_layer_normalised_mlp_keeps_every_unit_alive(small_batch):
    model = LFM4AdsModel(ModelConfig(mlp_normalization="layer", cr_activation="pre", **SMALL))
    pre = model.ad_branch_outputs(small_batch)["pre_mlp_2"].numpy()  # [batch, 16]
    # LayerNorm (gamma 1, beta 0 at init): each row has mean 0 and unit variance over units.
    np.testing.assert_allclose(pre.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(pre.std(axis=1), 1.0, atol=1e-2)
    names = [v.name for v in model.ad_branch.trainable_variables]
    assert any("mlp/norm_2/gamma" in n for n in names), names


def test_default_and_paper_readings():
    assert (ModelConfig().cr_output(), ModelConfig().cr_normalization) == ("pre_mlp_1", "none")
    paper, _ = from_preset("paper")
    assert paper.cr_output() == "mlp_3"  # the last hidden layer, after its ReLU


def test_bad_cr_read():
    # layers without an activation read the same before and after it
    assert ModelConfig(cr_layer="cross_1", cr_activation="pre").cr_output() == "cross_1"
    with pytest.raises(ValueError, match=r"cr_normalization must be one of .* got 'l1'"):
        ModelConfig(cr_normalization="l1")
    with pytest.raises(ValueError, match=r"mlp_normalization must be one of .* got 'batch'"):
        ModelConfig(mlp_normalization="batch")


def test_bad_cr_layer():
    with pytest.raises(ValueError, match=r"cr_layer 'mlp_3' is out of range: the MLP has 2"):
        ModelConfig(mlp_hidden=(8, 4), cr_layer="mlp_3")
    with pytest.raises(ValueError, match=r"got 'penultimate'"):
        ModelConfig(cr_layer="penultimate")
    with pytest.raises(ValueError, match="interaction must be one of"):
        ModelConfig(interaction="dcn")


def _only(batch, domain: bytes):
    keep = batch[features.DOMAIN].numpy() == domain
    return {k: tf.boolean_mask(v, keep) for k, v in batch.items()}


def _grads(model, batch):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    variables = {
        "ad": model.ad_branch.trainable_variables,
        "content": model.content_branch.trainable_variables,
        "user": model.user_tower.trainable_variables,
    }
    grads = tape.gradient(loss, variables)
    return {k: sum(float(tf.reduce_sum(tf.abs(g))) for g in v if g is not None)
            for k, v in grads.items()}


@pytest.mark.parametrize("scale", [1.0, 0.0])
def test_losses_are_masked_by_domain(small_batch, scale):
    model = LFM4AdsModel(ModelConfig(ad_tower_gradient_scale=scale, **SMALL))
    model(small_batch)
    content_only = _grads(model, _only(small_batch, features.DOMAIN_CONTENT))
    assert content_only["ad"] == 0.0 and content_only["content"] > 0 and content_only["user"] > 0
    ad_only = _grads(model, _only(small_batch, features.DOMAIN_AD))
    assert ad_only["content"] == 0.0 and ad_only["ad"] > 0
    # With scale 0 the ad loss trains its branch only; the towers learn from content.
    assert (ad_only["user"] > 0) == (scale > 0)


def test_ad_tower_gradient_scale_keeps_the_forward_pass(small_batch):
    base = LFM4AdsModel(ModelConfig(**SMALL))
    damped = LFM4AdsModel(ModelConfig(ad_tower_gradient_scale=0.0, **SMALL))
    base(small_batch)
    damped(small_batch)
    damped.set_weights(base.get_weights())
    np.testing.assert_allclose(damped(small_batch)["ad_prediction"],
                               base(small_batch)["ad_prediction"], rtol=1e-6)
    with pytest.raises(ValueError, match="needs branches='dual'"):
        ModelConfig(branches="shared", ad_tower_gradient_scale=0.0)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got -1"):
        ModelConfig(ad_tower_gradient_scale=-1.0)


def test_retrieval_loss_adds_to_the_loss(small_batch):
    base = LFM4AdsModel(ModelConfig(**SMALL), TrainConfig(retrieval_loss_weight=0.0))
    with_retrieval = LFM4AdsModel(ModelConfig(**SMALL), TrainConfig(retrieval_loss_weight=1.0))
    base(small_batch)
    with_retrieval(small_batch)
    with_retrieval.set_weights(base.get_weights())
    extra = float(with_retrieval.compute_loss(small_batch)) - float(base.compute_loss(small_batch))
    # In-batch softmax over n positives is about log(n) at initialisation.
    positives = int(np.sum(small_batch[features.LABEL].numpy()))
    assert extra == pytest.approx(np.log(256) * positives / 256, rel=0.3)


@pytest.mark.slow
def test_fit_lowers_the_loss(small_data):
    from trainer import data_input

    files = data_input.list_files(small_data)
    ds = data_input.make_dataset(files, 128, cache=True)
    model = LFM4AdsModel(ModelConfig(**SMALL))
    model.compile(tf.keras.optimizers.Adam(5e-3))
    history = model.fit(ds, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("id_dropout,trained", [(1.0, False), (0.0, True)])
@pytest.mark.slow
def test_id_dropout_hides_ids_in_training(small_batch, id_dropout, trained):
    model = LFM4AdsModel(ModelConfig(id_dropout=id_dropout, **SMALL))
    model.compile(tf.keras.optimizers.Adam(1e-2))
    model.fit(tf.data.Dataset.from_tensors(small_batch).repeat(3), verbose=0)
    # The id tables start at zero; with every id hidden in training the rows of real ids never
    # move (an id then contributes what an id never seen does: nothing), while row 0, "missing",
    # is what the hidden ids were mapped to and is learned (unused, so still zero, without it).
    user_table = model.embeddings.tables[features.USER_ID].numpy()
    assert bool(np.any(user_table[1:] != 0)) == trained
    assert bool(np.any(user_table[0] != 0)) == (not trained)
    assert bool(np.any(model.embeddings.tables[features.USER_GEO].numpy() != 0))


def test_id_dropout_out_of_range():
    with pytest.raises(ValueError, match=r"id_dropout must be in \[0, 1\], got 1.5"):
        ModelConfig(id_dropout=1.5)
