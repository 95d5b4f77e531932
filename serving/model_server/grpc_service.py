"""The gRPC front end: `tensorflow.serving.PredictionService` and `ModelService`.

Servicers from tensorflow-serving-api's generated modules, so the wire format is TF Serving's;
every method answers (the generated base classes would say UNIMPLEMENTED). Like
`model_servers/server.cc`: message size limits raised to INT32_MAX both ways, and at most
`grpc_max_threads` RPCs running at once. Unlike it, an RPC beyond that waits for a thread in a
queue of `grpc_max_queued_requests` (until its deadline) instead of being refused at once;
only an RPC that finds the queue full is RESOURCE_EXHAUSTED (`admission.py`; a queue of 0 is
TF Serving's behaviour). Predict, Classify and Regress are counted in `request_count` and timed
in `request_latency` (entrypoint `GRPC`), as `prediction_service_impl.cc` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.model_server.admission import AdmissionQueue, remaining_seconds
from serving.model_server.core import ServingCore
from serving.model_server.errors import ServingError, internal
from serving.model_server.metrics import ServingMetrics

logger = logging.getLogger("serving.model_server")

INT32_MAX = 2**31 - 1
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", INT32_MAX),
    ("grpc.max_receive_message_length", INT32_MAX),
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
)


class _Front:
    """What every servicer method needs: the core, the metrics, the admission queue."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics, admission: AdmissionQueue):
        self.core = core
        self.metrics = metrics
        self.admission = admission

    def call(self, handler: Callable, request, context: grpc.ServicerContext, api: str | None,
             model_name: str, timed: bool = False, **kwargs):
        """Waits for a thread (`admission`), runs `handler` (with the deadline's remaining
        seconds as `timeout` if `timed`); a ServingError (or any bug) becomes the RPC's status,
        never a crash."""
        start = time.perf_counter()
        error: ServingError | None = None
        try:
            self.admission.enter(context)
        except ServingError as e:
            error = e
        else:
            try:
                if timed:
                    kwargs["timeout"] = remaining_seconds(context)
                response = handler(request, **kwargs)
            except ServingError as e:
                error = e
            except Exception as e:  # noqa: BLE001  (a bug must cost one request, not the server)
                logger.exception("%s failed", api or handler.__name__)
                error = internal(f"{type(e).__name__}: {e}")
            finally:
                self.admission.leave()
        if api is not None:
            self.metrics.record_request(model_name, error.code.name if error else "OK", api,
                                        "GRPC", (time.perf_counter() - start) * 1e6)
        if error is not None:
            context.abort(error.code, error.wire_message)
        return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    def __init__(self, front: _Front):
        self._front = front

    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        return self._front.call(self._front.core.predict, request, context, "Predict",
                                request.model_spec.name, timed=True)

    def Classify(self, request, context):  # noqa: N802
        return self._front.call(self._front.core.classify, request, context, "Classify",
                                request.model_spec.name, timed=True)

    def Regress(self, request, context):  # noqa: N802
        return self._front.call(self._front.core.regress, request, context, "Regress",
                                request.model_spec.name, timed=True)

    def MultiInference(self, request, context):  # noqa: N802
        return self._front.call(self._front.core.multi_inference, request, context, None, "",
                                timed=True)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._front.call(self._front.core.get_model_metadata, request, context, None, "")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, HandleReloadConfigRequest."""

    def __init__(self, front: _Front):
        self._front = front

    def GetModelStatus(self, request, context):  # noqa: N802
        return self._front.call(self._front.core.get_model_status, request, context, None, "")

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return self._front.call(self._front.core.reload_config, request, context, None, "",
                                is_cancelled=lambda: not context.is_active())


def start_grpc_server(core: ServingCore, metrics: ServingMetrics, addresses: list[str],
                      max_threads: int, max_queued: int = 0) -> tuple[grpc.Server, list[int]]:
    """Binds every address ("0.0.0.0:8500", "unix:/path"), starts; returns the bound ports.

    At most `max_threads` RPCs run at once and `max_queued` more wait (`admission.py`). Each
    waiting RPC blocks a thread of gRPC's pool, so the pool and gRPC's own ceiling
    (`maximum_concurrent_rpcs`, beyond which gRPC refuses before any handler runs) have
    `max_threads` more threads on top, for answering RESOURCE_EXHAUSTED when the queue is full.
    """
    admission = AdmissionQueue(max_threads, max_queued, metrics)
    capacity = 2 * max_threads + max_queued
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="grpc"),
        options=SERVER_OPTIONS, maximum_concurrent_rpcs=capacity)
    front = _Front(core, metrics, admission)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(front), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(front), server)
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
