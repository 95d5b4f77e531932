"""The Light-weight Embedding Evaluator: what the guard's statistics cannot see.

One upstream trained on the first five days of a six-day synthetic world (more ads and clicks
than the defaults, so that a day's AUC means something: 3,000 ad rows and ~230 clicks a day)
gives the candidate tables; the proxy trains on days 3-5 and is tested on day 6. A candidate
whose user keys are shuffled has exactly the statistics of the good one, so the guard passes
it; the evaluator holds it and the live tables stay. A properly trained model's tables replace
those of an upstream that saw only the first two days.

At this size the shuffled user keys cost the proxy about 0.006 AUC (twice the delta's
bootstrap standard error; the proxy leans on IR more than on UR), so these two tests judge
with `tolerance=0`: "not worse than the live tables". The pipeline's default tolerance is for
its own data (docs/BENCHMARKS.md).
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from components.lee import component as L
from components.lee.evaluator import LeeConfig, TooFewRows, evaluate, served_features
from components.representation_guard.component import live_version, publish
from pipelines.sources import synthetic
from serving.store import open_store
from trainer import features as F
from trainer import input as data_input
from trainer import signatures as S
from trainer.config import ModelConfig, TrainConfig
from trainer.downstream import data as D
from trainer.downstream import point_in_time as P
from trainer.downstream import replay as R
from trainer.export import export_saved_model
from trainer.representations import tables as T
from trainer.representations.statistics import table_statistics
from trainer.train import fit_and_evaluate

DAY = 86_400
WORLD = synthetic.SimConfig(ad_share=0.3, ad_rate=0.08)
STRICT = LeeConfig(tolerance=0.0)


@dataclasses.dataclass
class World:
    data: str
    train: dict  # proxy training rows: the ad rows of days 2-4
    test: dict  # the ad rows of day 5
    good: P.HistorySource  # the upstream trained on days 1-5, one state per key
    weak: P.HistorySource  # an upstream trained on days 1-2 only, one epoch


def _tables(data: str, files, model_config, train_config, out: str, version: int):
    model, _, warmup = fit_and_evaluate(data, model_config, train_config, verbose=0)
    export = export_saved_model(model, out, warmup, version=version)
    history = R.histories(R.run_upstream(R.saved_model_fn(export),
                                         data_input.records_in_window(files)), float(DAY))
    return P.HistorySource({t: history.histories[t].last() for t in T.TABLES})


def write_tables(source: P.HistorySource, root: str, version: int) -> dict[str, str]:
    """The source's tables as part files under `root/<table>/`; returns `{table: dir}`."""
    import tensorflow as tf

    dirs = {}
    for table in T.TABLES:
        h = source.histories[table]
        dirs[table] = os.path.join(root, table)
        os.makedirs(dirs[table], exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(dirs[table], "part-00000-of-00001"
                                               + T.FILE_SUFFIX), "GZIP") as writer:
            for key, t, vector in zip(h.keys, h.updated_at, h.vectors, strict=True):
                writer.write(T.encode_row(key, np.asarray(vector), int(t), version))
    return dirs


def statistics_of(source: P.HistorySource) -> dict:
    return {t: table_statistics(h.vectors) for t, h in source.histories.items()}


def shuffle_user_keys(source: P.HistorySource, seed: int = 1) -> P.HistorySource:
    """The same vectors under permuted user keys (UR and CR(u)): every statistic unchanged."""
    out = {}
    for table, h in source.histories.items():
        keys = h.keys
        if table in (T.USER_TABLE, T.CROSS_USER_TABLE):
            keys = keys[np.random.default_rng(seed).permutation(keys.shape[0])]
        out[table] = P.RepresentationHistory(keys, h.updated_at, h.vectors)
    return P.HistorySource(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("lee")
    data = str(root / "data")
    synthetic.generate(data, examples=60_000, seed=3, days=6, config=WORLD, progress=False)
    files = data_input.list_files(data)
    lo, hi = data_input.time_range(files)
    test_start = hi + 1 - DAY
    good = _tables(data, files, ModelConfig(), TrainConfig(epochs=2), str(root / "good"), 2)
    weak = _tables(data, files, ModelConfig(), TrainConfig(epochs=1, skip_last_days=3),
                   str(root / "weak"), 1)
    train = D.read_rows(files, test_start - 3 * DAY, test_start)
    test = D.read_rows(files, test_start, hi + 1)
    return World(data, train, test, good, weak)


def test_served_features_are_the_stored_rows_whatever_their_time(world):
    rows = D.select(world.test, np.arange(50))
    out = served_features(rows, world.good)
    ur = world.good.histories[T.USER_TABLE]
    for r in range(50):
        j = np.searchsorted(ur.keys.astype(bytes), rows[F.USER_ID][r])
        if j < len(ur) and ur.keys[j] == rows[F.USER_ID][r]:
            np.testing.assert_allclose(out[S.UR_FEATURE][r], ur.vectors[j])
            assert out[S.found_feature(S.UR_FEATURE)][r] == 1.0
    unknown = dict(rows, **{F.ITEM_ID: np.full(50, b"no-such-item", dtype=object)})
    cold = served_features(unknown, world.good)
    assert not cold[S.found_feature(S.IR_FEATURE)].any()
    assert not cold[S.IR_FEATURE].any()


def test_identical_tables_give_a_zero_delta(world):
    """Paired: same seed, same rows, same features -> the same proxy, delta exactly 0."""
    r = evaluate(world.train, world.test, world.good, world.good, LeeConfig(epochs=1))
    assert r["delta"] == 0.0 and r["blessed"] and r["reference"] == "live"
    assert r["test_rows"] == D.size(world.test) and r["train_rows"] == D.size(world.train)
    assert r["test_clicks"] == int(world.test[F.LABEL].sum()) >= 20


def test_shuffled_user_keys_pass_the_guard_but_not_the_evaluator(world, tmp_path):
    from trainer.representations.statistics import GuardThresholds, judge

    shuffled = shuffle_user_keys(world.good)
    for table in T.TABLES:  # the guard sees nothing: the same vectors, the same statistics
        new = table_statistics(shuffled.histories[table].vectors)
        assert judge(new, table_statistics(world.good.histories[table].vectors),
                     GuardThresholds()).publish
    publish_root = str(tmp_path / "published")
    publish(publish_root, 2, write_tables(world.good, str(tmp_path / "live"), 2),
            statistics_of(world.good))
    store_url = "sqlite:///" + str(tmp_path / "store.db")
    before = sorted(os.listdir(publish_root))
    result = L.evaluate_and_publish(
        world.train, world.test, write_tables(shuffled, str(tmp_path / "candidate"), 3), 3,
        statistics_of(shuffled), publish_root, STRICT, store_url)
    assert not result["blessed"] and result["verdict"] == "held", result
    assert result["delta"] < 0
    assert "below the live reference" in result["reasons"][0]
    assert live_version(publish_root) == 2 and sorted(os.listdir(publish_root)) == before
    assert not os.path.exists(str(tmp_path / "store.db"))  # nothing loaded


def test_a_properly_trained_newer_model_is_published(world, tmp_path):
    publish_root = str(tmp_path / "published")
    publish(publish_root, 1, write_tables(world.weak, str(tmp_path / "live"), 1),
            statistics_of(world.weak))
    store_url = "sqlite:///" + str(tmp_path / "store.db")
    result = L.evaluate_and_publish(
        world.train, world.test, write_tables(world.good, str(tmp_path / "candidate"), 2), 2,
        statistics_of(world.good), publish_root, STRICT, store_url)
    assert result["blessed"] and result["verdict"] == "published", result
    assert live_version(publish_root) == 2
    assert result["published_path"] == os.path.join(publish_root, "2")
    with open(os.path.join(publish_root, "2", "statistics.json")) as f:
        assert set(json.load(f)) == set(T.TABLES)
    store = open_store(store_url)
    try:
        assert store.count(T.USER_TABLE) == len(world.good.histories[T.USER_TABLE])
    finally:
        store.close()


def test_first_publication_compares_with_no_representations(world, tmp_path):
    publish_root = str(tmp_path / "published")
    result = L.evaluate_and_publish(
        world.train, world.test, write_tables(world.good, str(tmp_path / "candidate"), 2), 2,
        statistics_of(world.good), publish_root, LeeConfig())
    # Nothing live to protect: published whatever the delta against no representations.
    assert result["reference"] == "none" and result["blessed"] and result["live_version"] == 2
    assert result["delta_stderr"] > 0 and "recorded, not judged" in result["reasons"][0]


def test_too_few_clicks_keep_the_live_version(world, tmp_path):
    few = D.select(world.test, np.arange(100))
    with pytest.raises(TooFewRows, match="100 rows"):
        evaluate(world.train, few, world.good, None)
    publish_root = str(tmp_path / "published")
    candidate = write_tables(world.good, str(tmp_path / "candidate"), 2)
    first = L.evaluate_and_publish(world.train, few, candidate, 2, statistics_of(world.good),
                                   publish_root, LeeConfig())
    assert first["verdict"] == "published" and "not evaluated" in first["reasons"][0]
    second = L.evaluate_and_publish(world.train, few, write_tables(
        world.good, str(tmp_path / "candidate3"), 3), 3, statistics_of(world.good),
        publish_root, LeeConfig())
    assert second["verdict"] == "held" and live_version(publish_root) == 2
