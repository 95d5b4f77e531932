"""A TF-Serving-compatible model server: gRPC `PredictionService`/`ModelService`, REST, metrics.

    python -m serving.model_server --model_name=lfm4ads --model_base_path=build/export/lfm4ads

    from serving.model_server import BatchingParameters, ModelServer
    with ModelServer(model_name="lfm4ads", model_base_path=path, port=0) as server:
        channel = grpc.insecure_channel(server.grpc_target)

Modules: `server` (`ModelServer`, the CLI's `main`), `config` (flags, `ServerOptions`, the text
config files), `core` (request handling independent of the transport), `processing` (request
checks and result filling), `grpc_service` and `admission` (the gRPC front end, on gRPC
Python's asyncio server, and its bounded request queue), `rest` and `rest_json` (the REST
front end), `manager` (model versions), `servable` (a loaded SavedModel), `batching`
(server-side batching), `tensors` (TensorProto <-> numpy), `metrics` (Prometheus), `errors`
(`ServingError`).
"""

from serving.model_server.config import (
    BatchingParameters,
    MonitoringConfig,
    ServerOptions,
    parse_flags,
)
from serving.model_server.errors import ServingError
from serving.model_server.manager import State, VersionStatus
from serving.model_server.server import ModelServer, main

__all__ = ["BatchingParameters", "ModelServer", "MonitoringConfig", "ServerOptions",
           "ServingError", "State", "VersionStatus", "main", "parse_flags"]
