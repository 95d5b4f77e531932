"""The Light-weight Embedding Evaluator: what the guard's statistics cannot see, and its
policy per verdict of the paired comparison.

One upstream trained on the first five days of a six-day synthetic world (more ads and clicks
than the defaults, so that a day's AUC means something: 3,000 ad rows and ~230 clicks a day)
gives the candidate tables; the proxy trains on days 3-5 and is tested on day 6. A candidate
whose user keys are shuffled has exactly the statistics of the good one, so the guard passes
it; the evaluator does not find it better, and the live tables stay. A properly trained
model's tables are better than live tables that carry nothing, and replace them; against an
upstream that saw only the first two days its gain is too small for one test day to resolve.

At this size the shuffled user keys cost the proxy about 0.006 AUC (the proxy leans on IR more
than on UR), below what one day of test clicks resolves: these tests judge with
`tolerance=0`.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from common import features, signatures
from common.representations import tables
from common.representations.statistics import table_statistics
from components.lee import component as lee_component
from components.lee.evaluator import (
    LeeConfig,
    TooFewRows,
    evaluate,
    publishes,
    served_features,
)
from components.publishing import LIVE_FILE, live_version, publish
from pipelines.sources import synthetic
from serving.store import open_store
from trainer import data_input, paired_comparison
from trainer.config import ModelConfig, TrainConfig
from trainer.downstream import data as ranker_data
from trainer.downstream import point_in_time, replay
from trainer.export import export_saved_model
from trainer.train import fit_and_evaluate

DAY = 86_400
WORLD = synthetic.SimConfig(ad_share=0.3, ad_rate=0.08)
STRICT = LeeConfig(tolerance=0.0)


@dataclasses.dataclass
class World:
    data: str
    train: dict  # proxy training rows: the ad rows of days 2-4
    test: dict  # the ad rows of day 5
    good: point_in_time.HistorySource  # the upstream trained on days 1-5, one state per key
    weak: point_in_time.HistorySource  # an upstream trained on days 1-2 only, one epoch


def _tables(data: str, files, model_config, train_config, out: str, version: int):
    model, _, warmup = fit_and_evaluate(data, model_config, train_config, verbose=0)
    export = export_saved_model(model, out, warmup, version=version)
    history = replay.histories(replay.run_upstream(replay.saved_model_fn(export),
                                         data_input.records_in_window(files)), float(DAY))
    return point_in_time.HistorySource({t: history.histories[t].last() for t in tables.TABLES})


def write_tables(source: point_in_time.HistorySource, root: str, version: int) -> dict[str, str]:
    """The source's tables as part files under `root/<table>/`; returns `{table: dir}`."""
    import tensorflow as tf

    dirs = {}
    for table in tables.TABLES:
        h = source.histories[table]
        dirs[table] = os.path.join(root, table)
        os.makedirs(dirs[table], exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(dirs[table], "part-00000-of-00001"
                                               + tables.FILE_SUFFIX), "GZIP") as writer:
            for key, t, vector in zip(h.keys, h.updated_at, h.vectors, strict=True):
                writer.write(tables.encode_row(key, np.asarray(vector), int(t), version))
    return dirs


def statistics_of(source: point_in_time.HistorySource) -> dict:
    return {t: table_statistics(h.vectors) for t, h in source.histories.items()}


def shuffle_user_keys(source: point_in_time.HistorySource,
                      seed: int = 1) -> point_in_time.HistorySource:
    """The same vectors under permuted user keys (UR and CR(u)): every statistic unchanged."""
    out = {}
    for table, h in source.histories.items():
        keys = h.keys
        if table in (tables.USER_TABLE, tables.CROSS_USER_TABLE):
            keys = keys[np.random.default_rng(seed).permutation(keys.shape[0])]
        out[table] = point_in_time.RepresentationHistory(keys, h.updated_at, h.vectors)
    return point_in_time.HistorySource(out)


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
    train = ranker_data.read_rows(files, test_start - 3 * DAY, test_start)
    test = ranker_data.read_rows(files, test_start, hi + 1)
    return World(data, train, test, good, weak)


@pytest.mark.slow
def test_served_features_are_the_stored_rows_whatever_their_time(world):
    rows = ranker_data.select(world.test, np.arange(50))
    out = served_features(rows, world.good)
    ur = world.good.histories[tables.USER_TABLE]
    for r in range(50):
        j = np.searchsorted(ur.keys.astype(bytes), rows[features.USER_ID][r])
        if j < len(ur) and ur.keys[j] == rows[features.USER_ID][r]:
            np.testing.assert_allclose(out[signatures.UR_FEATURE][r], ur.vectors[j])
            assert out[signatures.found_feature(signatures.UR_FEATURE)][r] == 1.0
    unknown = dict(rows, **{features.ITEM_ID: np.full(50, b"no-such-item", dtype=object)})
    cold = served_features(unknown, world.good)
    assert not cold[signatures.found_feature(signatures.IR_FEATURE)].any()
    assert not cold[signatures.IR_FEATURE].any()


@pytest.mark.slow
def test_identical_tables_are_not_better_and_the_live_ones_stay(world):
    """Paired: same seed, same rows, same features -> the same proxy, every resample's delta 0:
    inconclusive, which keeps what is live."""
    r = evaluate(world.train, world.test, world.good, world.good, LeeConfig(epochs=1))
    assert (r["delta"], r["delta_stderr"], r["detectable_effect"]) == (0.0, 0.0, 0.0)
    assert (
        r["comparison"] == paired_comparison.INCONCLUSIVE
        and not r["blessed"]
        and r["reference"] == "live"
    )
    assert r["test_rows"] == ranker_data.size(world.test) and r["train_rows"] == ranker_data.size(
        world.train
    )
    assert r["test_clicks"] == int(world.test[features.LABEL].sum()) >= 20
    assert r["test_users"] == len(set(world.test[features.USER_ID].tolist()))


@pytest.mark.slow
def test_shuffled_user_keys_pass_the_guard_but_not_the_evaluator(world, tmp_path):
    from common.representations.statistics import GuardThresholds, judge

    shuffled = shuffle_user_keys(world.good)
    for table in tables.TABLES:  # the guard sees nothing: the same vectors, the same statistics
        new = table_statistics(shuffled.histories[table].vectors)
        assert judge(new, table_statistics(world.good.histories[table].vectors),
                     GuardThresholds()).publish
    publish_root = str(tmp_path / "published")
    publish(publish_root, 2, write_tables(world.good, str(tmp_path / "live"), 2),
            statistics_of(world.good))
    store_url = "sqlite:///" + str(tmp_path / "store.db")
    before = sorted(os.listdir(publish_root))
    result = lee_component.evaluate_and_publish(
        world.train, world.test, write_tables(shuffled, str(tmp_path / "candidate"), 3), 3,
        statistics_of(shuffled), publish_root, STRICT, store_url)
    assert not result["blessed"] and result["verdict"] == "held", result
    assert result["delta"] < 0 and result["comparison"] in (paired_comparison.INCONCLUSIVE,
                                                            paired_comparison.WORSE)
    assert result["delta_high"] < paired_comparison.DETECTABLE_FACTOR * result["delta_stderr"]
    assert "the live tables stay" in result["reasons"][0]
    assert live_version(publish_root) == 2 and sorted(os.listdir(publish_root)) == before
    assert not os.path.exists(str(tmp_path / "store.db"))  # nothing loaded


def noise_vectors(source: point_in_time.HistorySource,
                  seed: int = 1) -> point_in_time.HistorySource:
    """The same keys with Gaussian vectors of the tables' scale: representations that carry
    nothing (an upstream that failed to learn)."""
    rng = np.random.default_rng(seed)
    out = {}
    for table, h in source.histories.items():
        v = np.asarray(h.vectors)
        out[table] = point_in_time.RepresentationHistory(
            h.keys, h.updated_at, (rng.normal(size=v.shape) * v.std()).astype(v.dtype))
    return point_in_time.HistorySource(out)


@pytest.mark.slow
def test_a_better_model_than_the_live_one_is_published(world, tmp_path):
    """Live tables that carry nothing, a properly trained candidate: about +0.026 AUC, 2.6
    standard errors; better, published and loaded into the store."""
    publish_root = str(tmp_path / "published")
    live = noise_vectors(world.good)
    publish(publish_root, 1, write_tables(live, str(tmp_path / "live"), 1), statistics_of(live))
    store_url = "sqlite:///" + str(tmp_path / "store.db")
    result = lee_component.evaluate_and_publish(
        world.train, world.test, write_tables(world.good, str(tmp_path / "candidate"), 2), 2,
        statistics_of(world.good), publish_root, STRICT, store_url)
    assert result["comparison"] == paired_comparison.BETTER and result["delta_low"] > 0, result
    assert result["blessed"] and result["verdict"] == "published"
    assert result["reasons"] == ["better than the live tables: published"]
    assert live_version(publish_root) == 2
    assert result["published_path"] == os.path.join(publish_root, "2")
    with open(os.path.join(publish_root, "2", "statistics.json")) as f:
        assert set(json.load(f)) == set(tables.TABLES)
    store = open_store(store_url)
    try:
        assert store.count(tables.USER_TABLE) == len(world.good.histories[tables.USER_TABLE])
    finally:
        store.close()


@pytest.mark.slow
def test_a_worse_candidate_is_held(world):
    """The same two versions the other way round: worse, and the live tables stay."""
    r = evaluate(world.train, world.test, noise_vectors(world.good), world.good, STRICT)
    assert (
        r["comparison"] == paired_comparison.WORSE and r["delta_high"] < 0 and not r["blessed"]
    ), r


@pytest.mark.slow
def test_a_small_gain_is_inconclusive_and_the_live_tables_stay(world, tmp_path):
    """An upstream trained on five days against one trained on two: about +0.008 AUC, below
    what one test day of ~230 clicks resolves (about 0.018): inconclusive, nothing changes."""
    publish_root = str(tmp_path / "published")
    publish(publish_root, 1, write_tables(world.weak, str(tmp_path / "live"), 1),
            statistics_of(world.weak))
    result = lee_component.evaluate_and_publish(
        world.train, world.test, write_tables(world.good, str(tmp_path / "candidate"), 2), 2,
        statistics_of(world.good), publish_root, STRICT)
    assert result["comparison"] == paired_comparison.INCONCLUSIVE and result["verdict"] == "held", (
        result
    )
    assert result["delta_low"] < 0 < result["delta"] < result["detectable_effect"]
    assert live_version(publish_root) == 1


@pytest.mark.slow
def test_first_publication_compares_with_no_representations(world, tmp_path):
    publish_root = str(tmp_path / "published")
    result = lee_component.evaluate_and_publish(
        world.train, world.test, write_tables(world.good, str(tmp_path / "candidate"), 2), 2,
        statistics_of(world.good), publish_root, LeeConfig())
    # Nothing live to protect: published unless shown worse than no representations.
    assert result["reference"] == "none" and result["comparison"] != paired_comparison.WORSE
    assert result["blessed"] and result["live_version"] == 2
    assert result["delta_stderr"] > 0 and result["detectable_effect"] > 0
    assert result["delta_low"] < result["delta"] < result["delta_high"]
    assert result["reasons"][0].startswith("first publication: nothing live to protect")


@pytest.mark.slow
def test_too_few_clicks_count_as_inconclusive(world, tmp_path):
    few = ranker_data.select(world.test, np.arange(100))
    with pytest.raises(TooFewRows, match="100 rows"):
        evaluate(world.train, few, world.good, None)
    publish_root = str(tmp_path / "published")
    candidate = write_tables(world.good, str(tmp_path / "candidate"), 2)
    first = lee_component.evaluate_and_publish(world.train, few, candidate, 2,
                                               statistics_of(world.good),
                                   publish_root, LeeConfig())
    assert first["verdict"] == "published" and "not evaluated" in first["reasons"][0]
    assert (
        first["comparison"] == paired_comparison.INCONCLUSIVE
        and first.get("detectable_effect") is None
    )
    second = lee_component.evaluate_and_publish(world.train, few, write_tables(
        world.good, str(tmp_path / "candidate3"), 3), 3, statistics_of(world.good),
        publish_root, LeeConfig())
    assert second["verdict"] == "held" and live_version(publish_root) == 2
    assert second["comparison"] == paired_comparison.INCONCLUSIVE


def test_the_policy_per_verdict():
    """Tables live: only a better candidate replaces them. Nothing live: anything not shown
    worse goes live."""
    assert [publishes(v, live=True) for v in paired_comparison.VERDICTS] == [True, False, False]
    assert [publishes(v, live=False) for v in paired_comparison.VERDICTS] == [True, False, True]
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        publishes("maybe", live=True)


@pytest.mark.parametrize(
    "live, comparison, published",
    [
        (True, paired_comparison.BETTER, True),
        (True, paired_comparison.INCONCLUSIVE, False),
        (True, paired_comparison.WORSE, False),
        (False, paired_comparison.BETTER, True),
        (False, paired_comparison.INCONCLUSIVE, True),
        (False, paired_comparison.WORSE, False),
    ],
)
def test_evaluate_and_publish_follows_the_policy(
    monkeypatch, tmp_path, live, comparison, published
):
    """Each branch with the measurement fixed (the proxies are trained in the tests above):
    what is published, what LIVE points at, what the reason says."""
    tables = {"x": 1}

    def measured(train, test, candidate, reference, config):
        assert (reference is not None) == live
        delta = {paired_comparison.BETTER: 0.05, paired_comparison.INCONCLUSIVE: 0.0,
                 paired_comparison.WORSE: -0.05}[comparison]
        return {"comparison": comparison, "blessed": publishes(comparison, live),
                "delta": delta, "delta_stderr": 0.01, "delta_low": delta - 0.0196,
                "delta_high": delta + 0.0196, "detectable_effect": 0.028,
                "candidate_auc": 0.6 + delta, "reference_auc": 0.6,
                "reference": "live" if live else "none", "test_rows": 3000,
                "test_clicks": 230, "min_test_clicks": 20}

    monkeypatch.setattr(lee_component, "evaluate", measured)
    monkeypatch.setattr(lee_component, "table_source", lambda dirs: dirs)
    monkeypatch.setattr(lee_component.point_in_time.HistorySource, "from_published",
                        lambda root: "live tables")
    published_as = []
    monkeypatch.setattr(lee_component, "publish", lambda root, version, dirs, statistics:
                        published_as.append(version) or os.path.join(root, str(version)))
    root = str(tmp_path / "published")
    if live:
        os.makedirs(root)
        with open(os.path.join(root, LIVE_FILE), "w") as f:
            f.write("1")
    result = lee_component.evaluate_and_publish({}, {}, tables, 2, {}, root, LeeConfig())
    assert result["verdict"] == ("published" if published else "held")
    assert published_as == ([2] if published else [])
    assert result["live_version"] == (2 if published else 1 if live else None)
    first = ("first publication: nothing live to protect; published unless shown worse than "
             "no representations")
    assert result["reasons"] == [
        {
            (True, paired_comparison.BETTER): "better than the live tables: published",
            (
                True,
                paired_comparison.INCONCLUSIVE,
            ): "not shown better than the live tables: the live tables stay",
            (True, paired_comparison.WORSE): "worse than the live tables: the live tables stay",
            (False, paired_comparison.BETTER): first,
            (False, paired_comparison.INCONCLUSIVE): first,
            (
                False,
                paired_comparison.WORSE,
            ): "first publication held: the proxy does worse with the candidate's "
            "representations than with none, by more than the tolerance 0.01",
        }[(live, comparison)]
    ]
