"""Tests of the synthetic source and of the helpers the sources share (pipelines/sources/:
the tf.Example encoder, user histories, shards and the output directory)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from common import features
from pipelines.sources import synthetic
from pipelines.sources.example_encoder import BytesColumn, IntColumn, encode_examples
from pipelines.sources.history import ragged_take, user_history
from pipelines.sources.output_dir import MANIFEST, to_json
from pipelines.sources.shards import SHARD_PATTERN
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
    offsets, values = user_history(user, ts, item, positive, cap=20)
    assert as_lists(offsets, values) == [
        [], [],  # t=1: the other t=1 positive is a tie, not history
        [],  # user 1 sees none of user 0's items
        [11, 10],  # t=2: both t=1 positives, the later record first
        [11, 10],  # t=3: item 12 was negative
        [11, 10],  # t=3 tie with item 13
    ]
    offsets, values = user_history(user, ts, item, positive, cap=1)
    assert as_lists(offsets, values) == [[], [], [], [11], [11], [11]]


def test_user_history_matches_reference_on_random_events():
    rng = np.random.default_rng(0)
    for cap in (0, 1, 3, 20):
        n = 300
        user, ts = rng.integers(0, 6, n), rng.integers(0, 40, n)
        item, positive = rng.integers(0, 1000, n), rng.random(n) < 0.5
        offsets, values = user_history(user, ts, item, positive, cap)
        assert as_lists(offsets, values) == reference_history(user, ts, item, positive, cap)


def test_user_history_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must be 1-D of one length"):
        user_history(np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3, bool))


def test_ragged_take():
    # rows: [5, 6], [7]; taking rows 1, 0, 1 gives [7], [5, 6], [7].
    offsets, values = ragged_take(np.array([0, 2, 3]), np.array([5, 6, 7]), np.array([1, 0, 1]))
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
        "s": BytesColumn(vocab, rng.integers(0, 4, n)),
        "l": BytesColumn(vocab, rng.integers(0, 4, offsets[-1]), offsets),
        "i": IntColumn(ints),
        "a": IntColumn(rng.integers(0, 2, n)),
    }
    data, starts = encode_examples(columns, 5, n)
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
    assert sorted(p.name for p in out.glob(SHARD_PATTERN)) == manifest["shards"]
    assert manifest["users"] >= len(set(parsed[features.USER_ID]))
    assert json.loads((out / MANIFEST).read_text()) == json.loads(to_json(manifest))
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


def digest(out_dir: Path, manifest: dict) -> str:
    """sha256 of the shards' bytes and of every array of oracle.npz and users.npz."""
    h = hashlib.sha256()
    for name in manifest["shards"]:
        h.update(name.encode())
        h.update((out_dir / name).read_bytes())
    for file in (synthetic.ORACLE, synthetic.USERS_FILE):
        with np.load(out_dir / file) as arrays:
            for key in sorted(arrays.files):
                a = arrays[key]
                h.update(f"{file}/{key}/{a.dtype.str}/{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


def test_two_tower_output_is_byte_identical_to_before_worlds_existed(dataset):
    # Obtained by running `digest` on this module's fixture (12k examples, seed 4, 14 days, 2
    # shards) with the generator as it was before `--world` and the dynamic effects were added
    # (a single-interest, static world with no context cross). The default world must still
    # give these bytes: every dynamic draw comes from its own random stream, only when on.
    out, manifest, _, _ = dataset
    assert manifest["world"] == "two_tower"
    assert digest(out, manifest) == (
        "89c98eb549d4ab0dad26e9e1aed7ada6bab5f904c92be2cd7c5ee51f50c3e783")


def test_two_tower_static_auc_is_the_oracle_auc(dataset):
    # One fixed interest, no context: the static single-vector score is the true probability.
    _, manifest, _, _ = dataset
    for domain in ("ad", "content"):
        assert manifest[f"static_auc_{domain}"] == manifest[f"oracle_auc_{domain}"], domain


# ----------------------------------------------------------------------------- worlds

DYNAMIC_EXAMPLES = 20_000
DYNAMIC = synthetic.WORLDS["dynamic"]
# Each effect of the dynamic world alone, to see that each one is what the formula says.
ONLY = {
    "interests": synthetic.SimConfig(interests_per_user=DYNAMIC.interests_per_user,
                                     interest_spread=DYNAMIC.interest_spread),
    "drift": synthetic.SimConfig(interest_drift=DYNAMIC.interest_drift),
    "context": synthetic.SimConfig(context_scale=DYNAMIC.context_scale),
}


@pytest.fixture(scope="module")
def worlds():
    """Simulations (no files) of the same seed in two_tower, dynamic and each effect alone."""
    sims = {name: synthetic.simulate(DYNAMIC_EXAMPLES, seed=3, world=name)
            for name in synthetic.WORLDS}
    sims.update({name: synthetic.simulate(DYNAMIC_EXAMPLES, seed=3, config=config)
                 for name, config in ONLY.items()})
    return sims


def naive_probability(sim: synthetic.Simulation, row: int) -> float:
    """The module docstring's formula for one row, from the returned ground truth, in loops."""
    truth, oracle = sim.truth, sim.oracle
    day = (int(oracle["timestamp"][row]) - synthetic.START_TIMESTAMP) // 86400
    day = min(day, len(truth["interests"]) - 1)  # one day of interests when nothing drifts
    user, item, scenario = truth["user"][row], truth["item"][row], truth["scenario"][row]
    assert oracle["user_id"][row] == f"u{user}"
    v = truth["item_vec"][item]
    best = max(sum(float(a) * float(b) for a, b in zip(u[user], v, strict=True))
               for u in truth["interests"][day])  # max over the k interests
    logit = (truth["domain_bias"][int(oracle["is_ad"][row])] + truth["scenario_bias"][scenario]
             + truth["item_bias"][item] + sim.facts["ground_truth"]["alpha"] * best
             + truth["context"][scenario, truth["item_category"][item]])
    return 1.0 / (1.0 + np.exp(-logit))


@pytest.mark.parametrize("name", ["two_tower", "dynamic", *ONLY])
def test_oracle_is_the_documented_formula_and_the_labels_follow_it(worlds, name):
    sim = worlds[name]
    p, label, is_ad = sim.oracle["p_label"], sim.oracle["label"], sim.oracle["is_ad"]
    rows = np.random.default_rng(0).choice(DYNAMIC_EXAMPLES, 60, replace=False)
    for row in rows:
        assert p[row] == pytest.approx(naive_probability(sim, row), rel=1e-6, abs=1e-9), row
    # The labels are drawn from p: their rate is p's mean within 4 standard errors per domain.
    for mask in (is_ad, ~is_ad):
        se = np.sqrt(np.sum(p[mask] * (1 - p[mask]))) / mask.sum()
        assert abs(label[mask].mean() - p[mask].mean()) < 4 * se
    assert sim.facts["world"] == (name if name in synthetic.WORLDS else "custom")


def test_effects_leave_users_items_and_exposures_untouched(worlds):
    # Each effect draws from its own stream: same users, items, times, scenarios in every world.
    base = worlds["two_tower"]
    for name, sim in worlds.items():
        for key in ("timestamp", "is_ad", "item_id", "user_id", "cold_start"):
            assert np.array_equal(sim.oracle[key], base.oracle[key]), (name, key)
        for key in ("user", "item", "scenario", "item_vec", "item_bias", "scenario_bias"):
            assert np.array_equal(sim.truth[key], base.truth[key]), (name, key)
    assert np.array_equal(base.truth["interests"][0, 0], worlds["context"].truth["interests"][0, 0])


def logit(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    return np.log(p / (1 - p))


def test_context_cross_adds_its_scenario_by_category_table(worlds):
    # Context alone, same seed: the logit moves by X[scenario, category] plus a constant per
    # domain (the recalibrated domain bias), nothing else.
    base, sim = worlds["two_tower"], worlds["context"]
    table = sim.truth["context"]  # [scenarios, categories]
    assert table.shape == (5, 30) and np.all(base.truth["context"] == 0)
    assert table.std() == pytest.approx(DYNAMIC.context_scale, rel=0.2)  # 150 draws: sd ~6%
    is_ad = sim.oracle["is_ad"]
    cell = table[sim.truth["scenario"], sim.truth["item_category"][sim.truth["item"]]]
    shift = logit(sim.oracle["p_label"]) - logit(base.oracle["p_label"]) - cell
    bias_shift = sim.truth["domain_bias"] - base.truth["domain_bias"]  # [content, ad]
    np.testing.assert_allclose(shift, bias_shift[is_ad.astype(int)], atol=1e-4)


def test_interests_drift_by_the_expected_amount(worlds):
    interests = worlds["drift"].truth["interests"]  # [days, k, users, dim]
    days, k, users, dim = interests.shape
    assert (days, k) == (DAYS, 1)
    np.testing.assert_allclose(np.linalg.norm(interests, axis=-1), 1.0, atol=1e-12)
    # One step keeps the expected cosine q = E[(1 + r z_1) / |e_1 + r z|] (Monte Carlo here);
    # d steps give q^d. 500 walks: the mean cosine's sd is under 0.025 at the last day.
    r = DYNAMIC.interest_drift
    z = np.random.default_rng(0).standard_normal((1_000_000, dim))
    q = np.mean((1 + r * z[:, 0]) / np.linalg.norm(z * r + np.eye(dim)[0], axis=1))
    assert q == pytest.approx(1 - (dim - 1) * r**2 / 2, abs=0.01)
    for d in (1, 6, days - 1):
        cosine = np.einsum("kud,kud->ku", interests[0], interests[d]).mean()
        assert cosine == pytest.approx(q**d, abs=0.05), d
    # Samples read the interests of their own day: on the last days, today's interests explain
    # the labels better than the first day's (recent behaviour says more than old).
    sim = worlds["drift"]
    truth, label = sim.truth, sim.oracle["label"]
    late = truth["day"] >= days - 3
    assert np.all(truth["day"] == (sim.oracle["timestamp"] - synthetic.START_TIMESTAMP) // 86400)
    v = truth["item_vec"][truth["item"]][late]
    user = truth["user"][late]
    today = np.einsum("ij,ij->i", interests[truth["day"][late], 0, user], v)
    first = np.einsum("ij,ij->i", interests[0, 0, user], v)
    assert synthetic.auc(label[late], today) > synthetic.auc(label[late], first) + 0.05


def test_several_interests_click_on_the_best_match(worlds):
    sim = worlds["interests"]
    interests = sim.truth["interests"]  # [1, k, users, dim]: no drift
    assert interests.shape[:2] == (1, DYNAMIC.interests_per_user)
    # The interests differ (spread ~ the group effects) but share the user's group part.
    u = interests[0]
    cos01 = np.einsum("ud,ud->u", u[0], u[1])
    assert 0.2 < cos01.mean() < 0.8
    # The label follows the max over interests: the max explains it better than the mean or
    # any single interest, and the static score (the mean interest) falls short of the oracle.
    truth, label = sim.truth, sim.oracle["label"]
    v = truth["item_vec"][truth["item"]]
    dots = np.einsum("kij,ij->ki", interests[0][:, truth["user"]], v)  # [k, examples]
    best = synthetic.auc(label, dots.max(axis=0))
    assert best > synthetic.auc(label, dots.mean(axis=0)) + 0.01
    assert all(best > synthetic.auc(label, d) + 0.02 for d in dots)
    assert sim.facts["static_auc_content"] < sim.facts["oracle_auc_content"] - 0.01


def test_dynamic_static_auc_is_clearly_below_the_oracle(worlds):
    facts = worlds["dynamic"].facts
    for domain in ("ad", "content"):
        # measured at seed 3: ad 0.81 vs 0.71, content 0.77 vs 0.67
        assert facts[f"static_auc_{domain}"] < facts[f"oracle_auc_{domain}"] - 0.05, domain
    assert facts["label_rate"]["content"] == pytest.approx(0.2, abs=0.01)
    assert facts["label_rate"]["ad"] == pytest.approx(0.04, abs=0.008)
    truth = worlds["dynamic"].truth
    assert truth["interests"].shape[:2] == (DAYS, DYNAMIC.interests_per_user)
    np.testing.assert_array_equal(truth["mean_interest"], truth["interests"].mean(axis=(0, 1)))


def test_dynamic_interest_group_still_shows_in_labels(worlds):
    sim = worlds["dynamic"]
    category = sim.truth["item_category"][sim.truth["item"]]
    match = category == sim.users["interest"][sim.truth["user"]]
    label = sim.oracle["label"].astype(bool)
    assert match.sum() > 300 and label[match].mean() > 1.5 * label[~match].mean()


def test_named_worlds_and_custom_configs():
    assert synthetic.WORLDS["two_tower"] == synthetic.SimConfig()
    assert synthetic.resolve_world() == ("two_tower", synthetic.SimConfig())
    assert synthetic.resolve_world("dynamic") == ("dynamic", DYNAMIC)
    assert synthetic.resolve_world(config=synthetic.SimConfig(
        interests_per_user=3, interest_spread=1.0, interest_drift=0.15, context_scale=0.7)
    )[0] == "dynamic"
    assert synthetic.resolve_world(config=ONLY["drift"])[0] == "custom"


@pytest.mark.parametrize("kwargs, message", [
    ({"interests_per_user": 0}, "SimConfig.interests_per_user must be a positive integer, got 0"),
    ({"interests_per_user": 2.0}, "SimConfig.interests_per_user must be a positive integer, "
                                  "got 2.0"),
    ({"interests_per_user": 2}, r"SimConfig.interest_spread must be > 0 when "
                                r"interests_per_user > 1 \(else the 2 interests coincide\), "
                                r"got 0.0"),
    ({"interest_spread": -1.0}, "SimConfig.interest_spread must be a finite number >= 0, "
                                "got -1.0"),
    ({"interest_drift": -0.1}, "SimConfig.interest_drift must be a finite number >= 0, got -0.1"),
    ({"context_scale": float("nan")}, "SimConfig.context_scale must be a finite number >= 0, "
                                      "got nan"),
    ({"context_scale": "0.5"}, "SimConfig.context_scale must be a finite number >= 0, "
                               "got '0.5'"),
])
def test_sim_config_rejects_bad_dynamic_values(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        synthetic.SimConfig(**kwargs)


def test_generate_rejects_unknown_world_and_world_with_config(tmp_path):
    with pytest.raises(ValueError, match=r"unknown world 'static'; one of \['dynamic', "
                                         r"'two_tower'\]"):
        synthetic.generate(tmp_path / "out", 10, world="static")
    with pytest.raises(ValueError, match="pass world or config, not both"):
        synthetic.generate(tmp_path / "out", 10, world="dynamic", config=DYNAMIC)
    assert not (tmp_path / "out").exists()


def test_cli_world_dynamic(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path / "o"), "--examples", "1500", "--seed", "2",
                           "--world", "dynamic", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    manifest = json.loads(lines[-1])
    assert manifest["world"] == "dynamic"
    assert manifest["ground_truth"]["interests_per_user"] == DYNAMIC.interests_per_user
    assert "of world dynamic" in lines[0]
    assert (f"static single-vector AUC content {manifest['static_auc_content']:.4f}, "
            f"ad {manifest['static_auc_ad']:.4f}") in lines[1]
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path / "x"), "--examples", "10", "--world", "static"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'static'" in capsys.readouterr().err


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
    assert sorted(p.name for p in out.glob(SHARD_PATTERN)) == manifest["shards"]
    assert len(manifest["shards"]) == 2 and (out / "notes.txt").read_text() == "keep me"


def test_cli_json_last_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.sources.synthetic", "--out", str(tmp_path / "o"),
         "--examples", "1500", "--seed", "2", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["examples"] == 1500 and last["seed"] == 2 and last["world"] == "two_tower"
    for key in ("seconds", "examples_per_second", "oracle_auc_ad", "oracle_auc_content",
                "oracle_auc_cold_start", "static_auc_ad", "static_auc_content"):
        assert key in last, key
    assert last == json.loads((tmp_path / "o" / MANIFEST).read_text())
