"""Batch extraction of UR, IR and CR(u,i) from the exported upstream model (paper Sec. 3.2, 4.3.1).

The upstream SavedModel (``trainer.export``) is run over logged samples (serialized tf.Examples
with all raw features) in batches; one call per batch of each of the ``user_representation``,
``item_representation`` and ``cross_representation`` signatures.

* ``"user"`` / ``"item"``: ``(key bytes, vector float32 [d], updated_at int)``, one element per
  distinct key: the representation computed from the key's LATEST sample. Latest means the
  largest ``(timestamp, digest)``, where ``digest`` is the 16-byte BLAKE2b digest of the
  sample's serialized bytes, so that among samples with the same timestamp the one with the
  largest digest wins. The rule depends only on the samples, not on their order, on batching
  or on float rounding, so the output does not depend on input order. Byte-identical samples
  have identical vectors, so which of them wins does not matter. ``updated_at`` is the
  sample's timestamp.
* ``"cross_events"``: one batch per model batch, in ``components.cr_aggregation``'s input
  format ``{"user_id": object [n] bytes, "item_id": object [n] bytes, "timestamp": int64 [n],
  "domain": object [n] bytes, "cross_representation": float32 [n, d_cr]}``: one event per
  sample, content and ad alike; the domain lets the aggregator fold only the ad requests'
  events (``cr_domains``, paper Sec. 4.3.1) or all of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import numpy as np

from common import features, signatures
from common.representations.tables import sample_digest

USER = "user"
ITEM = "item"
CROSS_EVENTS = "cross_events"
OUTPUTS = (USER, ITEM, CROSS_EVENTS)


class _LatestFn(beam.CombineFn):
    """Keeps the value `(timestamp, digest, vector)` with the largest `(timestamp, digest)`.

    Accumulator: that triple, or None. Vectors are never compared (equal (timestamp, digest)
    means byte-identical samples, hence equal vectors).
    """

    def create_accumulator(self):
        return None

    @staticmethod
    def _later(a, b):
        if a is None:
            return b
        if b is None:
            return a
        return b if (b[0], b[1]) > (a[0], a[1]) else a

    def add_input(self, accumulator, element):
        return self._later(accumulator, element)

    def merge_accumulators(self, accumulators):
        out = None
        for acc in accumulators:
            out = self._later(out, acc)
        return out

    def extract_output(self, accumulator):
        return accumulator


class _RunModelFn(beam.DoFn):
    """Runs the upstream on a batch of serialized samples: one call of its `representations`
    signature (one forward pass for UR, IR and CR(u,i)), or its three representation
    signatures for an export from before that signature.

    The SavedModel is loaded once per DoFn instance (worker) in `setup()`.
    Main output: `(user_id, (timestamp, digest, UR [d_ur]))`; tagged outputs `ITEM`
    (same for IR) and `CROSS_EVENTS` (one batch dict).
    """

    def __init__(self, saved_model_dir: str):
        super().__init__()
        self._saved_model_dir = saved_model_dir
        self._model = None

    def setup(self):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(self._saved_model_dir)
        self._representations = signatures.representations_fn(self._model,
                                                              self._saved_model_dir)
        self._spec = features.feature_spec((features.USER_ID, features.ITEM_ID, features.TIMESTAMP,
                                            features.DOMAIN))

    def _run(self, examples) -> dict[str, np.ndarray]:
        """UR `[n, d_ur]`, IR `[n, d_ir]`, CR(u,i) `[n, d_cr]` float32 by signature name."""
        out = self._representations(examples)
        return {name: out[name].numpy().astype(np.float32, copy=False)
                for name in (signatures.USER_REPRESENTATION, signatures.ITEM_REPRESENTATION,
                             signatures.CROSS_REPRESENTATION)}

    def process(self, batch: list[bytes]) -> Iterator:
        tf = self._tf
        records = [bytes(r) for r in batch]
        examples = tf.constant(records, dtype=tf.string)  # [n]
        ids = tf.io.parse_example(examples, self._spec)
        user_id = ids[features.USER_ID].numpy().astype(object)  # [n] bytes
        item_id = ids[features.ITEM_ID].numpy().astype(object)  # [n] bytes
        timestamp = ids[features.TIMESTAMP].numpy().astype(np.int64)  # [n]
        domain = ids[features.DOMAIN].numpy().astype(object)  # [n] bytes
        out = self._run(examples)
        ur = out[signatures.USER_REPRESENTATION]  # [n, d_ur]
        ir = out[signatures.ITEM_REPRESENTATION]  # [n, d_ir]
        cr = out[signatures.CROSS_REPRESENTATION]  # [n, d_cr]
        digests = [sample_digest(r) for r in records]
        for i in range(len(records)):
            t = int(timestamp[i])
            # Copies: a row view would keep its whole batch alive while a key's latest state
            # (the combiner's accumulator) holds it.
            yield user_id[i], (t, digests[i], ur[i].copy())
            yield beam.pvalue.TaggedOutput(ITEM, (item_id[i], (t, digests[i], ir[i].copy())))
        yield beam.pvalue.TaggedOutput(CROSS_EVENTS, {
            "user_id": user_id,
            "item_id": item_id,
            "timestamp": timestamp,
            "domain": domain,
            "cross_representation": cr,
        })


def _to_row(kv: tuple) -> tuple[bytes, np.ndarray, int]:
    key, (timestamp, _digest, vector) = kv
    return key, vector, timestamp


class _LatestPerKey(beam.PTransform):
    """`(key, (timestamp, digest, vector))` -> `(key, vector, updated_at)`, one per key."""

    def expand(self, pcoll):
        return pcoll | "Latest" >> beam.CombinePerKey(_LatestFn()) | "Row" >> beam.Map(_to_row)


class ExtractRepresentations(beam.PTransform):
    """Serialized samples -> `{"user": ..., "item": ..., "cross_events": ...}` (module doc).

    Args:
      saved_model_dir: a version directory written by `trainer.export.export_saved_model`.
      min_batch_size, max_batch_size: bounds for `beam.BatchElements` (model batch size).
    """

    def __init__(self, saved_model_dir: str, min_batch_size: int = 16,
                 max_batch_size: int = 256):
        super().__init__()
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size <= max_batch_size, got "
                             f"{min_batch_size}, {max_batch_size}")
        self._saved_model_dir = saved_model_dir
        self._min_batch_size = min_batch_size
        self._max_batch_size = max_batch_size

    def expand(self, pcoll: beam.PCollection) -> dict[str, beam.PCollection]:
        out = (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=self._min_batch_size,
                                            max_batch_size=self._max_batch_size)
            | "RunModel" >> beam.ParDo(_RunModelFn(self._saved_model_dir)).with_outputs(
                ITEM, CROSS_EVENTS, main=USER)
        )
        return {
            USER: out[USER] | "LatestUser" >> _LatestPerKey(),
            ITEM: out[ITEM] | "LatestItem" >> _LatestPerKey(),
            CROSS_EVENTS: out[CROSS_EVENTS],
        }
