"""Standalone Retrieval (Eq. 6): numpy references for the score and the InfoNCE loss, training,
recall@k, serialization, the BruteForce/ScaNN exports and serving them over gRPC."""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow; conftest does too)

# isort: split
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from common import features, signatures
from serving.model_server import ModelServer
from trainer.downstream.retrieval import (
    OUTPUT_KEYS,
    SCORE_SIGNATURE,
    StandaloneRetrieval,
    export_retrieval,
    recall_at_k,
)

D_UR, D_IR = 5, 3
NUM_CANDIDATES, K = 40, 5
EXACT_SCANN = dict(num_leaves=2, num_leaves_to_search=2, num_reordering_candidates=NUM_CANDIDATES)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def built_model(rng, d_ur=D_UR, d_ir=D_IR, **kwargs) -> StandaloneRetrieval:
    """A built model with random weights everywhere (zero biases would hide bias bugs)."""
    model = StandaloneRetrieval(**kwargs)
    model({signatures.UR_FEATURE: tf.zeros([1, d_ur]), signatures.IR_FEATURE: tf.zeros([1, d_ir])})
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in model.weights])
    model.log_temperature.assign(np.log(0.2))
    return model


def batch(rng, rows: int, d_ur=D_UR, d_ir=D_IR) -> dict[str, tf.Tensor]:
    return {signatures.UR_FEATURE: tf.constant(rng.normal(size=(rows, d_ur)), tf.float32),
            signatures.IR_FEATURE: tf.constant(rng.normal(size=(rows, d_ir)), tf.float32)}


def numpy_adapter(adapter: tf.keras.Sequential, x: np.ndarray) -> np.ndarray:
    """ReLU hidden layers then a linear output layer, from the adapter's weights."""
    layers = adapter.layers
    h = x.astype(np.float64)
    for layer in layers[:-1]:
        w, b = layer.get_weights()
        h = np.maximum(h @ w + b, 0.0)
    w, b = layers[-1].get_weights()
    return h @ w + b


def numpy_scores(model, urs: np.ndarray, irs: np.ndarray) -> np.ndarray:
    """`[users, items]` matrix of cos(Adapter_1(ur), Adapter_2(ir)) / tau."""
    u = numpy_adapter(model.user_adapter, urs)
    v = numpy_adapter(model.item_adapter, irs)
    tau = np.exp(float(model.log_temperature.numpy()))
    out = np.zeros((len(u), len(v)))
    for r in range(len(u)):
        for c in range(len(v)):
            out[r, c] = u[r] @ v[c] / (np.linalg.norm(u[r]) * np.linalg.norm(v[c])) / tau
    return out


def numpy_infonce(logits: np.ndarray, labels: np.ndarray, ids=None) -> float:
    """`(1/B) sum_r y_r (logsumexp_c logits[r, c] - logits[r, r])`, accidental hits dropped."""
    rows = len(logits)
    total = 0.0
    for r in range(rows):
        kept = [logits[r, c] for c in range(rows) if c == r or ids is None or ids[c] != ids[r]]
        total += labels[r] * (np.log(np.sum(np.exp(kept))) - logits[r, r])
    return total / rows


# -- the model ----------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(), (6,), (6, 4)])
def test_score_matches_numpy_reference(rng, hidden):
    model = built_model(rng, adapter_hidden=hidden, output_dim=4)
    inputs = batch(rng, 7)
    got = model.score(inputs).numpy()
    want = np.diag(numpy_scores(model, inputs[signatures.UR_FEATURE].numpy(),
                                inputs[signatures.IR_FEATURE].numpy()))
    assert got.shape == (7, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(inputs).numpy(), got)  # `call` is `score`
    # the embeddings are the normalised adapter outputs
    u = numpy_adapter(model.user_adapter, inputs[signatures.UR_FEATURE].numpy())
    np.testing.assert_allclose(model.user_embedding(inputs[signatures.UR_FEATURE]).numpy(),
                               u / np.linalg.norm(u, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert model.temperature.numpy() == pytest.approx(0.2)


@pytest.mark.parametrize("with_ids", [False, True])
def test_loss_matches_numpy_infonce(rng, with_ids):
    model = built_model(rng, adapter_hidden=(6,), output_dim=4)
    inputs = batch(rng, 5)
    labels = np.array([1, 0, 1, 1, 0])
    # rows 0 and 2 are the same item: with ids, neither is the other's negative
    ids = np.array([b"a", b"b", b"a", b"c", b"d"])
    inputs[features.LABEL] = tf.constant(labels[:, None])  # [batch, 1] as parsed labels are
    if with_ids:
        inputs[features.ITEM_ID] = tf.constant(ids)
    logits = numpy_scores(model, inputs[signatures.UR_FEATURE].numpy(),
                          inputs[signatures.IR_FEATURE].numpy())
    want = numpy_infonce(logits, labels, ids if with_ids else None)
    got = float(model.compute_loss(inputs, training=True))
    assert got == pytest.approx(want, rel=1e-5)
    # the removal changes the number: the test would not notice a missing mask otherwise
    assert numpy_infonce(logits, labels, ids) != pytest.approx(numpy_infonce(logits, labels),
                                                               rel=1e-3)


def test_loss_without_labels_counts_every_row(rng):
    model = built_model(rng, adapter_hidden=(), output_dim=4)
    inputs = batch(rng, 4)
    logits = numpy_scores(model, inputs[signatures.UR_FEATURE].numpy(),
                          inputs[signatures.IR_FEATURE].numpy())
    assert float(model.compute_loss(inputs)) == pytest.approx(
        numpy_infonce(logits, np.ones(4)), rel=1e-5)


def test_temperature_gradient_flows(rng):
    model = built_model(rng, adapter_hidden=(6,), output_dim=4)
    inputs = batch(rng, 6)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(inputs, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    names = [v.name for v in model.trainable_variables]
    assert any("log_temperature" in n for n in names)
    for g, name in zip(grads, names, strict=True):
        assert g is not None and np.all(np.isfinite(g.numpy())) and np.any(g.numpy() != 0), name


def synthetic_problem(rng, rows: int, items: int = 100, dim: int = 16, noise: float = 0.3):
    """Items j have a prototype p_j; IR_j and a user's UR are noisy copies of their item's."""
    prototypes = rng.normal(size=(items, dim))
    item_irs = (prototypes + noise * rng.normal(size=(items, dim))).astype(np.float32)
    positive = rng.integers(items, size=rows)
    urs = (prototypes[positive] + noise * rng.normal(size=(rows, dim))).astype(np.float32)
    ids = np.array([f"item_{j}".encode() for j in range(items)], dtype=object)
    return urs, positive, item_irs, ids


@pytest.mark.slow
def test_training_raises_recall(rng):
    tf.keras.utils.set_random_seed(0)
    urs, positive, item_irs, ids = synthetic_problem(rng, rows=3300)
    train, test = slice(0, 3000), slice(3000, None)
    # a quarter of the training rows are negatives: a random item, label 0
    labels = (rng.random(3000) > 0.25).astype(np.int64)
    items = np.where(labels == 1, positive[train], rng.integers(len(ids), size=3000))
    data = tf.data.Dataset.from_tensor_slices({
        signatures.UR_FEATURE: urs[train], signatures.IR_FEATURE: item_irs[items],
        features.LABEL: labels, features.ITEM_ID: ids[items].astype(bytes),
    }).shuffle(3000, seed=0).batch(128)
    model = StandaloneRetrieval(adapter_hidden=(32,), output_dim=16, initial_temperature=0.2)
    model(next(iter(data)))

    def recall():
        return recall_at_k(model, urs[test], ids[positive[test]], ids, item_irs, k=5)

    before = recall()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    history = model.fit(data, epochs=6, verbose=0)
    after = recall()
    assert before < 0.3  # chance is 5 / 100
    assert after > 0.8 and after > before + 0.5, (before, after)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert model.temperature.numpy() != pytest.approx(0.2)  # the temperature is learned


def identity_model(dim: int = 2) -> StandaloneRetrieval:
    """Linear adapters with identity kernels and zero biases: score = cos(ur, ir) / tau."""
    model = StandaloneRetrieval(adapter_hidden=(), output_dim=dim, initial_temperature=1.0)
    model({signatures.UR_FEATURE: tf.zeros([1, dim]), signatures.IR_FEATURE: tf.zeros([1, dim])})
    for adapter in (model.user_adapter, model.item_adapter):
        adapter.layers[-1].set_weights([np.eye(dim), np.zeros(dim)])
    return model


def test_recall_at_k_hand_computed():
    model = identity_model()
    candidate_ids = [b"a", b"b", b"c"]
    candidate_irs = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    # cosines  a      b      c       ranking
    # (1, .1): .995   .0995  .778    a c b   positive b: rank 3
    # (0, 1):  0      1      .707    b c a   positive c: rank 2
    # (1, 1):  .707   .707   1       c a b   positive c: rank 1
    urs = np.array([[1, 0.1], [0, 1], [1, 1]], np.float32)
    positives = [b"b", "c", b"c"]  # str ids are encoded
    got = [recall_at_k(model, urs, positives, candidate_ids, candidate_irs, k) for k in (1, 2, 3)]
    assert got == pytest.approx([1 / 3, 2 / 3, 1.0])
    # a tie (a and b both .707 for (1, 1) without c) goes to the candidate listed first
    tie = np.array([[1, 1]], np.float32)
    assert recall_at_k(model, tie, [b"a"], candidate_ids[:2], candidate_irs[:2], k=1) == 1.0
    assert recall_at_k(model, tie, [b"b"], candidate_ids[:2], candidate_irs[:2], k=1) == 0.0
    # batching does not change the answer
    assert recall_at_k(model, urs, positives, candidate_ids, candidate_irs, 2,
                       batch_size=1) == pytest.approx(2 / 3)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"positive_ids": [b"a", b"b", b"z"]}, ValueError, r"not among the candidates: \[b'z'\]"),
    ({"k": 0}, ValueError, r"k must be an int in \[1, 3\].*got 0"),
    ({"k": 4}, ValueError, r"k must be an int in \[1, 3\].*got 4"),
    ({"candidate_ids": [b"a", b"a", b"c"]}, ValueError, r"duplicates: \[b'a'\]"),
    ({"candidate_irs": np.ones((2, 2))}, ValueError, r"shape \[3, d_ir\].*\(2, 2\)"),
    ({"user_representations": np.ones((3, 4))}, ValueError, r"\[rows >= 1, 2\].*\(3, 4\)"),
    ({"positive_ids": [b"a"]}, ValueError, r"one id per row \(3\).*\(1,\)"),
])
def test_recall_at_k_rejects_bad_inputs(kwargs, error, match):
    arguments = dict(user_representations=np.ones((3, 2)), positive_ids=[b"a", b"b", b"c"],
                     candidate_ids=[b"a", b"b", b"c"], candidate_irs=np.eye(3, 2), k=2)
    with pytest.raises(error, match=match):
        recall_at_k(identity_model(), **{**arguments, **kwargs})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"adapter_hidden": (8, 0)}, r"adapter_hidden.*\(8, 0\)"),
    ({"adapter_hidden": 8}, "adapter_hidden.*8"),
    ({"adapter_hidden": (2.5,)}, r"adapter_hidden.*\(2.5,\)"),
    ({"output_dim": 0}, "output_dim.*0"),
    ({"output_dim": True}, "output_dim.*True"),
    ({"initial_temperature": 0.0}, "initial_temperature.*0.0"),
    ({"initial_temperature": -1}, "initial_temperature.*-1"),
    ({"initial_temperature": float("inf")}, "initial_temperature.*inf"),
    ({"activation": "nope"}, "nope"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StandaloneRetrieval(**kwargs)


def test_config_round_trips(rng):
    model = built_model(rng, adapter_hidden=(6, 4), output_dim=3, initial_temperature=0.07,
                        activation="gelu", name="retrieval_a")
    config = model.get_config()
    assert config == {"name": "retrieval_a", "adapter_hidden": [6, 4], "output_dim": 3,
                      "initial_temperature": 0.07, "activation": "gelu"}
    inputs = batch(rng, 4)
    clones = [
        StandaloneRetrieval.from_config(config),
        tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(model)),
    ]
    for clone in clones:
        assert isinstance(clone, StandaloneRetrieval)
        assert clone.get_config() == config
        clone(inputs)
        assert clone.temperature.numpy() == pytest.approx(0.07)  # a fresh model: the initial value
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.score(inputs).numpy(), model.score(inputs).numpy())


@pytest.mark.parametrize("filename", [pytest.param("saved_model", marks=pytest.mark.slow),
                                      "model.keras"])
def test_model_save_and_load(rng, tmp_path, filename):
    model = built_model(rng, adapter_hidden=(6,), output_dim=4)
    inputs = batch(rng, 6)
    path = str(tmp_path / filename)
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded, StandaloneRetrieval)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.score(inputs).numpy(), model.score(inputs).numpy())
    assert float(loaded.compute_loss(inputs)) == pytest.approx(float(model.compute_loss(inputs)))


# -- export --------------------------------------------------------------------------------


def example(ur=None, ir=None) -> bytes:
    """A serialized tf.Example with the float lists `ur` and `ir` (each when given)."""
    proto = tf.train.Example()
    for name, values in ((signatures.UR_FEATURE, ur), (signatures.IR_FEATURE, ir)):
        if values is not None:
            proto.features.feature[name].float_list.value.extend(np.asarray(values).tolist())
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def problem():
    """A model with random weights, 40 candidates and 6 queries (UR and IR rows)."""
    rng = np.random.default_rng(1)
    model = built_model(rng, adapter_hidden=(8,), output_dim=6)
    ids = np.array([f"item_{j}".encode() for j in range(NUM_CANDIDATES)], dtype=object)
    irs = rng.normal(size=(NUM_CANDIDATES, D_IR)).astype(np.float32)
    urs = rng.normal(size=(6, D_UR)).astype(np.float32)
    query_irs = rng.normal(size=(6, D_IR)).astype(np.float32)
    records = [example(u, i) for u, i in zip(urs, query_irs, strict=True)]
    return dict(model=model, ids=ids, irs=irs, urs=urs, query_irs=query_irs, records=records)


@pytest.fixture(scope="module")
def exports(problem, tmp_path_factory) -> dict[str, str]:
    """index -> `<base>/<version>` of the two exports (ScaNN set up to search exhaustively)."""
    root = tmp_path_factory.mktemp("retrieval_exports")
    return {
        "brute_force": export_retrieval(
            problem["model"], str(root / "brute_force"), problem["ids"], problem["irs"], K,
            version=3, warmup_examples=problem["records"][:2]),
        "scann": export_retrieval(
            problem["model"], str(root / "scann"), problem["ids"], problem["irs"], K,
            index="scann", version=3, warmup_examples=problem["records"][:2],
            scann_options=EXACT_SCANN),
    }


def expected_top_k(problem) -> tuple[np.ndarray, np.ndarray]:
    """`(ids [6, K], scores [6, K])` by sorting the numpy reference scores."""
    scores = numpy_scores(problem["model"], problem["urs"], problem["irs"])  # [6, 40]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return problem["ids"][order], np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("index", ["brute_force", "scann"])
@pytest.mark.slow
def test_export_returns_the_reference_top_k(problem, exports, index):
    loaded = tf.saved_model.load(exports[index])
    assert set(loaded.signatures) == {signatures.SERVING_DEFAULT, SCORE_SIGNATURE}
    out = loaded.signatures[signatures.SERVING_DEFAULT](examples=tf.constant(problem["records"]))
    assert (
        set(out)
        == set(OUTPUT_KEYS[signatures.SERVING_DEFAULT])
        == {signatures.TOP_K_IDS, signatures.TOP_K_SCORES}
    )
    assert (
        out[signatures.TOP_K_IDS].dtype == tf.string
        and out[signatures.TOP_K_SCORES].dtype == tf.float32
    )
    want_ids, want_scores = expected_top_k(problem)
    assert out[signatures.TOP_K_IDS].numpy().tolist() == want_ids.tolist()
    np.testing.assert_allclose(out[signatures.TOP_K_SCORES].numpy(), want_scores, rtol=1e-4,
                               atol=1e-4)

    score = loaded.signatures[SCORE_SIGNATURE](examples=tf.constant(problem["records"]))
    assert set(score) == {signatures.RETRIEVAL_SCORE}
    want = np.diag(numpy_scores(problem["model"], problem["urs"], problem["query_irs"]))
    np.testing.assert_allclose(score[signatures.RETRIEVAL_SCORE].numpy()[:, 0], want, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.slow
def test_default_scann_agrees_with_brute_force(problem, exports, tmp_path):
    """The default configuration (approximate: 3 of 6 leaves) on 40 candidates, k = 5.

    ScaNN's partitioning is not seeded; over 65 builds the overlap was 0.80 to 0.93.
    """
    path = export_retrieval(problem["model"], str(tmp_path / "scann"), problem["ids"],
                            problem["irs"], K, index="scann", warmup_examples=problem["records"])
    records = tf.constant(problem["records"])
    got = tf.saved_model.load(path).signatures[signatures.SERVING_DEFAULT](examples=records)
    want = tf.saved_model.load(exports["brute_force"]).signatures[signatures.SERVING_DEFAULT](
        examples=records)
    found = [len(set(g) & set(w)) for g, w in zip(got[signatures.TOP_K_IDS].numpy().tolist(),
                                                   want[signatures.TOP_K_IDS].numpy().tolist(),
                                                   strict=True)]
    assert sum(found) / (K * len(found)) >= 0.6, found


@pytest.mark.slow
def test_scann_places_it_cannot_fill_are_empty(problem, tmp_path):
    """k = 20 from 1 leaf of 8 (about 5 candidates each): ScaNN finds fewer than k.

    ScaNN's partitioning is random (not seeded), so which candidates each row gets varies from
    run to run; the assertions hold for every partition.
    """
    path = export_retrieval(problem["model"], str(tmp_path / "scann"), problem["ids"],
                            problem["irs"], 20, index="scann", warmup_examples=problem["records"],
                            scann_options=dict(num_leaves=8, num_leaves_to_search=1))
    out = tf.saved_model.load(path).signatures[signatures.SERVING_DEFAULT](
        examples=tf.constant(problem["records"]))
    ids, scores = out[signatures.TOP_K_IDS].numpy(), out[signatures.TOP_K_SCORES].numpy()
    empty = ids == b""
    assert empty.any() and np.array_equal(empty, np.isneginf(scores))
    reference = numpy_scores(problem["model"], problem["urs"], problem["irs"])  # [6, 40]
    position = {item: n for n, item in enumerate(problem["ids"])}
    assert not empty.all()
    for row in range(len(ids)):  # a row may get nothing: its leaf can be empty
        filled = ids[row][~empty[row]].tolist()
        assert len(set(filled)) == len(filled)  # real, distinct candidates
        np.testing.assert_allclose(scores[row][~empty[row]],
                                   reference[row, [position[i] for i in filled]],
                                   rtol=1e-4, atol=1e-4)  # rescored exactly (reordering)


@pytest.mark.slow
def test_export_layout_and_warmup(problem, exports, tmp_path):
    path = exports["brute_force"]
    assert path.endswith("/3")
    # the temporary directory was renamed
    assert sorted(tf.io.gfile.listdir(path.rsplit("/", 1)[0])) == ["3"]
    warmup = f"{path}/assets.extra/{signatures.WARMUP_FILE}"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(warmup)]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        signatures.SERVING_DEFAULT, SCORE_SIGNATURE]
    for log in logs:
        inputs = log.predict_log.request.inputs
        assert list(inputs) == [signatures.INPUT_KEY]
        assert list(inputs[signatures.INPUT_KEY].string_val) == problem["records"][:2]

    base = str(tmp_path / "versions")
    tf.io.gfile.makedirs(f"{base}/{2**40}")
    # no version given: one above the existing ones
    version = int(export_retrieval(problem["model"], base, problem["ids"], problem["irs"], K,
                                   warmup_examples=problem["records"][:1]).rsplit("/", 1)[1])
    assert version == 2**40 + 1
    with pytest.raises(FileExistsError, match=f"version {version} already exists"):
        export_retrieval(problem["model"], base, problem["ids"], problem["irs"], K,
                         version=version, warmup_examples=problem["records"][:1])


@pytest.mark.parametrize(("record", "message"), [
    (example(ir=np.ones(D_IR)), "Feature: ur (data type: float) is required but could not be "
                                "found."),
    (example(ur=np.ones(D_UR - 1)), "Key: ur, Index: 0.  Number of float values != expected.  "
                                    "Values size: 4 but output shape: [5]"),
], ids=["missing", "wrong_length"])
@pytest.mark.slow
def test_missing_or_wrong_length_ur_names_the_feature(exports, record, message):
    serving = tf.saved_model.load(exports["brute_force"]).signatures[signatures.SERVING_DEFAULT]
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serving(examples=tf.constant([record]))
    assert message in info.value.message


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"k": 0}, ValueError, r"k must be an int in \[1, 40\].*got 0"),
    ({"k": 41}, ValueError, r"k must be an int in \[1, 40\].*got 41"),
    ({"k": 2.0}, ValueError, r"k must be an int in \[1, 40\].*got 2.0"),
    ({"candidate_irs": "rows-1"}, ValueError, r"shape \[40, d_ir\].*\(39, 3\)"),
    ({"candidate_irs": "flat"}, ValueError, r"shape \[40, d_ir\].*\(120,\)"),
    ({"candidate_irs": "short"}, ValueError, "length 2, the model's IR length is 3"),
    ({"candidate_irs": "nan"}, ValueError, "non-finite"),
    ({"candidate_ids": "duplicate"}, ValueError, r"duplicates: \[b'item_0'\]"),
    ({"candidate_ids": "ints"}, ValueError, "bytes or str, got 0"),
    ({"index": "faiss"}, ValueError, "index must be one of.*'faiss'"),
    ({"scann_options": {"num_leaves": 2}}, ValueError, "scann_options is for index='scann'"),
    ({"index": "scann", "scann_options": {"k": 3}}, ValueError, "may not set 'k'"),
    ({"warmup_examples": []}, ValueError, "warmup_examples is empty"),
    ({"warmup_examples": "ur only"}, ValueError, "fail the 'score' signature.*'ir'"),
    ({"model": "unbuilt"}, ValueError, "not built"),
])
def test_export_rejects_bad_arguments(problem, tmp_path, change, error, match):
    arguments = dict(model=problem["model"], export_dir=str(tmp_path / "out"),
                     candidate_ids=problem["ids"], candidate_irs=problem["irs"], k=K,
                     warmup_examples=problem["records"][:1])
    bad = {
        "rows-1": problem["irs"][:-1], "flat": problem["irs"].reshape(-1),
        "short": problem["irs"][:, :2], "nan": np.where(np.eye(40, 3), np.nan, problem["irs"]),
        "duplicate": np.concatenate([problem["ids"][:-1], problem["ids"][:1]]),
        "ints": np.arange(40), "ur only": [example(ur=problem["urs"][0])],
        "unbuilt": StandaloneRetrieval(),
    }
    arguments.update({key: bad.get(value, value) if isinstance(value, str) else value
                      for key, value in change.items()})
    with pytest.raises(error, match=match):
        export_retrieval(**arguments)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# -- serving -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(exports):
    """A `PredictionServiceStub` of a ModelServer serving both exports."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, path in exports.items():
        config.model_config_list.config.add(name=name, base_path=path.rsplit("/", 1)[0],
                                            model_platform="tensorflow")
    with ModelServer(model_server_config=config, port=0, rest_api_port=None,
                     load_timeout_s=120) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(name: str, signature: str, records: list[bytes]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs[signatures.INPUT_KEY].CopyFrom(tf.make_tensor_proto(records, dtype=tf.string))
    return request


@pytest.mark.parametrize("index", ["brute_force", "scann"])
@pytest.mark.slow
def test_served_over_grpc_like_in_process(problem, exports, stub, index):
    records = problem["records"]
    loaded = tf.saved_model.load(exports[index])
    expected = loaded.signatures[signatures.SERVING_DEFAULT](examples=tf.constant(records))
    response = stub.Predict(predict_request(index, signatures.SERVING_DEFAULT, records), timeout=30)
    assert response.model_spec.version.value == 3
    ids = tf.make_ndarray(response.outputs[signatures.TOP_K_IDS])
    assert ids.shape == (len(records), K)
    assert ids.tolist() == expected[signatures.TOP_K_IDS].numpy().tolist()
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[signatures.TOP_K_SCORES]),
                               expected[signatures.TOP_K_SCORES].numpy(), rtol=1e-6)

    response = stub.Predict(predict_request(index, SCORE_SIGNATURE, records), timeout=30)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs[signatures.RETRIEVAL_SCORE]),
        loaded.signatures[SCORE_SIGNATURE](examples=tf.constant(records))[signatures.RETRIEVAL_SCORE],
        rtol=1e-6)

    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request(index, signatures.SERVING_DEFAULT,
                                     [example(ir=np.ones(D_IR))]),
                     timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Feature: ur (data type: float) is required" in info.value.details()
