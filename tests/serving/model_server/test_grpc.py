"""gRPC PredictionService / ModelService through the real tensorflow-serving-api stubs.

One server for the module: the exported LFM4Ads model (`lfm4ads`), a ScaNN retrieval
SavedModel (`retrieval`) and a small model with classify/regress-shaped signatures
(`classifier`). Every success is compared with the SavedModel's signature called in-process.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from common import features, signatures
from serving.model_server import ModelServer
from tests.serving.conftest import MODEL, Stubs, copy_version, predict_request, rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _classifier_export(base: str) -> str:
    """Signatures shaped for Classify (`inputs` -> `scores`, `classes`) and Regress."""

    class Classifier(tf.Module):
        def _age(self, inputs):
            spec = {features.USER_AGE: tf.io.FixedLenFeature([1], tf.int64, default_value=[0])}
            return tf.cast(tf.io.parse_example(inputs, spec)[features.USER_AGE], tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            age = self._age(inputs)  # [batch, 1]
            classes = tf.tile(tf.constant([["young", "old"]]), [tf.shape(inputs)[0], 1])
            return {"scores": tf.concat([1 - age / 100, age / 100], axis=1), "classes": classes}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": self._age(inputs)[:, 0] / 10}

    module = Classifier()
    path = f"{base}/1"
    tf.saved_model.save(module, path, signatures={"serving_default": module.classify,
                                                  "regress": module.regress})
    return path


@pytest.fixture(scope="module")
def models(exported, scann_export, tmp_path_factory) -> dict[str, str]:
    """name -> served version directory."""
    root = tmp_path_factory.mktemp("grpc_models")
    return {
        MODEL: copy_version(exported["a"], str(root / MODEL), 1),
        "retrieval": f"{scann_export[0]}/1",
        "classifier": _classifier_export(str(root / "classifier")),
    }


@pytest.fixture(scope="module")
def server(models):
    config = model_server_config_pb2.ModelServerConfig()
    for name, path in models.items():
        config.model_config_list.config.add(name=name, base_path=path.rsplit("/", 1)[0],
                                            model_platform="tensorflow")
    with ModelServer(model_server_config=config, port=0, rest_api_port=None) as server:
        yield server


@pytest.fixture(scope="module")
def stubs(server):
    stubs = Stubs(server)
    yield stubs
    stubs.close()


def _array(response, key: str) -> np.ndarray:
    return tf.make_ndarray(response.outputs[key])


def test_every_signature_matches_the_saved_model(stubs, models, examples, reference):
    for signature, keys in signatures.OUTPUT_KEYS.items():
        response = stubs.predict.Predict(predict_request(examples[:5], signature), timeout=30)
        assert response.model_spec.name == MODEL
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == signature
        expected = reference(models[MODEL], signature, examples=examples[:5])
        assert set(response.outputs) == set(keys)
        for key in keys:
            proto = response.outputs[key]
            # typed fields as TF Serving writes them by default, not tensor_content
            assert not proto.tensor_content
            assert len(proto.float_val) == expected[key].size
            np.testing.assert_allclose(np.reshape(proto.float_val, expected[key].shape),
                                       expected[key], rtol=1e-6)
            np.testing.assert_allclose(_array(response, key), expected[key], rtol=1e-6)


def test_empty_signature_name_means_serving_default(stubs, models, examples, reference):
    response = stubs.predict.Predict(predict_request(examples[:3], signature=""), timeout=30)
    assert response.model_spec.signature_name == signatures.SERVING_DEFAULT
    expected = reference(models[MODEL], signatures.SERVING_DEFAULT, examples=examples[:3])
    for key in signatures.OUTPUT_KEYS[signatures.SERVING_DEFAULT]:
        np.testing.assert_allclose(_array(response, key), expected[key], rtol=1e-6)


def test_output_filter(stubs, models, examples, reference):
    request = predict_request(examples[:2], signatures.SERVING_DEFAULT,
                              output_filter=(signatures.AD_PREDICTION,))
    response = stubs.predict.Predict(request, timeout=30)
    assert list(response.outputs) == [signatures.AD_PREDICTION]
    expected = reference(models[MODEL], signatures.SERVING_DEFAULT, examples=examples[:2])
    np.testing.assert_allclose(_array(response, signatures.AD_PREDICTION),
                               expected[signatures.AD_PREDICTION],
                               rtol=1e-6)

    bad = predict_request(examples[:2], signatures.SERVING_DEFAULT, output_filter=("nope",))
    error = rpc_error(stubs.predict.Predict, bad, timeout=30)
    assert error.code() == INVALID
    assert error.details().startswith("output tensor alias not found in signature: nope")
    twice = predict_request(examples[:2], signatures.SERVING_DEFAULT,
                            output_filter=(signatures.AD_PREDICTION, signatures.AD_PREDICTION))
    error = rpc_error(stubs.predict.Predict, twice, timeout=30)
    assert (error.code(), error.details()) == (
        INVALID,
        f"duplicate output tensor alias: {signatures.AD_PREDICTION}",
    )


@pytest.mark.parametrize("change, code, message", [
    (lambda r: r.ClearField("model_spec"), INVALID, "Missing ModelSpec"),
    (lambda r: setattr(r.model_spec, "name", ""), INVALID, "ModelSpec has no name specified."),
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (lambda r: r.model_spec.version.CopyFrom(r.model_spec.version.__class__(value=7)),
     grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({MODEL}, 7)"),
    (lambda r: setattr(r.model_spec, "version_label", "stable"), INVALID,
     "Unrecognized servable version label: stable"),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"),
     grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
])
def test_model_version_and_signature_errors(stubs, examples, change, code, message):
    request = predict_request(examples[:1])
    change(request)
    error = rpc_error(stubs.predict.Predict, request, timeout=30)
    assert (error.code(), error.details()) == (code, message)


def test_input_key_errors_name_the_keys(stubs, examples):
    empty = predict_request(examples[:1])
    empty.inputs.clear()
    error = rpc_error(stubs.predict.Predict, empty, timeout=30)
    assert error.code() == INVALID
    assert error.details() == ("input size does not match signature: 0!=1 len({}) != "
                               "len({examples}). Sent extra: {}. Missing but required: "
                               "{examples}.")

    extra = predict_request(examples[:1])
    extra.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(stubs.predict.Predict, extra, timeout=30)
    assert error.code() == INVALID
    assert "2!=1" in error.details() and "Sent extra: {extra}." in error.details()

    wrong = predict_request(examples[:1])
    wrong.inputs["exampels"].CopyFrom(wrong.inputs[signatures.INPUT_KEY])
    del wrong.inputs[signatures.INPUT_KEY]
    error = rpc_error(stubs.predict.Predict, wrong, timeout=30)
    assert error.code() == INVALID
    assert error.details().startswith("Signature input alias: examples(feed name: ")
    assert "Inputs expected to be in the request {exampels}" in error.details()


def test_dtype_shape_and_unparsable_tensor_errors(stubs, examples):
    floats = predict_request(examples[:1])
    floats.inputs[signatures.INPUT_KEY].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    error = rpc_error(stubs.predict.Predict, floats, timeout=30)
    assert (error.code(), error.details()) == (
        INVALID, "Expects arg[0] to be string but float is provided")

    matrix = predict_request(examples[:1])
    matrix.inputs[signatures.INPUT_KEY].CopyFrom(
        tf.make_tensor_proto([examples[:2]], dtype=tf.string)
    )
    error = rpc_error(stubs.predict.Predict, matrix, timeout=30)
    assert (error.code(), error.details()) == (
        INVALID, "input 'examples' has shape [1,2] but signature 'user_representation' "
                 "expects [-1] (-1: any size)")

    too_many_values = predict_request(examples[:1])
    too_many_values.inputs[signatures.INPUT_KEY].string_val.append(
        examples[1]
    )  # 2 values, shape [1]
    error = rpc_error(stubs.predict.Predict, too_many_values, timeout=30)
    assert (error.code(), error.details()) == (INVALID, "tensor parsing error: examples")


@pytest.mark.parametrize("record, message", [
    (b"not a tf.Example", "Could not parse example input"),
    (b"\xff\xfe\xfd", "Could not parse example input"),  # TF's own error is not UTF-8 here
    ("wrong_type", "user_age"),
])
def test_malformed_examples_are_invalid_argument(stubs, models, examples, reference, record,
                                                 message):
    if record == "wrong_type":
        example = tf.train.Example.FromString(examples[0])
        example.features.feature[features.USER_AGE].Clear()
        example.features.feature[features.USER_AGE].bytes_list.value.append(b"thirty")
        record = example.SerializeToString()
    error = rpc_error(stubs.predict.Predict, predict_request([examples[0], record]), timeout=30)
    assert error.code() == INVALID
    assert message in error.details()
    # the server is not wedged: the next request is answered correctly
    response = stubs.predict.Predict(predict_request(examples[:2]), timeout=30)
    expected = reference(models[MODEL], signatures.USER_REPRESENTATION, examples=examples[:2])
    np.testing.assert_allclose(_array(response, signatures.USER_REPRESENTATION),
                               expected[signatures.USER_REPRESENTATION], rtol=1e-6)


def test_messages_over_4_mib(stubs, models, examples, reference):
    """TF Serving raises gRPC's limits to INT32_MAX; gRPC Python's default receive is 4 MiB."""
    count = (5 << 20) // int(np.mean([len(e) for e in examples])) + 1
    batch = [examples[i % len(examples)] for i in range(count)]
    request = predict_request(batch)
    assert request.ByteSize() > 5 << 20
    response = stubs.predict.Predict(request, timeout=120)
    served = _array(response, signatures.USER_REPRESENTATION)
    expected = reference(models[MODEL], signatures.USER_REPRESENTATION, examples=batch[:64])
    assert served.shape[0] == count
    np.testing.assert_allclose(served[:64], expected[signatures.USER_REPRESENTATION], rtol=1e-6)


def test_tensor_content_inputs_and_scann_retrieval(stubs, models, scann_export, reference):
    _, queries = scann_export
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "retrieval"
    request.inputs["queries"].CopyFrom(tf.make_tensor_proto(queries))  # tensor_content
    assert request.inputs["queries"].tensor_content
    response = stubs.predict.Predict(request, timeout=30)
    expected = reference(models["retrieval"], "serving_default", queries=queries)
    np.testing.assert_allclose(_array(response, "scores"), expected["scores"], rtol=1e-6)
    assert list(response.outputs["ids"].string_val) == list(expected["ids"].reshape(-1))
    assert tf.make_ndarray(response.outputs["ids"]).shape == expected["ids"].shape


def test_model_metadata(stubs, models):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = stubs.predict.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    loaded = tf.saved_model.load(models[MODEL])
    assert set(signature_map.signature_def) == set(loaded.signatures) | {
        "__saved_model_init_op"}
    user = signature_map.signature_def[signatures.USER_REPRESENTATION]
    assert user.method_name == "tensorflow/serving/predict"
    assert user.inputs[signatures.INPUT_KEY].dtype == tf.string.as_datatype_enum
    assert [d.size for d in user.outputs[signatures.USER_REPRESENTATION].tensor_shape.dim] == [
        -1,
        8,
    ]

    request.ClearField("metadata_field")
    error = rpc_error(stubs.predict.GetModelMetadata, request, timeout=30)
    assert (error.code(), error.details()) == (
        INVALID, "GetModelMetadataRequest must specify at least one metadata_field")
    request.metadata_field.append("graph")
    error = rpc_error(stubs.predict.GetModelMetadata, request, timeout=30)
    assert (error.code(), error.details()) == (INVALID, "Metadata field graph is not supported")


def test_model_status(stubs):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = stubs.model.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state, s.status.error_code) for s in
            response.model_version_status] == [(1, 30, 0)]  # AVAILABLE, OK
    request.model_spec.version.value = 9
    error = rpc_error(stubs.model.GetModelStatus, request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               f"Could not find version 9 of model {MODEL}")
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    error = rpc_error(stubs.model.GetModelStatus, request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "Could not find any versions of model nope")


def _input(examples: list[bytes], context: bytes | None = None):
    request = classification_pb2.ClassificationRequest()
    if context is None:
        for record in examples:
            request.input.example_list.examples.add().ParseFromString(record)
    else:
        request.input.example_list_with_context.context.ParseFromString(context)
        for record in examples:
            request.input.example_list_with_context.examples.add().ParseFromString(record)
    return request.input


def test_classify_and_regress(stubs, models, examples, reference):
    request = classification_pb2.ClassificationRequest(input=_input(examples[:4]))
    request.model_spec.name = "classifier"
    response = stubs.predict.Classify(request, timeout=30)
    assert response.model_spec.signature_name == "serving_default"
    expected = reference(models["classifier"], "serving_default", inputs=examples[:4])
    for row, classifications in enumerate(response.result.classifications):
        assert [c.label for c in classifications.classes] == ["young", "old"]
        np.testing.assert_allclose([c.score for c in classifications.classes],
                                   expected["scores"][row], rtol=1e-6)

    regression = regression_pb2.RegressionRequest(input=_input(examples[:4]))
    regression.model_spec.name = "classifier"
    regression.model_spec.signature_name = "regress"
    response = stubs.predict.Regress(regression, timeout=30)
    expected = reference(models["classifier"], "regress", inputs=examples[:4])
    np.testing.assert_allclose([r.value for r in response.result.regressions],
                               expected["outputs"], rtol=1e-6)

    # the context's features reach every example (context bytes first, example second)
    context = tf.train.Example()
    context.features.feature[features.USER_AGE].int64_list.value.append(42)
    bare = [tf.train.Example().SerializeToString()] * 2
    request = classification_pb2.ClassificationRequest(
        input=_input(bare, context.SerializeToString()))
    request.model_spec.name = "classifier"
    response = stubs.predict.Classify(request, timeout=30)
    np.testing.assert_allclose([[c.score for c in r.classes]
                                for r in response.result.classifications],
                               [[0.58, 0.42]] * 2, rtol=1e-6)  # 1 - 42/100, 42/100


@pytest.mark.parametrize("method, signature, message", [
    ("Classify", signatures.SERVING_DEFAULT, "Expected one or two output Tensors, found 3"),
    ("Classify", signatures.USER_REPRESENTATION,
     "No classification inputs found in SignatureDef: "),
    ("Regress", signatures.USER_REPRESENTATION, "No regression inputs found in SignatureDef: "),
    ("Regress", signatures.SERVING_DEFAULT, "Expected one output Tensor."),
    ("Classify", "nope", "No signature was found with the name: nope"),
])
def test_classify_and_regress_on_predict_signatures(stubs, examples, method, signature,
                                                    message):
    request_class = (classification_pb2.ClassificationRequest if method == "Classify"
                     else regression_pb2.RegressionRequest)
    request = request_class(input=_input(examples[:2]))
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    error = rpc_error(getattr(stubs.predict, method), request, timeout=30)
    assert error.code() == INVALID
    assert error.details().startswith(message)


def test_classify_errors_and_empty_input(stubs):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    error = rpc_error(stubs.predict.Classify, request, timeout=30)
    assert (error.code(), error.details()) == (INVALID, "Input is empty.")
    error = rpc_error(stubs.predict.Classify, classification_pb2.ClassificationRequest(),
                      timeout=30)
    assert (error.code(), error.details()) == (INVALID, "Missing ModelSpec")


def test_multi_inference(stubs, models, examples, reference):
    request = inference_pb2.MultiInferenceRequest(input=_input(examples[:3]))
    for signature, method in (("serving_default", "tensorflow/serving/classify"),
                              ("regress", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "classifier"
        task.model_spec.signature_name = signature
    response = stubs.predict.MultiInference(request, timeout=30)
    scores = reference(models["classifier"], "serving_default", inputs=examples[:3])["scores"]
    values = reference(models["classifier"], "regress", inputs=examples[:3])["outputs"]
    classified, regressed = response.results
    np.testing.assert_allclose([[c.score for c in r.classes]
                                for r in classified.classification_result.classifications],
                               scores, rtol=1e-6)
    np.testing.assert_allclose([r.value for r in regressed.regression_result.regressions],
                               values, rtol=1e-6)
    assert regressed.model_spec.version.value == 1

    error = rpc_error(stubs.predict.MultiInference, inference_pb2.MultiInferenceRequest(),
                      timeout=30)
    assert (error.code(), error.details()) == (INVALID, "ModelSpec has no name specified.")
    request.tasks[1].model_spec.signature_name = "serving_default"
    error = rpc_error(stubs.predict.MultiInference, request, timeout=30)
    assert (error.code(), error.details()) == (
        INVALID, "Duplicate evaluation of signature: serving_default")
    predict_task = text_format.Parse(
        'model_spec { name: "lfm4ads" } method_name: "tensorflow/serving/predict"',
        inference_pb2.InferenceTask())
    request = inference_pb2.MultiInferenceRequest(input=_input(examples[:1]),
                                                  tasks=[predict_task])
    error = rpc_error(stubs.predict.MultiInference, request, timeout=30)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
