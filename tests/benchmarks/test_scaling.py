"""`benchmarks.scaling`: the memory sampling and its attribution to components, the tables."""

from __future__ import annotations

import sys

import pytest

from benchmarks import scaling

ALLOCATE = ("import time; block = bytearray({size}); block[::4096] = b'x' * len(block[::4096]); "
            "time.sleep(1.5); print('{{\"done\": 1}}')")


def test_a_child_is_measured_with_its_peak_memory():
    small = scaling.measured([sys.executable, "-c", ALLOCATE.format(size=10**6)], interval=0.1)
    big = scaling.measured([sys.executable, "-c", ALLOCATE.format(size=400 * 10**6)],
                           interval=0.1)
    assert small["returncode"] == big["returncode"] == 0
    assert scaling._json_line(big["output"]) == {"done": 1}
    assert big["peak_bytes"] - small["peak_bytes"] > 350 * 10**6  # the 400 MB it touched
    assert big["seconds"] >= 1.5 and len(big["samples"]) >= 10


def test_a_failing_child_is_reported_with_its_output():
    run = scaling.measured([sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"])
    with pytest.raises(RuntimeError, match=r"the step failed \(exit 3\):\nbad input"):
        scaling._checked(run, "the step")


def test_samples_are_attributed_to_the_component_running_then():
    samples = [(0.0, 100), (1.0, 150), (2.0, 400), (3.0, 380), (4.0, 390), (5.0, 900),
               (6.0, 500)]
    windows = {"A": (0.5, 3.5), "B": (3.6, 4.5), "C": (4.8, 6.2), "D": (9.0, 10.0)}
    got = scaling.attribute([(t, b * 10**7) for t, b in samples], windows)
    assert got["A"] == {"seconds": 3.0, "peak_gb": 4.0, "rise_gb": 3.0}  # over the 1.0 before
    assert got["B"] == {"seconds": 0.9, "peak_gb": 3.9, "rise_gb": 0.1}
    assert got["C"] == {"seconds": 1.4, "peak_gb": 9.0, "rise_gb": 5.1}
    assert got["D"]["rise_gb"] == 0  # no sample inside: the last one before, no rise


def test_tables_list_every_component_and_ratio():
    pipeline = [{"examples": n, "generate_seconds": 1.0, "generate_peak_gb": 0.5,
                 "pipeline_seconds": 10.0 * n, "pipeline_peak_gb": 2.0,
                 "components": {"Trainer": {"seconds": 5.0, "peak_gb": 1.5, "rise_gb": 0.5},
                                "Transform": {"seconds": 2.0 * n, "peak_gb": 2.0,
                                              "rise_gb": 1.0}}} for n in (1, 5)]
    text = scaling.format_pipeline(pipeline)
    assert text.index("Transform") < text.index("Trainer")  # slowest first
    assert "10.0 /  2.00 /  1.00" in text
    training = {"results": [{"kind": "default", "workers": 1, "examples_per_second": 1000.0,
                             "seconds": 2.0, "first_epoch_seconds": 9.0, "peak_gb": 1.0}],
                "parameter_server_2_vs_1": 1.4, "multi_worker_2_vs_default": 0.8,
                "parameter_server_1_vs_default": 0.5}
    assert "2 workers / 1: 1.4x" in scaling.format_training(training)
    stages = [{"stage": "DownstreamExamples", "seconds": 149.0, "peak_gb": 1.39,
               "after_gb": 1.2, "after_trim_gb": 0.9}]
    assert "DownstreamExamples" in scaling.format_stages(stages)
    assert "149.0     1.39      1.20       0.90" in scaling.format_stages(stages)
