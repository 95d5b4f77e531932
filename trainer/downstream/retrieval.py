"""Standalone Retrieval: the model-level usage of the upstream representations.

Source: LFM4Ads (arXiv 2508.14948), Sec. 3.4.3, Eq. 6:

    `score(u, i) = <Adapter_1(UR(u)), Adapter_2(IR(i))>`

with `<,>` the cosine similarity and each Adapter a tiny trainable network; the loss is an
InfoNCE over `score(u, i)` and the downstream label. Here the cosine is divided by a learned
temperature `tau` (the InfoNCE temperature; it rescales the scores without changing any ranking).

This module holds the model (`StandaloneRetrieval`), its offline metric (`recall_at_k`) and its
export in TF Serving layout (`export_retrieval`): a SavedModel whose `serving_default` maps
serialized tf.Examples carrying `ur` to the top-k item ids of a fixed candidate set, through
`tfrs.layers.factorized_top_k.BruteForce` or `.ScaNN`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from common import features, signatures
from common.serving_layout import save_versioned

# Signature of the exported model that returns the per-row score(u, i) (the name is the output
# key's); `serving_default` returns the top-k.
SCORE_SIGNATURE = signatures.RETRIEVAL_SCORE
# signature name -> output keys.
OUTPUT_KEYS = {
    signatures.SERVING_DEFAULT: (signatures.TOP_K_SCORES, signatures.TOP_K_IDS),
    SCORE_SIGNATURE: (signatures.RETRIEVAL_SCORE,),
}
# signature name -> representation features it parses from each tf.Example.
REQUIRED_FEATURES = {
    signatures.SERVING_DEFAULT: (signatures.UR_FEATURE,),
    SCORE_SIGNATURE: (signatures.UR_FEATURE, signatures.IR_FEATURE),
}
INDEXES = ("brute_force", "scann")

_EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name=signatures.INPUT_KEY)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _adapter(hidden: tuple[int, ...], output_dim: int, activation: str,
             name: str) -> tf.keras.Sequential:
    """`hidden` Dense+activation layers, then a linear Dense to `output_dim`."""
    layers = [tf.keras.layers.Dense(width, activation=activation, name=f"hidden_{n + 1}")
              for n, width in enumerate(hidden)]
    layers.append(tf.keras.layers.Dense(output_dim, name="output"))
    return tf.keras.Sequential(layers, name=name)


def _input_dim(adapter: tf.keras.Sequential, feature: str) -> int:
    first = adapter.layers[0]
    if not first.built:
        raise ValueError(
            f"the model is not built, so the length of {feature!r} is unknown: call it on a "
            "batch or fit it first"
        )
    return int(first.kernel.shape[0])


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class StandaloneRetrieval(tfrs.models.Model):
    """Two adapters over the upstream UR and IR, scored by a tempered cosine.

    `score(u, i) = <Adapter_1(UR(u)), Adapter_2(IR(i))> / tau` (LFM4Ads Sec. 3.4.3, Eq. 6,
    `<,>` the cosine similarity), `tau = exp(log_tau)` a learned temperature (positive by
    construction). Each adapter is `len(adapter_hidden)` Dense layers with `activation`, then a
    linear Dense to `output_dim` (a linear adapter when `adapter_hidden` is `()`); the two
    adapters have their own weights.

    Loss (`compute_loss`): InfoNCE with in-batch negatives, through `tfrs.tasks.Retrieval`:
    `loss = (1 / B) * sum_r y_r * -log softmax_c(score(u_r, i_c))[r]`, the softmax over the
    batch's `B` items, `y_r` the row's label (every row is a positive when the batch has no
    label). Rows with label 0 add no loss term but their items are negatives of the others.
    When the batch carries `item_id`, an item equal to row `r`'s item in another row is not a
    negative of row `r` (`remove_accidental_hits`; `task` does this, `task_without_ids` serves
    batches without ids). Top-k metrics (an optional `tfrs.metrics.FactorizedTopK` assigned to
    the tasks' `factorized_metrics`) run only when `training` is False.

    Args:
      adapter_hidden: widths of each adapter's hidden layers, e.g. `(64,)`; `()` for linear.
      output_dim: dimension of the adapters' outputs (the retrieval embedding).
      initial_temperature: starting value of `tau`, > 0.
      activation: activation of the hidden layers (a `tf.keras.activations` name).

    Inputs (a dict; `compute_loss`, `call`, `score`):
      `signatures.UR_FEATURE`: `[batch, d_ur]` float32, `signatures.IR_FEATURE`:
      `[batch, d_ir]` float32, optionally `features.LABEL`: `[batch]` or `[batch, 1]` 0/1 and
      `features.ITEM_ID`: `[batch]` bytes.

    Example:
      >>> model = StandaloneRetrieval(adapter_hidden=(32,), output_dim=16)
      >>> batch = {"ur": tf.random.normal([8, 24]), "ir": tf.random.normal([8, 12]),
      ...          "label": tf.ones([8])}
      >>> model.score(batch)  # [8, 1]
      >>> model.compile(optimizer="adam"); model.fit(dataset_of_such_batches)
    """

    def __init__(
        self,
        adapter_hidden: Sequence[int] = (64,),
        output_dim: int = 32,
        initial_temperature: float = 0.1,
        activation: str = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(adapter_hidden, (str, bytes)) or not isinstance(adapter_hidden,
                                                                       (list, tuple)):
            raise ValueError(
                f"adapter_hidden must be a tuple of positive ints, got {adapter_hidden!r}"
            )
        for width in adapter_hidden:
            if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
                raise ValueError(
                    f"adapter_hidden must be a tuple of positive ints, got {adapter_hidden!r}"
                )
        output_dim = _positive_int("output_dim", output_dim)
        if (isinstance(initial_temperature, bool)
                or not isinstance(initial_temperature, (int, float))
                or not math.isfinite(initial_temperature) or initial_temperature <= 0):
            raise ValueError(
                f"initial_temperature must be a finite number > 0, got {initial_temperature!r}"
            )
        if not isinstance(activation, str):
            raise ValueError(f"activation must be the name of an activation, got {activation!r}")
        tf.keras.activations.get(activation)  # raises naming an unknown activation
        self.adapter_hidden = tuple(int(w) for w in adapter_hidden)
        self.output_dim = output_dim
        self.initial_temperature = float(initial_temperature)
        self.activation = activation
        # A model, not a layer: its sublayers are created here (TFRS convention) and build
        # lazily on the first batch; the temperature does not depend on the input shapes.
        self.user_adapter = _adapter(self.adapter_hidden, output_dim, activation,
                                     "user_adapter")
        self.item_adapter = _adapter(self.adapter_hidden, output_dim, activation,
                                     "item_adapter")
        self.log_temperature = self.add_weight(
            name="log_temperature",
            shape=(),
            dtype=tf.float32,
            initializer=tf.keras.initializers.Constant(math.log(self.initial_temperature)),
            trainable=True,
        )
        # `reduction=SUM_OVER_BATCH_SIZE`: sum of the weighted row losses / batch size.
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE),
            remove_accidental_hits=True,
            name="retrieval_task",
        )
        # The same loss for batches without `item_id` (nothing to compare).
        self.task_without_ids = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE),
            name="retrieval_task_without_ids",
        )

    @property
    def temperature(self) -> tf.Tensor:
        """`tau = exp(log_tau)`, a float32 scalar > 0."""
        return tf.exp(self.log_temperature)

    @property
    def ur_dim(self) -> int:
        """`d_ur`, the length of the UR the model was built on."""
        return _input_dim(self.user_adapter, signatures.UR_FEATURE)

    @property
    def ir_dim(self) -> int:
        """`d_ir`, the length of the IR the model was built on."""
        return _input_dim(self.item_adapter, signatures.IR_FEATURE)

    def user_embedding(self, ur: tf.Tensor, training: bool = False) -> tf.Tensor:
        """`Adapter_1(UR) / ||Adapter_1(UR)||`: `[batch, d_ur]` -> `[batch, output_dim]` float32."""
        out = self.user_adapter(tf.convert_to_tensor(ur, tf.float32), training=training)
        return tf.math.l2_normalize(tf.cast(out, tf.float32), axis=-1)

    def item_embedding(self, ir: tf.Tensor, training: bool = False) -> tf.Tensor:
        """`Adapter_2(IR) / ||Adapter_2(IR)||`: `[batch, d_ir]` -> `[batch, output_dim]` float32."""
        out = self.item_adapter(tf.convert_to_tensor(ir, tf.float32), training=training)
        return tf.math.l2_normalize(tf.cast(out, tf.float32), axis=-1)

    def score(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Eq. 6 row by row: `score(u_r, i_r)`, `[batch, 1]` float32 (e.g. for AUC on a window)."""
        u = self.user_embedding(inputs[signatures.UR_FEATURE], training)  # [batch, output_dim]
        v = self.item_embedding(inputs[signatures.IR_FEATURE], training)  # [batch, output_dim]
        return tf.reduce_sum(u * v, axis=-1, keepdims=True) / self.temperature  # [batch, 1]

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.score(inputs, training=training)

    def compute_loss(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        # Dividing the queries by tau makes the task's logits u.v^T / tau (the task's own
        # `temperature` is a fixed float).
        queries = self.user_embedding(inputs[signatures.UR_FEATURE], training) / self.temperature
        candidates = self.item_embedding(inputs[signatures.IR_FEATURE],
                                         training)  # [batch, output_dim]
        weight = None
        if features.LABEL in inputs:
            weight = tf.reshape(tf.cast(inputs[features.LABEL], tf.float32), [-1])  # [batch]
        if features.ITEM_ID in inputs:
            return self.task(queries, candidates, sample_weight=weight,
                             candidate_ids=tf.reshape(inputs[features.ITEM_ID], [-1]),
                             compute_metrics=not training)
        return self.task_without_ids(queries, candidates, sample_weight=weight,
                                     compute_metrics=not training)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "name": self.name,
            "adapter_hidden": list(self.adapter_hidden),
            "output_dim": self.output_dim,
            "initial_temperature": self.initial_temperature,
            "activation": self.activation,
        }


def _candidate_arrays(
    candidate_ids: Sequence[bytes | str] | np.ndarray,
    candidate_irs: np.ndarray,
    ir_dim: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked `(ids [n] object array of bytes, irs [n, d_ir] float32)`."""
    ids = np.asarray(candidate_ids, dtype=object)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"candidate_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    encoded = []
    for value in ids:
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes):
            raise ValueError(f"candidate_ids must be bytes or str, got {value!r}")
        encoded.append(value)
    ids = np.array(encoded, dtype=object)
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise ValueError(f"candidate_ids has duplicates: {sorted(unique[counts > 1])[:5]}")
    irs = np.asarray(candidate_irs, dtype=np.float32)
    if irs.ndim != 2 or irs.shape[0] != len(ids):
        raise ValueError(
            f"candidate_irs must have shape [{len(ids)}, d_ir] (one row per candidate id), "
            f"got {irs.shape}"
        )
    if ir_dim is not None and irs.shape[1] != ir_dim:
        raise ValueError(
            f"candidate_irs rows have length {irs.shape[1]}, the model's IR length is {ir_dim}"
        )
    if not np.all(np.isfinite(irs)):
        raise ValueError("candidate_irs has non-finite values")
    return ids, irs


def _check_k(k: Any, num_candidates: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (
            1 <= k <= num_candidates):
        raise ValueError(f"k must be an int in [1, {num_candidates}] (the candidates), got {k!r}")
    return int(k)


def recall_at_k(
    model: StandaloneRetrieval,
    user_representations: np.ndarray,
    positive_ids: Sequence[bytes | str] | np.ndarray,
    candidate_ids: Sequence[bytes | str] | np.ndarray,
    candidate_irs: np.ndarray,
    k: int,
    batch_size: int = 1024,
) -> float:
    """Recall@k of `model` by brute force: the share of rows whose positive is in their top k.

    Row `r` (a user representation and the id of an item the user engaged with) is ranked
    against every candidate `c` by `score(u_r, c)` of Eq. 6 (LFM4Ads Sec. 3.4.3); its positive
    `p_r` must be one of the candidates. The rank of `p_r` is
    `#{c : s(c) > s(p_r)} + #{c : s(c) == s(p_r), index(c) < index(p_r)}` (ties go to the
    candidate listed first, as a stable sort by descending score), and the row is a hit when
    that rank is `< k`. With one positive per row, recall@k = hits / rows (equal to HitRate@k);
    a user with several positives is several rows.

    Args:
      model: a built `StandaloneRetrieval`.
      user_representations: `[rows, d_ur]` float, the URs.
      positive_ids: `[rows]` bytes or str, each row's positive item id.
      candidate_ids: `[n]` unique bytes or str ids of the candidate set.
      candidate_irs: `[n, d_ir]` float, the candidates' IRs in the order of `candidate_ids`.
      k: the cut-off, in `[1, n]`.
      batch_size: rows scored at once (`[batch_size, n]` scores in memory).

    Returns:
      recall@k in `[0, 1]`.

    Example:
      >>> recall_at_k(model, urs, [b"i7", b"i2"], [b"i1", b"i2", b"i7"], irs, k=2)  # 0.5: i7
      ... # is in the top 2 of row 0 and i2 is third for row 1
    """
    ids, irs = _candidate_arrays(candidate_ids, candidate_irs, model.ir_dim)
    k = _check_k(k, len(ids))
    batch_size = _positive_int("batch_size", batch_size)
    urs = np.asarray(user_representations, dtype=np.float32)
    positives = np.asarray([p.encode() if isinstance(p, str) else p for p in positive_ids],
                           dtype=object)
    if urs.ndim != 2 or urs.shape[0] == 0 or urs.shape[1] != model.ur_dim:
        raise ValueError(
            f"user_representations must have shape [rows >= 1, {model.ur_dim}], got {urs.shape}"
        )
    if positives.shape != (urs.shape[0],):
        raise ValueError(
            f"positive_ids must have one id per row ({urs.shape[0]}), got shape {positives.shape}"
        )
    position = {item: n for n, item in enumerate(ids)}
    missing = [p for p in positives if p not in position]
    if missing:
        raise ValueError(f"positive ids not among the candidates: {missing[:5]}")
    pos_index = np.array([position[p] for p in positives])  # [rows]

    candidates = model.item_embedding(irs).numpy().astype(np.float64)  # [n, output_dim]
    order = np.arange(len(ids))
    hits = 0
    for start in range(0, len(urs), batch_size):
        users = model.user_embedding(urs[start:start + batch_size]).numpy().astype(np.float64)
        scores = users @ candidates.T  # [rows_b, n]; tau > 0 does not change the ranks
        index = pos_index[start:start + batch_size]  # [rows_b]
        positive = scores[np.arange(len(index)), index][:, None]  # [rows_b, 1]
        ahead = (scores > positive) | ((scores == positive) & (order[None, :] < index[:, None]))
        hits += int(np.sum(ahead.sum(axis=1) < k))
    return hits / len(urs)


def _parse(examples: tf.Tensor, lengths: Mapping[str, int]) -> dict[str, tf.Tensor]:
    """Required fixed-length float features; a missing or wrong-length one fails naming it."""
    spec = {name: tf.io.FixedLenFeature([length], tf.float32) for name, length in lengths.items()}
    return tf.io.parse_example(examples, spec)


class _RetrievalServing(tf.Module):
    """The model, the top-k index and the signature functions of the export."""

    def __init__(self, model: StandaloneRetrieval, index: tfrs.layers.factorized_top_k.TopK):
        super().__init__(name="standalone_retrieval")
        self.model = model
        self.index = index
        lengths = {signatures.UR_FEATURE: model.ur_dim, signatures.IR_FEATURE: model.ir_dim}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def serving_default(examples):
            parsed = _parse(examples, {signatures.UR_FEATURE: lengths[signatures.UR_FEATURE]})
            # Queries divided by tau: the index's dot products are score(u, c) of Eq. 6.
            queries = model.user_embedding(parsed[signatures.UR_FEATURE]) / model.temperature
            scores, ids = index(queries)  # [batch, k], [batch, k]
            if not index.is_exact():
                # ScaNN pads with (NaN, candidate 0) when the leaves searched hold fewer than
                # k candidates: report those places as (-inf, b"") instead.
                found = tf.math.is_finite(scores)
                scores = tf.where(found, scores, tf.constant(-np.inf, tf.float32))
                ids = tf.where(found, ids, tf.constant(b"", tf.string))
            return {signatures.TOP_K_SCORES: scores, signatures.TOP_K_IDS: ids}

        @tf.function(input_signature=[_EXAMPLES_SPEC])
        def score(examples):
            parsed = _parse(examples, lengths)
            return {signatures.RETRIEVAL_SCORE: model.score(parsed)}

        self.signature_functions = {signatures.SERVING_DEFAULT: serving_default,
                                    SCORE_SIGNATURE: score}


def _scann_index(k: int, num_candidates: int,
                 options: Mapping[str, Any] | None) -> tfrs.layers.factorized_top_k.ScaNN:
    """A ScaNN layer; the defaults scale with the candidate count `n`.

    About `sqrt(n)` leaves (at most 1000); the leaves searched are 10% of them, and enough that
    they hold about `4k` candidates on average; the best `max(100, 4k)` are rescored exactly.
    """
    num_leaves = max(1, min(1000, round(math.sqrt(num_candidates))))
    to_search = max(math.ceil(num_leaves / 10), math.ceil(4 * k * num_leaves / num_candidates))
    config = {
        "num_leaves": num_leaves,
        "num_leaves_to_search": min(num_leaves, to_search),
        "num_reordering_candidates": min(num_candidates, max(100, 4 * k)),
    }
    options = dict(options or {})
    for key in ("k", "query_model"):
        if key in options:
            raise ValueError(f"scann_options may not set {key!r} (export_retrieval sets it)")
    config.update(options)
    return tfrs.layers.factorized_top_k.ScaNN(k=k, **config)


def export_retrieval(
    model: StandaloneRetrieval,
    export_dir: str,
    candidate_ids: Sequence[bytes | str] | np.ndarray,
    candidate_irs: np.ndarray,
    k: int,
    index: str = "brute_force",
    version: int | None = None,
    *,
    warmup_examples: Sequence[bytes],
    scann_options: Mapping[str, Any] | None = None,
) -> str:
    """Exports the Eq. 6 retrieval (LFM4Ads Sec. 3.4.3) in TF Serving layout; returns the path.

    Writes `<export_dir>/<version>/` (under a temporary name, renamed when complete) with
    `assets.extra/tf_serving_warmup_requests`. Signatures, each taking `examples` (DT_STRING
    `[batch]` serialized tf.Examples):
      - `serving_default`: reads the float list `ur` (length `d_ur`) and returns
        `top_k_scores` `[batch, k]` float32 (`score(u, c)`, best first) and `top_k_ids`
        `[batch, k]` string, over the candidates' item embeddings `Adapter_2(IR)/||.||`
        indexed by `tfrs.layers.factorized_top_k.BruteForce` (exact) or `.ScaNN`
        (approximate; a custom op TF Serving's stock binary lacks, `serving.model_server` loads it).
      - `score`: reads `ur` and `ir` and returns `score` `[batch, 1]` float32.
    A missing or wrong-length `ur`/`ir` fails with an InvalidArgument error naming the feature.

    ScaNN searches only some leaves of a partition of the candidates; when those hold fewer
    than k candidates, the places left are `(b"", -inf)`. Its partitioning is not seeded, so two
    exports of the same model may answer differently. Defaults: about `sqrt(n)` leaves, 10% of
    them searched (more if needed to hold about `4k` candidates on average), the best
    `max(100, 4k)` rescored exactly; searching every leaf and rescoring all `n` is exact.

    Args:
      model: a built (called or fitted) `StandaloneRetrieval`.
      export_dir: the model's base directory (`--model_base_path`).
      candidate_ids: `[n]` unique item ids, bytes or str.
      candidate_irs: `[n, d_ir]` float, the candidates' IRs in the order of `candidate_ids`.
      k: results per query, in `[1, n]`.
      index: `"brute_force"` or `"scann"`.
      version: the integer version; default: greater than every existing one (unix seconds).
      warmup_examples: a few serialized tf.Examples carrying both `ur` and `ir`, replayed by
        the server on load (each signature is also run on them here before writing).
      scann_options: keyword arguments of `tfrs.layers.factorized_top_k.ScaNN` (e.g.
        `num_leaves`, `num_leaves_to_search`, `num_reordering_candidates`) over the defaults.

    Example:
      >>> path = export_retrieval(model, "build/export/retrieval", ids, irs, k=50,
      ...                         index="scann", warmup_examples=records[:4])
    """
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
    if scann_options is not None and index != "scann":
        raise ValueError(f"scann_options is for index='scann', got index={index!r}")
    warmup = list(warmup_examples)
    if not warmup:
        raise ValueError("warmup_examples is empty: give a few serialized tf.Examples")
    ur_dim = model.ur_dim
    ids, irs = _candidate_arrays(candidate_ids, candidate_irs, model.ir_dim)
    k = _check_k(k, len(ids))

    if version is not None and tf.io.gfile.exists(os.path.join(export_dir, str(int(version)))):
        raise FileExistsError(f"version {version} already exists at "
                              f"{os.path.join(export_dir, str(int(version)))}")

    embeddings = model.item_embedding(irs)  # [n, output_dim]
    identifiers = tf.constant(ids.tolist(), dtype=tf.string)  # [n]
    if index == "scann":
        layer = _scann_index(k, len(ids), scann_options)
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
    else:
        layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
        options = None
    layer.index(embeddings, identifiers)
    module = _RetrievalServing(model, layer)
    examples = tf.constant(warmup, dtype=tf.string)
    for name, function in module.signature_functions.items():
        try:
            function(examples)
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(
                f"warmup_examples fail the {name!r} signature (they must carry the float lists "
                f"{signatures.UR_FEATURE!r} of length {ur_dim} and {signatures.IR_FEATURE!r} of "
                f"length {model.ir_dim}): {e.message}"
            ) from e

    return save_versioned(module, module.signature_functions, export_dir, warmup,
                          version=version, options=options)
