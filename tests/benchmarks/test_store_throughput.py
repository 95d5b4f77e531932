"""`benchmarks.store_throughput`: the update benchmark writes every event, on sqlite and redis."""

from benchmarks.store_throughput import measure_update_throughput
from serving.store import CR_USER, open_store
from tests.serving.store.helpers import HALF_LIFE


def test_throughput_measure_writes_every_event(store_url):
    rate = measure_update_throughput(store_url, events=600, batch_size=64, dim=8, num_keys=50)
    assert rate > 0
    with open_store(store_url, half_life_seconds=HALF_LIFE) as s:
        assert 0 < s.count(CR_USER) <= 50 and s.dims() == {CR_USER: 8, "cross_item": 8}
