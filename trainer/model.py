"""The LFM4Ads triple-tower model: user tower, item tower, dual-branch mix tower.

Paper Sec. 3.1-3.2, Fig. 2. Raw features -> `FeaturePreprocessor` -> `FeatureEmbeddings`;
UR = user tower, IR = item tower; each branch of the mix tower interacts
`[UR, IR, field embeddings]` and predicts its domain's label (the ad branch also predicts
`conversion`). Losses are masked by `domain`: content rows train the content branch, ad rows
the ad branch, and both train the shared towers and embeddings. CR(u,i) is the output of
`ModelConfig.cr_layer` in the ad branch (paper Sec. 3.2: CRs come from the ad branch only).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer.config import ModelConfig, TrainConfig
from trainer.embeddings import SHARED_TABLES, FeatureEmbeddings
from trainer.mix_tower import MixBranch
from trainer.preprocessing import BUCKET_FIELDS, FeaturePreprocessor, HashingPreprocessor
from trainer.towers import ItemTower, UserTower

# Field embeddings that enter the mix tower next to UR and IR, in this order.
MIX_FIELDS = (F.SCENARIO,) + F.USER_FEATURES + F.ITEM_FEATURES


def _auc(name: str) -> tf.keras.metrics.AUC:
    return tf.keras.metrics.AUC(name=name, from_logits=True, num_thresholds=1000)


def _bce() -> tf.keras.losses.Loss:
    return tf.keras.losses.BinaryCrossentropy(from_logits=True)


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
            zero_init=F.ID_FEATURES,
        )
        # Field embeddings that enter the branches next to UR, IR (ids only if mix_id_fields).
        self.mix_fields = tuple(
            name for name in MIX_FIELDS if config.mix_id_fields or name not in F.ID_FEATURES
        ) + context
        self.user_tower = UserTower(config.tower_hidden, config.representation_dim, name="user")
        self.item_tower = ItemTower(config.tower_hidden, config.representation_dim, name="item")
        if config.branches == "dual":
            self.ad_branch = MixBranch(config, ("label", "conversion"), name="ad_branch")
            self.content_branch = MixBranch(config, ("label",), name="content_branch")
        else:
            self.ad_branch = MixBranch(config, ("label", "conversion"), name="shared_branch")
            self.content_branch = self.ad_branch
        self.ad_task = tfrs.tasks.Ranking(loss=_bce(), metrics=[_auc("ad_auc")])
        self.content_task = tfrs.tasks.Ranking(loss=_bce(), metrics=[_auc("content_auc")])
        self.conversion_task = tfrs.tasks.Ranking(loss=_bce(), metrics=[_auc("conversion_auc")])
        # Mean over the batch (TFRS's default sums), on the same scale as the ranking losses.
        self.retrieval_task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE
            )
        ) if self.train_config.retrieval_loss_weight else None

    def get_config(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "train_config": dataclasses.asdict(self.train_config),
            "name": self.name,
        }

    # -- representations -------------------------------------------------------------------
    def _embed(self, raw: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        ids = self.preprocessor(raw)
        if training and self.config.id_dropout:
            # Id dropout: the model must also predict from features alone (cold start).
            for name in F.ID_FEATURES:
                if name in ids:
                    keep = tf.random.uniform(tf.shape(ids[name])) >= self.config.id_dropout
                    ids[name] = tf.where(keep, ids[name], tf.zeros_like(ids[name]))
        return self.embeddings(ids)

    def user_representation(self, raw: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """UR `[batch, representation_dim]` from the user features of `raw`."""
        return self.user_tower(self._embed(raw, training), training=training)

    def item_representation(self, raw: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """IR `[batch, representation_dim]` from the item features of `raw`."""
        return self.item_tower(self._embed(raw, training), training=training)

    def _forward(self, raw: dict[str, tf.Tensor], training: bool, content: bool = True):
        embedded = self._embed(raw, training)
        ur = self.user_tower(embedded, training=training)  # [batch, d_ur]
        ir = self.item_tower(embedded, training=training)  # [batch, d_ir]
        fields = [embedded[name] for name in self.mix_fields]
        scale = self.config.ad_tower_gradient_scale

        def damp(x):
            # Forward value unchanged; the ad loss reaches the shared parts scaled by `scale`.
            return x if scale == 1.0 else scale * x + (1.0 - scale) * tf.stop_gradient(x)

        ad = self.ad_branch((damp(ur), damp(ir)), [damp(f) for f in fields], training=training)
        if not content or self.content_branch is self.ad_branch:
            return ur, ir, ad, ad
        return ur, ir, ad, self.content_branch((ur, ir), fields, training=training)

    def cross_representation(self, raw: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """CR(u,i) `[batch, d_cr]`: output `cr_layer` of the ad branch."""
        _, _, ad, _ = self._forward(raw, training, content=False)
        return tf.cast(ad[self.cr_layer], tf.float32)

    def call(self, raw: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """All outputs: probabilities, logits, UR, IR and CR for a batch of raw features."""
        ur, ir, ad, content = self._forward(raw, training)
        logits = {
            "ad": tf.cast(ad["logit_label"], tf.float32),
            "content": tf.cast(content["logit_label"], tf.float32),
            "conversion": tf.cast(ad["logit_conversion"], tf.float32),
        }
        return {
            "ad_logit": logits["ad"],
            "content_logit": logits["content"],
            "conversion_logit": logits["conversion"],
            "ad_prediction": tf.sigmoid(logits["ad"]),
            "content_prediction": tf.sigmoid(logits["content"]),
            "conversion_prediction": tf.sigmoid(logits["conversion"]),
            "user_representation": tf.cast(ur, tf.float32),
            "item_representation": tf.cast(ir, tf.float32),
            "cross_representation": tf.cast(ad[self.cr_layer], tf.float32),
        }

    # -- training ---------------------------------------------------------------------------
    def compute_loss(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        outputs = self(inputs, training=training)
        is_ad = tf.cast(tf.equal(inputs[F.DOMAIN], F.DOMAIN_AD), tf.float32)[:, None]  # [b, 1]
        label = tf.cast(inputs[F.LABEL], tf.float32)[:, None]  # [batch, 1]
        conversion = tf.cast(inputs[F.CONVERSION], tf.float32)[:, None]
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
                outputs["user_representation"],
                outputs["item_representation"],
                sample_weight=label[:, 0],
                compute_metrics=False,
            )
        return loss
