"""Tests of the synthetic source and of the shared helpers in pipelines/sources/common.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from pipelines.sources import common, synthetic
from trainer import features
from trainer.oracle import load_users

EXAMPLES = 12_000
SEED = 4  # its 60 cold-start ad samples have both labels (so their AUC is defined)
DAYS = 14
REPO = Path(__file__).resolve().parents[3]


def read_records(out_dir: Path, manifest: dict) -> list[bytes]:
    """Serialized examples of all shards, in manifest (= record) order."""
    paths = [str(out_dir / name) for name in manifest["shards"]]
    batches = tf.data.TFRecordDataset(paths, compression_type="GZIP").batch(8192)
    return [record for batch in batches for record in batch.numpy()]


def parse(records: list[bytes]) -> dict[str, object]:
    """Parsed features: scalars as numpy arrays, list features as lists of lists."""
    parsed = tf.io.parse_example(records, features.feature_spec())
    out = {}
    for name, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            ragged = tf.RaggedTensor.from_sparse(value)
            values = ragged.flat_values.numpy().tolist()
            splits = ragged.row_splits.numpy().tolist()
            out[name] = [values[a:b] for a, b in zip(splits[:-1], splits[1:], strict=True)]
        else:
            out[name] = value.numpy()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    manifest = synthetic.generate(out, EXAMPLES, seed=SEED, days=DAYS, progress=False)
    records = read_records(out, manifest)
    return out, manifest, records, parse(records)


# ----------------------------------------------------------------------------- common helpers


def reference_history(user, timestamp, item, positive, cap):
    """Plain per-event loop: positives of the user strictly before t, newest first, capped."""
    result = []
    for i in range(len(user)):
        before = [j for j in range(len(user))
                  if positive[j] and user[j] == user[i] and timestamp[j] < timestamp[i]]
        before.sort(key=lambda j: (timestamp[j], j), reverse=True)
        result.append([item[j] for j in before[:cap]])
    return result


def as_lists(offsets, values):
    return [list(values[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]


def test_user_history_excludes_ties_and_orders_newest_first():
    # user 0 positives: t=1 (item 10), t=1 (11), t=2 (12, negative), t=3 (13); user 1: t=1 (20).
    user = np.array([0, 0, 1, 0, 0, 0])
    ts = np.array([1, 1, 1, 2, 3, 3])
    item = np.array([10, 11, 20, 12, 13, 14])
    positive = np.array([True, True, True, False, True, True])
    offsets, values = common.user_history(user, ts, item, positive, cap=20)
    assert as_lists(offsets, values) == [
        [], [],  # t=1: the other t=1 positive is a tie, not history
        [],  # user 1 sees none of user 0's items
        [11, 10],  # t=2: both t=1 positives, the later record first
        [11, 10],  # t=3: item 12 was negative
        [11, 10],  # t=3 tie with item 13
    ]
    offsets, values = common.user_history(user, ts, item, positive, cap=1)
    assert as_lists(offsets, values) == [[], [], [], [11], [11], [11]]


def test_user_history_matches_reference_on_random_events():
    rng = np.random.default_rng(0)
    for cap in (0, 1, 3, 20):
        n = 300
        user, ts = rng.integers(0, 6, n), rng.integers(0, 40, n)
        item, positive = rng.integers(0, 1000, n), rng.random(n) < 0.5
        offsets, values = common.user_history(user, ts, item, positive, cap)
        assert as_lists(offsets, values) == reference_history(user, ts, item, positive, cap)


def test_user_history_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must be 1-D of one length"):
        common.user_history(np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3, bool))


def test_ragged_take():
    # rows: [5, 6], [7]; taking rows 1, 0, 1 gives [7], [5, 6], [7].
    offsets, values = common.ragged_take(np.array([0, 2, 3]), np.array([5, 6, 7]),
                                         np.array([1, 0, 1]))
    assert offsets.tolist() == [0, 1, 3, 4] and values.tolist() == [7, 5, 6, 7]


def test_encode_examples_equals_deterministic_protobuf_serialization():
    # Edge cases: empty lists, empty bytes, values >= 128 bytes (2-byte lengths), negative and
    # extreme int64, lists over 16 KiB (3-byte lengths).
    import pyarrow as pa
    from tensorflow.core.example import example_pb2
    from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

    rng = np.random.default_rng(0)
    n = 200
    vocab = [b"", b"x", b"y" * 200, b"z" * 5000]
    offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 10, n))])
    ints = rng.choice([0, 1, 127, 128, 300, 2**40, -1, -2**63, 2**63 - 1, 1767225600], n)
    columns = {
        "s": common.BytesColumn(vocab, rng.integers(0, 4, n)),
        "l": common.BytesColumn(vocab, rng.integers(0, 4, offsets[-1]), offsets),
        "i": common.IntColumn(ints),
        "a": common.IntColumn(rng.integers(0, 2, n)),
    }
    data, starts = common.encode_examples(columns, 5, n)
    mine = [data[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]

    def list_array(row_offsets, values):
        return pa.ListArray.from_arrays(pa.array(row_offsets, pa.int32()), values)

    one = np.arange(n + 1)
    binary = pa.array(vocab, pa.binary())
    batch = pa.RecordBatch.from_arrays([
        list_array(one, binary.take(pa.array(columns["s"].indices))),
        list_array(offsets, binary.take(pa.array(columns["l"].indices))),
        list_array(one, pa.array(ints, pa.int64())),
        list_array(one, pa.array(columns["a"].values, pa.int64())),
    ], names=["s", "l", "i", "a"])
    reference = [
        example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
        for r in RecordBatchToExamplesEncoder().encode(batch)[5:]
    ]
    assert max(map(len, mine)) > 16384
    assert mine == reference


def test_the_manifest_auc_is_the_project_auc_with_ties():
    """The generator's manifest AUCs use `trainer.evaluation.auc` (one AUC in the project):
    ties count 1/2, a single class gives None (JSON null), not NaN."""
    # 4 (pos, neg) pairs: (0.4, 0.1) win, (0.4, 0.4) tie, (0.8, 0.1) win, (0.8, 0.4) win = 3.5/4.
    assert synthetic.auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.4, 0.8])) == 0.875
    rng = np.random.default_rng(1)
    labels, scores = rng.random(5000) < 0.1, rng.integers(0, 20, 5000) / 20
    assert synthetic.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert synthetic.auc(np.ones(3), np.arange(3)) is None


# ----------------------------------------------------------------------------- the data set


def test_same_seed_gives_identical_bytes_and_other_seed_differs(dataset, tmp_path):
    # The fixture wrote with 2 forked workers, this run writes in-process: same bytes.
    out, manifest, _, _ = dataset
    again = synthetic.generate(tmp_path / "again", EXAMPLES, seed=SEED, days=DAYS, workers=1,
                               progress=False)
    synthetic.generate(tmp_path / "other", EXAMPLES, seed=SEED + 1, days=DAYS, progress=False)
    assert again["shards"] == manifest["shards"] and len(manifest["shards"]) == 2
    for name in manifest["shards"]:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
        assert (out / name).read_bytes() != (tmp_path / "other" / name).read_bytes()


def test_records_have_every_feature_with_schema_dtypes(dataset):
    _, _, records, parsed = dataset
    assert len(records) == EXAMPLES
    raw = tf.io.parse_example(records, features.feature_spec())
    assert set(raw) == set(features.ALL_FEATURES)
    for name, kind in features.FEATURE_TYPES.items():
        assert raw[name].dtype == (tf.string if kind is bytes else tf.int64), name
        if name not in features.LIST_FEATURES:
            assert raw[name].shape == (EXAMPLES,), name
    domain = parsed[features.DOMAIN]
    is_ad = domain == features.DOMAIN_AD
    assert set(domain) == {features.DOMAIN_AD, features.DOMAIN_CONTENT}
    assert set(parsed[features.SCENARIO][is_ad]) == {b"moments", b"channels", b"news"}
    assert set(parsed[features.SCENARIO][~is_ad]) == {b"feed", b"video"}
    advertiser = parsed[features.ITEM_ADVERTISER]
    assert all(a.startswith(b"adv") for a in advertiser[is_ad])
    assert all(a == b"" for a in advertiser[~is_ad])
    item_id = parsed[features.ITEM_ID]
    assert all(i[:1] == (b"a" if ad else b"c") for i, ad in zip(item_id, is_ad, strict=True))
    assert set(parsed[features.USER_AGE]) <= set(range(7))
    assert set(parsed[features.USER_GENDER]) == {b"m", b"f"}
    assert all(1 <= len(t) <= 3 and len(set(t)) == len(t) for t in parsed[features.ITEM_TAGS])
    label, conversion = parsed[features.LABEL], parsed[features.CONVERSION]
    assert set(label) == {0, 1} and np.all(conversion <= label)
    assert np.all(conversion[~is_ad] == 0) and conversion[is_ad].sum() > 0


def test_domain_share_and_label_rates(dataset):
    _, manifest, _, parsed = dataset
    is_ad = parsed[features.DOMAIN] == features.DOMAIN_AD
    assert is_ad.mean() == pytest.approx(0.2, abs=0.03)  # sd ~0.004 at 12k examples
    label = parsed[features.LABEL]
    assert label[~is_ad].mean() == pytest.approx(0.2, abs=0.04)
    assert 0.02 < label[is_ad].mean() < 0.07
    assert manifest["label_rate"]["ad"] == pytest.approx(label[is_ad].mean())


def test_user_hist_items_is_the_users_earlier_positives(dataset):
    _, _, _, parsed = dataset
    user, ts = parsed[features.USER_ID], parsed[features.TIMESTAMP]
    item, label = parsed[features.ITEM_ID], parsed[features.LABEL]
    by_user = defaultdict(list)  # user -> record indices so far, in record order
    lengths = []
    for i in range(EXAMPLES):
        earlier = [j for j in by_user[user[i]] if label[j] == 1 and ts[j] < ts[i]]
        want = [item[j] for j in sorted(earlier, key=lambda j: (ts[j], j), reverse=True)]
        assert parsed[features.USER_HIST_ITEMS][i] == want[: features.MAX_HISTORY], i
        lengths.append(len(want))
        by_user[user[i]].append(i)
    assert max(lengths) > features.MAX_HISTORY  # the cap was exercised


def test_timestamps_sorted_within_days(dataset):
    _, manifest, _, parsed = dataset
    ts = parsed[features.TIMESTAMP]
    assert np.all(np.diff(ts) >= 0)
    start = synthetic.START_TIMESTAMP
    assert start <= ts[0] and ts[-1] < start + DAYS * 86400
    assert manifest["time_range"] == {"min": int(ts[0]), "max": int(ts[-1])}


def test_cold_start_ads_only_appear_in_the_last_two_days(dataset):
    out, manifest, _, parsed = dataset
    oracle = np.load(out / synthetic.ORACLE)
    cold_items = set(oracle["item_id"][oracle["cold_start"]])
    assert cold_items and all(i.startswith("a") for i in cold_items)
    assert len(cold_items) <= manifest["cold_start_items"] == round(0.1 * manifest["items"]["ad"])
    late = synthetic.START_TIMESTAMP + (DAYS - 2) * 86400
    ts = parsed[features.TIMESTAMP]
    item = parsed[features.ITEM_ID].astype(str)
    is_cold = np.isin(item, list(cold_items))
    assert np.all(ts[is_cold] >= late) and np.all(oracle["cold_start"] == is_cold)
    # ...and before then no history mentions them.
    early_hist = {h.decode() for i in np.flatnonzero(ts < late)
                  for h in parsed[features.USER_HIST_ITEMS][i]}
    assert not early_hist & cold_items


def test_manifest_counts_match_records(dataset):
    out, manifest, _, parsed = dataset
    is_ad = parsed[features.DOMAIN] == features.DOMAIN_AD
    assert manifest["examples"] == EXAMPLES
    assert manifest["counts"] == {"content": int((~is_ad).sum()), "ad": int(is_ad.sum())}
    assert sorted(p.name for p in out.glob(common.SHARD_PATTERN)) == manifest["shards"]
    assert manifest["users"] >= len(set(parsed[features.USER_ID]))
    assert json.loads((out / common.MANIFEST).read_text()) == json.loads(common.to_json(manifest))
    assert manifest["examples_per_second"] > 0 and manifest["seconds"] > 0


def test_oracle_matches_records_and_its_auc(dataset):
    out, manifest, _, parsed = dataset
    oracle = np.load(out / synthetic.ORACLE)
    assert oracle["timestamp"].dtype == np.int64 and oracle["p_label"].dtype == np.float32
    assert oracle["label"].dtype == np.int8 and oracle["is_ad"].dtype == bool
    assert np.array_equal(oracle["timestamp"], parsed[features.TIMESTAMP])
    assert np.array_equal(oracle["label"], parsed[features.LABEL])
    assert np.array_equal(oracle["item_id"], parsed[features.ITEM_ID].astype(str))
    assert np.array_equal(oracle["user_id"], parsed[features.USER_ID].astype(str))
    assert np.array_equal(oracle["is_ad"], parsed[features.DOMAIN] == features.DOMAIN_AD)
    is_ad, label, p = oracle["is_ad"], oracle["label"], oracle["p_label"]
    cold = is_ad & oracle["cold_start"]
    for key, mask in (("ad", is_ad), ("content", ~is_ad), ("cold_start", cold)):
        assert len(set(label[mask])) == 2, key  # else the AUC is undefined (nan)
        want = roc_auc_score(label[mask], p[mask])
        assert manifest[f"oracle_auc_{key}"] == pytest.approx(want, abs=1e-6), key
    assert oracle["feature_score"].dtype == np.float32
    for key, mask in (("ad", is_ad), ("content", ~is_ad)):
        want = roc_auc_score(label[mask], oracle["feature_score"][mask])
        assert manifest[f"features_only_auc_{key}"] == pytest.approx(want, abs=1e-5), key


def test_users_truth_matches_records_and_interest_shows_in_labels(dataset):
    out, manifest, _, parsed = dataset
    assert manifest["users_truth"] == "users.npz"
    users = load_users(str(out))
    assert users["user_id"].size == manifest["users"] == np.unique(users["user_id"]).size
    row = {u: i for i, u in enumerate(users["user_id"])}
    index = np.array([row[u] for u in parsed[features.USER_ID].astype(str)])
    assert np.array_equal(users["age"][index], parsed[features.USER_AGE])
    assert np.array_equal(users["gender"][index],
                          (parsed[features.USER_GENDER] == b"f").astype(np.int64))
    geo = np.array([int(g[3:]) for g in parsed[features.USER_GEO]])
    assert np.array_equal(users["geo"][index], geo)
    # The interest group is the ground truth the labels come from: items of the user's interest
    # category are engaged with far more often than the others.
    category = np.array([int(c[3:]) for c in parsed[features.ITEM_CATEGORY]])
    match = category == users["interest"][index]
    label = parsed[features.LABEL].astype(bool)
    assert match.sum() > 100
    assert label[match].mean() > 1.5 * label[~match].mean()


def test_ground_truth_is_learnable_at_scale():
    # No files: the simulated world at the size the trainer uses (200k).
    facts = synthetic.simulate(200_000, seed=1).facts
    assert 0.75 <= facts["oracle_auc_ad"] <= 0.85
    assert facts["oracle_auc_content"] > 0.7
    # Demographics + item features alone (no ids, no history) come within 0.03 of the oracle.
    assert facts["features_only_auc_ad"] > facts["oracle_auc_ad"] - 0.03
    assert facts["label_rate"]["content"] == pytest.approx(0.2, abs=0.01)
    assert facts["label_rate"]["ad"] == pytest.approx(0.04, abs=0.005)


def test_user_activity_is_skewed(dataset):
    _, _, _, parsed = dataset
    _, counts = np.unique(parsed[features.USER_ID], return_counts=True)
    assert counts.max() >= 10 * np.median(counts)


# ----------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize("kwargs, message", [
    ({"examples": 0}, "examples must be a positive integer, got 0"),
    ({"examples": 10, "days": 0}, "days must be a positive integer, got 0"),
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_rejects_non_positive_examples(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path), "--examples", "0"])
    assert exit_info.value.code == 2
    assert "--examples: expected a positive integer, got 0" in capsys.readouterr().err


def test_non_empty_out_needs_overwrite_which_replaces_old_shards(tmp_path, capsys):
    out = tmp_path / "out"
    synthetic.generate(out, 300, seed=0, num_shards=3, progress=False)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--examples", "300"])
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    manifest = synthetic.generate(out, 300, seed=0, num_shards=2, overwrite=True,
                                  progress=False)
    assert sorted(p.name for p in out.glob(common.SHARD_PATTERN)) == manifest["shards"]
    assert len(manifest["shards"]) == 2 and (out / "notes.txt").read_text() == "keep me"


def test_cli_json_last_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.sources.synthetic", "--out", str(tmp_path / "o"),
         "--examples", "1500", "--seed", "2", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["examples"] == 1500 and last["seed"] == 2
    for key in ("seconds", "examples_per_second", "oracle_auc_ad", "oracle_auc_content",
                "oracle_auc_cold_start"):
        assert key in last, key
    assert last == json.loads((tmp_path / "o" / common.MANIFEST).read_text())
