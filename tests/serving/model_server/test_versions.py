"""Versions: polling, the availability-preserving swap under load, policies, labels, failed
loads and warmups, and config reloads through ModelService."""

from __future__ import annotations

import os
import shutil
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_log_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from common import signatures
from serving.model_server import ModelServer, ServingError
from tests.serving.conftest import (
    MODEL,
    Stubs,
    copy_version,
    predict_request,
    rpc_error,
    wait_for,
)

AVAILABLE, END = 30, 50
FAST = dict(port=0, rest_api_port=None, file_system_poll_wait_seconds=0.2,
            max_num_load_retries=0)


def _statuses(stubs: Stubs, name: str = MODEL) -> dict[int, tuple[int, int]]:
    """version -> (state, error code)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    response = stubs.model.GetModelStatus(request, timeout=30)
    return {s.version: (s.state, s.status.error_code) for s in response.model_version_status}


def _config(base: str, policy: str = "", labels: dict[str, int] | None = None,
            name: str = MODEL) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base,
                                                model_platform="tensorflow")
    if policy:
        text_format.Parse(policy, model.model_version_policy)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


def _served(stubs: Stubs, examples: list[bytes], **spec) -> tuple[int, np.ndarray]:
    response = stubs.predict.Predict(predict_request(examples, **spec), timeout=30)
    return (response.model_spec.version.value,
            tf.make_ndarray(response.outputs[signatures.USER_REPRESENTATION]))


def _expected(reference, path: str, examples: list[bytes]) -> np.ndarray:
    return reference(path, signatures.USER_REPRESENTATION,
                     examples=examples)[signatures.USER_REPRESENTATION]


@pytest.mark.slow
def test_new_versions_are_polled_and_other_names_ignored(exported, examples, reference,
                                                         tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    with ModelServer(model_name=MODEL, model_base_path=base, **FAST) as server:
        stubs = Stubs(server)
        assert _statuses(stubs) == {1: (AVAILABLE, 0)}
        # not versions: a non-integer directory, a staging directory, a file named like one
        shutil.copytree(exported["b"], os.path.join(base, "candidate"))
        shutil.copytree(exported["b"], os.path.join(base, ".staging-9"))
        open(os.path.join(base, "5"), "w").close()
        server.core.manager.poll()
        assert _statuses(stubs) == {1: (AVAILABLE, 0)}

        copy_version(exported["b"], base, 2)
        wait_for(lambda: _statuses(stubs) == {2: (AVAILABLE, 0), 1: (END, 0)}, what="swap")
        version, served = _served(stubs, examples[:4])
        assert version == 2
        np.testing.assert_allclose(served, _expected(reference, exported["b"], examples[:4]),
                                   rtol=1e-6)
        error = rpc_error(stubs.predict.Predict, predict_request(examples[:1], version=1),
                          timeout=30)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        stubs.close()


@pytest.mark.slow
def test_version_swap_under_load_fails_no_request(exported, examples, reference, tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    expected = {1: _expected(reference, exported["a"], examples[:4]),
                2: _expected(reference, exported["b"], examples[:4])}
    stop = threading.Event()
    failures: list[str] = []
    seen: list[int] = []
    lock = threading.Lock()

    def client(stubs: Stubs) -> None:
        while not stop.is_set():
            try:
                version, served = _served(stubs, examples[:4])
                np.testing.assert_allclose(served, expected[version], rtol=1e-6)
                with lock:
                    seen.append(version)
            except (grpc.RpcError, AssertionError, KeyError) as e:
                with lock:
                    failures.append(repr(e))

    with ModelServer(model_name=MODEL, model_base_path=base, **FAST) as server:
        stubs = Stubs(server)
        threads = [threading.Thread(target=client, args=(stubs,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(seen) > 20, what="requests on version 1")
        copy_version(exported["b"], base, 2)
        wait_for(lambda: _statuses(stubs) == {2: (AVAILABLE, 0), 1: (END, 0)}, what="swap")
        shutil.rmtree(os.path.join(base, "1"))
        count = len(seen)
        wait_for(lambda: len(seen) > count + 20, what="requests after the swap")
        stop.set()
        for thread in threads:
            thread.join()
        stubs.close()
    assert failures == []
    assert seen[0] == 1 and seen[-1] == 2
    assert seen.index(2) > 0 and 1 not in seen[seen.index(2) + 40:]  # no way back to v1


@pytest.mark.slow
def test_policies_all_specific_and_latest(exported, examples, reference, tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    copy_version(exported["b"], base, 2)
    with ModelServer(model_server_config=_config(base, "all {}"), **FAST) as server:
        stubs = Stubs(server)
        assert _statuses(stubs) == {2: (AVAILABLE, 0), 1: (AVAILABLE, 0)}
        assert _served(stubs, examples[:2])[0] == 2  # Latest
        version, served = _served(stubs, examples[:2], version=1)
        assert version == 1
        np.testing.assert_allclose(served, _expected(reference, exported["a"], examples[:2]),
                                   rtol=1e-6)

        def reload(policy: str) -> None:
            request = model_management_pb2.ReloadConfigRequest(config=_config(base, policy))
            stubs.model.HandleReloadConfigRequest(request, timeout=60)

        reload("specific { versions: 1 }")
        assert _statuses(stubs) == {2: (END, 0), 1: (AVAILABLE, 0)}
        assert _served(stubs, examples[:2])[0] == 1
        reload("latest { num_versions: 2 }")
        wait_for(lambda: _statuses(stubs) == {2: (AVAILABLE, 0), 1: (AVAILABLE, 0)},
                 what="latest 2")
        reload("")  # latest, one version
        assert _statuses(stubs) == {2: (AVAILABLE, 0), 1: (END, 0)}
        stubs.close()


@pytest.mark.slow
def test_version_labels(exported, examples, reference, tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    copy_version(exported["b"], base, 2)
    policy = "specific { versions: 1 versions: 2 }"
    labelled = _config(base, policy, {"stable": 1, "canary": 2})
    # As in TF Serving, labels in the first config may only name loaded versions ...
    with pytest.raises(ServingError, match=r"Request to assign label to version \d of model "
                                           "lfm4ads, which is not currently available"):
        ModelServer(model_server_config=labelled, **FAST).start()
    # ... unless --allow_version_labels_for_unavailable_models.
    with ModelServer(model_server_config=_config(base, "specific { versions: 2 }",
                                                 {"canary": 2}),
                     allow_version_labels_for_unavailable_models=True, **FAST) as server:
        stubs = Stubs(server)
        assert _served(stubs, examples[:2], label="canary")[0] == 2
        stubs.close()

    with ModelServer(model_server_config=_config(base, policy), **FAST) as server:
        stubs = Stubs(server)
        error = rpc_error(stubs.predict.Predict, predict_request(examples[:1], label="stable"),
                          timeout=30)
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Unrecognized servable version label: stable")
        reload = model_management_pb2.ReloadConfigRequest(config=labelled)
        response = stubs.model.HandleReloadConfigRequest(reload, timeout=60)
        assert response.status.error_code == 0
        for label, version, export in (("stable", 1, "a"), ("canary", 2, "b")):
            served_version, served = _served(stubs, examples[:3], label=label)
            assert served_version == version
            np.testing.assert_allclose(served,
                                       _expected(reference, exported[export], examples[:3]),
                                       rtol=1e-6)
        reload = model_management_pb2.ReloadConfigRequest(
            config=_config(base, policy, {"stable": 1, "next": 3}))
        error = rpc_error(stubs.model.HandleReloadConfigRequest, reload, timeout=60)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "Request to assign label to version 3 of model lfm4ads, which is not currently "
            "available for inference")
        assert _served(stubs, examples[:1], label="canary")[0] == 2  # old labels kept
        stubs.close()


def _write_warmup(version_dir: str, signature: str) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    request.inputs[signatures.INPUT_KEY].CopyFrom(tf.make_tensor_proto([b""], dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    path = os.path.join(version_dir, "assets.extra", signatures.WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(log.SerializeToString())


def test_failed_loads_and_warmups_keep_the_old_version(exported, examples, tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    with ModelServer(model_name=MODEL, model_base_path=base, **FAST) as server:
        stubs = Stubs(server)
        warmups = server.metrics.model_warmup_latency
        assert warmups.count(os.path.join(base, "1"), "OK") == 1  # replayed before AVAILABLE

        broken = os.path.join(tmp_path, "broken")
        shutil.copytree(exported["b"], broken)
        _write_warmup(broken, "nope")  # a warmup request that fails
        copy_version(broken, base, 2)
        wait_for(lambda: _statuses(stubs).get(2, (0,))[0] == END, what="failed warmup")
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        request.model_spec.version.value = 2
        status = stubs.model.GetModelStatus(request, timeout=30).model_version_status[0].status
        assert status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert 'Serving signature key "nope" not found.' in status.error_message
        assert _statuses(stubs)[1] == (AVAILABLE, 0)

        corrupt = os.path.join(tmp_path, "corrupt")
        shutil.copytree(exported["b"], corrupt)
        with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")
        copy_version(corrupt, base, 3)
        wait_for(lambda: _statuses(stubs).get(3, (0,))[0] == END, what="failed load")
        assert _statuses(stubs)[1] == (AVAILABLE, 0)
        assert _served(stubs, examples[:1])[0] == 1  # still answering from version 1
        stubs.close()


def test_reload_config_replaces_the_model_set(exported, scann_export, examples, tmp_path):
    base = str(tmp_path / MODEL)
    copy_version(exported["a"], base, 1)
    with ModelServer(model_name=MODEL, model_base_path=base, **FAST) as server:
        stubs = Stubs(server)
        reload = model_management_pb2.ReloadConfigRequest(
            config=_config(scann_export[0], name="retrieval"),
            metric_names=["/tensorflow/serving/request_count"])
        _served(stubs, examples[:1])
        response = stubs.model.HandleReloadConfigRequest(reload, timeout=60)
        assert response.status.error_code == 0
        assert [m.name for m in response.metric] == ["/tensorflow/serving/request_count"]
        assert _statuses(stubs) == {1: (END, 0)}
        assert _statuses(stubs, "retrieval") == {1: (AVAILABLE, 0)}
        error = rpc_error(stubs.predict.Predict, predict_request(examples[:1]), timeout=30)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({MODEL})")

        twice = _config(base)
        twice.model_config_list.config.add().CopyFrom(twice.model_config_list.config[0])
        error = rpc_error(stubs.model.HandleReloadConfigRequest,
                          model_management_pb2.ReloadConfigRequest(config=twice), timeout=60)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Illegal to list model {MODEL} multiple times in config list")
        relative = _config("relative/path")
        error = rpc_error(stubs.model.HandleReloadConfigRequest,
                          model_management_pb2.ReloadConfigRequest(config=relative), timeout=60)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "to have an absolute path or URI" in error.details()
        stubs.close()


def test_start_fails_when_the_first_version_cannot_load(exported, tmp_path):
    base = str(tmp_path / MODEL)
    corrupt = copy_version(exported["a"], base, 1)
    with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    with pytest.raises(ServingError, match=r"1 model\(s\) did not become available: "
                                           r"\{\{\{name: lfm4ads version: 1\} due to error: "
                                           r"DATA_LOSS: Can't parse .*saved_model.pb as "
                                           r"binary proto\}, \}"):
        ModelServer(model_name=MODEL, model_base_path=base, **FAST).start()
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(ServingError, match=r"Models \['lfm4ads'\] have no version yet") as info:
        ModelServer(model_name=MODEL, model_base_path=empty, load_timeout_s=0.5, **FAST).start()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
