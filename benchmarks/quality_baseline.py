"""A reference point for the upstream model's quality: a tiny model shaped like the simulator.

The synthetic data's click logit is `domain/scenario bias + advertiser bias + alpha *
cos(u, v)`, with `u` a sum of demographic embeddings and `v` the category's plus the mean of
the tags' (`pipelines/sources/synthetic.py`). This baseline has that form and nothing else:
`cos(U, V)` of summed feature embeddings (no ids, no history), one learned `alpha` per
domain, scenario biases, and advertiser biases for ads. Both domains train the embeddings. It
answers how close to the oracle a model with the right inductive bias gets on the same
time split as `trainer.train` (train before the last `--eval_days`, evaluate on them), which
tells apart "the data cannot say more" from "the architecture does not find it".

    python -m benchmarks.quality_baseline --data DIR [--epochs 30] [--seed 0] [--json]

With `--json` the last line is one JSON object: `auc_ad`, `auc_content`, the oracle's on the
same rows, and the AUCs after every epoch.
"""

from trainer import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import argparse
import json
import time

import numpy as np
import tensorflow as tf

from trainer import features as F
from trainer import input as data_input
from trainer.evaluation import auc
from trainer.train import _oracle, _split

ALPHA_SCALE = 3.0  # alpha = ALPHA_SCALE * a learned factor starting at 1
FIELDS = (F.USER_AGE, F.USER_GENDER, F.USER_GEO, F.ITEM_CATEGORY, F.ITEM_TAGS,
          F.ITEM_ADVERTISER, F.SCENARIO, F.DOMAIN, F.LABEL, F.TIMESTAMP)


class StructuredBaseline(tf.keras.Model):
    """logit = alpha[domain] * cos(U(user features), V(item features)) + scenario bias
    (+ advertiser bias on ads)."""

    def __init__(self, dim: int = 16, buckets: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.hash = tf.keras.layers.Hashing(buckets)

        def table(width: int = dim, init=None, l2: float = 0.0):
            return tf.keras.layers.Embedding(
                buckets, width,
                embeddings_initializer=init or tf.keras.initializers.RandomNormal(stddev=0.3),
                embeddings_regularizer=tf.keras.regularizers.l2(l2) if l2 else None)

        self.geo, self.age, self.gender, self.category, self.tag = (table() for _ in range(5))
        self.scenario_bias = table(1, "zeros")
        # ~100 advertisers with ~15 clicks each in 200k rows: without a penalty their biases
        # over-fit (ad AUC falls after epoch 5 of 30)
        self.advertiser_bias = table(1, "zeros", l2=1e-4)
        self.alpha = tf.Variable([1.0, 1.0], name="alpha")  # content, ad; times ALPHA_SCALE

    def _ids(self, x: dict[str, tf.Tensor], name: str) -> tf.Tensor:
        value = x[name]
        return self.hash(value if value.dtype == tf.string else tf.strings.as_string(value))

    def call(self, x: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        u = (self.geo(self._ids(x, F.USER_GEO)) + self.age(self._ids(x, F.USER_AGE))
             + self.gender(self._ids(x, F.USER_GENDER)))
        tags = x[F.ITEM_TAGS]
        if isinstance(tags, tf.RaggedTensor):
            tags = tags.to_tensor("")
        mask = tf.cast(tags != "", tf.float32)[..., None]  # [batch, tags, 1]
        tag_mean = tf.reduce_sum(self.tag(self.hash(tags)) * mask, 1) / tf.maximum(
            tf.reduce_sum(mask, 1), 1.0)
        v = self.category(self._ids(x, F.ITEM_CATEGORY)) + tag_mean
        cos = tf.reduce_sum(tf.math.l2_normalize(u, -1) * tf.math.l2_normalize(v, -1), -1)
        is_ad = tf.cast(tf.equal(x[F.DOMAIN], F.DOMAIN_AD), tf.int32)
        advertiser = self.advertiser_bias(self._ids(x, F.ITEM_ADVERTISER))[:, 0]
        return (ALPHA_SCALE * tf.gather(self.alpha, is_ad) * cos + self.scenario_bias(
            self._ids(x, F.SCENARIO))[:, 0] + tf.where(is_ad > 0, advertiser, 0.0))


def _evaluate(model: StructuredBaseline, dataset: tf.data.Dataset) -> dict[str, float | None]:
    labels, scores, domains = [], [], []
    for batch in dataset:
        scores.append(model(batch).numpy())
        labels.append(batch[F.LABEL].numpy())
        domains.append(batch[F.DOMAIN].numpy())
    y, p, d = np.concatenate(labels), np.concatenate(scores), np.concatenate(domains)
    ad = d == F.DOMAIN_AD
    return {"auc_ad": auc(y[ad], p[ad]), "auc_content": auc(y[~ad], p[~ad])}


def run(data: str, epochs: int = 30, seed: int = 0, eval_days: float = 1.0,
        batch_size: int = 1024, learning_rate: float = 0.01, verbose: bool = True) -> dict:
    """Trains the baseline on everything before the last `eval_days` and evaluates on them."""
    tf.keras.utils.set_random_seed(seed)
    files = data_input.list_files(data)
    data_input.check_files(files)
    _, cut, _ = _split(files, eval_days)
    train = data_input.make_dataset(files, batch_size, end=cut, names=FIELDS,
                                    shuffle_buffer=100_000, seed=seed, cache=True)
    held_out = data_input.make_dataset(files, 4096, start=cut, names=FIELDS, cache=True)
    model = StructuredBaseline()
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    loss_fn = tf.keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = loss_fn(tf.cast(batch[F.LABEL], tf.float32), model(batch, training=True))
            loss += tf.add_n(model.losses)  # the advertiser biases' penalty
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    started = time.perf_counter()
    history = []
    for epoch in range(epochs):
        for batch in train:
            step(batch)
        history.append(_evaluate(model, held_out))
        if verbose:
            print(f"epoch {epoch + 1}: ad AUC {history[-1]['auc_ad']:.4f}, "
                  f"content AUC {history[-1]['auc_content']:.4f}", flush=True)
    return {**history[-1], **_oracle(data, cut), "epochs": epochs, "seed": seed,
            "seconds": time.perf_counter() - started, "history": history}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="directory of the synthetic generator")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_days", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    result = run(args.data, args.epochs, args.seed, args.eval_days)
    for key in ("auc_ad", "oracle_auc_ad", "auc_content", "oracle_auc_content"):
        if result.get(key) is not None:
            print(f"{key:20}{result[key]:.4f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
