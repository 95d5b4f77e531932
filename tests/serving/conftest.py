"""Shared fixtures: two exported LFM4Ads versions, a ScaNN retrieval SavedModel, helpers.

Served outputs are always compared with the SavedModel's own signature called in-process
(`Reference`), never with stored numbers.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common import features, signatures
from pipelines.sources import synthetic
from serving.model_server import ModelServer
from tests.conftest import made_once
from trainer import data_input
from trainer.config import ModelConfig
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

MODEL = "lfm4ads"
SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16), tower_hidden=(16,),
             representation_dim=8, embedding_dim=4)
SCANN_DIM = 8


def synthetic_records(out, examples: int, seed: int, days: int) -> list[bytes]:
    """Generates synthetic data into `out`; its serialized tf.Examples, in file order."""
    synthetic.generate(str(out), examples=examples, seed=seed, days=days, progress=False)
    files = data_input.list_files(str(out))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP")]


@pytest.fixture(scope="session")
def examples(tmp_path_factory) -> list[bytes]:
    """64 serialized tf.Examples of the project's schema."""
    return synthetic_records(tmp_path_factory.mktemp("serving_data"), 600, 11, 2)[:64]


@pytest.fixture(scope="session")
def exported(examples, tmp_path_factory) -> dict[str, str]:
    """Two exports of differently initialised models: {"a": <dir>/1, "b": <dir>/1} (made once
    for all test processes; copy a version before changing it)."""

    def export(root):
        for name, seed in (("a", 1), ("b", 2)):
            tf.keras.utils.set_random_seed(seed)
            model = LFM4AdsModel(ModelConfig(cr_layer="mlp_1", **SMALL))
            model(features.parse_examples(tf.constant(examples[:8])))
            export_saved_model(model, str(root / name), warmup_examples=examples[:4], version=1)

    root = made_once(tmp_path_factory, "serving-exports-a1-b2", export)
    return {name: str(root / name / "1") for name in ("a", "b")}


@pytest.fixture(scope="session")
def scann_export(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A tiny `tfrs.layers.factorized_top_k.ScaNN` index as a SavedModel: (<base>, queries)."""
    import tensorflow_recommenders as tfrs

    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(300, SCANN_DIM)).astype(np.float32)
    identifiers = tf.constant([f"item_{i}".encode() for i in range(len(candidates))])
    index = tfrs.layers.factorized_top_k.ScaNN(k=5, num_leaves=10, num_leaves_to_search=10,
                                               training_iterations=4,
                                               num_reordering_candidates=50)
    index.index(tf.constant(candidates), identifiers)

    class Retrieval(tf.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        @tf.function(input_signature=[tf.TensorSpec([None, SCANN_DIM], tf.float32,
                                                    name="queries")])
        def serve(self, queries):
            scores, ids = self.layer(queries)
            return {"scores": scores, "ids": ids}

    module = Retrieval(index)
    base = tmp_path_factory.mktemp("scann") / "retrieval"
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve},
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    return str(base), rng.normal(size=(4, SCANN_DIM)).astype(np.float32)


class Reference:
    """Calls a SavedModel's signatures in-process (each path loaded once)."""

    def __init__(self):
        self._loaded: dict[str, object] = {}

    def __call__(self, path: str, signature: str, **inputs) -> dict[str, np.ndarray]:
        if path not in self._loaded:
            self._loaded[path] = tf.saved_model.load(path)
        function = self._loaded[path].signatures[signature]
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference()


def copy_version(source: str, base: str, version: int) -> str:
    """Copies a version directory into `base/<version>` atomically (copy, then rename)."""
    os.makedirs(base, exist_ok=True)
    staging = os.path.join(base, f".staging-{version}")
    shutil.copytree(source, staging)
    final = os.path.join(base, str(version))
    os.rename(staging, final)
    return final


def predict_request(examples: list[bytes], signature: str = signatures.USER_REPRESENTATION,
                    name: str = MODEL, version: int | None = None, label: str | None = None,
                    output_filter: tuple[str, ...] = ()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[signatures.INPUT_KEY].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    return request


class Stubs:
    """Real tensorflow-serving-api stubs on one channel to `server`."""

    def __init__(self, server: ModelServer):
        self.channel = grpc.insecure_channel(server.grpc_target)
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rpc_error(call: Callable, *args, **kwargs) -> grpc.RpcError:
    """The RpcError that `call(*args)` raises (fails the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value
