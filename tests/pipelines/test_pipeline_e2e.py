"""The whole TFX pipeline, run locally twice: on data, then on shifted data (CLI path).

Run 1 (Python API) trains, evaluates, pushes, extracts, aggregates and publishes; run 2 goes
through `tfx pipeline create` / `tfx run create` on data from another seed of the simulator,
so the Evaluator has a blessed baseline to compare with and the guard a live version.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from common import features, signatures
from common.representations import tables
from components import artifacts
from components.publishing import LIVE_FILE, live_version
from pipelines import local_runner
from pipelines.sources import synthetic
from pipelines.summary import metadata_file, run_summary
from serving.store import open_store
from trainer import data_input, evaluation

EXAMPLES = 4000
FAST = {"epochs": 2, "batch_size": 256}

pytestmark = pytest.mark.slow  # two whole pipeline runs (`make test-fast` leaves them out)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    synthetic.generate(str(root / "data1"), examples=EXAMPLES, seed=11, days=4, progress=False)
    synthetic.generate(str(root / "data2"), examples=EXAMPLES, seed=12, days=4, progress=False)
    return root


@pytest.fixture(scope="module")
def first_run(workdir):
    return local_runner.run(
        str(workdir / "data1"), str(workdir / "root"), str(workdir / "serving"),
        # Run 1 trains with the feature path (two stages inside the TFX Trainer, on the
        # Transform graph's ids); run 2 with the defaults.
        model_overrides={"feature_path": True},
        train_overrides={**FAST, "feature_path_epochs": 2},
        # The eval day of 4000 examples has a handful of ad clicks: bless the upstream on any
        # AUC, and let no comparison call the downstream ranker worse (a tolerance of 1 AUC);
        # run 2 uses the defaults, and its test accepts either verdict.
        auc_threshold=0.0,
        downstream_max_drop=1.0,
    )


@pytest.fixture(scope="module")
def second_run(workdir, first_run):
    env = {
        **os.environ,
        "LOCAL_HOME": str(workdir / "tfx_home"),
        "LFM4ADS_DATA": str(workdir / "data2"),
        "LFM4ADS_PIPELINE_ROOT": str(workdir / "root"),
        "LFM4ADS_SERVING_ROOT": str(workdir / "serving"),
    }
    tfx = os.path.join(os.path.dirname(sys.executable), "tfx")
    create = subprocess.run(
        [tfx, "pipeline", "create", "--engine", "local",
         "--pipeline_path", "pipelines/local_runner.py"],
        env=env, capture_output=True, text=True, cwd=local_runner.configs.REPO_ROOT)
    assert create.returncode == 0, create.stderr[-3000:]
    assert 'Pipeline "lfm4ads" created successfully' in create.stdout
    run = subprocess.run(
        [tfx, "run", "create", "--engine", "local", "--pipeline_name", "lfm4ads"],
        env=env, capture_output=True, text=True, cwd=local_runner.configs.REPO_ROOT)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    # The runner's console is quiet (common.console): no traceback, not even TensorFlow's at
    # interpreter exit, and no library WARNING lines.
    for noise in ("Traceback", "Exception ignored", "WARNING:absl", "WARNING:tensorflow"):
        assert noise not in run.stdout + run.stderr, (run.stdout + run.stderr)[-5000:]
    summary = run_summary(metadata_file(str(workdir / "root")), "lfm4ads")
    return summary, run.stdout


def _eval_examples(data_dir: str) -> list[bytes]:
    files = data_input.list_files(data_dir)
    lo, hi = data_input.time_range(files)
    cut = hi + 1 - 86_400
    return [r.numpy() for r in data_input.records_in_window(files, start=cut)]


def test_first_run_pushes_and_publishes(first_run, workdir):
    s = first_run
    expected_components = {
        "ExampleGen", "StatisticsGen", "SchemaGen", "CuratedSchema", "ExampleValidator",
        "ValidationGate", "Transform", "Trainer", "Evaluator", "Pusher",
        "RepresentationExtractor", "CrossRepresentationAggregator", "RepresentationGuard",
        "LightweightEmbeddingEvaluator", "DownstreamExamples", "DownstreamTrainer",
        "DownstreamBaselineTrainer", "DownstreamEvaluator", "DownstreamBlessingGate",
        "DownstreamPusher",
    }
    assert expected_components <= set(s["component_seconds"])
    assert s["blessed"] and s["pushed"]
    assert s["pushed_path"] == str(workdir / "serving" / "lfm4ads" / str(s["pushed_version"])), s
    assert os.path.exists(os.path.join(s["pushed_path"], "saved_model.pb"))
    # The guard passed the tables; the embedding evaluator published them (on this tiny eval
    # day it has too few clicks to measure, and with no live version nothing can get worse).
    assert s["guard"] == "passed" and s["published"]
    assert s["lee_blessed"] is True and s["lee_reasons"], s
    assert s["lee_comparison"] == "inconclusive" and s["lee_detectable_effect"] is None
    assert live_version(str(workdir / "serving" / "representations")) == s["pushed_version"]
    for key in ("auc_ad", "auc_content", "gauc_content"):
        assert 0.0 < s[key] < 1.0, key
    # The guard's verdict and statistics are recorded in ML Metadata.
    from pipelines.summary import latest_artifact, open_metadata

    guard = latest_artifact(open_metadata(metadata_file(str(workdir / "root"))),
                            artifacts.GuardResult.TYPE_NAME)
    assert guard.custom_properties["verdict"].string_value == "passed"
    stats = json.loads(guard.custom_properties["statistics"].string_value)
    assert set(stats) == set(artifacts.TABLES)
    assert stats[artifacts.CROSS_USER_TABLE]["statistics"]["rows"] == s["cr_users"]
    assert stats[artifacts.USER_TABLE]["statistics"]["nan_count"] == 0


def test_pushed_model_takes_raw_examples_and_matches_tfma(first_run, workdir):
    """The pushed SavedModel parses raw tf.Examples (Transform graph inside), and the
    Evaluator's AUC / GAUC equal ours computed from its predictions on the eval window."""
    model = tf.saved_model.load(first_run["pushed_path"])
    assert len(model.model.feature_path.variables) == 9  # run 1 trained with the feature path
    assert {signatures.SERVING_DEFAULT, signatures.USER_REPRESENTATION,
            signatures.ITEM_REPRESENTATION,
            signatures.CROSS_REPRESENTATION, signatures.TRANSFORM_FEATURES} <= set(model.signatures)
    serialized = _eval_examples(str(workdir / "data1"))
    batch = tf.constant(serialized)
    out = model.signatures[signatures.SERVING_DEFAULT](examples=batch)
    raw = features.parse_examples(batch)
    is_ad = raw[features.DOMAIN].numpy() == features.DOMAIN_AD
    labels = raw[features.LABEL].numpy()
    users = raw[features.USER_ID].numpy()
    content = out[signatures.CONTENT_PREDICTION].numpy()[:, 0]
    assert first_run["auc_content"] == pytest.approx(
        evaluation.auc(labels[~is_ad], content[~is_ad]), abs=2e-3)
    assert first_run["gauc_content"] == pytest.approx(
        evaluation.gauc(users[~is_ad], labels[~is_ad], content[~is_ad]), abs=1e-3)
    ur = model.signatures[signatures.USER_REPRESENTATION](examples=batch)[
        signatures.USER_REPRESENTATION
    ]
    assert ur.shape[0] == len(serialized) and np.isfinite(ur.numpy()).all()
    # A request without a required feature fails naming it.
    example = tf.train.Example.FromString(serialized[0])
    del example.features.feature[features.USER_GEO]
    with pytest.raises(tf.errors.InvalidArgumentError, match=features.USER_GEO):
        model.signatures[signatures.SERVING_DEFAULT](examples=tf.constant([example.SerializeToString()]))


def test_published_tables_match_the_artifacts(first_run, workdir):
    published = workdir / "serving" / "representations" / str(first_run["pushed_version"])
    sizes = {}
    for table in artifacts.TABLES:
        keys, matrix, updated_at, versions = tables.read_table(
            str(published / table / ("*" + tables.FILE_SUFFIX)))
        assert np.isfinite(matrix).all()
        assert set(versions.tolist()) == {first_run["pushed_version"]}
        sizes[table] = len(keys)
    # CR(u), CR(i) fold ad requests only (cr_domains "ad", Sec. 4.3.1): a row per user and
    # item met by an ad; UR, IR a row per user and item of every request.
    files = data_input.list_files(str(workdir / "data1"))
    ds = data_input.make_dataset(files, 4096, names=(features.USER_ID, features.ITEM_ID,
                                                     features.DOMAIN))
    batches = list(ds)
    ids = {
        k: np.concatenate([b[k].numpy() for b in batches])
        for k in (features.USER_ID, features.ITEM_ID, features.DOMAIN)
    }
    ad = ids[features.DOMAIN] == features.DOMAIN_AD
    assert first_run["cr_domains"] == "ad"
    assert (
        sizes[artifacts.CROSS_USER_TABLE]
        == first_run["cr_users"]
        == len(set(ids[features.USER_ID][ad]))
    )
    assert (
        sizes[artifacts.CROSS_ITEM_TABLE]
        == first_run["cr_items"]
        == len(set(ids[features.ITEM_ID][ad]))
    )
    assert first_run["cr_users"] < first_run["ur_rows"]  # some users met no ad
    # The guard loaded the published version into the serving store (SQLite by default).
    store = open_store(first_run["store_url"])
    try:
        for table in artifacts.TABLES:
            assert store.count(table) == sizes[table]
        keys, matrix, _, _ = tables.read_table(
            str(published / artifacts.CROSS_USER_TABLE / ("*" + tables.FILE_SUFFIX)))
        rows = store.get(artifacts.CROSS_USER_TABLE, list(keys[:5]))
        np.testing.assert_allclose(rows.representations, matrix[:5], rtol=1e-6)
        assert set(rows.model_version.tolist()) == {first_run["pushed_version"]}
    finally:
        store.close()
    # Every user and item of the data has a row (the extractor reads both splits).
    assert sizes[artifacts.USER_TABLE] == len(set(ids[features.USER_ID]))
    assert sizes[artifacts.ITEM_TABLE] == len(set(ids[features.ITEM_ID]))


def test_online_loop_serves_the_pushed_model_and_updates_the_store(first_run, workdir):
    """The next day's requests (the last 64 examples, a day later) go through the in-process
    server and update UR of their users in the store, and CR(u) of the users among them who
    met an ad (a content request leaves CR(u) as it was)."""
    data = str(workdir / "data1")
    out = local_runner.online_check(data, first_run, 64)
    assert out["online_requests"] == 64 and out["online_batches"] == 2
    assert out["online_model_version"] == first_run["pushed_version"]
    assert out["online_late_events"] == 0
    # The pushed downstream ranker is served beside the upstream and scores every request.
    assert out["online_ad_requests"] > 0 and "online_downstream_auc" in out
    assert "online_baseline_auc" in out
    files = data_input.list_files(data)
    _, hi = data_input.time_range(files)
    latest = [r.numpy() for r in data_input.records_in_window(files, start=hi + 1 - 86_400)]
    last_seen: dict[bytes, int] = {}
    last_ad: dict[bytes, int] = {}
    for record in latest[-64:]:
        f = tf.train.Example.FromString(record).features.feature
        user, t = f[features.USER_ID].bytes_list.value[0], f[features.TIMESTAMP].int64_list.value[0]
        last_seen[user] = max(last_seen.get(user, 0), t)
        if f[features.DOMAIN].bytes_list.value[0] == features.DOMAIN_AD:
            last_ad[user] = max(last_ad.get(user, 0), t)
    users = sorted(last_seen)
    assert out["online_cr_domains"] == "ad" and 0 < len(last_ad) < len(users)
    store = open_store(first_run["store_url"])
    try:
        rows = store.get(artifacts.USER_TABLE, users)
        assert rows.found.all()
        assert rows.updated_at.tolist() == [last_seen[u] + 86_400 for u in users]
        assert set(rows.model_version.tolist()) == {first_run["pushed_version"]}
        cross = store.get(artifacts.CROSS_USER_TABLE, users)
        for user, found, updated_at in zip(users, cross.found, cross.updated_at, strict=True):
            if user in last_ad:
                assert found and updated_at == last_ad[user] + 86_400, user
            else:  # only content requests of this user in the replay: CR(u) untouched
                assert not found or updated_at < min(last_seen.values()) + 86_400, user
    finally:
        store.close()


def test_downstream_ranker_is_trained_evaluated_against_none_and_pushed(first_run, workdir):
    """The tables went live, so the downstream branch ran: the ranker and the `none` baseline
    trained on point-in-time rows, TFMA reported them on the eval split, the gate compared them
    there (no ranker was live: pushed unless worse than `none`), and the Pusher acted on the
    blessing."""
    from trainer.paired_comparison import VERDICTS

    s = first_run
    assert s["downstream_blessed"] and s["downstream_pushed"], s  # nothing is worse in run 1
    assert s["downstream_vs_none_comparison"] in VERDICTS
    assert s["downstream_vs_last_blessed_comparison"] is None  # nothing blessed before run 1
    assert s["downstream_eval_rows"] == s["downstream_eval_examples"]
    assert s["downstream_eval_examples"] == s["eval_ad_examples"]
    assert s["downstream_baseline_auc"] is None or 0.0 < s["downstream_baseline_auc"] < 1.0
    assert s["downstream_last_blessed_auc"] is None  # no ranker was blessed before run 1
    assert s["downstream_pushed_path"].startswith(str(workdir / "serving" / "lfm4ads_ranker"))
    assert os.path.exists(os.path.join(s["downstream_pushed_path"], "saved_model.pb"))
    with open(s["model_config_file"]) as f:
        config = f.read()
    assert 'name: "lfm4ads"' in config and 'name: "lfm4ads_ranker"' in config


def test_downstream_examples_see_the_upstream_as_of_before_each_row(first_run, workdir):
    """Each downstream row carries UR(u), IR(i), CR(u), CR(i) exactly as a replay of the pushed
    upstream over the data held them strictly before the row (the online loop's view)."""
    from components.downstream_examples.component import ITEM_COLD_START
    from pipelines.summary import latest_artifact, open_metadata
    from trainer.downstream import point_in_time, replay
    examples = latest_artifact(open_metadata(metadata_file(str(workdir / "root"))), "Examples",
                               "DownstreamExamples")
    rows = []
    for split in ("train", "eval"):
        files = sorted((Path(examples.uri) / f"Split-{split}").glob("*.gz"))
        rows += [tf.train.Example.FromString(r.numpy())
                 for r in tf.data.TFRecordDataset([str(f) for f in files], "GZIP")]
    assert len(rows) > 100
    files = data_input.list_files(str(workdir / "data1"))
    source = replay.histories(replay.run_upstream(replay.saved_model_fn(first_run["pushed_path"]),
                                        data_input.records_in_window(files)),
                         local_runner.configs.CR_HALF_LIFE_SECONDS)

    def one(example, name, kind):
        return getattr(example.features.feature[name], kind).value[0]

    users = [one(r, features.USER_ID, "bytes_list") for r in rows]
    items = [one(r, features.ITEM_ID, "bytes_list") for r in rows]
    times = np.array([one(r, features.TIMESTAMP, "int64_list") for r in rows], np.int64)
    assert all(one(r, features.DOMAIN, "bytes_list") == features.DOMAIN_AD for r in rows)
    expected = point_in_time.attach(source, users, items, times,
                                    signatures.REPRESENTATION_FEATURES[:4])
    for name in signatures.REPRESENTATION_FEATURES[:4]:
        found = np.array([one(r, signatures.found_feature(name), "int64_list") for r in rows])
        np.testing.assert_array_equal(found, expected[signatures.found_feature(name)])
        for r, row in enumerate(rows):
            if found[r]:
                np.testing.assert_allclose(row.features.feature[name].float_list.value,
                                           expected[name][r], rtol=1e-5, atol=1e-6)
            else:
                assert not row.features.feature[name].float_list.value
    assert {one(r, ITEM_COLD_START, "int64_list") for r in rows} <= {0, 1}


def test_the_scaling_stages_rerun_on_the_runs_artifacts(first_run, workdir, tmp_path):
    """`benchmarks.scaling`'s `stages` part re-runs the extractor, DownstreamExamples and the
    aggregator on a pipeline root's artifacts (here in this process) and gets the pipeline's
    row counts."""
    from benchmarks import scaling
    from pipelines.summary import latest_artifact, open_metadata

    root = str(workdir / "root")
    store = open_metadata(metadata_file(root))
    reps = latest_artifact(store, artifacts.Representations.TYPE_NAME)
    out = scaling._stage("RepresentationExtractor", root, str(tmp_path / "ext"))
    assert out["rows"] == {t: reps.custom_properties[f"{t}_rows"].int_value
                           for t in (artifacts.USER_TABLE, artifacts.ITEM_TABLE)}
    examples = latest_artifact(store, "Examples", "ExampleGen").uri
    events = tf.data.TFRecordDataset(
        [str(f) for f in sorted((tmp_path / "ext" / artifacts.CROSS_EVENTS).glob("*"))], "GZIP")
    n_events = sum(len(tables.decode_event_batch(r.numpy())["timestamp"]) for r in events)
    n_examples = sum(1 for split in ("train", "eval") for _ in tf.data.TFRecordDataset(
        [str(f) for f in sorted(Path(examples, f"Split-{split}").glob("*"))], "GZIP"))
    assert n_events == n_examples > 0  # one CR event per example of both splits
    dex = latest_artifact(store, "Examples", "DownstreamExamples")
    out = scaling._stage("DownstreamExamples", root, str(tmp_path / "dex"))
    assert out["rows"] == {s: dex.custom_properties[f"{s}_rows"].int_value
                           for s in ("train", "eval")}
    cross = latest_artifact(store, artifacts.CrossRepresentationTables.TYPE_NAME)
    out = scaling._stage("CrossRepresentationAggregator", root, str(tmp_path / "agg"))
    assert out["rows"] == {t: cross.custom_properties[f"{t}_rows"].int_value
                           for t in (artifacts.CROSS_USER_TABLE, artifacts.CROSS_ITEM_TABLE)}
    assert out["stage_seconds"] > 0 and out["after_trim_gb"] > 0
    with pytest.raises(FileNotFoundError, match="no ExampleGen/examples artifact"):
        scaling._stage("DownstreamExamples", str(tmp_path), str(tmp_path / "x"))


def test_point_in_time_examples_for_downstream_training(first_run, workdir):
    """The aggregator wrote every example of the eval split (the default) with CR(u), CR(i)
    as of strictly before it."""
    from pipelines.summary import latest_artifact, open_metadata

    cross = latest_artifact(open_metadata(metadata_file(str(workdir / "root"))),
                    artifacts.CrossRepresentationTables.TYPE_NAME)
    assert cross.custom_properties["point_in_time_splits"].string_value == "eval"
    assert not (Path(cross.uri) / "point_in_time" / "Split-train").exists()
    total = 0
    for split in ("eval",):
        files = sorted((Path(cross.uri) / "point_in_time" / f"Split-{split}").glob("*.gz"))
        rows = [tf.train.Example.FromString(r.numpy())
                for r in tf.data.TFRecordDataset([str(f) for f in files], "GZIP")]
        total += len(rows)
        for row in rows[:200]:
            f = row.features.feature
            t = f[features.TIMESTAMP].int64_list.value[0]
            for side in ("user", "item"):
                updated = f[f"cr_{side}_updated_at"].int64_list.value[0]
                assert updated < t  # strictly before the row: no leakage
                assert len(f[f"cr_{side}"].float_list.value) > 0
    files = data_input.list_files(str(workdir / "data1"))
    _, hi = data_input.time_range(files)
    assert total == sum(1 for _ in data_input.records_in_window(files, start=hi + 1 - 86_400))


def test_second_run_compares_with_the_blessed_model(first_run, second_run, workdir):
    summary, stdout = second_run
    assert "guard" in stdout and "ad AUC" in stdout  # the CLI run printed its summary
    from pipelines.summary import gate_verdicts

    for words in gate_verdicts(summary).values():  # each gate's verdict in plain words
        assert words in stdout
    # The CLI default runs the online loop through the in-process server when tables went live.
    assert "embedding evaluator" in stdout
    assert ("online loop" in stdout) == summary["published"]
    # The downstream branch runs only when the tables went live; the loop then scores with
    # the pushed ranker.
    assert (summary["downstream_blessed"] is not None) == summary["published"]
    assert ("online downstream AUC" in stdout) == bool(
        summary["published"] and summary["downstream_pushed"])
    # The ranker blessed in run 1 is the second evaluation's baseline in run 2.
    if summary["published"]:
        assert summary["downstream_last_blessed_auc"] is not None
    assert summary["evaluation_uri"] != first_run["evaluation_uri"]
    diffs, aucs = {}, {}
    for metrics in tfma.load_metrics(summary["evaluation_uri"]):
        sk = {k.column: k.bytes_value.decode() for k in metrics.slice_key.single_slice_keys}
        for kv in metrics.metric_keys_and_values:
            if sk != {"domain": "ad"} or kv.key.name != "auc":
                continue
            if kv.key.is_diff:
                diffs[kv.key.output_name] = kv.value.double_value.value
            else:
                aucs[(kv.key.model_name, kv.key.output_name)] = kv.value.double_value.value
    assert signatures.AD_PREDICTION in diffs, "no comparison with the baseline in the evaluation"
    # The summary reports the candidate's AUC, not the baseline's (TFMA holds both).
    assert summary["auc_ad"] == round(aucs[("candidate", signatures.AD_PREDICTION)], 4)
    assert ("baseline", signatures.AD_PREDICTION) in aucs
    # The blessing follows the thresholds: value >= 0.55 and no drop of more than 0.01.
    auc_ad = summary["auc_ad"]
    expected = auc_ad is not None and auc_ad >= 0.55 and diffs[signatures.AD_PREDICTION] >= -0.01
    assert summary["blessed"] == expected
    assert summary["pushed"] == expected
    # The guard compared with the live version of run 1 and acted on its verdict.
    publish_root = str(workdir / "serving" / "representations")
    with open(os.path.join(publish_root, LIVE_FILE)) as f:
        live = int(f.read())
    if summary["published"]:
        assert summary["guard"] == "passed" and summary["lee_blessed"]
        assert live == summary["pushed_version"] != first_run["pushed_version"]
    else:
        assert live == first_run["pushed_version"]
        assert summary["guard_reasons"] or summary["lee_reasons"]
    store = open_store(first_run["store_url"])
    try:
        rows = store.get(artifacts.USER_TABLE, _some_users(workdir))
        assert rows.found.any()
        assert set(rows.model_version[rows.found].tolist()) == {live}
    finally:
        store.close()


def _some_users(workdir) -> list[bytes]:
    files = data_input.list_files(str(workdir / "data1"))
    batch = next(iter(data_input.make_dataset(files, 50, names=(features.USER_ID,
                                                                features.TIMESTAMP))))
    return sorted(set(batch[features.USER_ID].numpy().tolist()))


def test_the_tfx_run_fn_trains_under_a_strategy(first_run, workdir, tmp_path):
    """`custom_config={"train": {"strategy": ...}}` reaches `run_fn`, which trains under it and
    exports the plain copy (here MirroredStrategy: one replica on a CPU-only host), on the first
    run's Transform outputs."""
    from types import SimpleNamespace

    from trainer.tfx.upstream_module import run_fn

    root = workdir / "root"
    (graph,) = sorted(root.glob("Transform/transform_graph/*"))[:1]
    (examples,) = sorted(root.glob("Transform/transformed_examples/*"))[:1]
    fn_args = SimpleNamespace(
        custom_config={"train": {**FAST, "epochs": 1, "strategy": "mirrored"}},
        transform_output=str(graph),
        train_files=[str(examples / "Split-train" / "*")],
        eval_files=[str(examples / "Split-eval" / "*")],
        serving_model_dir=str(tmp_path / "serving_model"),
        model_run_dir=str(tmp_path / "model_run"))
    run_fn(fn_args)
    # TensorBoard summaries, as TFX users expect them, in the Trainer's model_run_dir
    for split in ("train", "validation"):
        assert list((tmp_path / "model_run" / split).glob("events.out.tfevents.*")), split
    model = tf.saved_model.load(fn_args.serving_model_dir)
    raw = _eval_examples(str(workdir / "data1"))[:32]
    out = model.signatures[signatures.SERVING_DEFAULT](examples=tf.constant(raw))
    assert out[signatures.AD_PREDICTION].shape == (32, 1)
    assert np.all(np.isfinite(out[signatures.AD_PREDICTION].numpy()))
    assert signatures.TRANSFORM_FEATURES in model.signatures
