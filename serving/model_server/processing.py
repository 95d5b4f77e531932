"""Request checks and response filling, as TF Serving does them around a model call.

`predict_util.cc` (input count, output filter), the session's dtype check, `classifier.cc` and
`regressor.cc` (signature shapes, result filling), `util.cc` (MakeModelSpec, tf.Example inputs).
On top of TF Serving, input shapes are checked against the signature before the model runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from google.protobuf import message as proto_message
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2

from serving.model_server import tensors
from serving.model_server.errors import invalid_argument
from serving.model_server.servable import Signature

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS, CLASSES, SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"


def join_keys(keys: Iterable[str]) -> str:
    return ",".join(sorted(keys))


def debug_string(message: proto_message.Message) -> str:
    return text_format.MessageToString(message)


def shape_string(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_input_count(signature: Signature, keys: Iterable[str]) -> None:
    """VerifyRequestInputsSize (predict_util.cc)."""
    request_keys, signature_keys = set(keys), set(signature.definition.inputs)
    defaults = getattr(signature.definition, "defaults", {})
    if len(request_keys) > len(signature_keys) or (
            len(request_keys) < len(signature_keys) and not defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(request_keys)}!={len(signature_keys)} "
            f"len({{{join_keys(request_keys)}}}) != len({{{join_keys(signature_keys)}}}). "
            f"Sent extra: {{{join_keys(request_keys - signature_keys)}}}. "
            f"Missing but required: {{{join_keys(signature_keys - request_keys)}}}.")


def check_input_arrays(signature: Signature, inputs: dict[str, np.ndarray]) -> None:
    """The session's dtype check ("Expects arg[i] to be ..."), then the signature's shapes."""
    for index, alias in enumerate(signature.input_keys):
        info, array = signature.definition.inputs[alias], inputs[alias]
        dtype = tensors.dtype_of(array)
        if dtype != info.dtype:
            raise invalid_argument(
                f"Expects arg[{index}] to be {tensors.dtype_string(info.dtype)} but "
                f"{tensors.dtype_string(dtype)} is provided")
    for alias in signature.input_keys:
        info, array = signature.definition.inputs[alias], inputs[alias]
        if info.tensor_shape.unknown_rank:
            continue
        expected = [dim.size for dim in info.tensor_shape.dim]
        if len(expected) != array.ndim or any(
                e >= 0 and e != a for e, a in zip(expected, array.shape, strict=True)):
            raise invalid_argument(
                f"input '{alias}' has shape {shape_string(array.shape)} but signature "
                f"'{signature.name}' expects {shape_string(expected)} (-1: any size)")


def output_aliases(signature: Signature, output_filter: Iterable[str]) -> list[str]:
    """PreProcessPrediction's output_filter checks; all outputs when the filter is empty."""
    chosen: list[str] = []
    for alias in output_filter:
        if alias not in signature.definition.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{join_keys(signature.definition.outputs)}}}.")
        if alias in chosen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        chosen.append(alias)
    return chosen or list(signature.output_keys)


def serialized_examples(input_proto) -> np.ndarray:
    """InputToSerializedExampleTensor: an `Input` as a [batch] string array (context first)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        items = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        items = [context + e.SerializeToString()
                 for e in input_proto.example_list_with_context.examples]
    else:
        items = []
    if not items:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def make_model_spec(spec: model_pb2.ModelSpec, name: str, signature_name: str | None,
                    version: int) -> None:
    """MakeModelSpec (util.cc): name, resolved version, signature (empty -> default)."""
    spec.Clear()
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


def check_classification_signature(signature: Signature) -> None:
    """PreProcessClassification (classifier.cc)."""
    definition = signature.definition
    if len(definition.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(definition.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(definition.outputs)}")
    if CLASSIFY_INPUTS not in definition.inputs:
        raise invalid_argument(
            f"No classification inputs found in SignatureDef: {debug_string(definition)}")
    if CLASSES not in definition.outputs and SCORES not in definition.outputs:
        raise invalid_argument(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" '
            f'or "{SCORES}". Signature was: {debug_string(definition)}')


def check_regression_signature(signature: Signature) -> None:
    """PreProcessRegression (regressor.cc)."""
    definition = signature.definition
    if len(definition.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(definition.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in definition.inputs:
        raise invalid_argument(
            f"No regression inputs found in SignatureDef: {debug_string(definition)}")
    if REGRESS_OUTPUTS not in definition.outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef: {debug_string(definition)}")


def fill_classification_result(outputs: dict[str, np.ndarray], num_examples: int, result) -> None:
    """PostProcessClassificationResult."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, tensor, dtype in ((CLASSES, classes, "DT_STRING"), (SCORES, scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                   f"{shape_string(tensor.shape)}")
        actual = tensors.types_name(tensors.dtype_of(tensor))
        if actual != dtype:
            raise invalid_argument(f"Expected {name} Tensor of {dtype}. Got: {actual}")
        if tensor.shape[0] != num_examples:
            raise invalid_argument(f"Expected {name} output batch size of {num_examples}. Got: "
                                   f"{tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got "
                               f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            item = classifications.classes.add()
            if classes is not None:
                label = classes[i, c]
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) \
                    else str(label)
            if scores is not None:
                item.score = float(scores[i, c])


def fill_regression_result(outputs: dict[str, np.ndarray], num_examples: int, result) -> None:
    """PostProcessRegressionResult."""
    tensor = outputs[REGRESS_OUTPUTS]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                               f"[batch_size, 1] but got {shape_string(tensor.shape)}")
    if tensor.shape[0] != num_examples:
        raise invalid_argument(f"Input batch size did not match output batch size: "
                               f"{num_examples} vs. {tensor.shape[0]}")
    actual = tensors.types_name(tensors.dtype_of(tensor))
    if actual != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {actual}")
    for value in tensor.reshape(-1):
        result.regressions.add(value=float(value))
