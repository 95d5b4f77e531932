"""`TensorProto` <-> numpy, as TF Serving reads requests and writes responses.

Requests may carry values in `tensor_content` or in the typed fields (`float_val`,
`string_val`, ...); a typed field with fewer values than elements repeats its last value, as
`Tensor::FromProto` does. Responses are written in the typed fields (`Tensor::AsProtoField`,
TF Serving's default), or in `tensor_content` when `--enable_serialization_as_tensor_content`.
`tf.make_tensor_proto` is not used for responses: it writes `tensor_content`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.model_server.errors import invalid_argument

DT = types_pb2

# DataType -> (numpy dtype, typed field holding its values).
_TYPES: dict[int, tuple[np.dtype, str]] = {
    DT.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    DT.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    DT.DT_INT32: (np.dtype(np.int32), "int_val"),
    DT.DT_INT16: (np.dtype(np.int16), "int_val"),
    DT.DT_INT8: (np.dtype(np.int8), "int_val"),
    DT.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    DT.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    DT.DT_INT64: (np.dtype(np.int64), "int64_val"),
    DT.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    DT.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    DT.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    DT.DT_HALF: (np.dtype(np.float16), "half_val"),
    DT.DT_STRING: (np.dtype(object), "string_val"),
    DT.DT_COMPLEX64: (np.dtype(np.complex64), "scomplex_val"),
    DT.DT_COMPLEX128: (np.dtype(np.complex128), "dcomplex_val"),
}
_BY_NUMPY = {np_dtype: enum for enum, (np_dtype, _) in _TYPES.items() if np_dtype.kind != "O"}


def dtype_string(dtype: int) -> str:
    """TF's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string", DT_INT64 -> "int64"."""
    try:
        return DT.DataType.Name(dtype)[3:].lower()
    except ValueError:
        return f"unknown dtype {dtype}"


def types_name(dtype: int) -> str:
    """The enum name: DT_FLOAT, DT_STRING, ..."""
    try:
        return DT.DataType.Name(dtype)
    except ValueError:
        return f"DT_{dtype}"


def numpy_dtype(dtype: int) -> np.dtype:
    if dtype not in _TYPES:
        raise invalid_argument(f"Data type {dtype_string(dtype)} is not supported by this server")
    return _TYPES[dtype][0]


def dtype_of(array: np.ndarray) -> int:
    """The DataType of a numpy array (object and bytes arrays are DT_STRING)."""
    if array.dtype.kind in "OSU":
        return DT.DT_STRING
    enum = _BY_NUMPY.get(array.dtype)
    if enum is None:
        raise invalid_argument(f"numpy dtype {array.dtype} has no TensorFlow DataType here")
    return enum


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """Decodes a request tensor; a proto TF could not read is `tensor parsing error: alias`."""
    error = functools.partial(invalid_argument, f"tensor parsing error: {alias}")
    if proto.dtype not in _TYPES or proto.tensor_shape.unknown_rank:
        raise error()
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise error()
    np_dtype, field = _TYPES[proto.dtype]
    count = math.prod(shape)
    if proto.tensor_content:
        return _from_content(proto, np_dtype, shape, count, error)
    values = getattr(proto, field)
    if proto.dtype in (DT.DT_COMPLEX64, DT.DT_COMPLEX128):
        flat = np.asarray(values, dtype=np_dtype.type(0).real.dtype)
        array = flat[0::2] + 1j * flat[1::2]
    elif proto.dtype == DT.DT_HALF:
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif proto.dtype == DT.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    else:
        array = np.asarray(values, dtype=np_dtype)
    if len(array) == count:
        return array.reshape(shape)
    if len(array) > count:
        raise error()
    return _fill_to(array, count, np_dtype).reshape(shape)


def _from_content(proto, np_dtype, shape, count, error) -> np.ndarray:
    if proto.dtype == DT.DT_STRING:
        import tensorflow as tf  # noqa: PLC0415  (rare encoding: let TF decode it)

        try:
            return tf.make_ndarray(proto)
        except Exception as e:  # noqa: BLE001
            raise error() from e
    content = proto.tensor_content
    if len(content) != count * np_dtype.itemsize:
        raise error()
    return np.frombuffer(content, dtype=np_dtype).reshape(shape)


def _fill_to(values: np.ndarray, count: int, np_dtype: np.dtype) -> np.ndarray:
    """Tensor::FromProto: fewer values than elements repeat the last one (or are zeros)."""
    out = np.empty(count, dtype=np_dtype)
    if len(values) == 0:
        out[:] = b"" if np_dtype.kind == "O" else 0
    else:
        out[:len(values)] = values
        out[len(values):] = values[-1]
    return out


def fill_proto(proto: tensor_pb2.TensorProto, array: np.ndarray,
               as_content: bool = False) -> tensor_pb2.TensorProto:
    """Writes `array` into `proto` (typed fields unless `as_content`); returns `proto`."""
    array = np.asarray(array)
    dtype = dtype_of(array)
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if dtype == DT.DT_STRING:
        proto.string_val.extend([v if isinstance(v, bytes) else str(v).encode("utf-8")
                                 for v in flat.tolist()])
    elif as_content:
        proto.tensor_content = np.ascontiguousarray(flat).astype(
            flat.dtype.newbyteorder("<")).tobytes()
    elif dtype == DT.DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif dtype in (DT.DT_COMPLEX64, DT.DT_COMPLEX128):
        pairs = np.stack([flat.real, flat.imag], axis=-1).reshape(-1)
        getattr(proto, _TYPES[dtype][1]).extend(pairs.tolist())
    else:
        getattr(proto, _TYPES[dtype][1]).extend(flat.tolist())
    return proto


def to_proto(array: np.ndarray, as_content: bool = False) -> tensor_pb2.TensorProto:
    return fill_proto(tensor_pb2.TensorProto(), array, as_content)
