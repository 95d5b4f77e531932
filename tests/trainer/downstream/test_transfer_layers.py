"""NonLinearAdapter, LinearFusion, IsomorphicInteractionModule: numpy references, argument
errors, serialization and SavedModel round trips, the module's warm start."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from trainer.config import ModelConfig
from trainer.downstream.adapter import NonLinearAdapter
from trainer.downstream.iim import IsomorphicInteractionModule, branch_path
from trainer.downstream.linear_fusion import LinearFusion
from trainer.mix_tower import MixBranch

BATCH, FIELDS, WIDTH, D_CR = 4, 3, 5, 6
# The paper's CR reading (the last hidden MLP layer, after its ReLU), which the IIM's output
# follows (Eq. 5's f_DNN).
IIM_CONFIG = ModelConfig(representation_dim=4, mlp_hidden=(8, 6), num_interaction_layers=2,
                         embedding_dim=3, cr_layer=None, cr_activation="post")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _randomize(layer, rng):
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in layer.weights])


def _round_trips(layer, inputs, tmp_path):
    """The output after a serialize round trip (same weights) and after a SavedModel one."""
    want = tf.nest.map_structure(np.asarray, layer(inputs))
    clone = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(layer))
    assert clone.get_config() == layer.get_config()
    clone(inputs)
    clone.set_weights(layer.get_weights())
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                          want, tf.nest.map_structure(np.asarray, clone(inputs)))
    module = tf.Module()
    module.layer = layer
    module.f = tf.function(lambda: layer(inputs))
    tf.saved_model.save(module, str(tmp_path / "saved"))
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                          want, tf.nest.map_structure(np.asarray, restored.f()))


# -- NonLinearAdapter (Eq. 3-4) -------------------------------------------------------------
@pytest.mark.parametrize("per_field", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
def test_adapter_matches_numpy(per_field, use_bias):
    rng = np.random.default_rng(0)
    e = rng.normal(size=(BATCH, FIELDS, WIDTH)).astype(np.float32)
    cr = rng.normal(size=(BATCH, D_CR)).astype(np.float32)
    layer = NonLinearAdapter(per_field=per_field, use_bias=use_bias)
    layer((e, cr))
    _randomize(layer, rng)
    m = layer.kernel.numpy()
    b = layer.bias.numpy() if use_bias else 0.0
    want = np.zeros_like(e)
    for n in range(BATCH):  # e_f ⊙ σ(CR M) for every field f, written plainly
        gate = _sigmoid(cr[n] @ m + b)
        for f in range(FIELDS):
            g = gate[f * WIDTH:(f + 1) * WIDTH] if per_field else gate
            want[n, f] = e[n, f] * g
    np.testing.assert_allclose(layer((e, cr)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_adapter_activation_and_cold_start_gate():
    e = np.ones((2, FIELDS, WIDTH), np.float32)
    zeros = np.zeros((2, D_CR), np.float32)
    np.testing.assert_allclose(NonLinearAdapter()((e, zeros)), 0.5 * e)  # σ(0) = 1/2
    np.testing.assert_allclose(NonLinearAdapter(activation="tanh")((e, zeros)), 0.0 * e)


def test_adapter_errors():
    with pytest.raises(ValueError, match="activation 'nope' is not a Keras activation"):
        NonLinearAdapter(activation="nope")
    with pytest.raises(ValueError, match="per_field must be a bool, got 'yes'"):
        NonLinearAdapter(per_field="yes")
    with pytest.raises(ValueError, match=r"E must be \[batch, fields, width\].*got shape"):
        NonLinearAdapter()((tf.zeros([2, 5]), tf.zeros([2, 3])))
    with pytest.raises(ValueError, match=r"CR must be \[batch, d_cr\]"):
        NonLinearAdapter()((tf.zeros([2, 3, 5]), tf.zeros([2, 3, 1])))


def test_adapter_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    inputs = (tf.constant(rng.normal(size=(BATCH, FIELDS, WIDTH)), tf.float32),
              tf.constant(rng.normal(size=(BATCH, D_CR)), tf.float32))
    layer = NonLinearAdapter(activation="tanh", per_field=True, use_bias=True,
                             kernel_regularizer="l2")
    layer(inputs)
    _randomize(layer, rng)
    _round_trips(layer, inputs, tmp_path)


# -- LinearFusion ---------------------------------------------------------------------------
def test_linear_fusion_matches_numpy_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(BATCH, 3)).astype(np.float32)
    b = rng.normal(size=(BATCH, 2)).astype(np.float32)
    layer = LinearFusion(4)
    layer([a, b])
    _randomize(layer, rng)
    want = np.concatenate([a, b], axis=1) @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(layer([a, b]).numpy(), want, rtol=1e-5, atol=1e-6)
    single = LinearFusion(2, use_bias=False)
    np.testing.assert_allclose(single(a).numpy(), a @ single.kernel.numpy(), rtol=1e-5)
    _round_trips(layer, [tf.constant(a), tf.constant(b)], tmp_path)
    with pytest.raises(ValueError, match="units must be a positive int, got 0"):
        LinearFusion(0)
    with pytest.raises(ValueError, match=r"every input must be \[batch, d\]"):
        LinearFusion(2)(tf.zeros([2, 3, 4]))


# -- IsomorphicInteractionModule (Eq. 5) ----------------------------------------------------
def _branch_reference(branch: MixBranch, ur, ir, config: ModelConfig):
    """The same branch arithmetic written with numpy: x0 = [UR, IR, UR*IR], cross layers
    x_{l+1} = x0 * (x_l W + b) + x_l, ReLU MLP, logit + affinity(UR*IR)."""
    weights = {branch_path(v.name): v.numpy() for v in branch.variables}
    x0 = np.concatenate([ur, ir, ur * ir], axis=1)
    x = x0
    for layer in range(config.num_interaction_layers):
        w, b = weights[f"cross_{layer + 1}/kernel"], weights[f"cross_{layer + 1}/bias"]
        x = x0 * (x @ w + b) + x
    for i in range(len(config.mlp_hidden)):
        x = np.maximum(x @ weights[f"mlp/dense_{i + 1}/kernel"]
                       + weights[f"mlp/dense_{i + 1}/bias"], 0.0)
    logit = (x @ weights["logit_label/kernel"] + weights["logit_label/bias"]
             + (ur * ir) @ weights["affinity_label/kernel"])
    return x, logit


def test_iim_matches_numpy():
    rng = np.random.default_rng(3)
    ur = rng.normal(size=(BATCH, 4)).astype(np.float32)
    ir = rng.normal(size=(BATCH, 4)).astype(np.float32)
    iim = IsomorphicInteractionModule(IIM_CONFIG)
    iim((ur, ir))
    _randomize(iim, rng)
    out = iim((ur, ir))
    rep, logit = _branch_reference(iim.branch, ur, ir, IIM_CONFIG)
    assert out["representation"].shape == (BATCH, 6)  # the last hidden MLP layer (Eq. 5)
    np.testing.assert_allclose(out["representation"], rep, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logit"], logit, rtol=1e-4, atol=1e-5)


def test_iim_follows_the_upstream_architecture():
    ur = tf.zeros([2, 4])
    for config, shape in ((dataclasses.replace(IIM_CONFIG, cr_layer="mlp_1"), (2, 8)),
                          (dataclasses.replace(IIM_CONFIG, interaction="cross_mix",
                                               cr_layer="cross_2"), (2, 12)),
                          (dataclasses.replace(IIM_CONFIG, interaction="fm"), (2, 6))):
        assert IsomorphicInteractionModule(config)((ur, ur))["representation"].shape == shape
    with pytest.raises(ValueError, match="UR and IR must have one width for UR ⊙ IR"):
        IsomorphicInteractionModule(IIM_CONFIG)((tf.zeros([2, 4]), tf.zeros([2, 5])))
    with pytest.raises(ValueError, match=r"upstream_config has unknown fields \['nope'\]"):
        IsomorphicInteractionModule({"nope": 1})


def test_iim_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    inputs = (tf.constant(rng.normal(size=(BATCH, 4)), tf.float32),
              tf.constant(rng.normal(size=(BATCH, 4)), tf.float32))
    iim = IsomorphicInteractionModule(dataclasses.replace(IIM_CONFIG, interaction="cross_mix"))
    iim(inputs)
    _randomize(iim, rng)
    _round_trips(iim, inputs, tmp_path)


def test_warm_start_copies_the_upstream_block_for_ur_and_ir():
    """The warm-started module equals the upstream branch fed x0 with zero field embeddings."""
    rng = np.random.default_rng(5)
    upstream = MixBranch(IIM_CONFIG, ("label", "conversion"), name="ad_branch")
    ur = rng.normal(size=(BATCH, 4)).astype(np.float32)
    ir = rng.normal(size=(BATCH, 4)).astype(np.float32)
    fields = [tf.zeros([BATCH, 3]) for _ in range(5)]
    upstream((ur, ir), fields)
    _randomize(upstream, rng)
    want = upstream((ur, ir), fields)
    iim = IsomorphicInteractionModule(IIM_CONFIG)
    iim((ur, ir))
    copied = iim.warm_start_from(upstream.variables)
    assert "cross_1/kernel" in copied and "mlp/dense_1/kernel" in copied
    out = iim((ur, ir))
    np.testing.assert_allclose(out["representation"], want["mlp_2"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logit"], want["logit_label"], rtol=1e-4, atol=1e-5)

    fm = IsomorphicInteractionModule(dataclasses.replace(IIM_CONFIG, interaction="fm"))
    fm((ur, ir))
    with pytest.raises(ValueError, match="supports the interactions 'cross' and 'cross_mix'"):
        fm.warm_start_from(upstream.variables)
    with pytest.raises(ValueError, match="the upstream has no ad-branch variable 'cross_1/"):
        iim.warm_start_from([])
    # The upstream's ad module stops at the CR layer: the head is re-initialised.
    path = [v for v in upstream.variables if "logit" not in v.name and "affinity" not in v.name]
    fresh = IsomorphicInteractionModule(IIM_CONFIG)
    fresh((ur, ir))
    head = fresh.branch.logits["label"].kernel.numpy()
    assert not any("logit" in p for p in fresh.warm_start_from(path))
    np.testing.assert_array_equal(fresh.branch.logits["label"].kernel.numpy(), head)
    np.testing.assert_allclose(fresh((ur, ir))["representation"], want["mlp_2"], rtol=1e-4,
                               atol=1e-5)
