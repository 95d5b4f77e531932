"""A simulated content + ads platform with a known click/engagement probability.

The ground truth (LFM4Ads' premise: one user interest that shows in content and in ads):

* users ``u`` have a unit latent interest ``u_vec = normalize(G_geo[geo] + G_age[age] +
  G_gender[gender] + s_user * eps)`` (demographic group effects + an individual part) and an
  activity weight (lognormal: a few users are very active, most are rare);
* items (content ``c12`` and ads ``a34``, sharing the category and tag vocabularies) have
  ``v_vec = normalize(C[category] + s_tag * mean(T[tags]) + s_item * eps)``, so an unseen item is
  predictable from its features; ads belong to an advertiser (with a home category and a bias);
* a sample is an exposure at time ``t`` of an item drawn by popularity among the items available
  at ``t`` (``ad_share`` of them ads), and its label is drawn from

  ``p = sigmoid(bias_domain + bias_scenario + item_bias + alpha * <u_vec, v_vec>)``

  with ``bias_domain`` calibrated to the target rates (content engagement ~20%, ad click ~4%);
  ``conversion`` is drawn among ad clicks with ``sigmoid(conversion_bias + conversion_alpha *
  <u_vec, v_vec>)``;
* ``cold_start_fraction`` of the ad items only become available in the last
  ``cold_start_days`` days (with a ``cold_start_boost`` exposure weight, as new ads get traffic);
* ``user_hist_items`` is the user's positives (engagements and clicks) strictly before ``t``.

Outputs in ``--out``: the shards (``common.write_examples``, timestamp order), ``oracle.npz``
with one entry per record in record order (``timestamp`` int64, ``is_ad`` bool, ``item_id`` and
``user_id`` str, ``p_label`` float32 = the true probability, ``label`` int8, ``cold_start`` bool,
``feature_score`` float32 = the true logit without the individual user and item parts)
so a trainer can compute the oracle AUC on its own evaluation window, ``users.npz`` with one
entry per user (``user_id`` str, ``interest`` int64 = the category whose vector is closest to
the user's latent interest, the user's ground-truth interest group; ``geo``, ``age``,
``gender`` int64; ``activity`` float32), and ``manifest.json``:
``examples, seed, days, start_timestamp, shards, counts {content, ad}, scenarios, time_range
{min, max}, users, items {content, ad}, cold_start_items, cold_start_examples, oracle_auc_ad,
oracle_auc_content, oracle_auc_cold_start`` (AUC of ``p_label`` on all ad / content / cold-start
ad samples; null when undefined), ``features_only_auc_ad/_content`` (AUC of the true score
without the individual user and item parts: what demographics and item features alone reach),
``label_rate {content, ad}, conversion_rate_ad, mean_history_length, ground_truth`` (calibrated
domain biases and the ``SimConfig``), ``seconds, examples_per_second``. The same arguments give
byte-identical shards.

Usage::

    python -m pipelines.sources.synthetic --out /tmp/synth --examples 200000 --seed 1 --json

``--out`` must be missing or empty; ``--overwrite`` replaces a previous run's shards,
``manifest.json`` and ``oracle.npz`` there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.sources import common
from trainer import console, features
from trainer.evaluation import auc
from trainer.oracle import ORACLE_FILE, USERS_FILE

START_TIMESTAMP = 1767225600  # 2026-01-01T00:00:00Z
SECONDS_PER_DAY = 86_400
AGE_BUCKET_SHARES = (0.06, 0.22, 0.26, 0.18, 0.11, 0.09, 0.08)  # user_age 0..6
GENDERS = (b"m", b"f")
ORACLE = ORACLE_FILE


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Parameters of the simulated world; the defaults are the documented ground truth."""

    latent_dim: int = 8
    examples_per_user: int = 80
    min_users: int = 500
    examples_per_content_item: int = 100
    min_content_items: int = 200
    examples_per_ad_item: int = 200
    min_ad_items: int = 100
    num_geos: int = 20
    num_categories: int = 30
    num_tags: int = 100
    num_advertisers: int = 100
    tags_per_category: int = 6  # a category's usual tags; an item's tag is one w.p. 0.75
    ad_share: float = 0.2
    # (name, share within the domain, logit bias)
    content_scenarios: tuple[tuple[str, float, float], ...] = (
        ("feed", 0.7, 0.0), ("video", 0.3, -0.3))
    ad_scenarios: tuple[tuple[str, float, float], ...] = (
        ("moments", 0.5, 0.0), ("channels", 0.3, -0.25), ("news", 0.2, -0.5))
    user_activity_sigma: float = 1.2
    item_popularity_sigma: float = 1.0
    geo_scale: float = 0.7
    age_scale: float = 0.6
    gender_scale: float = 0.4
    user_individual_scale: float = 0.2
    tag_scale: float = 0.6
    item_individual_scale: float = 0.1
    advertiser_home_share: float = 0.8
    alpha: float = 3.5
    content_item_bias_scale: float = 0.3
    advertiser_bias_scale: float = 0.4
    ad_item_bias_scale: float = 0.15
    content_rate: float = 0.2
    ad_rate: float = 0.04
    conversion_bias: float = -2.0
    conversion_alpha: float = 2.0
    cold_start_fraction: float = 0.1
    cold_start_days: float = 2.0
    cold_start_boost: float = 3.0


@dataclasses.dataclass
class Simulation:
    """One simulated data set: the columns to write, the oracle and facts for the manifest."""

    columns: dict[str, common.Column]
    oracle: dict[str, np.ndarray]
    facts: dict[str, Any]
    users: dict[str, np.ndarray]  # per-user ground truth (users.npz)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def _draw(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with probability proportional to ``weights``."""
    cdf = np.cumsum(weights)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"),
                      len(weights) - 1)


def _calibrate_bias(rest: np.ndarray, rate: float) -> float:
    """The ``b`` with ``mean(sigmoid(b + rest)) == rate`` (bisection; the mean is monotone)."""
    if len(rest) == 0:
        return 0.0
    sample = rest[:: max(1, len(rest) // 100_000)]
    lo, hi = -30.0, 30.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _sigmoid(mid + sample).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _vocab(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def _scenarios(rng: np.random.Generator, size: int,
               spec: tuple[tuple[str, float, float], ...], offset: int) -> np.ndarray:
    shares = np.array([s for _, s, _ in spec])
    return offset + _draw(rng, shares, size)


def simulate(examples: int, seed: int = 0, days: int = 14,
             config: SimConfig = SimConfig()) -> Simulation:
    """Simulates ``examples`` samples over ``days`` days; deterministic given the arguments.

    Args:
        examples: number of samples (> 0).
        seed: random seed.
        days: length of the time range starting at 2026-01-01T00:00:00Z (> 0).
        config: the world's parameters.

    Returns:
        A ``Simulation`` whose columns are in timestamp order.
    """
    _check_args(examples, days)
    cfg = config
    world_rng, event_rng, label_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    dim = cfg.latent_dim
    n_users = max(cfg.min_users, examples // cfg.examples_per_user)
    n_content = max(cfg.min_content_items, examples // cfg.examples_per_content_item)
    n_ad = max(cfg.min_ad_items, examples // cfg.examples_per_ad_item)
    n_items = n_content + n_ad  # global item index: content first, then ads
    n_ages = len(AGE_BUCKET_SHARES)

    # ---- users: group effects + individual part, unit norm.
    rng = world_rng
    geo = _draw(rng, _zipf(cfg.num_geos, 0.8), n_users)
    age = _draw(rng, np.array(AGE_BUCKET_SHARES), n_users)
    gender = (rng.random(n_users) < 0.5).astype(np.int64)
    g_geo = rng.normal(0, cfg.geo_scale, (cfg.num_geos, dim))
    g_age = rng.normal(0, cfg.age_scale, (n_ages, dim))
    g_gender = rng.normal(0, cfg.gender_scale, (2, dim))
    u_group = g_geo[geo] + g_age[age] + g_gender[gender]  # [users, dim]
    u_vec = _normalize(u_group + rng.normal(0, cfg.user_individual_scale, (n_users, dim)))
    activity = rng.lognormal(0.0, cfg.user_activity_sigma, n_users)

    # ---- items: category + tags (+ a small individual part); ads have an advertiser.
    cat_vec = rng.normal(0, 1, (cfg.num_categories, dim))
    tag_vec = rng.normal(0, 1, (cfg.num_tags, dim))
    cat_tags = np.argsort(rng.random((cfg.num_categories, cfg.num_tags)), axis=1)[
        :, : cfg.tags_per_category]  # [categories, tags_per_category]
    adv_home = rng.integers(0, cfg.num_categories, cfg.num_advertisers)
    adv_bias = rng.normal(0, cfg.advertiser_bias_scale, cfg.num_advertisers)
    item_adv = np.full(n_items, -1)
    item_adv[n_content:] = _draw(rng, _zipf(cfg.num_advertisers, 0.6), n_ad)
    category = _draw(rng, _zipf(cfg.num_categories, 0.5), n_items)
    at_home = rng.random(n_ad) < cfg.advertiser_home_share
    category[n_content:] = np.where(at_home, adv_home[item_adv[n_content:]],
                                    category[n_content:])
    # 1-3 tags per item, each a usual tag of the category w.p. 0.75; duplicates dropped.
    usual = cat_tags[category[:, None], rng.integers(0, cfg.tags_per_category, (n_items, 3))]
    slots = np.where(rng.random((n_items, 3)) < 0.75, usual,
                     rng.integers(0, cfg.num_tags, (n_items, 3)))
    slots = np.sort(np.where(np.arange(3) < rng.integers(1, 4, n_items)[:, None], slots,
                             cfg.num_tags), axis=1)  # unused slots sort last
    valid = (slots < cfg.num_tags) & np.concatenate(
        [np.ones((n_items, 1), bool), slots[:, 1:] != slots[:, :-1]], axis=1)
    tag_offsets = np.zeros(n_items + 1, np.int64)
    np.cumsum(valid.sum(axis=1), out=tag_offsets[1:])
    tag_values = slots[valid]
    tag_mean = (np.where(valid[..., None], tag_vec[np.minimum(slots, cfg.num_tags - 1)], 0)
                .sum(axis=1) / valid.sum(axis=1, keepdims=True))  # [items, dim]
    v_feat = cat_vec[category] + cfg.tag_scale * tag_mean
    v_vec = _normalize(v_feat + rng.normal(0, cfg.item_individual_scale, (n_items, dim)))
    item_bias = np.empty(n_items)
    item_bias[:n_content] = rng.normal(0, cfg.content_item_bias_scale, n_content)
    item_bias[n_content:] = adv_bias[item_adv[n_content:]] + rng.normal(
        0, cfg.ad_item_bias_scale, n_ad)
    popularity = rng.lognormal(0.0, cfg.item_popularity_sigma, n_items)
    # Cold start: some ads only become available late in the range.
    span = days * SECONDS_PER_DAY
    cold_window = min(cfg.cold_start_days, days) * SECONDS_PER_DAY
    n_cold = int(round(cfg.cold_start_fraction * n_ad))
    cold = np.zeros(n_items, bool)
    cold[n_content + rng.permutation(n_ad)[:n_cold]] = True
    available_from = np.zeros(n_items, np.int64)  # seconds since the start
    available_from[cold] = span - cold_window + (
        rng.random(n_cold) * 0.9 * cold_window).astype(np.int64)
    weight = popularity * np.where(cold, cfg.cold_start_boost, 1.0)

    # ---- events, in timestamp order.
    rng = event_rng
    t = np.sort(rng.integers(0, span, examples))  # seconds since the start
    is_ad = rng.random(examples) < cfg.ad_share
    user = _draw(rng, activity, examples)
    ad_idx = np.flatnonzero(is_ad)
    content_idx = np.flatnonzero(~is_ad)
    scenario = np.empty(examples, np.int64)
    scenario[content_idx] = _scenarios(rng, len(content_idx), cfg.content_scenarios, 0)
    scenario[ad_idx] = _scenarios(rng, len(ad_idx), cfg.ad_scenarios,
                                  len(cfg.content_scenarios))
    item = np.empty(examples, np.int64)
    item[content_idx] = _draw(rng, weight[:n_content], len(content_idx))
    # Ads by popularity among the ads available at t: redraw the unavailable ones.
    todo = ad_idx
    for _ in range(1000):
        item[todo] = n_content + _draw(rng, weight[n_content:], len(todo))
        todo = todo[available_from[item[todo]] > t[todo]]
        if len(todo) == 0:
            break
    else:
        raise RuntimeError("could not draw available ads; is cold_start_fraction near 1?")

    # ---- labels from the known probability.
    rng = label_rng
    scenario_bias = np.array([b for _, _, b in cfg.content_scenarios + cfg.ad_scenarios])
    dot = np.einsum("ij,ij->i", u_vec[user], v_vec[item])  # [examples]
    rest = scenario_bias[scenario] + item_bias[item] + cfg.alpha * dot
    domain_bias = {
        "content": _calibrate_bias(rest[content_idx], cfg.content_rate),
        "ad": _calibrate_bias(rest[ad_idx], cfg.ad_rate),
    }
    p_label = _sigmoid(np.where(is_ad, domain_bias["ad"], domain_bias["content"]) + rest)
    label = rng.random(examples) < p_label
    p_conversion = _sigmoid(cfg.conversion_bias + cfg.conversion_alpha * dot)
    conversion = is_ad & label & (rng.random(examples) < p_conversion)
    # The score a model could reach from demographics and item features alone (no ids).
    feature_bias = np.where(np.arange(n_items) < n_content, 0.0,
                            adv_bias[np.maximum(item_adv, 0)])
    feature_score = scenario_bias[scenario] + feature_bias[item] + cfg.alpha * np.einsum(
        "ij,ij->i", _normalize(u_group)[user], _normalize(v_feat)[item])

    # ---- columns of the schema.
    item_vocab = _vocab("c", n_content) + _vocab("a", n_ad)
    hist_offsets, hist_items = common.user_history(user, t, item, label)
    tags_offsets, tags = common.ragged_take(tag_offsets, tag_values, item)
    scenario_names = [name.encode() for name, _, _ in cfg.content_scenarios + cfg.ad_scenarios]
    timestamp = START_TIMESTAMP + t
    columns: dict[str, common.Column] = {
        features.USER_ID: common.BytesColumn(_vocab("u", n_users), user),
        features.ITEM_ID: common.BytesColumn(item_vocab, item),
        features.DOMAIN: common.BytesColumn(
            [features.DOMAIN_CONTENT, features.DOMAIN_AD], is_ad.astype(np.int64)),
        features.SCENARIO: common.BytesColumn(scenario_names, scenario),
        features.TIMESTAMP: common.IntColumn(timestamp),
        features.USER_AGE: common.IntColumn(age[user]),
        features.USER_GENDER: common.BytesColumn(list(GENDERS), gender[user]),
        features.USER_GEO: common.BytesColumn(_vocab("geo", cfg.num_geos), geo[user]),
        features.USER_HIST_ITEMS: common.BytesColumn(item_vocab, hist_items, hist_offsets),
        features.ITEM_CATEGORY: common.BytesColumn(
            _vocab("cat", cfg.num_categories), category[item]),
        features.ITEM_TAGS: common.BytesColumn(_vocab("tag", cfg.num_tags), tags, tags_offsets),
        features.ITEM_ADVERTISER: common.BytesColumn(
            [b""] + _vocab("adv", cfg.num_advertisers), item_adv[item] + 1),
        features.LABEL: common.IntColumn(label.astype(np.int64)),
        features.CONVERSION: common.IntColumn(conversion.astype(np.int64)),
    }
    is_cold = cold[item]
    user_ids = np.char.add("u", np.arange(n_users).astype(str))  # the oracle's and users.npz's
    oracle = {
        "timestamp": timestamp.astype(np.int64),
        "is_ad": is_ad,
        "item_id": np.array([v.decode() for v in item_vocab])[item],
        "user_id": user_ids[user],
        "p_label": p_label.astype(np.float32),
        "label": label.astype(np.int8),
        "cold_start": is_cold,
        "feature_score": feature_score.astype(np.float32),
    }
    # Each user's ground-truth interest group: the category nearest to u_vec (what the user
    # engages with most in expectation, before item biases and popularity).
    users = {
        "user_id": user_ids,
        "interest": np.argmax(u_vec @ _normalize(cat_vec).T, axis=1).astype(np.int64),
        "geo": geo.astype(np.int64), "age": age.astype(np.int64),
        "gender": gender.astype(np.int64), "activity": activity.astype(np.float32),
    }
    cold_ad = is_ad & is_cold
    facts = {
        "counts": {"content": int(len(content_idx)), "ad": int(len(ad_idx))},
        "scenarios": {name.decode(): int(c) for name, c in
                      zip(scenario_names, np.bincount(scenario, minlength=len(scenario_names)),
                          strict=True)},
        "time_range": {"min": int(timestamp[0]), "max": int(timestamp[-1])},
        "users": n_users,
        "items": {"content": n_content, "ad": n_ad},
        "cold_start_items": n_cold,
        "cold_start_examples": int(cold_ad.sum()),
        "oracle_auc_ad": auc(label[is_ad], p_label[is_ad]),
        "oracle_auc_content": auc(label[~is_ad], p_label[~is_ad]),
        "oracle_auc_cold_start": auc(label[cold_ad], p_label[cold_ad]),
        "features_only_auc_ad": auc(label[is_ad], feature_score[is_ad]),
        "features_only_auc_content": auc(label[~is_ad], feature_score[~is_ad]),
        "label_rate": {"content": _mean(label[~is_ad]), "ad": _mean(label[is_ad])},
        "conversion_rate_ad": _mean(conversion[is_ad]),
        "mean_history_length": float(hist_offsets[-1] / examples),
        "ground_truth": {"domain_bias": domain_bias, **dataclasses.asdict(cfg)},
    }
    return Simulation(columns=columns, oracle=oracle, facts=facts, users=users)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def _check_args(examples: int, days: int) -> None:
    if not isinstance(examples, (int, np.integer)) or examples <= 0:
        raise ValueError(f"examples must be a positive integer, got {examples!r}")
    if not isinstance(days, (int, np.integer)) or days <= 0:
        raise ValueError(f"days must be a positive integer, got {days!r}")


def generate(
    out_dir: str | os.PathLike,
    examples: int,
    seed: int = 0,
    days: int = 14,
    config: SimConfig = SimConfig(),
    num_shards: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Simulates and writes a data set: shards, ``manifest.json``, ``oracle.npz`` and
    ``users.npz``.

    Args:
        out_dir: output directory; must be missing or empty unless ``overwrite``.
        examples: number of samples (> 0).
        seed: random seed; the same arguments give byte-identical files.
        days: days of data from 2026-01-01T00:00:00Z (> 0).
        config: the simulated world's parameters.
        num_shards: shards to write; default ``common.default_num_shards(examples)``.
        workers: processes writing shards (the output does not depend on it).
        overwrite: replace a previous run's files in ``out_dir``.
        progress: tqdm progress bar on stderr.

    Returns:
        The manifest (also written as ``manifest.json``).
    """
    _check_args(examples, days)
    started = time.perf_counter()
    out = common.prepare_out_dir(out_dir, overwrite)
    sim = simulate(examples, seed, days, config)
    shards = common.write_examples(out, sim.columns, num_shards, workers, progress)
    np.savez(out / ORACLE, **sim.oracle)
    np.savez(out / USERS_FILE, **sim.users)
    seconds = time.perf_counter() - started
    manifest = {
        "source": "synthetic",
        "examples": examples,
        "seed": seed,
        "days": days,
        "start_timestamp": START_TIMESTAMP,
        "shards": shards,
        "oracle": ORACLE,
        "users_truth": USERS_FILE,
        **sim.facts,
        "seconds": round(seconds, 3),
        "examples_per_second": round(examples / seconds, 1),
    }
    common.write_manifest(out, manifest)
    return manifest


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.sources.synthetic",
        description="Writes a simulated content + ads data set with a known ground truth.")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--examples", required=True, type=_positive_int,
                        help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--days", type=_positive_int, default=14,
                        help="days of data from 2026-01-01 (default 14)")
    parser.add_argument("--shards", type=_positive_int, default=None,
                        help="number of shards (default: ~250k examples each, even)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="writer processes (default: min(2, cpus))")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run's files in a non-empty --out")
    parser.add_argument("--json", action="store_true",
                        help="print the manifest as one JSON line at the end")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    try:
        manifest = generate(args.out, args.examples, seed=args.seed, days=args.days,
                            num_shards=args.shards, workers=args.workers,
                            overwrite=args.overwrite)
    except FileExistsError as e:
        parser.error(str(e))
    counts = manifest["counts"]

    def fmt(value: float | None) -> str:  # None: a slice with one class (AUC undefined)
        return "n/a" if value is None else f"{value:.4f}"

    print(
        f"wrote {manifest['examples']} examples ({counts['content']} content, {counts['ad']} ad)"
        f" to {args.out} in {len(manifest['shards'])} shards, {manifest['seconds']:.1f} s "
        f"({manifest['examples_per_second']:.0f} examples/s)\n"
        f"label rate content {manifest['label_rate']['content']:.3f}, "
        f"ad {manifest['label_rate']['ad']:.3f}; oracle AUC content "
        f"{fmt(manifest['oracle_auc_content'])}, ad {fmt(manifest['oracle_auc_ad'])}, "
        f"cold-start ad {fmt(manifest['oracle_auc_cold_start'])}"
    )
    if args.json:
        print(common.to_json(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
