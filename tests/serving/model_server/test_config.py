"""TF Serving's text config files: BatchingParameters, MonitoringConfig, ModelServerConfig."""

from __future__ import annotations

import os

import grpc
import pytest

from serving.model_server import BatchingParameters, MonitoringConfig, ServingError
from serving.model_server.config import parse_model_server_config, validate_model_config_list


def test_batching_parameters_text():
    params = BatchingParameters.from_text("""
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 2
        allowed_batch_sizes: 8
        pad_variable_length_inputs: true""")
    assert params == BatchingParameters(max_batch_size=8, batch_timeout_micros=2000,
                                        max_enqueued_batches=3, num_batch_threads=2,
                                        allowed_batch_sizes=(2, 8),
                                        pad_variable_length_inputs=True)
    defaults = BatchingParameters.from_text("")  # TF Serving's scheduler defaults
    assert (defaults.max_batch_size, defaults.batch_timeout_micros,
            defaults.max_enqueued_batches, defaults.num_batch_threads) == (
        1000, 0, 10, os.cpu_count())


@pytest.mark.parametrize("text, message", [
    ("max_batch_sise { value: 8 }", "has no field named \"max_batch_sise\""),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 8"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 "
     "allowed_batch_sizes: 8", "allowed_batch_sizes entries must be monotonically increasing"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1, got 0"),
])
def test_batching_parameters_errors(text, message):
    with pytest.raises(ServingError, match=message) as info:
        BatchingParameters.from_text(text)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_monitoring_and_model_configs():
    assert MonitoringConfig.from_text("prometheus_config { enable: true }") == MonitoringConfig(
        True, "/monitoring/prometheus/metrics")
    assert MonitoringConfig.from_text(
        'prometheus_config { enable: true path: "/m" }').prometheus_path == "/m"
    config = parse_model_server_config("""model_config_list {
        config { name: "a" base_path: "/models/a" model_version_policy { all {} } }
        config { name: "a" base_path: "/models/b" } }""")
    with pytest.raises(ServingError, match="Illegal to list model a multiple times"):
        validate_model_config_list(config.model_config_list)
    with pytest.raises(ServingError, match="Could not parse ModelServerConfig"):
        parse_model_server_config("model_config_list { config { nmae: 'a' } }")
