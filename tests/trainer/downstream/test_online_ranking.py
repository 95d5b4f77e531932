"""The whole online loop of Fig. 4 with a downstream model served (serving.online): a
time-ordered stream through the loop scores every request with the ranker from the store's
representations, and those scores are the ranker's offline predictions on the same rows with
the same point-in-time representations. (Here, not in tests/serving/, for the session's
trained upstream.)"""

import dataclasses
import os

import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.config import model_server_config_pb2

from common import features, signatures
from common.downstream_requests import example_with_representations, with_representations
from serving.client import EmbeddingClient
from serving.model_server import ModelServer
from serving.online import OnlineLoop
from serving.store import open_store
from trainer import data_input
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream import train as downstream_train
from trainer.downstream.export import export_ranker
from trainer.downstream.ranker import FIELDS

SMALL = downstream_config.DownstreamConfig(embedding_dim=4, mlp_hidden=(16,), linear_fusion_units=4,
                           mode=downstream_config.LFM4ADS)


def _parsed(serialized: bytes):
    f = example_pb2.Example.FromString(serialized).features.feature
    return (f[features.USER_ID].bytes_list.value[0], f[features.ITEM_ID].bytes_list.value[0],
            int(f[features.TIMESTAMP].int64_list.value[0]), f[features.DOMAIN].bytes_list.value[0])


def _batches(stream: list[bytes], size: int = 32):
    """Consecutive batches with no user or item twice in one batch: a request's fetch then
    sees exactly the requests before it (those of earlier batches)."""
    batch, users, items = [], set(), set()
    for record in stream:
        user, item, _, _ = _parsed(record)
        if batch and (len(batch) == size or user in users or item in items):
            yield batch
            batch, users, items = [], set(), set()
        batch.append(record)
        users.add(user)
        items.add(item)
    if batch:
        yield batch


@pytest.mark.slow
@pytest.mark.parametrize("mode", [downstream_config.LFM4ADS, downstream_config.DISTILL])
def test_the_loop_scores_requests_as_the_ranker_does_offline(upstream, tmp_path, mode):
    """Also for `distill`, whose requests carry the upstream's prediction on each request: the
    loop's one `representations` call gives it, equal to `serving_default`'s offline."""
    config = dataclasses.replace(SMALL, mode=mode)
    model, _ = downstream_train.train_ranker(
        config,
        downstream_config.DownstreamTrainConfig(epochs=2, batch_size=64),
        upstream.rows["train"],
    )
    served = [f for name in config.representation_features
                for f in (name, signatures.found_feature(name))]
    test = upstream.rows["test"]
    served += list(config.prediction_features)  # distill: the upstream's prediction
    warmup = [example_with_representations({n: test[n][r] for n in FIELDS},
                                           {n: test[n][r] for n in served}) for r in range(4)]
    export_ranker(model, str(tmp_path / "ranker"), warmup, version=1)

    files = data_input.list_files(upstream.data)
    records = [r.numpy() for r in data_input.records_in_window(files)]
    stream = [records[i] for i in np.argsort([_parsed(r)[2] for r in records], kind="stable")]
    start, end = upstream.windows["test"]

    server_config = model_server_config_pb2.ModelServerConfig()
    for name, base in (("lfm4ads", os.path.dirname(upstream.export)),
                       ("ranker", str(tmp_path / "ranker"))):
        server_config.model_config_list.config.add(name=name, base_path=base,
                                                   model_platform="tensorflow")
    online = {}  # (user, item, timestamp) of a test-window ad request -> scores
    with ModelServer(model_server_config=server_config, port=0, rest_api_port=None,
                     load_timeout_s=120) as server:
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}", half_life_seconds=3600.0)
        with EmbeddingClient(server.grpc_target, "lfm4ads", timeout=30) as client, \
                EmbeddingClient(server.grpc_target, "ranker", timeout=30) as ranker:
            loop = OnlineLoop(client, store, ranker=ranker)
            for batch in _batches(stream):
                out = loop.process(batch)
                assert out.scores.shape == (len(batch),) and out.ranker_version == 1
                assert set(out.seconds) == {"store_read", "downstream_predict",
                                            "upstream_infer", "store_write"}
                assert min(out.seconds.values()) > 0
                for record, score in zip(batch, out.scores, strict=True):
                    user, item, t, domain = _parsed(record)
                    if start <= t < end and domain == features.DOMAIN_AD:
                        online.setdefault((user, item, t), []).append(float(score))
        store.close()

    # Offline: the ranker on the same rows, with the upstream replayed point in time (strictly
    # before each row). A request with an earlier request of its user or item in the same
    # second sees it online (an earlier batch) and not offline: those are left out.
    seen_at: dict = {}
    same_second = set()
    for record in stream:
        user, item, t, _ = _parsed(record)
        for key in (("u", user), ("i", item)):
            if seen_at.get(key) == t:
                same_second.add((user, item, t))
            seen_at[key] = t
    offline = downstream_train.predict(model, test)
    compared = 0
    for r in range(ranker_data.size(test)):
        key = (test[features.USER_ID][r], test[features.ITEM_ID][r],
               int(test[features.TIMESTAMP][r]))
        if key in same_second:
            continue
        assert len(online[key]) == 1
        np.testing.assert_allclose(online[key][0], offline[r], rtol=1e-4, atol=1e-5)
        compared += 1
    assert compared > 0.9 * ranker_data.size(test) and compared > 100


def test_requests_carry_the_representations_or_a_cold_start():
    raw = example_with_representations({features.USER_ID: b"u1", features.ITEM_TAGS: [b"a", b"b"]},
                                       {})
    vectors, found = np.array([[1.0, 2.0], [np.nan, np.nan]], np.float32), np.array([True, False])
    got = with_representations([raw, raw], {signatures.UR_FEATURE: (vectors, found)})
    first, second = (example_pb2.Example.FromString(g).features.feature for g in got)
    assert list(first[signatures.UR_FEATURE].float_list.value) == [1.0, 2.0]
    assert first[signatures.found_feature(signatures.UR_FEATURE)].int64_list.value == [1]
    assert signatures.UR_FEATURE not in second  # not found: no vector, found 0 (a cold start)
    assert second[signatures.found_feature(signatures.UR_FEATURE)].int64_list.value == [0]
    assert list(second[features.ITEM_TAGS].bytes_list.value) == [b"a", b"b"]  # raw features kept


def test_a_loop_without_ranker_refuses_to_rank():
    loop = OnlineLoop(client=None, store=None)
    with pytest.raises(ValueError, match="no ranker"):
        loop.rank([b""], None)
