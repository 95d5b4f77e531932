"""TF Serving's REST JSON formats (`util/json_tensor.cc`).

Predict requests: `{"signature_name": ..., "instances": [...]}` (row format: one element per
batch row, objects when the signature has several inputs) or `{"inputs": ...}` (columnar: one
value per input, an object when there are several). Bytes are `{"b64": "..."}`; plain JSON
strings are taken as UTF-8 bytes. Responses: `{"predictions": [...]}` for rows,
`{"outputs": ...}` for columns; one output is written bare, several as objects; floats are
written as TF Serving writes them (shortest `%g` that round-trips, `NaN`, `Infinity`).
Classify/Regress requests: `{"context": {...}, "examples": [{feature: value(s)}, ...]}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import grpc
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving.model_server import tensors
from serving.model_server.errors import ServingError, invalid_argument

B64 = "b64"
ROW, COLUMNAR = "row", "columnar"
_MAX_DEBUG_CHARS = 256
DT = types_pb2


def _debug(value: Any) -> str:
    """JsonValueToDebugString: compact JSON, cut at 256 characters."""
    try:
        text = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text[:_MAX_DEBUG_CHARS]


def _type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _format_error(value: Any, *parts: str) -> ServingError:
    return invalid_argument(f"JSON Value: {_debug(value)} " + "".join(parts))


def parse_json(body: bytes) -> dict:
    """ParseJson: the document must be a JSON object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: "
                               f"{e.start}") from None
    except json.JSONDecodeError as e:
        raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {_debug(doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64), str)


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise _format_error(value, "not formatted correctly for base64 data")
    try:
        return base64.b64decode(value[B64], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


# -- JSON value -> typed leaf ------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_INT_RANGES = {
    DT.DT_INT32: (-2**31, 2**31 - 1), DT.DT_INT16: (-2**31, 2**31 - 1),
    DT.DT_INT8: (-2**31, 2**31 - 1), DT.DT_UINT8: (-2**31, 2**31 - 1),
    DT.DT_INT64: (-2**63, 2**63 - 1), DT.DT_UINT32: (0, 2**32 - 1),
    DT.DT_UINT64: (0, 2**64 - 1),
}


def _leaf(value: Any, dtype: int) -> Any:
    """AddValueToTensor: a JSON leaf as a value of `dtype`, or a TypeError-style error."""
    if dtype == DT.DT_STRING:
        if _is_b64(value) or isinstance(value, dict):
            return _decode_b64(value)
        if isinstance(value, str):
            return value.encode("utf-8")
    elif dtype in (DT.DT_FLOAT, DT.DT_DOUBLE, DT.DT_HALF):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if _is_int(value) and low <= value <= high:
            return value
    elif dtype == DT.DT_BOOL:
        if isinstance(value, bool):
            return value
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Conversion of JSON Value: {_debug(value)} to type: "
                           f"{tensors.dtype_string(dtype)}")
    raise invalid_argument(f"JSON Value: {_debug(value)} Type: {_type_name(value)} is not of "
                           f"expected type: {tensors.dtype_string(dtype)}")


def _dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape: follow the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    """FillTensorProto: every leaf at depth == rank, every list of the expected size."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {_debug(value)} found at incorrect level: "
                                   f"{level + 1} in the JSON DOM. Expected at level: {rank}")
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                               f"{rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _to_array(value: Any, dtype: int) -> np.ndarray:
    shape = _dense_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    np_dtype = tensors.numpy_dtype(dtype)
    if np_dtype.kind == "O":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.asarray(values, dtype=np_dtype).reshape(shape)


def _error_text(error: ServingError) -> str:
    return f"{error.code.name}: {error.message}"


# -- predict requests --------------------------------------------------------------------------

def predict_inputs(doc: dict, input_dtypes: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson: the request's input arrays and its format (row/columnar)."""
    if not input_dtypes:
        raise invalid_argument("Failed to get input map for signature: "
                               f"{signature_name(doc) or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or "
                                 "'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        return _from_instances(instances, input_dtypes), ROW
    if has_inputs:
        return _from_inputs(doc["inputs"], input_dtypes), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList."""
    names = sorted(input_dtypes)

    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    objects = is_object(instances[0])
    if not objects and len(names) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, element in enumerate(instances):
        if objects != is_object(element):
            kind = "object but got list" if objects else "value/list but got object"
            raise invalid_argument(f"Expecting {kind} at item {index} of input list")
        items = element if objects else {names[0]: element}
        for name, value in items.items():
            try:
                if name not in input_dtypes:
                    raise invalid_argument(f"JSON object: does not have named input: {name}")
                row = _to_array(value, input_dtypes[name])
                if rows[name] and row.shape != rows[name][0].shape:
                    first = rows[name][0]
                    if row.size != first.size:
                        raise invalid_argument(f"Expecting tensor size: {first.size} but got: "
                                               f"{row.size}")
                    raise invalid_argument(f"Expecting shape {list(first.shape)} but got: "
                                           f"{list(row.shape)}")
            except ServingError as e:
                key = f" key: {name}" if objects else ""
                raise invalid_argument(f"Failed to process element: {index}{key} of "
                                       f"'instances' list. Error: {_error_text(e)}") from None
            rows[name].append(row)
        if objects and set(element) != set(names):
            raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                                   f"JSON object: {_debug(element)} keys must be equal to: "
                                   f"{','.join(names)}")
    return {name: np.stack(arrays) if arrays else np.empty(0) for name, arrays in rows.items()}


def _from_inputs(value: Any, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap."""
    names = sorted(input_dtypes)
    if not isinstance(value, dict) or _is_b64(value):
        if len(names) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        return {names[0]: _to_array(value, input_dtypes[names[0]])}
    arrays = {}
    for name in names:
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _to_array(value[name], input_dtypes[name])
    return arrays


# -- predict responses -------------------------------------------------------------------------

def format_float(value: float, np_type: type = np.float32) -> str:
    """WriteDecimal: `%g` when it round-trips, else max_digits10; `.0` on whole numbers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    if np_type(float(text)) != np_type(value):
        text = f"{value:.9g}" if np_type == np.float32 else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _scalar_json(value: Any, dtype: np.dtype, as_bytes: bool) -> str:
    if dtype.kind in "OS":
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        if not as_bytes:
            try:
                return json.dumps(raw.decode("utf-8"))
            except UnicodeDecodeError:
                pass  # not text: send it as bytes rather than as invalid JSON
        return '{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}'
    if dtype.kind == "f":
        return format_float(float(value), np.float32 if dtype.itemsize <= 4 else np.float64)
    if dtype.kind == "b":
        return "true" if value else "false"
    if dtype.kind in "iu":
        return str(int(value))
    raise invalid_argument(f"Failed to write JSON value for tensor type: {dtype}")


def _array_json(array: Any, dtype: np.dtype, as_bytes: bool) -> str:
    """Nested JSON lists of `array`'s values (object arrays iterate to plain bytes)."""
    if np.ndim(array) == 0:
        value = array[()] if isinstance(array, np.ndarray) else array
        return _scalar_json(value, dtype, as_bytes)
    return "[" + ", ".join(_array_json(item, dtype, as_bytes) for item in array) + "]"


def _is_bytes_output(name: str, array: np.ndarray) -> bool:
    """IsNamedTensorBytes: string outputs whose name ends in `_bytes` are base64 objects."""
    return array.dtype.kind in "OS" and name.endswith("_bytes")


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """MakeJsonFromTensors: `predictions` (row) or `outputs` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        parts = {name: _array_json(outputs[name], outputs[name].dtype,
                                   _is_bytes_output(name, outputs[name]))
                 for name in names}
        if len(names) == 1:
            return '{"outputs": ' + parts[names[0]] + "}"
        body = ", ".join(f"{json.dumps(name)}: {text}" for name, text in parts.items())
        return '{"outputs": {' + body + "}}"
    batch = None
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                   f"{array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    rows = []
    for i in range(batch):
        cells = {name: _array_json(outputs[name][i], outputs[name].dtype,
                                   _is_bytes_output(name, outputs[name]))
                 for name in names}
        if len(names) == 1:
            rows.append(cells[names[0]])
        else:
            rows.append("{" + ", ".join(f"{json.dumps(n)}: {t}" for n, t in cells.items()) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


# -- classify / regress ------------------------------------------------------------------------

def _add_to_feature(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature."""
    kind = feature.WhichOneof("kind")

    def check(expected: str) -> None:
        if kind not in (None, expected):
            label = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[kind]
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting "
                                   f"type: {label}")

    if value is None or isinstance(value, list) or (isinstance(value, dict)
                                                     and not _is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                               f"{_type_name(value)}")
    if isinstance(value, bool):
        check("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        check("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif isinstance(value, str):
        check("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        check("float_list")
        feature.float_list.value.append(value)
    else:
        check("int64_list")
        if value >= 2**63:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is "
                                   "supported.")
        feature.int64_list.value.append(value)


def _example(value: Any, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_type_name(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def fill_examples_input(doc: dict, input_proto, method: str) -> None:
    """FillClassifyRegressRequestFromJson: `context` (optional) and `examples` -> Input."""
    has_context = "context" in doc
    if has_context:
        _example(doc["context"], input_proto.example_list_with_context.context)
    if "examples" not in doc:
        raise _format_error(doc, f"When method is {method}, key 'examples' is expected and "
                                 "was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = (input_proto.example_list_with_context.examples if has_context
              else input_proto.example_list.examples)
    for value in examples:
        _example(value, target.add())


def classify_response(result) -> str:
    """MakeJsonFromClassificationResult: `{"results": [[[label, score], ...], ...]}`."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        pairs = [f"[{json.dumps(c.label)}, {format_float(c.score)}]"
                 for c in classifications.classes]
        rows.append("[" + ", ".join(pairs) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def regress_response(result) -> str:
    """MakeJsonFromRegressionResult: `{"results": [v, ...]}`."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(format_float(r.value) for r in result.regressions) + "]}"
