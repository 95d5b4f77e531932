"""Client for the upstream model behind TF Serving's gRPC API (ours or `tensorflow/serving`).

    client = EmbeddingClient("localhost:8500", "lfm4ads", timeout=2.0)
    ur = client.user_representations(serialized_examples)   # float32 [n, d_ur]
    ir = client.item_representations(serialized_examples)   # float32 [n, d_ir]
    cr = client.cross_representations(serialized_examples)  # float32 [n, d_cr]
    scores = client.predict(serialized_examples)            # {"ad_prediction": [n, 1], ...}

Every call carries a deadline (`timeout` seconds). Predict has no side effects, so a call that
fails before the server could answer (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`: connection refused,
server restarting, batch queue or request queue full) is retried with exponential backoff, at
most `retries` times and never past the call's deadline. Every other status (an invalid
example, an unknown model, `DEADLINE_EXCEEDED`) is raised at once as `ServingClientError` with
the server's message.

The CLI embeds a TFRecord file of serialized tf.Examples:

    python -m serving.client --target localhost:8500 --model_name lfm4ads \
        --signature user_representation --input examples.tfrecord.gz --output ur.npy
"""

from __future__ import annotations

import errno
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import grpc
import numpy as np

from common import cli, signatures

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
MAX_MESSAGE_BYTES = 2**31 - 1  # as TF Serving: no 4 MiB gRPC default


class ServingClientError(RuntimeError):
    """A Predict call failed; `code` is the gRPC status code, the message the server's."""

    def __init__(self, code: grpc.StatusCode, message: str, signature: str):
        super().__init__(f"{signature}: {code.name}: {message}")
        self.code = code
        self.details = message


def _tensor_to_numpy(alias: str, proto) -> np.ndarray:
    """A response TensorProto as a writable numpy array, decoded as the server decodes
    requests (`serving.model_server.tensors.to_ndarray`: typed fields, TF's "splat" encoding
    of a repeated value, or tensor_content); ValueError for one it cannot read."""
    from serving.model_server.errors import ServingError
    from serving.model_server.tensors import to_ndarray

    try:
        array = to_ndarray(proto, alias)
    except ServingError as e:
        raise ValueError(f"output {alias!r}: {e.message}") from None
    return array if array.flags.writeable else array.copy()


class EmbeddingClient:
    """UR / IR / CR and predictions of the upstream model over gRPC (module doc).

    Args:
      target: `host:port` of the server's gRPC port.
      model_name: the served model's name.
      timeout: seconds per call (the deadline, retries included).
      version: a model version (default: the server's latest), or `version_label`.
      retries: how many times a retryable failure is retried.
      channel: an existing channel (then `target` is ignored for connecting).
    """

    def __init__(self, target: str, model_name: str, timeout: float = 5.0, *,
                 version: int | None = None, version_label: str | None = None,
                 retries: int = 3, channel: grpc.Channel | None = None):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if version is not None and version_label is not None:
            raise ValueError("give version or version_label, not both")
        self.target = target
        self.model_name = model_name
        self.timeout = float(timeout)
        self.version = version
        self.version_label = version_label
        self.retries = int(retries)
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.last_model_version: int | None = None  # the version that answered the last call

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------
    def _request(self, signature: str, examples: Sequence[bytes],
                 output_filter: Sequence[str] = ()):
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        examples = [bytes(e) for e in examples]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        elif self.version_label is not None:
            request.model_spec.version_label = self.version_label
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(examples))]),
            string_val=examples,
        )
        request.inputs[signatures.INPUT_KEY].CopyFrom(tensor)
        request.output_filter.extend(output_filter)
        return request

    def _call(self, signature: str, examples: Sequence[bytes],
              output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if len(examples) == 0:
            raise ValueError("examples is empty: give at least one serialized tf.Example")
        request = self._request(signature, examples, output_filter)
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServingClientError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                         f"no answer within {self.timeout} s", signature)
            try:
                response = self._stub.Predict(request, timeout=remaining)
                self.last_model_version = int(response.model_spec.version.value)
                return {k: _tensor_to_numpy(k, v) for k, v in response.outputs.items()}
            except grpc.RpcError as e:
                code = e.code()
                if code not in RETRYABLE or attempt == self.retries:
                    raise ServingClientError(code, e.details() or "", signature) from None
            time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())))
            delay *= 2
        raise AssertionError("unreachable")

    def _representation(self, signature: str, examples: Sequence[bytes]) -> np.ndarray:
        return self._call(signature, examples)[signature].astype(np.float32)

    def user_representations(self, examples: Sequence[bytes]) -> np.ndarray:
        """UR `[n, d_ur]` float32 from the user features of each example."""
        return self._representation(signatures.USER_REPRESENTATION, examples)

    def item_representations(self, examples: Sequence[bytes]) -> np.ndarray:
        """IR `[n, d_ir]` float32 from the item features of each example."""
        return self._representation(signatures.ITEM_REPRESENTATION, examples)

    def cross_representations(self, examples: Sequence[bytes]) -> np.ndarray:
        """CR(u,i) `[n, d_cr]` float32 of each (user, item) example."""
        return self._representation(signatures.CROSS_REPRESENTATION, examples)

    def representations(self, examples: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The `representations` signature, one call and one forward pass per request: UR
        `[n, d_ur]`, IR `[n, d_ir]`, CR(u,i) `[n, d_cr]` and `ad_prediction` `[n, 1]`, float32,
        keyed by their signatures' output names (`user_representation`, ...)."""
        out = self._call(signatures.REPRESENTATIONS, examples)
        return {key: out[key].astype(np.float32)
                for key in signatures.OUTPUT_KEYS[signatures.REPRESENTATIONS]}

    def predict(self, examples: Sequence[bytes],
                outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """`serving_default`: output key -> array (`ad_prediction` `[n, 1]`, ...)."""
        return self._call(signatures.SERVING_DEFAULT, examples, outputs)


# ----------------------------------------------------------------------------------------- CLI
SIGNATURES = (signatures.USER_REPRESENTATION, signatures.ITEM_REPRESENTATION,
              signatures.CROSS_REPRESENTATION)


def _records(path: str) -> Iterator[bytes]:
    import tensorflow as tf

    compression = "GZIP" if path.endswith(".gz") else ""
    for record in tf.data.TFRecordDataset(path, compression_type=compression):
        yield record.numpy()


def batches(records: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """Lists of at most `size` records, in order."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    batch: list[bytes] = []
    for record in records:
        batch.append(bytes(record))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_file(client: EmbeddingClient, signature: str, input_path: str, output_path: str,
               batch_size: int = 256) -> int:
    """Embeds every example of a TFRecord file; writes `.npy` `[n, d]` or a TFRecord of rows.

    A TFRecord output holds one tf.Example per input row with `representation` (float list)
    and `row` (int64, the input position). Returns the number of rows.
    """
    if signature not in SIGNATURES:
        raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
    parts = [client._representation(signature, batch)
             for batch in batches(_records(input_path), batch_size)]
    if not parts:
        raise ValueError(f"{input_path} holds no records")
    matrix = np.concatenate(parts)
    if output_path.endswith(".npy"):
        np.save(output_path, matrix)
    else:
        import tensorflow as tf

        options = "GZIP" if output_path.endswith(".gz") else None
        with tf.io.TFRecordWriter(output_path, options) as writer:
            for row, vector in enumerate(matrix):
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    "representation": tf.train.Feature(
                        float_list=tf.train.FloatList(value=vector.tolist())),
                    "row": tf.train.Feature(int64_list=tf.train.Int64List(value=[row])),
                })).SerializeToString())
    return int(matrix.shape[0])


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m serving.client",
                           description="Embed a TFRecord file of tf.Examples over gRPC.")
    p.add_argument("--target", default="localhost:8500")
    p.add_argument("--model_name", default="lfm4ads")
    p.add_argument("--signature", default=signatures.USER_REPRESENTATION, choices=SIGNATURES)
    p.add_argument("--input", required=True, help="TFRecord file (.gz: gzip)")
    p.add_argument("--output", required=True, help=".npy, or a TFRecord path")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        cli.fail(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.timeout <= 0:
        cli.fail(f"--timeout must be > 0 seconds, got {args.timeout}")

    def embed() -> dict:
        if not os.path.isfile(args.input):  # before any call: the one input of the command
            raise FileNotFoundError(errno.ENOENT, "no such file (--input)", args.input)
        with EmbeddingClient(args.target, args.model_name, args.timeout) as client:
            rows = embed_file(client, args.signature, args.input, args.output, args.batch_size)
        return {"rows": rows, "signature": args.signature, "output": args.output}

    # an input that holds no records is a ValueError; the server's failures exit 1
    return cli.run(embed, args, errors=(ValueError,), exit_codes={ServingClientError: 1},
                   show=lambda r: f"wrote {r['rows']} rows of {r['signature']} to {r['output']}")


if __name__ == "__main__":
    sys.exit(main())
