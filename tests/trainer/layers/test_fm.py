"""FactorizationMachine: explicit pairwise double loop, gradients, serialization, SavedModel, XLA
and mixed precision."""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow; conftest does too)

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from trainer.layers.fm import FactorizationMachine

BATCH = 4
FIELDS = 5
DIM = 3


def pairwise_numpy(v: np.ndarray) -> np.ndarray:
    """`Σ_{f<g} v_f ⊙ v_g` with the explicit double loop over field pairs: `[batch, dim]`."""
    v = v.astype(np.float64)
    out = np.zeros((v.shape[0], v.shape[2]))
    for f in range(v.shape[1]):
        for g in range(f + 1, v.shape[1]):
            out += v[:, f, :] * v[:, g, :]
    return out


def pairwise_tf(v: tf.Tensor) -> tf.Tensor:
    out = tf.zeros_like(v[:, 0, :])
    for f in range(v.shape[1]):
        for g in range(f + 1, v.shape[1]):
            out += v[:, f, :] * v[:, g, :]
    return out


@pytest.mark.parametrize("fields", [1, 2, FIELDS])
def test_matches_pairwise_double_loop(rng, fields):
    v = rng.normal(size=(BATCH, fields, DIM)).astype(np.float32)
    got = FactorizationMachine()(v).numpy()
    assert got.shape == (BATCH, DIM)
    np.testing.assert_allclose(got, pairwise_numpy(v), rtol=1e-5, atol=1e-5)
    summed = FactorizationMachine(reduce_sum=True)(v).numpy()
    assert summed.shape == (BATCH, 1)
    np.testing.assert_allclose(
        summed, pairwise_numpy(v).sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-5
    )


def test_gradients_match_double_loop(rng):
    v = tf.Variable(rng.normal(size=(BATCH, FIELDS, DIM)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        got_loss = tf.reduce_sum(FactorizationMachine()(v) * upstream)
        want_loss = tf.reduce_sum(pairwise_tf(v) * upstream)
    got, want = tape.gradient(got_loss, v).numpy(), tape.gradient(want_loss, v).numpy()
    assert np.isfinite(got).all() and np.any(got != 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Closed form: d/dv_f Σ_{f<g} v_f v_g = Σ_g v_g − v_f.
    closed = (v.numpy().sum(axis=1, keepdims=True) - v.numpy()) * upstream.numpy()[:, None, :]
    np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-5)


def test_numeric_gradient(rng):
    v = tf.constant(rng.normal(size=(2, 3, 2)), tf.float64)
    layer = FactorizationMachine(reduce_sum=True, dtype="float64")
    theoretical, numerical = tf.test.compute_gradient(layer, [v], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduce_sum", [False, True])
def test_config_round_trips(rng, reduce_sum):
    layer = FactorizationMachine(reduce_sum=reduce_sum, name="fm_a")
    v = rng.normal(size=(BATCH, FIELDS, DIM)).astype(np.float32)
    config = layer.get_config()
    assert config["reduce_sum"] is reduce_sum
    clones = [
        FactorizationMachine.from_config(config),
        tf.keras.layers.deserialize(tf.keras.layers.serialize(layer)),
    ]
    for clone in clones:
        assert isinstance(clone, FactorizationMachine)
        assert clone.get_config() == config
        np.testing.assert_array_equal(clone(v).numpy(), layer(v).numpy())


def fm_model(reduce_sum: bool = False):
    emb = tf.keras.Input([FIELDS, DIM])
    projected = tf.keras.layers.Dense(DIM)(emb)  # gives the model weights to save
    return tf.keras.Model(emb, FactorizationMachine(reduce_sum=reduce_sum)(projected))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize(
    ("reduce_sum", "filename"),
    [(False, "saved_model"), (True, "saved_model"), (False, "model.keras"), (True, "model.h5")],
)
def test_model_save_and_load(rng, tmp_path, reduce_sum, filename):
    model = fm_model(reduce_sum)
    model.set_weights([rng.normal(size=w.shape) for w in model.weights])
    v = rng.normal(size=(BATCH, FIELDS, DIM)).astype(np.float32)
    path = str(tmp_path / filename)
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert any(isinstance(layer, FactorizationMachine) for layer in loaded.layers)
    np.testing.assert_allclose(loaded(v).numpy(), model(v).numpy(), rtol=1e-6, atol=1e-6)
    if filename == "saved_model":
        serving = tf.saved_model.load(path).signatures["serving_default"]
        out = next(iter(serving(tf.constant(v)).values()))
        np.testing.assert_allclose(out.numpy(), model(v).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_jit_compile(rng):
    v = tf.constant(rng.normal(size=(BATCH, FIELDS, DIM)), tf.float32)
    for reduce_sum in (False, True):
        layer = FactorizationMachine(reduce_sum=reduce_sum)
        xla = tf.function(layer, jit_compile=True)(v).numpy()
        np.testing.assert_allclose(xla, layer(v).numpy(), rtol=1e-5, atol=1e-5)

    model = fm_model(reduce_sum=True)
    model.compile(loss="mse", optimizer="sgd", jit_compile=True)
    np.testing.assert_allclose(model.predict(v, verbose=0), model(v).numpy(), rtol=1e-5, atol=1e-5)
    before = [w.numpy() for w in model.trainable_weights]
    model.fit(v, np.ones([BATCH, 1], np.float32), epochs=1, verbose=0)
    assert all(
        np.isfinite(w.numpy()).all() and np.any(w.numpy() != b)
        for w, b in zip(model.trainable_weights, before, strict=True)
    )


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("reduce_sum", [False, True])
def test_mixed_precision(rng, mixed_policy, jit, reduce_sum):
    layer = FactorizationMachine(reduce_sum=reduce_sum)
    compute_dtype = tf.keras.mixed_precision.Policy(mixed_policy).compute_dtype
    assert layer.compute_dtype == compute_dtype
    v = tf.constant(rng.normal(size=(BATCH, FIELDS, DIM)), tf.float32)
    call = tf.function(layer, jit_compile=True) if jit else layer
    out = call(v)
    assert out.dtype == compute_dtype
    want = pairwise_numpy(v.numpy())
    if reduce_sum:
        want = want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.numpy().astype(np.float32), want, rtol=5e-2, atol=5e-2)
    model = fm_model(reduce_sum)  # created under the policy: Dense has float32 variables
    assert all(w.dtype == tf.float32 for w in model.weights)
    assert model(v).dtype == compute_dtype


def test_mixed_precision_large_embeddings_do_not_overflow(rng, mixed_policy):
    """(Σ v)^2 = 160000 and Σ v^2 = 80000 exceed float16's 65504; the result 40004 does not."""
    v = np.zeros((2, 3, DIM), np.float32)
    v[:, 0, :] = 200.0
    v[:, 1, :] = 200.0
    v[:, 2, :] = 0.01
    out = FactorizationMachine()(tf.constant(v))
    assert np.isfinite(out.numpy().astype(np.float32)).all()
    np.testing.assert_allclose(out.numpy().astype(np.float32), pairwise_numpy(v), rtol=1e-2)


@pytest.mark.parametrize("shape", [(BATCH, DIM), (BATCH, FIELDS, DIM, 2), (DIM,)])
def test_rejects_inputs_that_are_not_rank_3(shape):
    with pytest.raises(ValueError, match=f"rank 3.*got rank {len(shape)}"):
        FactorizationMachine()(tf.zeros(shape))


def test_rejects_bad_reduce_sum():
    with pytest.raises(ValueError, match="reduce_sum.*'yes'"):
        FactorizationMachine(reduce_sum="yes")
