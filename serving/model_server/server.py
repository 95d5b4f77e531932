"""A TF-Serving-compatible model server: gRPC `PredictionService`/`ModelService`, REST, metrics.

Real TF Serving clients work against it unchanged (`PredictionServiceStub`,
`ModelServiceStub`, the REST API): same protos, status codes, messages, version handling,
batching and metric names as `tensorflow_model_server` (see `/work/shared/TF_SERVING.md` for the
behaviour matched and where it lives in tensorflow/serving). It also serves SavedModels that use
ScaNN's TensorFlow ops (`tfrs.layers.factorized_top_k.ScaNN` retrieval indexes), which the stock
binary cannot load. One deliberate difference: a gRPC request beyond `--grpc_max_threads` waits for
a thread in a queue of `--grpc_max_queued_requests` (default 256; each until its deadline)
instead of being refused at once; 0 restores TF Serving's immediate RESOURCE_EXHAUSTED.

Command line (TF Serving's flag names and meanings; a port of 0 disables that listener):

    python -m serving.model_server --model_name=lfm4ads --model_base_path=build/export/lfm4ads \
        --port=8500 --rest_api_port=8501 [--model_config_file=F] \
        [--enable_batching --batching_parameters_file=F] [--file_system_poll_wait_seconds=N] \
        [--monitoring_config_file=F] [--grpc_max_threads=N] [--grpc_max_queued_requests=N]

In Python (a port of 0 binds a free port; `None` disables it):

    with ModelServer(model_name="lfm4ads", model_base_path=path, port=0,
                     rest_api_port=0) as server:
        channel = grpc.insecure_channel(server.grpc_target)
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from common import console
from serving.model_server.config import (
    BatchingParameters,
    MonitoringConfig,
    ServerOptions,
    parse_flags,
    read_model_server_config,
    single_model_config,
)
from serving.model_server.core import ServingCore
from serving.model_server.errors import ServingError
from serving.model_server.grpc_service import start_grpc_server
from serving.model_server.manager import VersionStatus
from serving.model_server.metrics import ServingMetrics
from serving.model_server.rest import RestServer

__all__ = ["ModelServer", "main"]

logger = logging.getLogger("serving.model_server")


class ModelServer:
    """The server: models, gRPC and REST listeners, metrics. `start()` then `stop()`.

    Args:
      options: a ServerOptions; or give its fields as keyword arguments.
      batching_parameters: batching settings in place of `batching_parameters_file`
        (setting it turns batching on).
      monitoring: monitoring settings in place of `monitoring_config_file`.
      model_server_config: a `ModelServerConfig` proto in place of `model_config_file`.
      load_timeout_s: how long `start()` waits for the first version of every model
        (TF Serving waits without limit; so does None).
    """

    def __init__(self, options: ServerOptions | None = None, *,
                 batching_parameters: BatchingParameters | None = None,
                 monitoring: MonitoringConfig | None = None,
                 model_server_config=None, load_timeout_s: float | None = None, **flags):
        options = dataclasses.replace(options or ServerOptions(), **flags)
        if batching_parameters is not None:
            options.enable_batching = True
        options.check(has_model_config=model_server_config is not None)
        self.options = options
        self._batching = batching_parameters
        self._monitoring = monitoring
        self._model_server_config = model_server_config
        self._load_timeout = load_timeout_s
        self.metrics = ServingMetrics()
        self.core: ServingCore | None = None
        self._grpc = None
        self._rest: RestServer | None = None
        self._config_thread: threading.Thread | None = None
        self._stopped = threading.Event()  # stop() has begun
        self._terminated = threading.Event()  # stop() has finished
        self.grpc_port: int | None = None
        self.rest_api_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Loads the models (waiting for their first version), then opens the ports."""
        options = self.options
        batching = self._batching
        if batching is None and options.enable_batching:
            batching = (BatchingParameters.from_file(options.batching_parameters_file)
                        if options.batching_parameters_file else BatchingParameters())
        monitoring = self._monitoring or (
            MonitoringConfig.from_file(options.monitoring_config_file)
            if options.monitoring_config_file else MonitoringConfig())
        self.core = ServingCore(options, self.metrics, batching)
        try:
            self.core.manager.reload_config(self._initial_config(),
                                            wait_timeout=self._load_timeout)
            self.core.manager.start_polling()
            self._open_ports(monitoring)
        except BaseException:
            self.stop()
            raise
        self._watch_config_file()
        return self

    def _initial_config(self):
        if self._model_server_config is not None:
            return self._model_server_config
        if self.options.model_config_file:
            return read_model_server_config(self.options.model_config_file)
        return single_model_config(self.options.model_name, self.options.model_base_path)

    def _open_ports(self, monitoring: MonitoringConfig) -> None:
        options = self.options
        addresses = []
        if options.port is not None:
            addresses.append(f"0.0.0.0:{options.port}")
        if options.grpc_socket_path:
            addresses.append(f"unix:{options.grpc_socket_path}")
        self._grpc, ports = start_grpc_server(self.core, self.metrics, addresses,
                                              options.grpc_max_threads,
                                              options.grpc_max_queued_requests)
        if options.port is not None:
            self.grpc_port = ports[0]
            logger.info("Running gRPC ModelServer at 0.0.0.0:%d ...", self.grpc_port)
        if options.grpc_socket_path:
            logger.info("Running gRPC ModelServer at UNIX socket %s ...",
                        options.grpc_socket_path)
        if options.rest_api_port is not None:
            self._rest = RestServer(self.core, self.metrics, options.rest_api_port, monitoring,
                                    options.rest_api_timeout_in_ms,
                                    options.rest_api_enable_cors_support)
            self._rest.start()
            self.rest_api_port = self._rest.port
            logger.info("Exporting HTTP/REST API at:localhost:%d ...", self.rest_api_port)

    def _watch_config_file(self) -> None:
        """--model_config_file_poll_wait_seconds: reload the config file when it changes."""
        wait = self.options.model_config_file_poll_wait_seconds
        if not self.options.model_config_file or wait <= 0:
            return

        def poll() -> None:
            while not self._stopped.wait(wait):
                try:
                    config = read_model_server_config(self.options.model_config_file)
                    if config != self.core.manager.config:
                        self.core.manager.reload_config(config)
                except ServingError as e:
                    logger.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e)

        self._config_thread = threading.Thread(target=poll, name="config_poll", daemon=True)
        self._config_thread.start()

    def stop(self, grace: float = 2.0) -> None:
        """Stops listening (in-flight RPCs get `grace` seconds), then unloads the models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._rest is not None:
            self._rest.stop()
        if self._grpc is not None:
            self._grpc.stop(grace)
        if self._config_thread is not None:
            self._config_thread.join()
        if self.core is not None:
            self.core.close()
        self._terminated.set()

    def wait_for_termination(self) -> None:
        """Blocks until `stop()` has finished (e.g. after SIGTERM in the CLI)."""
        self._terminated.wait()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- conveniences ----------------------------------------------------------------------

    @property
    def grpc_target(self) -> str:
        """`localhost:<port>` for `grpc.insecure_channel`."""
        return f"localhost:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://localhost:{self.rest_api_port}"

    def model_status(self, name: str) -> list[VersionStatus]:
        """Every version of `name` the server has seen, highest first."""
        return self.core.manager.statuses(name)

    def metrics_text(self) -> str:
        """The Prometheus page (also served on the REST port when monitoring enables it)."""
        return self.metrics.prometheus_text()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    options = parse_flags(argv)
    console.setup(console.VERBOSE_FLAG in (sys.argv[1:] if argv is None else list(argv)))
    try:
        server = ModelServer(options).start()
    except (ServingError, OSError) as e:
        print(f"Failed to start server. Error: {e}", file=sys.stderr, flush=True)
        return 255
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: threading.Thread(target=server.stop).start())
    server.wait_for_termination()
    return 0

