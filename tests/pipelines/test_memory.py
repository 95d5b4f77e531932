"""pipelines.memory: freed arrays go back to the operating system in a long process."""

import subprocess
import sys
import textwrap

import pytest

from pipelines import memory

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, psutil
    if sys.argv[1] == "on":
        from pipelines import memory
        assert memory.return_freed_memory(interval_seconds=0.05)
    rss = lambda: psutil.Process().memory_info().rss
    big = np.ones(8 << 20, np.uint8); del big  # glibc then keeps arrays below 8 MB in the heap
    base = rss()
    arrays = [np.ones(512 << 10, np.uint8) for _ in range(800)]  # 400 MB of 512 KiB arrays
    keep = arrays[-1]
    del arrays
    import time; time.sleep(0.5)
    print((rss() - base) / 1e6)
""")


def _held_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_freed_arrays_are_returned_only_with_return_freed_memory():
    if memory._glibc() is None:
        pytest.skip("not glibc")
    assert _held_mb("off") > 300  # glibc's default keeps them
    assert _held_mb("on") < 50


def test_it_starts_once_and_checks_its_interval():
    with pytest.raises(ValueError, match="interval_seconds"):
        memory.return_freed_memory(0)
    if memory._glibc() is None:
        assert memory.return_freed_memory() is False
        return
    assert memory.return_freed_memory() and memory.return_freed_memory()
    import threading
    assert sum(t.name == "malloc_trim" for t in threading.enumerate()) == 1
