"""One loaded model version: its SignatureDefs (from `saved_model.pb`) and their functions.

The SignatureDefs are read from the SavedModel proto itself, so metadata answers exactly what
TF Serving answers (including `__saved_model_init_op`); the callables come from
`tf.saved_model.load`. ScaNN's TensorFlow ops are registered before any load (`import scann`),
so retrieval SavedModels built with `tfrs.layers.factorized_top_k.ScaNN` load here, which the
stock TF Serving binary cannot do.
"""

from __future__ import annotations

import logging
import os

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.model_server.errors import (
    ServingError,
    failed_precondition,
    from_tf_error,
    internal,
    invalid_argument,
    not_found,
)

try:  # registers the Scann>* ops with TensorFlow
    import scann  # noqa: F401
except ImportError:  # pragma: no cover - scann is in the lock file
    scann = None

logger = logging.getLogger("serving.model_server")

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


class Signature:
    """A SignatureDef and the function that runs it on numpy inputs."""

    def __init__(self, name: str, definition: meta_graph_pb2.SignatureDef, function=None):
        self.name = name
        self.definition = definition
        self.function = function
        self.input_keys = tuple(sorted(definition.inputs))
        self.output_keys = tuple(sorted(definition.outputs))

    @property
    def method_name(self) -> str:
        return self.definition.method_name

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls the signature; TensorFlow errors come back as ServingErrors with TF's code."""
        if self.function is None:
            raise failed_precondition(
                f"Signature {self.name} has no callable function in this model")
        try:
            outputs = self.function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None
        except UnicodeDecodeError as e:
            # TF quotes the bad input bytes in its message, and some are not UTF-8.
            raise invalid_argument(
                f"Could not parse example input of signature {self.name}: TensorFlow's error "
                f"message held bytes that are not UTF-8 ({e.reason} at byte {e.start}); each "
                "string must be a serialized tf.Example") from None
        except (TypeError, ValueError) as e:
            raise invalid_argument(f"Signature {self.name} rejected its inputs: {e}") from None
        return {key: value.numpy() for key, value in outputs.items()}


class Servable:
    """A model version: name, version, path, signatures."""

    def __init__(self, name: str, version: int, path: str, signatures: dict[str, Signature],
                 loaded=None):
        self.name = name
        self.version = version
        self.path = path
        self.signatures = signatures
        self._loaded = loaded  # keeps the functions' variables alive

    @property
    def warmup_path(self) -> str:
        return os.path.join(self.path, WARMUP_DIR, WARMUP_FILE)

    def __repr__(self) -> str:
        return f"{{name: {self.name} version: {self.version}}}"


def read_meta_graph(path: str, tags: set[str]) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef of the SavedModel at `path` whose tag set is `tags`."""
    pb = os.path.join(path, "saved_model.pb")
    if not tf.io.gfile.exists(pb):
        raise not_found(f"Could not find SavedModel .pb or .pbtxt at supplied export "
                        f"directory path: {path}")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb, "rb") as f:
        try:
            saved_model.ParseFromString(f.read())
        except DecodeError:
            raise ServingError(grpc.StatusCode.DATA_LOSS,
                               f"Can't parse {pb} as binary proto") from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    raise not_found(f"Could not find meta graph def matching supplied tags: "
                    f"{{ {' '.join(sorted(tags))} }}. To inspect available tag-sets in the "
                    "SavedModel, please use the SavedModel CLI: `saved_model_cli`")


def load_servable(name: str, version: int, path: str, tags: set[str]) -> Servable:
    """Loads `path` (a SavedModel directory); errors are ServingErrors naming the version."""
    meta_graph = read_meta_graph(path, tags)
    try:
        loaded = tf.saved_model.load(path, tags=sorted(tags))
    except tf.errors.OpError as e:
        raise from_tf_error(e) from None
    except Exception as e:  # noqa: BLE001  (a corrupt model must not take the server down)
        raise internal(f"Loading {path} failed: {type(e).__name__}: {e}") from None
    functions = getattr(loaded, "signatures", {})
    signatures = {key: Signature(key, definition, functions.get(key))
                  for key, definition in meta_graph.signature_def.items()}
    return Servable(name, version, path, signatures, loaded)
