"""CrossNetMix: per-expert loop references (numpy and TF), gradients, gates, serialization,
SavedModel, XLA and mixed precision."""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow; conftest does too)

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from trainer.layers.cross_mix import CrossNetMix

DIM = 6
BATCH = 5
EXPERTS = 3
RANK = 2


def randomize(layer: tf.keras.layers.Layer, rng: np.random.Generator, scale: float = 0.5):
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * scale for w in layer.weights])


def built(rng, **kwargs) -> CrossNetMix:
    kwargs = {"num_experts": EXPERTS, "low_rank": RANK, **kwargs}
    layer = CrossNetMix(**kwargs)
    layer(tf.zeros([BATCH, DIM]))
    randomize(layer, rng)
    return layer


NUMPY_ACTIVATIONS = {
    "tanh": np.tanh,
    None: lambda v: v,
    "linear": lambda v: v,
    "relu": lambda v: np.maximum(v, 0.0),
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
}


def numpy_mix(x0, x, v, c, u, gate_w, b, g):
    """Eq. 3-4 of DCN V2 with one explicit loop over experts (float64)."""
    x0, x = x0.astype(np.float64), x.astype(np.float64)
    logits = x @ gate_w  # [batch, experts]
    gates = np.exp(logits - logits.max(axis=1, keepdims=True))
    gates /= gates.sum(axis=1, keepdims=True)
    out = x.copy()
    for i in range(v.shape[0]):
        expert = x0 * (g(g(x @ v[i]) @ c[i]) @ u[i] + b)  # [batch, dim]
        out += gates[:, i : i + 1] * expert
    return out


@pytest.mark.parametrize("activation", ["tanh", None, "linear", "relu", "sigmoid"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("with_x", [False, True])
def test_matches_per_expert_numpy_reference(rng, activation, use_bias, with_x):
    layer = built(rng, activation=activation, use_bias=use_bias)
    x0 = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    x = rng.normal(size=(BATCH, DIM)).astype(np.float32) if with_x else x0
    got = layer(x0, x).numpy() if with_x else layer(x0).numpy()
    b = layer.bias.numpy() if use_bias else np.zeros(DIM)
    want = numpy_mix(
        x0,
        x,
        layer.v_kernel.numpy(),
        layer.c_kernel.numpy(),
        layer.u_kernel.numpy(),
        layer.gate_kernel.numpy(),
        b,
        NUMPY_ACTIVATIONS[activation],
    )
    assert got.shape == (BATCH, DIM)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weight_shapes(rng):
    layer = built(rng)
    assert layer.v_kernel.shape == (EXPERTS, DIM, RANK)
    assert layer.c_kernel.shape == (EXPERTS, RANK, RANK)
    assert layer.u_kernel.shape == (EXPERTS, RANK, DIM)
    assert layer.gate_kernel.shape == (DIM, EXPERTS)
    assert layer.bias.shape == (DIM,)


def test_every_expert_contributes(rng):
    """Changing any one expert's weights changes the output (no expert is dropped)."""
    layer = built(rng)
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    base = layer(x0).numpy()
    for i in range(EXPERTS):
        for var in (layer.v_kernel, layer.c_kernel, layer.u_kernel):
            saved = var.numpy()
            var.assign(tf.tensor_scatter_nd_add(saved, [[i]], [tf.ones(saved.shape[1:])]))
            assert not np.allclose(layer(x0).numpy(), base), (var.name, i)
            var.assign(saved)


def tf_per_expert(layer: CrossNetMix, x0, x):
    """Plain TF, one loop iteration per expert, on the layer's own variables."""
    gates = tf.nn.softmax(tf.matmul(x, layer.gate_kernel), axis=-1)  # [batch, experts]
    out = x
    for i in range(layer.num_experts):
        h = layer.activation(tf.matmul(x, layer.v_kernel[i]))
        h = layer.activation(tf.matmul(h, layer.c_kernel[i]))
        expert = x0 * (tf.matmul(h, layer.u_kernel[i]) + layer.bias)
        out = out + gates[:, i : i + 1] * expert
    return out


def test_gradients_match_per_expert_reference(rng):
    layer = built(rng)
    x0 = tf.Variable(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    x = tf.Variable(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    sources = [x0, x, *layer.trainable_variables]
    assert len(layer.trainable_variables) == 5
    with tf.GradientTape(persistent=True) as tape:
        got_loss = tf.reduce_sum(layer(x0, x) * upstream)
        want_loss = tf.reduce_sum(tf_per_expert(layer, x0, x) * upstream)
    got = tape.gradient(got_loss, sources)
    want = tape.gradient(want_loss, sources)
    for g, w, v in zip(got, want, sources, strict=True):
        assert g is not None, v.name
        assert np.all(np.isfinite(g.numpy())) and np.any(g.numpy() != 0), v.name
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5, err_msg=v.name)


def test_numeric_gradient(rng):
    layer = CrossNetMix(num_experts=2, low_rank=2, dtype="float64")
    x0 = tf.constant(rng.normal(size=(3, 4)), tf.float64)
    layer(x0)
    layer.set_weights([rng.normal(size=w.shape) * 0.5 for w in layer.weights])
    x = tf.constant(rng.normal(size=(3, 4)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda a, b: layer(a, b), [x0, x], delta=1e-6
    )
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


def test_config_round_trips(rng):
    layer = built(
        rng,
        activation="relu",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=tf.keras.regularizers.L2(1e-3),
        name="mix_a",
    )
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    config = layer.get_config()
    assert (config["num_experts"], config["low_rank"]) == (EXPERTS, RANK)
    assert config["activation"] == "relu"
    clones = [
        CrossNetMix.from_config(config),
        tf.keras.layers.deserialize(tf.keras.layers.serialize(layer)),
    ]
    for clone in clones:
        assert isinstance(clone, CrossNetMix)
        assert clone.get_config() == config
        clone(x0)
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(clone(x0).numpy(), layer(x0).numpy())
        assert len(clone.losses) == len(layer.losses) == 3  # V, C and U are regularized


def two_layer_model():
    x0 = tf.keras.Input([DIM])
    x1 = CrossNetMix(num_experts=EXPERTS, low_rank=RANK)(x0)
    x2 = CrossNetMix(num_experts=2, low_rank=RANK, activation=None)(x0, x1)
    return tf.keras.Model(x0, tf.keras.layers.Dense(1)(x2))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("filename", ["saved_model", "model.keras", "model.h5"])
def test_model_save_and_load(rng, tmp_path, filename):
    model = two_layer_model()
    model.set_weights([rng.normal(size=w.shape) * 0.5 for w in model.weights])
    x0 = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    path = str(tmp_path / filename)
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert any(isinstance(layer, CrossNetMix) for layer in loaded.layers)
    np.testing.assert_allclose(loaded(x0).numpy(), model(x0).numpy(), rtol=1e-6, atol=1e-6)
    if filename == "saved_model":
        serving = tf.saved_model.load(path).signatures["serving_default"]
        out = next(iter(serving(tf.constant(x0)).values()))
        np.testing.assert_allclose(out.numpy(), model(x0).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_jit_compile(rng):
    layer = built(rng)
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    x = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    eager = layer(x0, x).numpy()
    xla = tf.function(lambda a, b: layer(a, b), jit_compile=True)(x0, x).numpy()
    np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-5)

    model = two_layer_model()
    model.compile(loss="mse", optimizer="sgd", jit_compile=True)
    np.testing.assert_allclose(
        model.predict(x0, verbose=0), model(x0).numpy(), rtol=1e-5, atol=1e-5
    )
    before = [w.numpy() for w in model.trainable_weights]
    model.fit(x0, np.ones([BATCH, 1], np.float32), epochs=1, verbose=0)
    assert all(
        np.isfinite(w.numpy()).all() and np.any(w.numpy() != b)
        for w, b in zip(model.trainable_weights, before, strict=True)
    )


@pytest.mark.parametrize("jit", [False, True])
def test_mixed_precision(rng, mixed_policy, jit):
    reference = CrossNetMix(num_experts=EXPERTS, low_rank=RANK, dtype="float32")
    layer = CrossNetMix(num_experts=EXPERTS, low_rank=RANK)
    compute_dtype = tf.keras.mixed_precision.Policy(mixed_policy).compute_dtype
    assert layer.compute_dtype == compute_dtype
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    x = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    reference(x0)
    layer(x0)
    randomize(reference, rng)
    layer.set_weights(reference.get_weights())
    assert all(v.dtype == tf.float32 for v in layer.weights)
    call = tf.function(lambda a, b: layer(a, b), jit_compile=True) if jit else layer
    out = call(x0, x)
    assert out.dtype == compute_dtype
    np.testing.assert_allclose(
        out.numpy().astype(np.float32), reference(x0, x).numpy(), rtol=5e-2, atol=5e-2
    )
    assert layer.gates(x).dtype == tf.float32
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.cast(layer(x0, x), tf.float32))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)


def test_gating_is_stable_with_huge_logits(rng, mixed_policy):
    """Gate logits far beyond float16's range (65504) must not produce inf/NaN."""
    layer = CrossNetMix(num_experts=EXPERTS, low_rank=RANK)
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    layer(x0)
    randomize(layer, rng)
    layer.gate_kernel.assign(rng.normal(size=(DIM, EXPERTS)) * 1e6)
    gates = layer.gates(x0).numpy()
    assert np.isfinite(gates).all()
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-6)
    with tf.GradientTape() as tape:
        out = layer(x0)
        loss = tf.reduce_mean(tf.cast(out, tf.float32))
    assert np.isfinite(out.numpy().astype(np.float32)).all()
    grads = tape.gradient(loss, layer.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def test_gates_are_a_softmax_over_experts(rng):
    layer = built(rng)
    x = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    gates = layer.gates(x).numpy()
    assert gates.shape == (BATCH, EXPERTS)
    assert (gates > 0).all()
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_experts": 0}, "num_experts.*0"),
        ({"num_experts": 2.0}, "num_experts.*2.0"),
        ({"low_rank": -1}, "low_rank.*-1"),
        ({"low_rank": None}, "low_rank.*None"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossNetMix(**kwargs)


def test_rejects_bad_activation():
    with pytest.raises(ValueError, match="no_such_activation"):
        CrossNetMix(activation="no_such_activation")


def test_rejects_inputs_that_are_not_batch_by_dim():
    with pytest.raises(ValueError, match=r"\[batch, dim\].*\(2, 3, 4\)"):
        CrossNetMix()(tf.zeros([2, 3, 4]))
