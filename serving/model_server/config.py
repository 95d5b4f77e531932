"""Server configuration: TF Serving's flags, and its three text-format config files.

- `--model_config_file`: a text `tensorflow.serving.ModelServerConfig` (the proto class from
  tensorflow-serving-api), validated as `ServerCore::ValidateModelConfigList` does.
- `--batching_parameters_file`: a text `tensorflow.serving.BatchingParameters`
  (`servables/tensorflow/session_bundle_config.proto`) -> `BatchingParameters`.
- `--monitoring_config_file`: a text `tensorflow.serving.MonitoringConfig`
  (`config/monitoring_config.proto`) -> `MonitoringConfig`.

tensorflow-serving-api 2.16 ships neither the batching nor the monitoring proto, so their
message types are built here from the same field names and numbers; text files written for
TF Serving parse unchanged, and a misspelt field fails with the protobuf parser's message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from common import console
from serving.model_server.errors import invalid_argument

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_GRPC_MAX_QUEUED_REQUESTS = 256
_PACKAGE = "tensorflow.serving"


def _cpu_count() -> int:
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Message types missing from tensorflow-serving-api, built from the .proto field lists.
# ---------------------------------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
# (name, number, type, label, message type) as in session_bundle_config.proto.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
    ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
     ".google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
)


def _build_message_classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(
        name="lfm4ads/serving/tf_serving_configs.proto", package=_PACKAGE, syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    batching = file.message_type.add(name="BatchingParameters")
    for name, number, type_, label, type_name in _BATCHING_FIELDS:
        field = batching.field.add(name=name, number=number, type=type_, label=label)
        if type_name:
            field.type_name = type_name
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_F.TYPE_BOOL, label=_F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=_F.TYPE_MESSAGE,
                         label=_F.LABEL_OPTIONAL, type_name=f".{_PACKAGE}.PrometheusConfig")
    pool.Add(file)
    factory = message_factory.MessageFactory(pool)
    return {name: factory.GetPrototype(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in ("BatchingParameters", "MonitoringConfig")}


_MESSAGES = _build_message_classes()


def _parse_text(message_name: str, text: str, source: str):
    message = _MESSAGES[message_name]()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise invalid_argument(f"Could not parse {message_name} from {source}: {e}") from e
    return message


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise invalid_argument(f"Could not read {path}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """Server-side batching (TF Serving's `BatchingParameters`, defaults of its scheduler).

    `max_batch_size` rows at most per model call; a batch waits up to `batch_timeout_micros`
    for more requests once a batch thread is free; at most `max_enqueued_batches` batches wait
    per model version and signature (more: UNAVAILABLE); `num_batch_threads` model calls run at
    once; a merged batch is padded up to the next of `allowed_batch_sizes` (whose last entry
    must equal `max_batch_size`).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=_cpu_count)
    thread_pool_name: str = "model_server_batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        object.__setattr__(self, "allowed_batch_sizes", tuple(self.allowed_batch_sizes))
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise invalid_argument(f"BatchingParameters.{name} must be >= 1, got "
                                       f"{getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise invalid_argument("BatchingParameters.batch_timeout_micros must be >= 0, got "
                                   f"{self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise invalid_argument("allowed_batch_sizes entries must be monotonically "
                                       f"increasing; got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise invalid_argument(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last entry "
                    f"was {sizes[-1]}; expected {self.max_batch_size}")

    @classmethod
    def from_text(cls, text: str, source: str = "batching parameters") -> BatchingParameters:
        """Parses a text `BatchingParameters` proto, e.g. `max_batch_size { value: 32 }`."""
        proto = _parse_text("BatchingParameters", text, source)
        if proto.HasField("enable_large_batch_splitting") and \
                proto.enable_large_batch_splitting.value:
            raise invalid_argument(
                f"{source}: enable_large_batch_splitting is not supported by this server; a "
                "request larger than max_batch_size is refused with INVALID_ARGUMENT")
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads", "thread_pool_name"):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
        values["pad_variable_length_inputs"] = proto.pad_variable_length_inputs
        return cls(**values)

    @classmethod
    def from_file(cls, path: str) -> BatchingParameters:
        return cls.from_text(_read(path), source=path)


# ---------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    """`prometheus_config { enable: true path: "..." }`: Prometheus text on the REST port."""

    prometheus_enable: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH

    @classmethod
    def from_text(cls, text: str, source: str = "monitoring config") -> MonitoringConfig:
        proto = _parse_text("MonitoringConfig", text, source)
        prometheus = proto.prometheus_config
        return cls(prometheus_enable=prometheus.enable,
                   prometheus_path=prometheus.path or DEFAULT_PROMETHEUS_PATH)

    @classmethod
    def from_file(cls, path: str) -> MonitoringConfig:
        return cls.from_text(_read(path), source=path)


# ---------------------------------------------------------------------------------------------
# Model server config
# ---------------------------------------------------------------------------------------------

def parse_model_server_config(text: str, source: str = "model config"):
    """A text `ModelServerConfig` (`model_config_list { config { name base_path ... } }`)."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise invalid_argument(f"Could not parse ModelServerConfig from {source}: {e}") from e
    return config


def read_model_server_config(path: str):
    return parse_model_server_config(_read(path), source=path)


def single_model_config(name: str, base_path: str):
    """The config TF Serving builds from `--model_name` and `--model_base_path`."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path,
                                        model_platform="tensorflow")
    return config


def validate_model_config_list(config_list) -> None:
    """ServerCore::ValidateModelConfigList: unique names, absolute base paths, TF platform."""
    seen: set[str] = set()
    for model in config_list.config:
        if not model.name:
            raise invalid_argument("A model in model_config_list has no name")
        if model.name in seen:
            raise invalid_argument(
                f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise invalid_argument(f"Expected model {model.name} to have an absolute path or "
                                   f"URI; got base_path()={model.base_path}")
        if model.model_platform not in ("", "tensorflow"):
            raise invalid_argument(f"Model {model.name} requested unsupported platform "
                                   f"{model.model_platform}; this server serves 'tensorflow'")


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ServerOptions:
    """TF Serving's `tensorflow_model_server` flags that this server implements.

    Ports: `None` disables the listener, 0 binds a free port (the CLI maps TF Serving's
    "0 = disabled" onto `None`). `file_system_poll_wait_seconds` may be fractional here.
    `grpc_max_queued_requests` is this server's own: gRPC requests beyond `grpc_max_threads`
    wait for a thread in a queue of that many (each until its deadline) instead of being
    refused; 0 refuses them at once, as TF Serving does.
    """

    port: int | None = 8500
    grpc_socket_path: str = ""
    rest_api_port: int | None = None
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    grpc_max_threads: int = dataclasses.field(default_factory=lambda: 4 * _cpu_count())
    grpc_max_queued_requests: int = DEFAULT_GRPC_MAX_QUEUED_REQUESTS
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0
    file_system_poll_wait_seconds: float = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    enable_serialization_as_tensor_content: bool = False
    saved_model_tags: str = "serve"

    def check(self, has_model_config: bool = False) -> None:
        """BuildAndStart's argument checks (`has_model_config`: a config given in Python)."""
        if self.port is None and not self.grpc_socket_path:
            raise invalid_argument("At least one of server_options.grpc_port or "
                                   "server_options.grpc_socket_path must be set.")
        if not (self.model_base_path or self.model_config_file or has_model_config):
            raise invalid_argument("Both server_options.model_base_path and "
                                   "server_options.model_config_file are empty!")
        if self.batching_parameters_file and not self.enable_batching:
            raise invalid_argument("server_options.batching_parameters_file is set without "
                                   "setting server_options.enable_batching to true.")
        if self.grpc_max_threads < 1:
            raise invalid_argument(f"grpc_max_threads must be >= 1, got {self.grpc_max_threads}")
        if self.grpc_max_queued_requests < 0:
            raise invalid_argument("grpc_max_queued_requests must be >= 0, got "
                                   f"{self.grpc_max_queued_requests}")
        if self.port and self.rest_api_port and self.port == self.rest_api_port:
            raise invalid_argument("server_options.http_port cannot be same as grpc_port. "
                                   "Please use a different port for HTTP/REST API.")


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "t", "yes"):
        return True
    if lowered in ("0", "false", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


_HELP = {
    "grpc_max_threads": "gRPC requests that run at once (default: 4 x CPUs)",
    "grpc_max_queued_requests": (
        "gRPC requests that wait for a thread when --grpc_max_threads run, in arrival order, "
        "each until its deadline (then DEADLINE_EXCEEDED); a request finding the queue full "
        "is RESOURCE_EXHAUSTED. 0: refuse at once, as tensorflow_model_server does "
        f"(default: {DEFAULT_GRPC_MAX_QUEUED_REQUESTS})"),
}


def _flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_server",
        description="TF-Serving-compatible model server (gRPC PredictionService and "
                    "ModelService, REST API, Prometheus metrics); flags as "
                    "tensorflow_model_server's.")
    defaults = ServerOptions()
    ints = {"port": 8500, "rest_api_port": 0, "rest_api_timeout_in_ms": 30000,
            "grpc_max_threads": defaults.grpc_max_threads,
            "grpc_max_queued_requests": defaults.grpc_max_queued_requests,
            "max_num_load_retries": 5,
            "load_retry_interval_micros": defaults.load_retry_interval_micros,
            "num_request_iterations_for_warmup": 0}
    floats = {"file_system_poll_wait_seconds": 1.0, "model_config_file_poll_wait_seconds": 0.0}
    strings = {"grpc_socket_path": "", "model_name": "default", "model_base_path": "",
               "model_config_file": "", "batching_parameters_file": "",
               "monitoring_config_file": "", "saved_model_tags": "serve"}
    bools = {"enable_batching": False, "rest_api_enable_cors_support": False,
             "enable_model_warmup": True, "allow_version_labels_for_unavailable_models": False,
             "enable_signature_method_name_check": False,
             "enable_serialization_as_tensor_content": False}
    for name, default in ints.items():
        parser.add_argument(f"--{name}", type=int, default=default, help=_HELP.get(name))
    for name, default in floats.items():
        parser.add_argument(f"--{name}", type=float, default=default)
    for name, default in strings.items():
        parser.add_argument(f"--{name}", type=str, default=default)
    for name, default in bools.items():
        parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default)
    console.add_verbose_flag(parser)  # the libraries' log lines (common.console)
    return parser


def parse_flags(argv: Sequence[str] | None = None) -> ServerOptions:
    """`tensorflow_model_server` flags -> ServerOptions (ports of 0 mean disabled, as there).

    Flags this server does not implement (e.g. `--rest_api_num_threads`) are reported and
    ignored, as `tensorflow_model_server` reports and ignores arguments it does not know.
    """
    args, unknown = _flag_parser().parse_known_args(argv)
    for arg in unknown:
        print(f"unknown argument: {arg}", file=sys.stderr)
    args = vars(args)
    args.pop("verbose")  # read by `server.main`, not a server option
    args["port"] = args["port"] or None
    args["rest_api_port"] = args["rest_api_port"] or None
    if args["model_base_path"] and not args["model_config_file"]:
        args["model_base_path"] = os.path.abspath(args["model_base_path"])
    return ServerOptions(**args)
