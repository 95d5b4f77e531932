"""REST API (port 8501 in TF Serving): predict formats, status, metadata, errors with TF
Serving's HTTP codes, and the Prometheus metrics page."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from tensorflow_serving.config import model_server_config_pb2

from common import signatures
from serving.model_server import ModelServer, MonitoringConfig
from tests.serving.conftest import MODEL, Stubs, copy_version, predict_request

UR = signatures.USER_REPRESENTATION


@pytest.fixture(scope="module")
def version_dir(exported, tmp_path_factory) -> str:
    return copy_version(exported["a"], str(tmp_path_factory.mktemp("rest") / MODEL), 1)


@pytest.fixture(scope="module")
def server(version_dir, scann_export):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=MODEL, base_path=version_dir[:-2])
    model.version_labels["stable"] = 1
    config.model_config_list.config.add(name="retrieval", base_path=scann_export[0])
    with ModelServer(model_server_config=config, port=0, rest_api_port=0,
                     allow_version_labels_for_unavailable_models=True,
                     monitoring=MonitoringConfig(prometheus_enable=True)) as server:
        yield server


def _http(server: ModelServer, method: str, path: str, body=None) -> tuple[int, str, str]:
    """(status, content type, text) of one request to the REST port."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def _b64(record: bytes) -> dict:
    return {"b64": base64.b64encode(record).decode("ascii")}


def _ok(server: ModelServer, path: str, body=None, method: str = "POST") -> dict:
    status, content_type, text = _http(server, method, path, body)
    assert (status, content_type) == (200, "application/json"), text
    return json.loads(text)


def test_predict_row_and_columnar_formats(server, version_dir, examples, reference):
    expected = reference(version_dir, UR, examples=examples[:3])[UR]
    rows = [_b64(e) for e in examples[:3]]
    path = f"/v1/models/{MODEL}:predict"
    for body, key in (
            ({"signature_name": UR, "instances": rows}, "predictions"),
            ({"signature_name": UR, "instances": [{"examples": r} for r in rows]},
             "predictions"),
            ({"signature_name": UR, "inputs": rows}, "outputs"),
            ({"signature_name": UR, "inputs": {"examples": rows}}, "outputs")):
        reply = _ok(server, path, body)
        assert list(reply) == [key]
        # TF Serving prints float32 so that it parses back to the same float32
        np.testing.assert_array_equal(np.asarray(reply[key], np.float32), expected)


def test_predict_with_several_outputs(server, version_dir, examples, reference):
    expected = reference(version_dir, signatures.SERVING_DEFAULT, examples=examples[:2])
    rows = [_b64(e) for e in examples[:2]]
    path = f"/v1/models/{MODEL}:predict"
    predictions = _ok(server, path, {"instances": rows})["predictions"]
    assert [set(p) for p in predictions] == [set(expected)] * 2  # one object per row
    for key, values in expected.items():
        np.testing.assert_array_equal(np.asarray([p[key] for p in predictions], np.float32),
                                      values)
    outputs = _ok(server, path, {"inputs": rows})["outputs"]  # one list per output
    for key, values in expected.items():
        np.testing.assert_array_equal(np.asarray(outputs[key], np.float32), values)


def test_float_inputs_and_string_outputs(server, scann_export, reference):
    base, queries = scann_export
    expected = reference(f"{base}/1", "serving_default", queries=queries)
    reply = _ok(server, "/v1/models/retrieval:predict", {"instances": queries.tolist()})
    assert [row["ids"] for row in reply["predictions"]] == [
        [i.decode() for i in row] for row in expected["ids"]]
    np.testing.assert_array_equal(np.asarray([row["scores"] for row in reply["predictions"]],
                                             np.float32), expected["scores"])
    status, _, text = _http(server, "POST", "/v1/models/retrieval:predict",
                            {"inputs": {"queries": [[1, 2]]}})  # ints are fine for floats
    assert (status, json.loads(text)) == (400, {"error": (
        "input 'queries' has shape [1,2] but signature 'serving_default' expects [-1,8] "
        "(-1: any size)")})


def test_versions_and_labels_in_the_path(server, version_dir, examples, reference):
    expected = reference(version_dir, UR, examples=examples[:1])[UR]
    body = {"signature_name": UR, "instances": [_b64(examples[0])]}
    for path in (f"/v1/models/{MODEL}/versions/1:predict",
                 f"/v1/models/{MODEL}/labels/stable:predict"):
        np.testing.assert_array_equal(
            np.asarray(_ok(server, path, body)["predictions"], np.float32), expected)


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", f"/v1/models/{MODEL}/versions/9:predict", {"instances": [1]}, 404,
     f"Servable not found for request: Specific({MODEL}, 9)"),
    ("POST", f"/v1/models/{MODEL}/labels/nope:predict", {"instances": [1]}, 400,
     "Unrecognized servable version label: nope"),
    ("POST", f"/v1/models/{MODEL}:predict", b"{not json", 400, "JSON Parse error: "),
    ("POST", f"/v1/models/{MODEL}:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": UR}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [1], "inputs": [1]}, 400,
     """JSON Value: {"instances":[1],"inputs":[1]} Not formatted correctly expecting only one """
     "of 'inputs' or 'instances' keys to exist"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": UR, "instances": [1.5]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     "1.5 Type: Number is not of expected type: string"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "%%%"}]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to "
     "base64 decode"),
    ("POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": UR, "instances": [_b64(b"not a tf.Example")]}, 400,
     "Could not parse example input"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "nope", "instances": [1]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", f"/v1/models/{MODEL}:explain", {"instances": [1]}, 400,
     f"Malformed request: POST /v1/models/{MODEL}:explain"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", f"/v1/models/{MODEL}/versions/5", None, 404,
     f"Could not find version 5 of model {MODEL}"),
    ("POST", f"/v1/models/{MODEL}:regress", {"examples": [{"user_age": 3}]}, 400,
     "Expected one output Tensor."),
])
def test_errors_have_tf_serving_http_codes(server, method, path, body, status, message):
    got_status, content_type, text = _http(server, method, path, body)
    assert (got_status, content_type) == (status, "application/json"), text
    reply = json.loads(text)
    assert list(reply) == ["error"]
    assert reply["error"].startswith(message), reply["error"]


def test_model_status_and_metadata(server, version_dir):
    status = _ok(server, f"/v1/models/{MODEL}", method="GET")
    assert status == {"model_version_status": [{
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                         "error_message": ""}}]}
    assert _ok(server, f"/v1/models/{MODEL}/versions/1", method="GET") == status

    metadata = _ok(server, f"/v1/models/{MODEL}/metadata", method="GET")
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    defs = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures.OUTPUT_KEYS) <= set(defs)
    user = defs[UR]
    assert user["method_name"] == "tensorflow/serving/predict"
    assert user["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert user["outputs"][UR]["tensor_shape"]["dim"][1]["size"] == "8"


def _count(text: str, model: str, status: str) -> int:
    match = re.search(rf':tensorflow:serving:request_count\{{model_name="{model}",'
                      rf'status="{status}"\}} (\d+)', text)
    return int(match.group(1)) if match else 0


def test_prometheus_metrics(server, examples):
    status, content_type, before = _http(server, "GET", "/monitoring/prometheus/metrics")
    assert (status, content_type) == (200, "text/plain")
    body = {"signature_name": UR, "instances": [_b64(examples[0])]}
    for _ in range(3):
        _ok(server, f"/v1/models/{MODEL}:predict", body)
    _http(server, "POST", f"/v1/models/{MODEL}/versions/9:predict", body)
    stubs = Stubs(server)
    stubs.predict.Predict(predict_request(examples[:1]), timeout=30)
    stubs.close()

    after = _http(server, "GET", "/monitoring/prometheus/metrics")[2]
    assert _count(after, MODEL, "OK") == _count(before, MODEL, "OK") + 4
    assert _count(after, MODEL, "NOT_FOUND") == _count(before, MODEL, "NOT_FOUND") + 1
    assert "# TYPE :tensorflow:serving:request_count counter" in after
    assert "# TYPE :tensorflow:serving:request_latency histogram" in after
    for api, entrypoint in (("predict", "REST"), ("Predict", "GRPC")):
        labels = f'model_name="{MODEL}",API="{api}",entrypoint="{entrypoint}"'
        assert f":tensorflow:serving:request_latency_bucket{{{labels},le=\"10\"}}" in after
        assert f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}}' in after
        assert re.search(rf":tensorflow:serving:request_latency_count\{{{labels}\}} [1-9]", after)

    assert _http(server, "GET", "/metrics")[0] == 404  # neither the API nor the metrics path
