"""A reference point for the upstream model's quality: a tiny model shaped like the simulator.

The synthetic data's click logit is `domain/scenario bias + advertiser bias + alpha *
cos(u, v)`, with `u` a sum of demographic embeddings and `v` the category's plus the mean of
the tags' (`pipelines/sources/synthetic.py`). This baseline has that form and nothing else:
the trainer's `FeatureAffinityPath` (`cos(U, V)` of summed feature embeddings, no ids, no
history, one learned `alpha` and intercept per domain, scenario and penalised advertiser
biases) on hashed ids, alone, trained by both domains at a constant learning rate, with the
held-out AUC printed after every epoch. It answers how close to the oracle a model with the
right inductive bias gets on the same time split as `trainer.train` (train before the last
`--eval_days`, evaluate on them), which tells apart "the data cannot say more" from "the
architecture does not find it".

    python -m benchmarks.quality_baseline --data DIR [--epochs 30] [--seed 0] [--json]

With `--json` the last line is one JSON object: `auc_ad`, `auc_content`, the oracle's on the
same rows, and the AUCs after every epoch.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import time

import numpy as np
import tensorflow as tf

from common import cli, features
from trainer import data_input, oracle
from trainer.config import ModelConfig
from trainer.evaluation import auc
from trainer.feature_path import BIAS_FIELDS, ITEM_FIELDS, USER_FIELDS, FeatureAffinityPath
from trainer.preprocessing import HashingPreprocessor

PATH_FIELDS = USER_FIELDS + ITEM_FIELDS + BIAS_FIELDS
FIELDS = PATH_FIELDS + (features.DOMAIN, features.LABEL, features.TIMESTAMP)
HEADS = ("content", "ad")


class StructuredBaseline(tf.keras.Model):
    """logit = the feature path's head for the row's domain: `alpha_d * cos(U, V) + c_d` +
    scenario bias + advertiser bias (content rows have none: one shared "missing" bias)."""

    def __init__(self, dim: int = 16, buckets: int = 1000, bias_l2: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.preprocessor = HashingPreprocessor.from_model_config(ModelConfig(
            category_buckets=buckets, tag_buckets=buckets, advertiser_buckets=buckets,
            geo_buckets=buckets))
        # ~100 advertisers with ~15 clicks each in 200k rows: without a penalty their biases
        # over-fit (ad AUC falls after epoch 5 of 30)
        self.path = FeatureAffinityPath(
            {name: self.preprocessor.vocabulary_size(name) for name in PATH_FIELDS},
            heads=HEADS, bias_heads=HEADS, embedding_dim=dim, bias_l2=bias_l2)

    def call(self, x: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        logits = self.path(self.preprocessor(x))
        is_ad = tf.equal(x[features.DOMAIN], features.DOMAIN_AD)
        return tf.where(is_ad, logits["ad"][:, 0], logits["content"][:, 0])


def _evaluate(model: StructuredBaseline, dataset: tf.data.Dataset) -> dict[str, float | None]:
    labels, scores, domains = [], [], []
    for batch in dataset:
        scores.append(model(batch).numpy())
        labels.append(batch[features.LABEL].numpy())
        domains.append(batch[features.DOMAIN].numpy())
    y, p, d = np.concatenate(labels), np.concatenate(scores), np.concatenate(domains)
    ad = d == features.DOMAIN_AD
    return {"auc_ad": auc(y[ad], p[ad]), "auc_content": auc(y[~ad], p[~ad])}


def run(data: str, epochs: int = 30, seed: int = 0, eval_days: float = 1.0,
        batch_size: int = 1024, learning_rate: float = 0.01, verbose: bool = True) -> dict:
    """Trains the baseline on everything before the last `eval_days` and evaluates on them."""
    tf.keras.utils.set_random_seed(seed)
    files = data_input.list_files(data)
    data_input.check_files(files)
    _, cut, _ = data_input.time_split(files, eval_days)
    train = data_input.make_dataset(files, batch_size, end=cut, names=FIELDS,
                                    shuffle_buffer=100_000, seed=seed, cache=True)
    held_out = data_input.make_dataset(files, 4096, start=cut, names=FIELDS, cache=True)
    model = StructuredBaseline()
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    loss_fn = tf.keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = loss_fn(tf.cast(batch[features.LABEL], tf.float32), model(batch, training=True))
            if model.losses:  # the biases' penalty
                loss += tf.add_n(model.losses)
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
    return {**history[-1], **oracle.metrics(data, cut), "epochs": epochs, "seed": seed,
            "seconds": time.perf_counter() - started, "history": history}


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.quality_baseline",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="directory of the synthetic generator")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_days", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return cli.run(lambda: run(args.data, args.epochs, args.seed, args.eval_days), args,
                   show=_aucs, errors=(data_input.DataError,))


def _aucs(result: dict) -> str:
    return "\n".join(f"{key:20}{result[key]:.4f}"
                     for key in ("auc_ad", "oracle_auc_ad", "auc_content", "oracle_auc_content")
                     if result.get(key) is not None)


if __name__ == "__main__":
    raise SystemExit(main())
