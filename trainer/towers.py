"""User tower (-> UR) and item tower (-> IR) of the triple-tower model (paper Sec. 3.1-3.2).

Each tower is its own Keras model over the field embeddings of its side, so it can be called,
saved and exported alone.
"""

from __future__ import annotations

import tensorflow as tf

from common import features
from trainer.mlp import MLP


class _Tower(tf.keras.Model):
    """`R = W_out MLP(concat_f e_f) + b_out` over the embeddings of `FIELDS`."""

    FIELDS: tuple[str, ...] = ()

    def __init__(self, hidden: tuple[int, ...], output_dim: int, **kwargs):
        super().__init__(**kwargs)
        if output_dim < 1:
            raise ValueError(f"output_dim must be >= 1, got {output_dim}")
        self.hidden = tuple(hidden)
        self.output_dim = int(output_dim)
        self.mlp = MLP(self.hidden) if self.hidden else None
        self.out = tf.keras.layers.Dense(self.output_dim, name="representation")

    def call(self, embedded: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        missing = [name for name in self.FIELDS if name not in embedded]
        if missing:
            raise ValueError(f"{type(self).__name__} needs the embeddings of {missing}")
        x = tf.concat([embedded[name] for name in self.FIELDS], axis=-1)  # [batch, fields * d]
        if self.mlp is not None:
            x = self.mlp(x, training=training)[-1]
        return self.out(x)  # [batch, output_dim]

    def get_config(self) -> dict:
        return {"hidden": list(self.hidden), "output_dim": self.output_dim, "name": self.name}


class UserTower(_Tower):
    """UR(u) from the user's id, demographics and history (`[batch, representation_dim]`)."""

    FIELDS = features.USER_FEATURES


class ItemTower(_Tower):
    """IR(i) from the item's id, category, tags and advertiser (`[batch, representation_dim]`)."""

    FIELDS = features.ITEM_FEATURES
