"""The REST front end (`model_servers/http_rest_api_handler.cc`, `http_server.cc`).

- `POST /v1/models/M[/versions/N|/labels/L]:predict|:classify|:regress`
- `GET  /v1/models/M[/versions/N|/labels/L]` (status) and `.../metadata`
- `GET  <prometheus path>` when the monitoring config enables it.

Any other path under `/v1/` is `Malformed request`; errors are `{"error": "..."}` with TF
Serving's HTTP code for the gRPC code (400, 404, 429, 503, 504, else 500). Requests are counted
in `request_count` and timed in `request_latency` (entrypoint `REST`). Standard library
`ThreadingHTTPServer` with HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from serving.model_server import rest_json
from serving.model_server.config import MonitoringConfig
from serving.model_server.core import SIGNATURE_DEF_FIELD, ServingCore
from serving.model_server.errors import ServingError, internal, invalid_argument
from serving.model_server.metrics import ServingMetrics

logger = logging.getLogger("serving.model_server")

_PREDICTION_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
_STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_API_PATH = re.compile(r"(?i)/v1/.*")


class RestApi:
    """Turns (method, path, body) into (HTTP status, JSON text), with metrics."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics, timeout_s: float):
        self._core = core
        self._metrics = metrics
        self._timeout = timeout_s if timeout_s > 0 else None

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        start = time.perf_counter()
        model_name, verb = "", ""
        try:
            model_name, spec, verb = self._route(method, path)
            output = self._dispatch(method, path, spec, verb, body)
            error = None
        except ServingError as e:
            error = e
        except Exception as e:  # noqa: BLE001  (one bad request must not take the server down)
            logger.exception("REST %s %s failed", method, path)
            error = internal(f"{type(e).__name__}: {e}")
        api = verb if method == "POST" else ""
        self._metrics.record_request(model_name, error.code.name if error else "OK", api,
                                     "REST", (time.perf_counter() - start) * 1e6)
        if error is not None:
            return error.http_status, json.dumps({"error": error.wire_message})
        return 200, output

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, model_pb2.ModelSpec, str]:
        """ParseModelInfo: (model name, ModelSpec with version or label, verb/subresource)."""
        pattern = {"POST": _PREDICTION_PATH, "GET": _STATUS_PATH}.get(method)
        match = pattern.fullmatch(path) if pattern else None
        if match is None:
            raise invalid_argument(f"Malformed request: {method} {path}")
        name, version, label, verb = match.groups()
        name = unquote(name or "")
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = unquote(label)
        return name, spec, verb or ""

    def _dispatch(self, method: str, path: str, spec: model_pb2.ModelSpec, verb: str,
                  body: bytes) -> str:
        if method == "POST":
            handlers = {"predict": self._predict, "classify": self._classify,
                        "regress": self._regress}
            if verb not in handlers:  # e.g. ":PREDICT": the path matched case-insensitively
                raise invalid_argument(f"Malformed request: {method} {path}")
            return handlers[verb](spec, body)
        if not spec.name:
            raise invalid_argument("Missing model name in request.")
        if verb == "metadata":
            return self._metadata(spec)
        return self._status(spec)

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        doc = rest_json.parse_json(body)
        spec.signature_name = rest_json.signature_name(doc)
        servable = self._core.manager.resolve(spec)
        key = spec.signature_name or "serving_default"
        signature = servable.signatures.get(key)
        if signature is None or signature.function is None:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        dtypes = {alias: info.dtype for alias, info in signature.definition.inputs.items()}
        inputs, fmt = rest_json.predict_inputs(doc, dtypes)
        signature = self._core.predict_signature(servable, key)
        outputs = self._core.predict_arrays(servable, signature, inputs, timeout=self._timeout)
        return rest_json.predict_response(outputs, fmt)

    def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        doc = rest_json.parse_json(body)
        request.model_spec.signature_name = rest_json.signature_name(doc)
        rest_json.fill_examples_input(doc, request.input, "classify")
        response = self._core.classify(request, timeout=self._timeout)
        return rest_json.classify_response(response.result)

    def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        request = regression_pb2.RegressionRequest(model_spec=spec)
        doc = rest_json.parse_json(body)
        request.model_spec.signature_name = rest_json.signature_name(doc)
        rest_json.fill_examples_input(doc, request.input, "regress")
        response = self._core.regress(request, timeout=self._timeout)
        return rest_json.regress_response(response.result)

    def _status(self, spec: model_pb2.ModelSpec) -> str:
        response = self._core.get_model_status(
            get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
        return json_format.MessageToJson(response, including_default_value_fields=True)

    def _metadata(self, spec: model_pb2.ModelSpec) -> str:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
        response = self._core.get_model_metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        as_dict = {"preserving_proto_field_name": True, "including_default_value_fields": True}
        return json.dumps({
            "model_spec": json_format.MessageToDict(response.model_spec, **as_dict),
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_map,
                                                                        **as_dict)},
        }, indent=1)


def _handler_class(api: RestApi, metrics: ServingMetrics, monitoring: MonitoringConfig,
                   cors: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "TensorFlow-Serving-compatible"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds
        # the body until the client's delayed ACK (~40 ms per keep-alive request).
        disable_nagle_algorithm = True

        def do_GET(self):  # noqa: N802  (http.server's method names)
            self._dispatch("GET")

        def do_POST(self):  # noqa: N802
            self._dispatch("POST")

        def do_OPTIONS(self):  # noqa: N802
            if re.search(r"https?://", self.headers.get("Origin", "")):
                self._reply(200, "", "application/json")
            else:
                error = ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                     "Origin header is missing in CORS preflight")
                self._reply(error.http_status, json.dumps({"error": error.message}),
                            "application/json")

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path
            if monitoring.prometheus_enable and path == monitoring.prometheus_path:
                self._reply(200, metrics.prometheus_text(), "text/plain")
            elif _API_PATH.fullmatch(path):
                status, text = api.handle(method, path, body)
                self._reply(status, text, "application/json")
            else:
                self._reply(404, "<html><title>404 Not Found</title><body><h1>Not Found</h1>"
                                 "</body></html>", "text/html")

        def _reply(self, status: int, text: str, content_type: str) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if cors:
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Methods", "POST, GET")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            logger.debug("REST %s", format % args)

    return Handler


class RestServer:
    """A threaded HTTP server on `port` (0: a free one) serving the REST API."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics, port: int,
                 monitoring: MonitoringConfig, timeout_ms: int, cors: bool = False):
        api = RestApi(core, metrics, timeout_ms / 1000)
        self._server = ThreadingHTTPServer(("0.0.0.0", port),
                                           _handler_class(api, metrics, monitoring, cors))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
