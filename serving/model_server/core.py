"""What the server does with each request, independent of gRPC or REST.

Each method takes a tensorflow-serving-api request proto and returns its response proto, or
raises `ServingError` with TF Serving's status code and message
(`servables/tensorflow/predict_util.cc`, `classifier.cc`, `regressor.cc`,
`multi_inference.cc`, `get_model_metadata_impl.cc`, `model_servers/get_model_status_impl.cc`,
`model_service_impl.cc`). Checks run in TF Serving's order, so the first error a client sees is
the one TF Serving would report; the checks and the result filling are in `processing`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message as proto_message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from serving.model_server import tensors
from serving.model_server.batching import BatchScheduler
from serving.model_server.config import BatchingParameters, ServerOptions
from serving.model_server.errors import (
    ServingError,
    failed_precondition,
    from_tf_error,
    internal,
    invalid_argument,
)
from serving.model_server.manager import ModelManager
from serving.model_server.metrics import ServingMetrics
from serving.model_server.processing import (
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_INPUTS,
    REGRESS_METHOD,
    check_classification_signature,
    check_input_arrays,
    check_input_count,
    check_regression_signature,
    fill_classification_result,
    fill_regression_result,
    join_keys,
    make_model_spec,
    output_aliases,
    serialized_examples,
)
from serving.model_server.servable import Servable, Signature, load_servable

logger = logging.getLogger("serving.model_server")

SIGNATURE_DEF_FIELD = "signature_def"
MAX_WARMUP_RECORDS = 1000


class ModelCall:
    """One model call a request needs: `run(inputs)`, through the batch scheduler's queue `key`
    when `key` is not None. The request handlers (`*_steps`) yield these; a driver runs them
    and sends the outputs back: `ServingCore.complete` blocks its thread, the gRPC front end
    awaits them on its event loop (`grpc_service`)."""

    __slots__ = ("run", "inputs", "key")

    def __init__(self, run, inputs: dict[str, np.ndarray], key: tuple | None):
        self.run, self.inputs, self.key = run, inputs, key


Steps = Generator[ModelCall, dict, object]


class ServingCore:
    """The model manager, the optional batch scheduler, and the request handlers."""

    def __init__(self, options: ServerOptions, metrics: ServingMetrics,
                 batching: BatchingParameters | None = None):
        self.options = options
        self.metrics = metrics
        self.batcher = BatchScheduler(batching, metrics) if batching is not None else None
        self._tags = {t.strip() for t in options.saved_model_tags.split(",") if t.strip()}
        self.manager = ModelManager(
            load=self._load,
            poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_s=options.load_retry_interval_micros / 1e6,
            allow_version_labels_for_unavailable_models=(
                options.allow_version_labels_for_unavailable_models))

    def close(self) -> None:
        self.manager.stop()
        if self.batcher is not None:
            self.batcher.close()

    # -- running a signature ---------------------------------------------------------------

    def run_steps(self, servable: Servable, signature: Signature,
                  inputs: dict[str, np.ndarray], api: str, batch: bool = True) -> Steps:
        """Runs `signature` (one ModelCall: through the batch scheduler when batching is on)."""
        start = time.perf_counter()
        key = ((servable.name, servable.version, signature.name, id(servable))
               if self.batcher is not None and batch else None)
        outputs = yield ModelCall(signature.run, inputs, key)
        self.metrics.runtime_latency.observe((time.perf_counter() - start) * 1e6,
                                             servable.name, api, "TF1")
        return outputs

    def complete(self, steps: Steps, timeout: float | None = None):
        """Drives a handler's steps on this thread: each model call waits for its batch (at
        most `timeout` s) or runs here. Returns the handler's result."""
        try:
            call = next(steps)
            while True:
                if call.key is not None:
                    outputs = self.batcher.submit(call.key, call.run, call.inputs).wait(timeout)
                else:
                    outputs = call.run(call.inputs)
                call = steps.send(outputs)
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    # -- Predict ---------------------------------------------------------------------------

    def predict_signature(self, servable: Servable, name: str) -> Signature:
        """The signature a Predict names (empty: serving_default); FAILED_PRECONDITION if none."""
        name = name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None or signature.function is None:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        if self.options.enable_signature_method_name_check and signature.method_name not in (
                PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise internal(f"Expected prediction signature method_name to be one of "
                           f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: "
                           f"{signature.method_name}")
        return signature

    def predict_arrays(self, servable: Servable, signature: Signature,
                       inputs: dict[str, np.ndarray], output_filter: Iterable[str] = (),
                       timeout: float | None = None) -> dict[str, np.ndarray]:
        """Checked numpy inputs -> the filtered outputs (aliases in response order)."""
        return self.complete(self._predict_arrays(servable, signature, inputs, output_filter),
                             timeout)

    def _predict_arrays(self, servable: Servable, signature: Signature,
                        inputs: dict[str, np.ndarray], output_filter: Iterable[str] = (),
                        batch: bool = True) -> Steps:
        aliases = output_aliases(signature, output_filter)
        check_input_arrays(signature, inputs)
        outputs = yield from self.run_steps(servable, signature, inputs, "Predict", batch)
        return {alias: outputs[alias] for alias in aliases}

    def predict(self, request: predict_pb2.PredictRequest,
                timeout: float | None = None) -> predict_pb2.PredictResponse:
        return self.complete(self.predict_steps(request), timeout)

    def predict_steps(self, request: predict_pb2.PredictRequest) -> Steps:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = self.manager.resolve(request.model_spec)
        return (yield from self._predict_on(servable, request))

    def _predict_on(self, servable: Servable, request: predict_pb2.PredictRequest,
                    batch: bool = True) -> Steps:
        signature = self.predict_signature(servable, request.model_spec.signature_name)
        check_input_count(signature, request.inputs.keys())
        inputs = self._decode_inputs(signature, request.inputs)
        outputs = yield from self._predict_arrays(servable, signature, inputs,
                                                  request.output_filter, batch)
        response = predict_pb2.PredictResponse()
        make_model_spec(response.model_spec, request.model_spec.name, signature.name,
                        servable.version)
        as_content = self.options.enable_serialization_as_tensor_content
        for alias, array in outputs.items():
            tensors.fill_proto(response.outputs[alias], array, as_content)
        return response

    @staticmethod
    def _decode_inputs(signature: Signature, request_inputs) -> dict[str, np.ndarray]:
        """saved_model::GetInputValues: every signature alias, from the request or defaults."""
        defaults = getattr(signature.definition, "defaults", {})
        inputs = {}
        for alias in signature.input_keys:
            if alias in request_inputs:
                proto = request_inputs[alias]
            elif alias in defaults:
                proto = defaults[alias]
            else:
                feed = signature.definition.inputs[alias].name
                raise invalid_argument(
                    f"Signature input alias: {alias}(feed name: {feed}) not found in request "
                    f"and no default value provided. Inputs expected to be in the request "
                    f"{{{join_keys(request_inputs.keys())}}}, or default input alias set: "
                    f"{join_keys(defaults.keys())}")
            inputs[alias] = tensors.to_ndarray(proto, alias)
        return inputs

    # -- Classify / Regress / MultiInference -----------------------------------------------

    def _method_signature(self, servable: Servable, name: str, method: str) -> Signature:
        """GetClassificationSignatureDef / GetRegressionSignatureDef, then the shape checks."""
        key = name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(key)
        if signature is None or signature.function is None:
            raise invalid_argument(f"No signature was found with the name: {key}")
        if self.options.enable_signature_method_name_check and signature.method_name != method:
            kind = "classification" if method == CLASSIFY_METHOD else "regression"
            raise invalid_argument(f"Expected {kind} signature method_name to be {method}. "
                                   f"Was: {signature.method_name}")
        check = (check_classification_signature if method == CLASSIFY_METHOD
                 else check_regression_signature)
        check(signature)
        return signature

    def classify(self, request: classification_pb2.ClassificationRequest,
                 timeout: float | None = None) -> classification_pb2.ClassificationResponse:
        return self.complete(self.classify_steps(request), timeout)

    def classify_steps(self, request: classification_pb2.ClassificationRequest) -> Steps:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return (yield from self._classify_on(self.manager.resolve(request.model_spec), request))

    def _classify_on(self, servable: Servable, request, batch: bool = True) -> Steps:
        return (yield from self._examples_method_on(
            servable, request, CLASSIFY_METHOD, CLASSIFY_INPUTS, "Classify",
            classification_pb2.ClassificationResponse(), fill_classification_result, batch))

    def _examples_method_on(self, servable: Servable, request, method: str, input_key: str,
                            api: str, response, fill_result, batch: bool) -> Steps:
        """Classify / Regress: tf.Examples in, a method signature run, `fill_result` out."""
        signature = self._method_signature(servable, request.model_spec.signature_name, method)
        examples = serialized_examples(request.input)
        self._record_examples(servable.name, len(examples))
        outputs = yield from self.run_steps(servable, signature, {input_key: examples}, api,
                                            batch)
        make_model_spec(response.model_spec, request.model_spec.name,
                        request.model_spec.signature_name, servable.version)
        fill_result(outputs, len(examples), response.result)
        return response

    def regress(self, request: regression_pb2.RegressionRequest,
                timeout: float | None = None) -> regression_pb2.RegressionResponse:
        return self.complete(self.regress_steps(request), timeout)

    def regress_steps(self, request: regression_pb2.RegressionRequest) -> Steps:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return (yield from self._regress_on(self.manager.resolve(request.model_spec), request))

    def _regress_on(self, servable: Servable, request, batch: bool = True) -> Steps:
        return (yield from self._examples_method_on(
            servable, request, REGRESS_METHOD, REGRESS_INPUTS, "Regress",
            regression_pb2.RegressionResponse(), fill_regression_result, batch))

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest,
                        timeout: float | None = None) -> inference_pb2.MultiInferenceResponse:
        return self.complete(self.multi_inference_steps(request), timeout)

    def multi_inference_steps(self, request: inference_pb2.MultiInferenceRequest) -> Steps:
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        return (yield from self._multi_inference_on(self.manager.resolve(spec), request))

    def _multi_inference_on(self, servable: Servable, request, batch: bool = True) -> Steps:
        model_name, seen = "", set()
        signatures = []
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if model_name and task.model_spec.name != model_name:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access "
                                       "the same model name.")
            model_name = task.model_spec.name
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            if key not in servable.signatures:
                raise invalid_argument(f"Requested signature not found in model graph: {key}")
            if task.method_name == CLASSIFY_METHOD:
                check_classification_signature(servable.signatures[key])
            elif task.method_name == REGRESS_METHOD:
                check_regression_signature(servable.signatures[key])
            else:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {task.method_name}")
            signatures.append(servable.signatures[key])
        examples = serialized_examples(request.input)
        self._record_examples(model_name, len(examples))
        response = inference_pb2.MultiInferenceResponse()
        for task, signature in zip(request.tasks, signatures, strict=True):
            outputs = yield from self.run_steps(servable, signature, {CLASSIFY_INPUTS: examples},
                                                "MultiInference", batch)
            result = response.results.add()
            if task.method_name == CLASSIFY_METHOD:
                fill_classification_result(outputs, len(examples), result.classification_result)
            else:
                fill_regression_result(outputs, len(examples), result.regression_result)
            make_model_spec(result.model_spec, task.model_spec.name,
                            task.model_spec.signature_name, servable.version)
        return response

    def _record_examples(self, model_name: str, count: int) -> None:
        self.metrics.request_example_counts.observe(count, model_name)
        self.metrics.request_example_count_total.increment(model_name, by=count)

    # -- metadata, status, config ----------------------------------------------------------

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self.manager.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signatures.items():
            signature_map.signature_def[key].CopyFrom(signature.definition)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.statuses(spec.name, version):
            entry = response.model_version_status.add(version=status.version,
                                                      state=int(status.state))
            entry.status.SetInParent()  # TF always sets it: OK when healthy
            if status.error is not None:
                entry.status.error_code = status.error.code.value[0]
                entry.status.error_message = status.error.message
        return response

    def reload_config(self, request: model_management_pb2.ReloadConfigRequest,
                      is_cancelled: Callable[[], bool] = lambda: False
                      ) -> model_management_pb2.ReloadConfigResponse:
        """HandleReloadConfigRequest: the new config replaces the whole model set."""
        before = {name: self._metric_value(name) for name in request.metric_names}
        self.manager.reload_config(request.config, is_cancelled=is_cancelled)
        response = model_management_pb2.ReloadConfigResponse()
        for name, old in before.items():
            response.metric.add(name=name, int64_value_increase=self._metric_value(name) - old)
        return response

    def _metric_value(self, name: str) -> int:
        metric = self.metrics.find(name)
        return metric.first_value() if metric is not None and hasattr(metric, "first_value") \
            else 0

    # -- loading and warmup ----------------------------------------------------------------

    def _load(self, name: str, version: int, path: str) -> Servable:
        servable = load_servable(name, version, path, self._tags)
        if self.options.enable_model_warmup:
            self._warm_up(servable)
        return servable

    def _warm_up(self, servable: Servable) -> None:
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLogs, at most 1000)."""
        path = servable.warmup_path
        if not tf.io.gfile.exists(path):
            logger.info("No warmup data file found at %s", path)
            return
        start, status = time.perf_counter(), "OK"
        try:
            self._replay_file(servable, path)
        except ServingError as e:
            status = e.code.name
            raise ServingError(e.code, f"Warmup of {servable} from {path} failed: "
                                       f"{e.message}") from None
        finally:
            self.metrics.model_warmup_latency.observe((time.perf_counter() - start) * 1e6,
                                                      servable.path, status)
        logger.info("Finished reading warmup data for model at %s", path)

    def _replay_file(self, servable: Servable, path: str) -> None:
        iterations = max(1, self.options.num_request_iterations_for_warmup)
        try:
            for count, record in enumerate(tf.data.TFRecordDataset(path), start=1):
                if count > MAX_WARMUP_RECORDS:
                    raise invalid_argument(f"Number of warmup records exceeds the maximum "
                                           f"({MAX_WARMUP_RECORDS}) at {path}")
                log = _parse_warmup_record(record.numpy(), path)
                for _ in range(iterations):
                    self._replay(servable, log)
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None

    def _replay(self, servable: Servable, log: prediction_log_pb2.PredictionLog) -> None:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            self.complete(self._predict_on(servable, log.predict_log.request, batch=False))
        elif kind == "classify_log":
            self.complete(self._classify_on(servable, log.classify_log.request, batch=False))
        elif kind == "regress_log":
            self.complete(self._regress_on(servable, log.regress_log.request, batch=False))
        elif kind == "multi_inference_log":
            self.complete(self._multi_inference_on(servable, log.multi_inference_log.request,
                                                   batch=False))
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported log_type for warmup: {kind}")


def _parse_warmup_record(record: bytes, path: str) -> prediction_log_pb2.PredictionLog:
    try:
        return prediction_log_pb2.PredictionLog.FromString(record)
    except proto_message.DecodeError:
        raise invalid_argument(f"Failed to parse warmup record: {record[:64]!r} from "
                               f"{path}") from None
