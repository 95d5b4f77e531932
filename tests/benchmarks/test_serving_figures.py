"""`benchmarks.serving`'s figures: the interval of the batching speedup."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.serving import ratio_interval


def test_ratio_interval_brackets_the_geometric_mean_and_narrows_with_agreement():
    spread = ratio_interval([2.0, 2.5, 3.0])
    assert spread[0] < float(np.exp(np.mean(np.log([2.0, 2.5, 3.0])))) < spread[1]
    assert spread[0] < 2.0 and spread[1] > 3.0  # 3 runs: t(2) = 4.3 widens it past the range
    close = ratio_interval([2.5, 2.51, 2.49])
    assert close[1] - close[0] < spread[1] - spread[0]
    assert ratio_interval([2.0, 2.0]) == pytest.approx([2.0, 2.0])


def test_cpu_and_context_switch_counters_of_a_process_grow_with_its_work():
    import os
    import threading

    from benchmarks.serving_cpu import context_switches, cpu_seconds

    pid = os.getpid()
    cpu, switches = cpu_seconds(pid), context_switches(pid)
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of CPU
        pass
    for _ in range(20):  # each start and join switches at least once
        thread = threading.Thread(target=time.sleep, args=(0.001,))
        thread.start()
        thread.join()
    assert cpu_seconds(pid) - cpu >= 0.25
    assert context_switches(pid) - switches >= 20
    with pytest.raises(FileNotFoundError):
        cpu_seconds(2**22 + 1)  # beyond pid_max: no such process
