"""The LFM4Ads triple-tower model: user tower, item tower, dual-branch mix tower.

Paper Sec. 3.1-3.2, Fig. 2. Raw features -> `FeaturePreprocessor` -> `FeatureEmbeddings`;
UR = user tower, IR = item tower; each branch of the mix tower interacts
`[UR, IR, field embeddings]` and predicts its domain's label (the ad branch also predicts
`conversion`). Losses are masked by `domain`: content rows train the content branch, ad rows
the ad branch, and both train the shared towers and embeddings. CR(u,i) is the output of
`ModelConfig.cr_layer` in the ad branch (paper Sec. 3.2: CRs come from the ad branch only).
With `ModelConfig.feature_path`, a shallow feature-only path (`trainer.feature_path`) adds to
every head's logit; `fit_feature_path` trains it first, alone, and freezes it for `fit`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_recommenders as tfrs

from common import features, signatures
from trainer.config import ModelConfig, TrainConfig
from trainer.embeddings import SHARED_TABLES, FeatureEmbeddings
from trainer.feature_path import FeatureAffinityPath
from trainer.mix_tower import CR_OUTPUT, MixBranch
from trainer.preprocessing import BUCKET_FIELDS, FeaturePreprocessor, HashingPreprocessor
from trainer.towers import ItemTower, UserTower

# Field embeddings that enter the mix tower next to UR and IR, in this order.
MIX_FIELDS = (features.SCENARIO,) + features.USER_FEATURES + features.ITEM_FEATURES


def _auc(name: str) -> tf.keras.metrics.AUC:
    return tf.keras.metrics.AUC(name=name, from_logits=True, num_thresholds=1000)


def _bce() -> tf.keras.losses.Loss:
    # Summed; `compute_loss` divides by the global batch (tf.distribute refuses a mean).
    return tf.keras.losses.BinaryCrossentropy(
        from_logits=True, reduction=tf.keras.losses.Reduction.SUM)


def _global_batch(rows: tf.Tensor) -> tf.Tensor:
    """Rows of this step over all replicas in sync (this replica's alone outside a strategy and
    under ParameterServerStrategy, whose workers step alone): an uneven last batch counts
    exactly, as in one process."""
    count = tf.cast(tf.shape(rows)[0], tf.float32)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        count = context.all_reduce("sum", count)
    return count


class LFM4AdsModel(tfrs.models.Model):
    """Triple-tower upstream model (TFRS `Model`: towers + tasks, `compute_loss`).

    Args:
      config: architecture (`ModelConfig`).
      train_config: loss weights (`TrainConfig`).
      preprocessor: raw features -> ids; defaults to `HashingPreprocessor` sized by `config`.

    Example:
      >>> model = LFM4AdsModel(ModelConfig())
      >>> model.compile(tf.keras.optimizers.Adam(1e-3))
      >>> model.fit(dataset_of_raw_feature_dicts)
      >>> model.user_representation(raw)  # [batch, representation_dim]
    """

    def __init__(
        self,
        config: ModelConfig,
        train_config: TrainConfig | None = None,
        preprocessor: FeaturePreprocessor | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.distribute_reduction_method = "first"  # `_logs` returns synchronized values
        self.config = config
        self.train_config = train_config or TrainConfig()
        self.cr_layer = config.resolved_cr_layer()
        self.preprocessor = preprocessor or HashingPreprocessor.from_model_config(config)
        context = tuple(self.preprocessor.context_fields())
        vocabulary_sizes = {
            name: self.preprocessor.vocabulary_size(name)
            for name in tuple(BUCKET_FIELDS) + context
            if name not in SHARED_TABLES
        }
        self.embeddings = FeatureEmbeddings(
            vocabulary_sizes,
            config.embedding_dim,
            l2=config.embedding_l2,
            zero_init=features.ID_FEATURES,
            # Named, not Keras-numbered: the export's endpoints are found by variable name.
            name="feature_embeddings",
        )
        # Field embeddings that enter the branches next to UR, IR (ids only if mix_id_fields).
        self.mix_fields = tuple(
            name for name in MIX_FIELDS if config.mix_id_fields or name not in features.ID_FEATURES
        ) + context
        self.user_tower = UserTower(config.tower_hidden, config.representation_dim, name="user")
        self.item_tower = ItemTower(config.tower_hidden, config.representation_dim, name="item")
        if config.branches == "dual":
            self.ad_branch = MixBranch(config, ("label", "conversion"), name="ad_branch")
            self.content_branch = MixBranch(config, ("label",), name="content_branch")
        else:
            self.ad_branch = MixBranch(config, ("label", "conversion"), name="shared_branch")
            self.content_branch = self.ad_branch
        # Shallow cos(U, V) + bias path added to every head's logit (ModelConfig.feature_path).
        self.feature_path = FeatureAffinityPath(
            {name: self.preprocessor.vocabulary_size(name) for name in BUCKET_FIELDS},
            heads=("ad", "content", "conversion"),
            bias_heads=("ad", "content"),
            embedding_dim=config.feature_path_dim,
            bias_l2=config.feature_path_bias_l2,
            embedding_l2=config.feature_path_embedding_l2,
            user_fields=config.feature_path_user_fields,
            item_fields=config.feature_path_item_fields,
            bias_fields=config.feature_path_bias_fields,
            name="feature_path",
        ) if config.feature_path else None
        self.ad_task = tfrs.tasks.Ranking(loss=_bce(), metrics=[_auc("ad_auc")])
        self.content_task = tfrs.tasks.Ranking(loss=_bce(), metrics=[_auc("content_auc")])
        self.conversion_task = tfrs.tasks.Ranking(loss=_bce(), metrics=[_auc("conversion_auc")])
        # Summed, then divided by the global batch in `compute_loss`, as the ranking losses.
        self.retrieval_task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            )
        ) if self.train_config.retrieval_loss_weight else None

    def get_config(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "train_config": dataclasses.asdict(self.train_config),
            "name": self.name,
        }

    # -- representations -------------------------------------------------------------------
    def _ids(self, raw: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        ids = self.preprocessor(raw)
        if training and self.config.id_dropout:
            # Id dropout: the model must also predict from features alone (cold start).
            for name in features.ID_FEATURES:
                if name in ids:
                    keep = tf.random.uniform(tf.shape(ids[name])) >= self.config.id_dropout
                    ids[name] = tf.where(keep, ids[name], tf.zeros_like(ids[name]))
        return ids

    def _embed(self, raw: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        return self.embeddings(self._ids(raw, training))

    def user_representation(self, raw: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """UR `[batch, representation_dim]` from the user features of `raw`."""
        return self.user_tower(self._embed(raw, training), training=training)

    def item_representation(self, raw: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """IR `[batch, representation_dim]` from the item features of `raw`."""
        return self.item_tower(self._embed(raw, training), training=training)

    def _towers(self, raw: dict[str, tf.Tensor], training: bool):
        """Ids, UR `[batch, d_ur]`, IR `[batch, d_ir]` and the branches' field embeddings."""
        ids = self._ids(raw, training)
        embedded = self.embeddings(ids)
        ur = self.user_tower(embedded, training=training)  # [batch, d_ur]
        ir = self.item_tower(embedded, training=training)  # [batch, d_ir]
        return ids, ur, ir, [embedded[name] for name in self.mix_fields]

    def _ad_branch(self, ur: tf.Tensor, ir: tf.Tensor, fields: list[tf.Tensor],
                   training: bool) -> dict[str, tf.Tensor]:
        """Every output of the ad branch (`MixBranch`) on the shared towers' outputs."""
        scale = self.config.ad_tower_gradient_scale

        def damp(x):
            # Forward value unchanged; the ad loss reaches the shared parts scaled by `scale`.
            return x if scale == 1.0 else scale * x + (1.0 - scale) * tf.stop_gradient(x)

        return self.ad_branch((damp(ur), damp(ir)), [damp(f) for f in fields], training=training)

    def _forward(self, raw: dict[str, tf.Tensor], training: bool):
        ids, ur, ir, fields = self._towers(raw, training)
        ad = self._ad_branch(ur, ir, fields, training)
        path = self.feature_path(ids) if self.feature_path is not None else {}
        if self.content_branch is self.ad_branch:
            return ur, ir, ad, ad, path
        return ur, ir, ad, self.content_branch((ur, ir), fields, training=training), path

    def ad_branch_outputs(self, raw: dict[str, tf.Tensor],
                          training: bool = False) -> dict[str, tf.Tensor]:
        """Every intermediate output of the ad branch, by its `ModelConfig.cr_layer` name.

        `embedding` is the branch input `x0 = concat(UR, IR, [UR * IR,] e_1..e_F)` `[batch, d0]`,
        `cross_<l>` the output of interaction layer l (`[batch, d0]`; `[batch, d0 + d]` for
        `fm`), `mlp_<l>` that of hidden MLP layer l (`[batch, mlp_hidden[l - 1]]`) and
        `pre_mlp_<l>` its input to the ReLU, all float32: each is a candidate CR(u,i) (paper
        Sec. 3.3, the layer study of Sec. 5.1.3); `cr` is the one the config reads. The
        logits are left out, and so are the content branch and the feature path.
        """
        _, ur, ir, fields = self._towers(raw, training)
        ad = self._ad_branch(ur, ir, fields, training)
        return {name: tf.cast(value, tf.float32) for name, value in ad.items()
                if not name.startswith("logit_")}

    def cross_representation(self, raw: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """CR(u,i) `[batch, d_cr]` float32: the ad branch's output as the config reads it
        (`cr_layer`, `cr_activation`, `cr_normalization`)."""
        return self.ad_branch_outputs(raw, training)[CR_OUTPUT]

    def call(self, raw: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """All outputs: probabilities, logits, UR, IR and CR for a batch of raw features."""
        ur, ir, ad, content, path = self._forward(raw, training)
        logits = {
            "ad": tf.cast(ad["logit_label"], tf.float32),
            "content": tf.cast(content["logit_label"], tf.float32),
            "conversion": tf.cast(ad["logit_conversion"], tf.float32),
        }
        for head, logit in path.items():  # the shallow path (ModelConfig.feature_path)
            logits[head] += tf.cast(logit, tf.float32)
        return {
            "ad_logit": logits["ad"],
            "content_logit": logits["content"],
            "conversion_logit": logits["conversion"],
            signatures.AD_PREDICTION: tf.sigmoid(logits["ad"]),
            signatures.CONTENT_PREDICTION: tf.sigmoid(logits["content"]),
            signatures.CONVERSION_PREDICTION: tf.sigmoid(logits["conversion"]),
            signatures.USER_REPRESENTATION: tf.cast(ur, tf.float32),
            signatures.ITEM_REPRESENTATION: tf.cast(ir, tf.float32),
            signatures.CROSS_REPRESENTATION: tf.cast(ad[CR_OUTPUT], tf.float32),
        }

    # -- training ---------------------------------------------------------------------------
    def _path_loss(self, inputs: dict[str, tf.Tensor], path: dict[str, tf.Tensor]) -> tf.Tensor:
        """The feature path alone on each domain's labels (its own, standalone loss)."""
        is_ad = tf.cast(tf.equal(inputs[features.DOMAIN], features.DOMAIN_AD), tf.float32)[:, None]
        label = tf.cast(inputs[features.LABEL], tf.float32)[:, None]
        bce = tf.keras.losses.BinaryCrossentropy(from_logits=True)
        loss = bce(label, path["ad"], sample_weight=is_ad)
        loss += bce(label, path["content"], sample_weight=1.0 - is_ad)
        if self.train_config.conversion_loss_weight:
            conversion = tf.cast(inputs[features.CONVERSION], tf.float32)[:, None]
            loss += self.train_config.conversion_loss_weight * bce(
                conversion, path["conversion"], sample_weight=is_ad)
        return loss

    def fit_feature_path(self, dataset: tf.data.Dataset, epochs: int | None = None,
                         learning_rate: float | None = None, freeze: bool = True,
                         verbose: bool = False) -> list[float]:
        """Trains the feature path alone, on its own loss; nothing else moves.

        The first stage of training with `ModelConfig.feature_path`: the path learns slowly
        while the deep branches over-fit small ad data within a few epochs
        (`docs/BENCHMARKS.md`), so the path is fitted first and, with `freeze`, kept fixed
        afterwards (`fit` then trains the rest on top of it; call this before `fit`). Adam with
        the learning rate cosine-decayed from `learning_rate` to 0 over `epochs`, so the path
        settles instead of wandering with the last batches; both default to the model's
        `TrainConfig.feature_path_*`. Returns the mean loss of each epoch.
        """
        epochs = self.train_config.feature_path_epochs if epochs is None else epochs
        learning_rate = learning_rate or self.train_config.feature_path_learning_rate
        if self.feature_path is None:
            raise ValueError("fit_feature_path needs ModelConfig(feature_path=True)")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if freeze and getattr(self, "_is_compiled", False):
            raise RuntimeError(
                "fit_feature_path(freeze=True) must run before compile(): Keras fixes the "
                "trainable variables when the model is compiled, so the path would keep training")
        layer = self.feature_path
        batches = int(dataset.cardinality())  # known for in-memory data; not after a filter
        if batches == tf.data.INFINITE_CARDINALITY:
            raise ValueError("fit_feature_path needs a finite dataset (one epoch), got an "
                             "infinitely repeating one")
        if batches < 0:  # unknown: count once (a cached dataset is filled by this pass)
            batches = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        if batches == 0:
            raise ValueError("fit_feature_path got an empty dataset")
        optimizer = tf.keras.optimizers.Adam(
            tf.keras.optimizers.schedules.CosineDecay(learning_rate, epochs * batches))

        @tf.function
        def step(batch):
            with tf.GradientTape() as tape:
                path = layer(self.preprocessor(batch))
                loss = self._path_loss(batch, {k: tf.cast(v, tf.float32) for k, v in path.items()})
                if layer.losses:
                    loss += tf.add_n(layer.losses)
            variables = layer.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss

        history = []
        for epoch in range(epochs):
            total = tf.constant(0.0)
            for batch in dataset:
                total += step(batch)
            history.append(float(total) / batches)
            if verbose:
                print(f"feature path: epoch {epoch + 1}/{epochs}, loss {history[-1]:.4f}",
                      flush=True)
        if freeze:
            layer.trainable = False
        return history

    def compute_loss(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        outputs = self(inputs, training=training)
        is_ad = tf.cast(tf.equal(inputs[features.DOMAIN], features.DOMAIN_AD), tf.float32)[
            :, None
        ]  # [b, 1]
        label = tf.cast(inputs[features.LABEL], tf.float32)[:, None]  # [batch, 1]
        conversion = tf.cast(inputs[features.CONVERSION], tf.float32)[:, None]
        loss = self.ad_task(
            labels=label, predictions=outputs["ad_logit"], sample_weight=is_ad, training=training
        )
        loss += self.content_task(
            labels=label,
            predictions=outputs["content_logit"],
            sample_weight=1.0 - is_ad,
            training=training,
        )
        weights = self.train_config
        if weights.conversion_loss_weight:
            loss += weights.conversion_loss_weight * self.conversion_task(
                labels=conversion,
                predictions=outputs["conversion_logit"],
                sample_weight=is_ad,
                training=training,
            )
        if weights.retrieval_loss_weight:
            # In-batch softmax over UR . IR on the positive rows (standalone retrieval, Sec. 3.4.3).
            loss += weights.retrieval_loss_weight * self.retrieval_task(
                outputs[signatures.USER_REPRESENTATION],
                outputs[signatures.ITEM_REPRESENTATION],
                sample_weight=label[:, 0],
                compute_metrics=False,
            )
        # The mean over the global batch; each replica's share sums to it across replicas.
        return loss / _global_batch(label)

    def _step_losses(self, inputs: dict[str, tf.Tensor], training: bool):
        """(loss, regularization loss) of one step on this replica: the regularization losses
        are computed whole on every replica, so each replica takes its share of them."""
        loss = self.compute_loss(inputs, training=training)
        regularization = tf.nn.scale_regularization_loss(
            tf.reduce_sum([tf.reduce_sum(x) for x in self.losses]))
        return loss, regularization

    def _logs(self, loss: tf.Tensor, regularization: tf.Tensor) -> dict[str, tf.Tensor]:
        """The step's logs, the same on every replica (`distribute_reduction_method` is
        "first"): the metrics' results are synchronized already, the losses are summed."""
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            loss, regularization = context.all_reduce("sum", [loss, regularization])
        logs = {metric.name: metric.result() for metric in self.metrics}
        logs.update(loss=loss, regularization_loss=regularization,
                    total_loss=loss + regularization)
        return logs

    def train_step(self, inputs):
        """TFRS's step, correct under any `tf.distribute` strategy (gradients are summed over
        the replicas, so each replica's loss is its share of the global batch's mean)."""
        with tf.GradientTape() as tape:
            loss, regularization = self._step_losses(inputs, training=True)
            total_loss = loss + regularization
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        return self._logs(loss, regularization)

    def test_step(self, inputs):
        return self._logs(*self._step_losses(inputs, training=False))
