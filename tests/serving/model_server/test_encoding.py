"""Tensor encodings as TF Serving reads and writes them, and its REST number format."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.model_server import ServingError, rest_json, tensors


def test_request_tensors_decode_like_tensor_from_proto():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.5])
    proto.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), [1.5, 1.5, 1.5])  # repeats
    for array in (np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]),
                  np.array([0.5, -2], np.float16), np.array([[b"a", b"\xff"]], dtype=object)):
        for as_content in (False, True):
            proto = tensors.to_proto(array, as_content=as_content)
            assert bool(proto.tensor_content) == (as_content and array.dtype != object)
            np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), array)
            np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 3)
    bad.tensor_shape.dim.add(size=1)
    with pytest.raises(ServingError, match="tensor parsing error: x"):
        tensors.to_ndarray(bad, "x")


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (1.0, "1.0"), (1e-5, "1e-05"), (123456789.0, "123456792.0"),
    (np.float32(1) / np.float32(3), "0.333333343"), (float("nan"), "NaN"),
    (float("-inf"), "-Infinity"),
])
def test_rest_floats_are_written_as_tf_serving_writes_them(value, text):
    # "%g" when it reads back as the same float32, else 9 digits; ".0" on whole numbers
    assert rest_json.format_float(float(np.float32(value))) == text
