"""The online loop (Fig. 4): replaying a time-ordered stream through server + store gives the
tables of the offline RepresentationExtractor + CrossRepresentationAggregator on that stream."""

import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline

from common import features
from common.representations import cr_folding
from components.cr_aggregation.beam_transforms import AggregateCrossRepresentations
from components.representation_extractor.beam_transforms import ExtractRepresentations
from serving.client import EmbeddingClient
from serving.model_server import ModelServer
from serving.online import OnlineLoop
from serving.store import CR_ITEM, CR_USER, IR, UR, open_store
from tests.serving.conftest import MODEL, synthetic_records

HALF_LIFE = 3600.0


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> list[bytes]:
    """A time-ordered stream with repeat users/items and timestamp ties."""
    records = synthetic_records(tmp_path_factory.mktemp("online_data"), 500, 21, 1)
    ts = [tf.train.Example.FromString(r).features.feature["timestamp"].int64_list.value[0]
          for r in records]
    order = np.argsort(np.asarray(ts), kind="stable")
    return [records[i] for i in order]


def _offline(model_dir: str, stream: list[bytes], tmp_path, cr_domains: str) -> dict:
    out_dir = str(tmp_path)
    with TestPipeline() as p:
        reps = p | beam.Create(stream) | ExtractRepresentations(model_dir, 8, 64)
        crs = reps["cross_events"] | AggregateCrossRepresentations(
            HALF_LIFE, num_buckets=4, cr_domains=cr_domains)
        for name, pcoll in (("ur", reps["user"]), ("ir", reps["item"]),
                            ("cru", crs["user"]), ("cri", crs["item"])):
            _ = (pcoll | f"Np[{name}]" >> beam.Map(
                lambda r: (r[0], np.asarray(r[1], np.float32).tolist(), int(r[2])))
                | f"Collect[{name}]" >> beam.combiners.ToList()
                | f"Save[{name}]" >> beam.Map(
                    lambda rows, n=name: np.save(os.path.join(out_dir, f"{n}.npy"),
                                                 np.array(rows, dtype=object),
                                                 allow_pickle=True)))
    return {name: {k: (np.asarray(v, np.float32), t) for k, v, t in
                   np.load(os.path.join(out_dir, f"{name}.npy"), allow_pickle=True)}
            for name in ("ur", "ir", "cru", "cri")}


def _domain(example: bytes) -> bytes:
    return (
        tf.train.Example.FromString(example).features.feature[features.DOMAIN].bytes_list.value[0]
    )


@pytest.mark.parametrize(
    ("backend", "cr_domains"),
    [("sqlite", cr_folding.AD), ("sqlite", cr_folding.ALL), ("redis", cr_folding.AD)],
)
@pytest.mark.slow
def test_replay_equals_the_offline_pipeline(
    exported, stream, tmp_path, backend, cr_domains, request
):
    """Row for row, under either `cr_domains`: the store after the loop holds the offline
    extractor + aggregator's tables (under "ad", CR(u), CR(i) only for keys met by an ad)."""
    url = (f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite"
           else request.getfixturevalue("redis_url"))
    offline = _offline(exported["a"], stream, tmp_path, cr_domains)
    ads = sum(_domain(r) == features.DOMAIN_AD for r in stream)
    assert 0 < ads < len(stream)
    base = os.path.dirname(exported["a"])
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None) as srv:
        store = open_store(url, half_life_seconds=HALF_LIFE)
        for table in (UR, IR, CR_USER, CR_ITEM):
            store.clear(table)
        with EmbeddingClient(srv.grpc_target, MODEL, timeout=30) as client:
            loop = OnlineLoop(client, store, cr_domains=cr_domains)
            first = loop.process(stream[:1])
            assert not first.fetched.user.found.any()  # nothing stored before the first request
            totals = loop.replay(stream[1:], batch_size=37)
        assert totals["requests"] == len(stream) - 1
        assert first.cr_folded + totals["cr_folded"] == (ads if cr_domains == cr_folding.AD
                                                         else len(stream))
        if cr_domains == cr_folding.AD:
            assert len(offline["cru"]) < len(offline["ur"])  # some users met no ad
        assert totals["late_user"] == totals["late_item"] == 0
        for table, name in ((UR, "ur"), (IR, "ir"), (CR_USER, "cru"), (CR_ITEM, "cri")):
            expected = offline[name]
            assert store.count(table) == len(expected), table
            keys = sorted(expected)
            rows = store.get(table, keys)
            assert rows.found.all()
            np.testing.assert_allclose(rows.representations,
                                       np.stack([expected[k][0] for k in keys]),
                                       rtol=2e-5, atol=2e-6, err_msg=table)
            assert rows.updated_at.tolist() == [expected[k][1] for k in keys], table
            assert set(rows.model_version.tolist()) == {1}
        # The downstream model sees the state before its own request.
        fetched = loop.fetch([b"unknown-user"], [b"unknown-item"])
        assert not fetched.user.found[0] and not fetched.cross_item.found[0]
        store.close()


def _as(example: bytes, domain: bytes, timestamp: int) -> bytes:
    out = tf.train.Example.FromString(example)
    out.features.feature[features.DOMAIN].bytes_list.value[:] = [domain]
    out.features.feature[features.TIMESTAMP].int64_list.value[:] = [timestamp]
    return out.SerializeToString()


def _pair(example: bytes) -> tuple[list[bytes], list[bytes]]:
    feature = tf.train.Example.FromString(example).features.feature
    return [feature[features.USER_ID].bytes_list.value[0]], [
        feature[features.ITEM_ID].bytes_list.value[0]
    ]


@pytest.mark.parametrize("cr_domains", cr_folding.CHOICES)
def test_a_content_request_folds_only_under_all(exported, stream, tmp_path, cr_domains):
    """An ad request, then a content request of the same user and item a minute later: UR and
    IR move to the content request either way; CR(u), CR(i) move only under "all"."""
    base = os.path.dirname(exported["a"])
    t0 = 2_000_000_000
    ad, content = _as(stream[0], features.DOMAIN_AD, t0), _as(stream[0], features.DOMAIN_CONTENT,
                                                              t0 + 60)
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None) as srv:
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}", half_life_seconds=HALF_LIFE)
        with EmbeddingClient(srv.grpc_target, MODEL, timeout=30) as client:
            loop = OnlineLoop(client, store, cr_domains=cr_domains)
            assert loop.process([ad]).cr_folded == 1
            fetched = loop.fetch(*_pair(ad))
            before = {t: getattr(fetched, t) for t in ("cross_user", "cross_item")}
            out = loop.process([content])
            after = loop.fetch(*_pair(ad))
        assert after.user.updated_at[0] == after.item.updated_at[0] == t0 + 60
        for side in ("cross_user", "cross_item"):
            old, new = before[side], getattr(after, side)
            assert old.found[0] and old.updated_at[0] == t0
            if cr_domains == cr_folding.AD:
                assert out.cr_folded == 0
                assert new.updated_at[0] == t0
                np.testing.assert_array_equal(new.representations, old.representations)
            else:
                assert out.cr_folded == 1 and new.updated_at[0] == t0 + 60
        store.close()


def test_ad_only_needs_each_requests_domain(exported, stream, tmp_path):
    base = os.path.dirname(exported["a"])
    bad = tf.train.Example.FromString(stream[0])
    del bad.features.feature[features.DOMAIN]
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None) as srv:
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}", half_life_seconds=HALF_LIFE)
        with EmbeddingClient(srv.grpc_target, MODEL, timeout=30) as client:
            with pytest.raises(ValueError, match="'domain'"):
                OnlineLoop(client, store).process([stream[1], bad.SerializeToString()])
            assert all(store.count(t) == 0 for t in (UR, IR, CR_USER, CR_ITEM))
            with pytest.raises(ValueError, match="cr_domains must be one of"):
                OnlineLoop(client, store, cr_domains="content")
        store.close()


def test_bad_examples_are_refused_before_anything_is_written(exported, stream, tmp_path):
    base = os.path.dirname(exported["a"])
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None) as srv:
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}", half_life_seconds=HALF_LIFE)
        with EmbeddingClient(srv.grpc_target, MODEL, timeout=30) as client:
            loop = OnlineLoop(client, store)
            bad = tf.train.Example.FromString(stream[0])
            del bad.features.feature["timestamp"]
            with pytest.raises(ValueError, match="timestamp"):
                loop.process([stream[1], bad.SerializeToString()])
        assert all(store.count(t) == 0 for t in (UR, IR, CR_USER, CR_ITEM))
        store.close()


@pytest.mark.slow  # a model server and 400 requests through it
def test_one_call_and_three_calls_leave_the_same_tables(exported, stream, tmp_path):
    """The loop's one `representations` call per batch and its three single calls (an upstream
    exported before that signature) write the same four tables, value for value."""
    base = os.path.dirname(exported["a"])
    pairs = [_pair(r) for r in stream[:200]]
    users, items = sorted({u[0] for u, _ in pairs}), sorted({i[0] for _, i in pairs})
    keys = {UR: users, CR_USER: users, IR: items, CR_ITEM: items}
    tables = {}
    with ModelServer(model_name=MODEL, model_base_path=base, port=0, rest_api_port=None) as srv:
        with EmbeddingClient(srv.grpc_target, MODEL, timeout=30) as client:
            for one_call in (True, False):
                store = open_store(f"sqlite:///{tmp_path / f'{one_call}.db'}",
                                   half_life_seconds=HALF_LIFE)
                loop = OnlineLoop(client, store, one_call=one_call)
                loop.replay(stream[:200], batch_size=37)
                assert loop.one_call is one_call
                tables[one_call] = {table: store.get(table, k) for table, k in keys.items()}
                store.close()
    for table, rows in tables[True].items():
        other = tables[False][table]
        assert rows.found.any() and rows.found.tolist() == other.found.tolist(), table
        np.testing.assert_array_equal(rows.representations, other.representations, err_msg=table)
        assert rows.updated_at.tolist() == other.updated_at.tolist(), table


class _OldUpstream:
    """A client of an upstream exported before the `representations` signature: that call
    fails as TF Serving fails it; the single signatures answer."""

    last_model_version = 3

    def __init__(self):
        self.calls = []

    def representations(self, examples):
        import grpc

        from serving.client import ServingClientError

        self.calls.append("representations")
        raise ServingClientError(grpc.StatusCode.FAILED_PRECONDITION,
                                 'Serving signature key "representations" not found.',
                                 "representations")

    def _vectors(self, name, examples):
        self.calls.append(name)
        return np.full((len(examples), 2), len(self.calls), np.float32)

    def user_representations(self, examples):
        return self._vectors("user", examples)

    def item_representations(self, examples):
        return self._vectors("item", examples)

    def cross_representations(self, examples):
        return self._vectors("cross", examples)


def test_an_upstream_without_the_signature_is_asked_with_single_calls(stream):
    """FAILED_PRECONDITION naming `representations`: the loop asks the single signatures, and
    from then on asks them directly (one failed call, not one per batch)."""
    client = _OldUpstream()
    loop = OnlineLoop(client, store=None)
    first = loop.infer(stream[:3])
    assert client.calls == ["representations", "user", "item", "cross"]
    assert first["user_representation"].shape == (3, 2) and not loop.one_call
    assert "ad_prediction" not in first  # only the one-call signature returns it
    loop.infer(stream[:3])
    assert client.calls[4:] == ["user", "item", "cross"]
