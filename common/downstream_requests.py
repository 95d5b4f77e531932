"""Serving requests of a downstream model: tf.Examples carrying the representation features.

A downstream model's `serving_default` reads, beside the raw features, the float lists `ur`,
`ir`, `cr_user`, `cr_item` (`common.signatures.REPRESENTATION_FEATURES`) with their int64 0/1
`<name>_found`. A serving host fills them from the representation store (paper Fig. 4;
`serving.online.OnlineLoop.rank`), as of before the request. An absent or unknown vector is
sent as found 0 without the float list, which the model parses as zeros (a cold start).
Protocol buffers only: no TensorFlow runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from common import features, signatures


def _set_representations(example, representations: Mapping) -> None:
    feature = example.features.feature
    for name, value in representations.items():
        if name.endswith(signatures.FOUND_SUFFIX):
            feature[name].CopyFrom(feature_pb2.Feature(
                int64_list=feature_pb2.Int64List(value=[int(value)])))
        else:
            feature[name].CopyFrom(feature_pb2.Feature(
                float_list=feature_pb2.FloatList(value=np.asarray(value, np.float32).ravel())))


def example_with_representations(raw: Mapping, representations: Mapping) -> bytes:
    """One serving request: `raw` features (name -> value or list) and representation
    features (name -> float vector, with `<name>_found` as 0/1) as a serialized tf.Example."""
    example = example_pb2.Example()
    feature = example.features.feature
    for name, value in raw.items():
        values = list(value) if isinstance(value, (list, tuple)) or (
            hasattr(value, "ndim") and value.ndim) else [value]
        if features.FEATURE_TYPES.get(name) is int:
            feature[name].int64_list.SetInParent()  # present even when empty
            feature[name].int64_list.value.extend(int(v) for v in values)
        else:
            feature[name].bytes_list.SetInParent()
            feature[name].bytes_list.value.extend(v for v in values if v != b"")
    _set_representations(example, representations)
    return example.SerializeToString()


def with_representations(
        examples: Sequence[bytes],
        representations: Mapping[str, tuple[np.ndarray, np.ndarray]],
        floats: Mapping[str, np.ndarray] | None = None) -> list[bytes]:
    """The requests `examples` (serialized tf.Examples with the raw features) with the
    representation features added: `representations[name] = (vectors [n, d], found bool [n])`;
    a row not found gets `<name>_found` 0 and no vector. `floats[name]` (`[n]` or `[n, d]`):
    a float list every row carries, without a found flag (e.g. the upstream's ad prediction
    on the request, `signatures.UPSTREAM_AD_PREDICTION_FEATURE`)."""
    out = []
    for row, serialized in enumerate(examples):
        example = example_pb2.Example.FromString(serialized)
        values = {name: value[row] for name, value in (floats or {}).items()}
        for name, (vectors, found) in representations.items():
            values[signatures.found_feature(name)] = int(bool(found[row]))
            if found[row]:
                values[name] = vectors[row]
        _set_representations(example, values)
        out.append(example.SerializeToString())
    return out
