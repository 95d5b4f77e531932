"""The gRPC front end: `tensorflow.serving.PredictionService` and `ModelService`.

Servicers from tensorflow-serving-api's generated modules, so the wire format is TF Serving's;
every method answers (the generated base classes would say UNIMPLEMENTED). Like
`model_servers/server.cc`: message size limits raised to INT32_MAX both ways, and at most
`grpc_max_threads` RPCs in flight (one more is RESOURCE_EXHAUSTED, as TF Serving's gRPC thread
quota gives). Predict, Classify and Regress are counted in `request_count` and timed in
`request_latency` (entrypoint `GRPC`), as `prediction_service_impl.cc` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving._core import ServingCore
from serving._errors import ServingError, internal
from serving._metrics import ServingMetrics

logger = logging.getLogger("serving.server")

INT32_MAX = 2**31 - 1
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", INT32_MAX),
    ("grpc.max_receive_message_length", INT32_MAX),
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
)


def _call(handler: Callable, request, context: grpc.ServicerContext, metrics: ServingMetrics,
          api: str | None, model_name: str, **kwargs):
    """Runs `handler`; a ServingError (or any bug) becomes the RPC's status, never a crash."""
    start = time.perf_counter()
    error: ServingError | None = None
    try:
        response = handler(request, **kwargs)
    except ServingError as e:
        error = e
    except Exception as e:  # noqa: BLE001  (a bug must cost one request, not the server)
        logger.exception("%s failed", api or handler.__name__)
        error = internal(f"{type(e).__name__}: {e}")
    if api is not None:
        metrics.record_request(model_name, error.code.name if error else "OK", api, "GRPC",
                               (time.perf_counter() - start) * 1e6)
    if error is not None:
        context.abort(error.code, error.wire_message)
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics):
        self._core = core
        self._metrics = metrics

    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        return _call(self._core.predict, request, context, self._metrics, "Predict",
                     request.model_spec.name, timeout=context.time_remaining())

    def Classify(self, request, context):  # noqa: N802
        return _call(self._core.classify, request, context, self._metrics, "Classify",
                     request.model_spec.name, timeout=context.time_remaining())

    def Regress(self, request, context):  # noqa: N802
        return _call(self._core.regress, request, context, self._metrics, "Regress",
                     request.model_spec.name, timeout=context.time_remaining())

    def MultiInference(self, request, context):  # noqa: N802
        return _call(self._core.multi_inference, request, context, self._metrics, None, "",
                     timeout=context.time_remaining())

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _call(self._core.get_model_metadata, request, context, self._metrics, None, "")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, HandleReloadConfigRequest."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics):
        self._core = core
        self._metrics = metrics

    def GetModelStatus(self, request, context):  # noqa: N802
        return _call(self._core.get_model_status, request, context, self._metrics, None, "")

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return _call(self._core.reload_config, request, context, self._metrics, None, "",
                     is_cancelled=lambda: not context.is_active())


def start_grpc_server(core: ServingCore, metrics: ServingMetrics, addresses: list[str],
                      max_threads: int) -> tuple[grpc.Server, list[int]]:
    """Binds every address ("0.0.0.0:8500", "unix:/path"), starts; returns the bound ports."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=SERVER_OPTIONS, maximum_concurrent_rpcs=max_threads)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(core, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core, metrics),
                                                              server)
    ports = []
    for address in addresses:
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"Could not bind the gRPC server to {address}: {e}") from None
        if port == 0 and not address.startswith("unix:"):
            raise OSError(f"Could not bind the gRPC server to {address}")
        ports.append(port)
    server.start()
    return server, ports
