"""CrossNetV2: numpy reference, equality with tfrs.layers.dcn.Cross, gradients, serialization,
SavedModel, XLA and mixed precision."""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow; conftest does too)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.layers.cross import CrossNetV2

DIM = 6
BATCH = 5
RANK = 3


def randomize(layer: tf.keras.layers.Layer, rng: np.random.Generator, scale: float = 0.4):
    """Non-trivial weights everywhere (the default bias is zero, which would hide bias bugs)."""
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * scale for w in layer.weights])


def built(rng, x0=None, **kwargs) -> CrossNetV2:
    layer = CrossNetV2(**kwargs)
    layer(x0 if x0 is not None else tf.zeros([BATCH, DIM]))
    randomize(layer, rng)
    return layer


def numpy_cross(x0, x, w, b, diag_scale):
    """`x0 * (x @ w + b + diag_scale * x) + x` written plainly; `w` is `[dim, dim]`."""
    out = np.zeros_like(x0, dtype=np.float64)
    for n in range(x0.shape[0]):
        for i in range(x0.shape[1]):
            wx = sum(x[n, j] * w[j, i] for j in range(x0.shape[1])) + b[i] + diag_scale * x[n, i]
            out[n, i] = x0[n, i] * wx + x[n, i]
    return out


def layer_matrix(layer: CrossNetV2) -> np.ndarray:
    if layer.projection_dim is None:
        return layer.kernel.numpy().astype(np.float64)
    return layer.v_kernel.numpy().astype(np.float64) @ layer.u_kernel.numpy().astype(np.float64)


@pytest.mark.parametrize("projection_dim", [None, RANK])
@pytest.mark.parametrize("diag_scale", [0.0, 0.7])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("with_x", [False, True])
def test_matches_numpy_reference(rng, projection_dim, diag_scale, use_bias, with_x):
    layer = built(rng, projection_dim=projection_dim, diag_scale=diag_scale, use_bias=use_bias)
    x0 = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    x = rng.normal(size=(BATCH, DIM)).astype(np.float32) if with_x else x0
    got = layer(x0, x).numpy() if with_x else layer(x0).numpy()
    b = layer.bias.numpy() if use_bias else np.zeros(DIM)
    want = numpy_cross(x0, x, layer_matrix(layer), b, diag_scale)
    assert got.shape == (BATCH, DIM)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weight_shapes_full_and_low_rank(rng):
    full = built(rng)
    assert full.kernel.shape == (DIM, DIM) and full.bias.shape == (DIM,)
    low = built(rng, projection_dim=RANK)
    assert low.v_kernel.shape == (DIM, RANK) and low.u_kernel.shape == (RANK, DIM)


@pytest.mark.parametrize("diag_scale", [0.0, 0.5])
@pytest.mark.parametrize("use_bias", [True, False])
def test_equals_tfrs_cross_full_rank(rng, diag_scale, use_bias):
    ours = built(rng, diag_scale=diag_scale, use_bias=use_bias)
    theirs = tfrs.layers.dcn.Cross(diag_scale=diag_scale, use_bias=use_bias)
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    theirs(x0)
    theirs._dense.kernel.assign(ours.kernel)
    if use_bias:
        theirs._dense.bias.assign(ours.bias)
    np.testing.assert_array_equal(ours(x0).numpy(), theirs(x0).numpy())
    x1 = ours(x0)
    np.testing.assert_array_equal(ours(x0, x1).numpy(), theirs(x0, x1).numpy())


@pytest.mark.parametrize("diag_scale", [0.0, 0.5])
@pytest.mark.parametrize("use_bias", [True, False])
def test_equals_tfrs_cross_low_rank(rng, diag_scale, use_bias):
    ours = built(rng, projection_dim=RANK, diag_scale=diag_scale, use_bias=use_bias)
    theirs = tfrs.layers.dcn.Cross(projection_dim=RANK, diag_scale=diag_scale, use_bias=use_bias)
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    theirs(x0)
    # tfrs: x -> _dense_u ([dim, r], no bias) -> _dense_v ([r, dim] + bias).
    theirs._dense_u.kernel.assign(ours.v_kernel)
    theirs._dense_v.kernel.assign(ours.u_kernel)
    if use_bias:
        theirs._dense_v.bias.assign(ours.bias)
    np.testing.assert_array_equal(ours(x0).numpy(), theirs(x0).numpy())
    x1 = ours(x0)
    np.testing.assert_array_equal(ours(x0, x1).numpy(), theirs(x0, x1).numpy())


def tf_reference(layer: CrossNetV2, x0, x):
    """The same equation in plain TF on the layer's variables (for autodiff comparisons)."""
    if layer.projection_dim is None:
        wx = tf.matmul(x, layer.kernel)
    else:
        wx = tf.matmul(tf.matmul(x, layer.v_kernel), layer.u_kernel)
    return x0 * (wx + layer.bias + layer.diag_scale * x) + x


@pytest.mark.parametrize("projection_dim", [None, RANK])
def test_gradients_match_reference(rng, projection_dim):
    layer = built(rng, projection_dim=projection_dim, diag_scale=0.3)
    x0 = tf.Variable(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    x = tf.Variable(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    sources = [x0, x, *layer.trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        got_loss = tf.reduce_sum(layer(x0, x) * upstream)
        want_loss = tf.reduce_sum(tf_reference(layer, x0, x) * upstream)
    got = tape.gradient(got_loss, sources)
    want = tape.gradient(want_loss, sources)
    for g, w, v in zip(got, want, sources, strict=True):
        assert g is not None, v.name
        assert np.all(np.isfinite(g.numpy())) and np.any(g.numpy() != 0), v.name
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5, err_msg=v.name)


@pytest.mark.parametrize("projection_dim", [None, RANK])
def test_numeric_gradient(rng, projection_dim):
    layer = CrossNetV2(projection_dim=projection_dim, diag_scale=0.2, dtype="float64")
    x0 = tf.constant(rng.normal(size=(3, 4)), tf.float64)
    layer(x0)
    layer.set_weights([rng.normal(size=w.shape) * 0.4 for w in layer.weights])
    x = tf.constant(rng.normal(size=(3, 4)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda a, b: layer(a, b), [x0, x], delta=1e-6
    )
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("projection_dim", [None, RANK])
def test_config_round_trips(rng, projection_dim):
    layer = built(
        rng,
        projection_dim=projection_dim,
        diag_scale=0.25,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=tf.keras.regularizers.L2(1e-3),
        name="cross_a",
    )
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    config = layer.get_config()
    assert config["projection_dim"] == projection_dim and config["diag_scale"] == 0.25
    clones = [
        CrossNetV2.from_config(config),
        tf.keras.layers.deserialize(tf.keras.layers.serialize(layer)),
    ]
    for clone in clones:
        assert isinstance(clone, CrossNetV2)
        assert clone.get_config() == config
        clone(x0)
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(clone(x0).numpy(), layer(x0).numpy())
        assert len(clone.losses) == len(layer.losses) > 0  # the regularizer survived


def two_layer_model(projection_dim):
    x0 = tf.keras.Input([DIM])
    x1 = CrossNetV2(projection_dim=projection_dim, diag_scale=0.1)(x0)
    x2 = CrossNetV2(projection_dim=projection_dim)(x0, x1)
    return tf.keras.Model(x0, tf.keras.layers.Dense(1)(x2))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize(
    ("projection_dim", "filename"),
    [(None, "saved_model"), (RANK, "saved_model"), (RANK, "model.keras"), (None, "model.h5")],
)
def test_model_save_and_load(rng, tmp_path, projection_dim, filename):
    model = two_layer_model(projection_dim)
    model.set_weights([rng.normal(size=w.shape) * 0.4 for w in model.weights])
    x0 = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    path = str(tmp_path / filename)
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert any(isinstance(layer, CrossNetV2) for layer in loaded.layers)
    np.testing.assert_allclose(loaded(x0).numpy(), model(x0).numpy(), rtol=1e-6, atol=1e-6)
    if filename == "saved_model":
        # The serving signature (no Keras objects) computes the same numbers.
        serving = tf.saved_model.load(path).signatures["serving_default"]
        out = next(iter(serving(tf.constant(x0)).values()))
        np.testing.assert_allclose(out.numpy(), model(x0).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("projection_dim", [None, RANK])
@pytest.mark.slow
def test_jit_compile(rng, projection_dim):
    layer = built(rng, projection_dim=projection_dim, diag_scale=0.5)
    x0 = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    x = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    eager = layer(x0, x).numpy()
    xla = tf.function(lambda a, b: layer(a, b), jit_compile=True)(x0, x).numpy()
    np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-5)

    model = two_layer_model(projection_dim)
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


@pytest.mark.parametrize("projection_dim", [None, RANK])
@pytest.mark.parametrize("jit", [False, True])
def test_mixed_precision(rng, mixed_policy, projection_dim, jit):
    reference = CrossNetV2(projection_dim=projection_dim, diag_scale=0.5, dtype="float32")
    layer = CrossNetV2(projection_dim=projection_dim, diag_scale=0.5)
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
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.cast(layer(x0, x), tf.float32))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"projection_dim": 0}, "projection_dim.*0"),
        ({"projection_dim": -2}, "projection_dim.*-2"),
        ({"projection_dim": 2.5}, "projection_dim.*2.5"),
        ({"diag_scale": -1.0}, "diag_scale.*-1.0"),
        ({"diag_scale": "big"}, "diag_scale.*big"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossNetV2(**kwargs)


def test_rejects_unknown_last_dimension_and_rank_1():
    with pytest.raises(ValueError, match="last dimension"):
        CrossNetV2().build(tf.TensorShape([None, None]))
    with pytest.raises(ValueError, match="rank >= 2"):
        CrossNetV2()(tf.zeros([DIM]))


@pytest.mark.parametrize("projection_dim", [None, RANK])
def test_rank_3_inputs_match_tfrs(rng, projection_dim):
    """`[batch, steps, dim]` inputs are crossed per position, like `tfrs.layers.dcn.Cross`."""
    x0 = tf.constant(rng.normal(size=(BATCH, 2, DIM)), tf.float32)
    ours = built(rng, x0=x0, projection_dim=projection_dim, diag_scale=0.5)
    theirs = tfrs.layers.dcn.Cross(projection_dim=projection_dim, diag_scale=0.5)
    theirs(x0)
    theirs.set_weights(ours.get_weights())  # same order: kernel(s) then bias
    got = ours(x0).numpy()
    assert got.shape == (BATCH, 2, DIM)
    np.testing.assert_allclose(got, theirs(x0).numpy(), rtol=1e-6, atol=1e-6)
