"""EmbeddingClient against the server: outputs equal the SavedModel's, deadlines, retries, CLI."""

import os
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from common import features, signatures
from serving import client
from serving.model_server import ModelServer
from tests.serving.conftest import MODEL


@pytest.fixture(scope="module")
def server(exported):
    base = os.path.dirname(exported["a"])
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None) as s:
        yield s


@pytest.fixture(scope="module")
def direct(exported):
    return tf.saved_model.load(exported["a"])


def test_representations_equal_the_saved_model(server, direct, examples):
    with client.EmbeddingClient(server.grpc_target, MODEL, timeout=10) as embedding:
        batch = tf.constant(examples[:16])
        for method, signature in ((embedding.user_representations, signatures.USER_REPRESENTATION),
                                  (embedding.item_representations, signatures.ITEM_REPRESENTATION),
                                  (embedding.cross_representations,
                                   signatures.CROSS_REPRESENTATION)):
            got = method(examples[:16])
            want = direct.signatures[signature](examples=batch)[signature].numpy()
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        scores = embedding.predict(examples[:16])
        want = direct.signatures[signatures.SERVING_DEFAULT](examples=batch)
        assert set(scores) == set(signatures.OUTPUT_KEYS[signatures.SERVING_DEFAULT])
        np.testing.assert_allclose(scores[signatures.AD_PREDICTION],
                                   want[signatures.AD_PREDICTION].numpy(),
                                   rtol=1e-5)
        only = embedding.predict(examples[:2], outputs=[signatures.AD_PREDICTION])
        assert set(only) == {signatures.AD_PREDICTION}
        assert embedding.last_model_version == 1


def test_one_representations_call_equals_the_four_single_calls(server, examples):
    """`representations()`: one request, one forward pass; through the server it returns what
    the three representation signatures and `serving_default` return, bit for bit."""
    with client.EmbeddingClient(server.grpc_target, MODEL, timeout=10) as embedding:
        got = embedding.representations(examples[:16])
        assert list(got) == list(signatures.OUTPUT_KEYS[signatures.REPRESENTATIONS])
        want = {signatures.USER_REPRESENTATION: embedding.user_representations(examples[:16]),
                signatures.ITEM_REPRESENTATION: embedding.item_representations(examples[:16]),
                signatures.CROSS_REPRESENTATION: embedding.cross_representations(examples[:16]),
                signatures.AD_PREDICTION: embedding.predict(
                    examples[:16], outputs=[signatures.AD_PREDICTION])[signatures.AD_PREDICTION]}
        for key, value in want.items():
            assert got[key].dtype == np.float32 and got[key].shape == value.shape
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_responses_are_decoded_by_the_servers_tensor_decoder():
    """One TensorProto decoder (`serving.model_server.tensors`): typed fields, tensor_content,
    TF's splat encoding; writable arrays; ValueError for a proto it cannot read."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving.model_server import tensors

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    for as_content in (False, True):
        out = client._tensor_to_numpy("x", tensors.to_proto(array, as_content=as_content))
        np.testing.assert_array_equal(out, array)
        assert out.dtype == np.float32 and out.flags.writeable
    splat = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    splat.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(client._tensor_to_numpy("x", splat), [2.5, 2.5, 2.5])
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 3)
    bad.tensor_shape.dim.add(size=1)
    with pytest.raises(ValueError, match="output 'x': tensor parsing error: x"):
        client._tensor_to_numpy("x", bad)


def test_errors_are_raised_with_the_server_message(server, examples):
    with client.EmbeddingClient(server.grpc_target, MODEL, timeout=10) as embedding:
        bad = tf.train.Example.FromString(examples[0])
        del bad.features.feature[features.USER_GEO]
        with pytest.raises(client.ServingClientError, match=features.USER_GEO) as info:
            embedding.user_representations([bad.SerializeToString()])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError, match="empty"):
            embedding.user_representations([])
    with client.EmbeddingClient(server.grpc_target, "nope", timeout=10) as embedding:
        with pytest.raises(client.ServingClientError) as info:
            embedding.user_representations(examples[:1])
        assert info.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_unavailable_is_retried_until_the_server_is_up(exported, examples):
    """A server that starts late: the call retries UNAVAILABLE and succeeds within its deadline."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = os.path.dirname(exported["a"])
    started = []

    def start_later():
        time.sleep(1.0)
        started.append(ModelServer(model_name=MODEL, model_base_path=base, port=port,
                                   rest_api_port=None).start())

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with client.EmbeddingClient(f"127.0.0.1:{port}", MODEL, timeout=60,
                                    retries=50) as embedding:
            out = embedding.user_representations(examples[:2])
        assert out.shape[0] == 2
    finally:
        thread.join()
        for server in started:
            server.stop()


def test_deadline_is_not_exceeded_when_nothing_answers(examples):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with client.EmbeddingClient(f"127.0.0.1:{port}", MODEL, timeout=0.5, retries=100) as embedding:
        started = time.monotonic()
        with pytest.raises(client.ServingClientError) as info:
            embedding.user_representations(examples[:1])
        assert time.monotonic() - started < 2.0
        assert info.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                   grpc.StatusCode.UNAVAILABLE)


@pytest.mark.parametrize("suffix", [".npy", ".tfrecord.gz"])
def test_cli_embeds_a_tfrecord_file(server, direct, examples, tmp_path, suffix):
    source = tmp_path / "in.tfrecord.gz"
    with tf.io.TFRecordWriter(str(source), "GZIP") as w:
        for e in examples[:40]:
            w.write(e)
    out = tmp_path / f"ur{suffix}"
    code = client.main(["--target", server.grpc_target, "--model_name", MODEL, "--input",
                   str(source), "--output", str(out), "--batch_size", "16"])
    assert code == 0
    want = direct.signatures[signatures.USER_REPRESENTATION](
        examples=tf.constant(examples[:40]))[signatures.USER_REPRESENTATION].numpy()
    if suffix == ".npy":
        got = np.load(out)
    else:
        rows = [tf.train.Example.FromString(r.numpy())
                for r in tf.data.TFRecordDataset(str(out), "GZIP")]
        assert [r.features.feature["row"].int64_list.value[0] for r in rows] == list(range(40))
        got = np.array([r.features.feature["representation"].float_list.value for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
