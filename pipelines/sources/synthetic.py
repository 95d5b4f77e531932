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

Worlds (``--world``, ``WORLDS``; ``SimConfig`` fields in parentheses). ``two_tower`` (the
default, ``SimConfig()``) is the world above: one interest per user, fixed for all days, so one
user vector times one item vector explains every label. ``dynamic`` turns on three effects that
no such score can express, with the same users, items and exposures (each effect draws from its
own random stream, only when on, so every two_tower draw is untouched and ``two_tower`` output
is byte-identical to before these effects existed):

* several interests per user (``interests_per_user = k``, ``interest_spread = s``): the
  user's interest ``j = 1..k`` starts at ``u_j(0) = normalize(G_geo[geo] + G_age[age] +
  G_gender[gender] + s_user * eps + s * eps_j)`` (the user's own ``eps`` shared, ``eps_j`` per
  interest; with ``k = 1, s = 0`` this is ``u_vec``);
* interests that move (``interest_drift = r``): each interest takes a daily random-walk step,
  ``u_j(d+1) = normalize(u_j(d) + r * eps_{j,d})``, and a sample at time ``t`` (seconds from
  the start) sees day ``d(t) = floor(t / 86400)``'s ``u_j(d(t))``; by symmetry
  ``E<u_j(0), u_j(d)> = q^d`` with ``q = E[(1 + r z_1) / |e_1 + r z|]`` (``z`` standard normal
  in ``latent_dim = n`` dimensions), ``q ~= 1 - (n-1) r^2 / 2``;
* a context cross (``context_scale = c``): a table ``X[scenario, category] ~ N(0, c^2)``;

and the oracle's probability (what the labels are drawn from, exactly) becomes

  ``p = sigmoid(bias_domain + bias_scenario + item_bias + alpha * max_j <u_j(d(t)), v_vec>
  + X[scenario, category])``

(``bias_domain`` calibrated as before; two_tower is ``k = 1``, ``r = 0``, ``X = 0``).
``conversion`` uses the same match, ``sigmoid(conversion_bias + conversion_alpha * max_j
<u_j(d(t)), v_vec>)`` (no context term); ``feature_score`` adds ``X[scenario, category]``
(both are features) to the two_tower feature score, whose user part stays the demographic
``normalize(G_geo + G_age + G_gender)`` (the common start of the walks). The **static
single-vector score** is ``sigmoid(bias_domain + bias_scenario + item_bias + alpha * <u_bar,
v_vec>)`` with ``u_bar = mean over the days d = 0..days-1 and the interests j of u_j(d)``
(uniform over the days of the range, not weighted by the user's own events, which are uniform
in time anyway; not renormalised: the time- and mixture-average of the interest term's user
side) and no context cross: what one user vector fixed for the whole range, times the item
vector, reaches. In two_tower ``u_bar = u_vec`` exactly and it is the oracle. The ``dynamic``
values, ``k = 3``, ``s = 1.0``, ``r = 0.15``, ``c = 0.7``, make each effect clearly present:
``s`` is about the size of the group effects (each coordinate's group std is ~1.0), so the
three interests differ; ``r`` gives ``q = 0.928``: an interest's correlation with itself is
0.93 a day later and 0.38 from the first day to the last of 14, so recent behaviour says more
than old behaviour; ``c`` is about half the spread of the interest term (``alpha * <u, v>``
has std ~1.2). At
200k examples (seed 1) each effect alone opens a gap of 0.02 to 0.04 ad AUC between the oracle
and the static score (k: 0.760 vs 0.738, drift: 0.799 vs 0.759, context: 0.824 vs 0.798), all
three 0.10 (0.781 vs 0.681), while the oracle stays near two_tower's 0.805.

Outputs in ``--out``: the shards (``shards.write_examples``, timestamp order), ``oracle.npz``
with one entry per record in record order (``timestamp`` int64, ``is_ad`` bool, ``item_id`` and
``user_id`` str, ``p_label`` float32 = the true probability, ``label`` int8, ``cold_start`` bool,
``feature_score`` float32 = the true logit without the individual user and item parts)
so a trainer can compute the oracle AUC on its own evaluation window, ``users.npz`` with one
entry per user (``user_id`` str, ``interest`` int64 = the category whose vector is closest to
the user's latent interest ``u_bar`` (``u_vec`` in two_tower), the user's ground-truth interest
group; ``geo``, ``age``, ``gender`` int64; ``activity`` float32), and ``manifest.json``:
``examples, seed, days, start_timestamp, shards, world`` (a name of ``WORLDS``, or ``custom``),
``counts {content, ad}, scenarios, time_range {min, max}, users, items {content, ad},
cold_start_items, cold_start_examples, oracle_auc_ad, oracle_auc_content,
oracle_auc_cold_start`` (AUC of ``p_label`` on all ad / content / cold-start ad samples; null
when undefined), ``static_auc_ad/_content`` (AUC of the static single-vector score: its gap to
the oracle is the headroom a cross or time-aware representation could fill),
``features_only_auc_ad/_content`` (AUC of the true score without the individual user and item
parts: what demographics and item features alone reach),
``label_rate {content, ad}, conversion_rate_ad, mean_history_length, ground_truth`` (calibrated
domain biases and the ``SimConfig``), ``seconds, examples_per_second``. The same arguments give
byte-identical shards.

Usage::

    python -m pipelines.sources.synthetic --out /tmp/synth --examples 200000 --seed 1 --json
    python -m pipelines.sources.synthetic --out /tmp/dyn --examples 200000 --seed 1 \
        --world dynamic --json

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

from common import cli, features
from pipelines.sources.example_encoder import BytesColumn, Column, IntColumn
from pipelines.sources.history import ragged_take, user_history
from pipelines.sources.output_dir import prepare_out_dir, to_json, write_manifest
from pipelines.sources.shards import write_examples
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
    # The dynamic world's three effects, all off by default (see the module docstring).
    interests_per_user: int = 1  # k interest vectors per user; a click follows the best match
    interest_spread: float = 0.0  # std (per dimension) of each interest's own part
    interest_drift: float = 0.0  # std (per dimension) of an interest's daily random-walk step
    context_scale: float = 0.0  # std of the [scenarios, categories] table added to the logit

    def __post_init__(self):
        k = self.interests_per_user
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"SimConfig.interests_per_user must be a positive integer, got {k!r}")
        for name in ("interest_spread", "interest_drift", "context_scale"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))
                    or not np.isfinite(value) or value < 0):
                raise ValueError(f"SimConfig.{name} must be a finite number >= 0, got {value!r}")
        if k > 1 and self.interest_spread == 0:
            raise ValueError(
                f"SimConfig.interest_spread must be > 0 when interests_per_user > 1 (else the "
                f"{k} interests coincide), got {self.interest_spread!r}")


# The named worlds of ``--world``; the module docstring argues ``dynamic``'s values.
WORLDS: dict[str, SimConfig] = {
    "two_tower": SimConfig(),
    "dynamic": SimConfig(interests_per_user=3, interest_spread=1.0, interest_drift=0.15,
                         context_scale=0.7),
}
DEFAULT_WORLD = "two_tower"
CUSTOM_WORLD = "custom"  # the manifest's ``world`` for a config that is none of ``WORLDS``


def resolve_world(world: str | None = None,
                  config: SimConfig | None = None) -> tuple[str, SimConfig]:
    """The world's name and parameters from a name of ``WORLDS`` or a ``SimConfig`` (at most
    one of them; neither: ``two_tower``). A config equal to a named world takes its name,
    any other is ``custom``."""
    if world is not None and config is not None:
        raise ValueError(f"pass world or config, not both (got world={world!r} and a config)")
    if config is not None:
        if not isinstance(config, SimConfig):
            raise TypeError(f"config must be a SimConfig, got {type(config).__name__}")
        return next((name for name, c in WORLDS.items() if c == config), CUSTOM_WORLD), config
    world = DEFAULT_WORLD if world is None else world
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; one of {sorted(WORLDS)}")
    return world, WORLDS[world]


@dataclasses.dataclass
class Simulation:
    """One simulated data set: the columns to write, the oracle and facts for the manifest."""

    columns: dict[str, Column]
    oracle: dict[str, np.ndarray]
    facts: dict[str, Any]
    users: dict[str, np.ndarray]  # per-user ground truth (users.npz)
    # Everything the labels were drawn from (not written): see ``simulate``.
    truth: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


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


def simulate(examples: int, seed: int = 0, days: int = 14, config: SimConfig | None = None,
             world: str | None = None) -> Simulation:
    """Simulates ``examples`` samples over ``days`` days; deterministic given the arguments.

    Args:
        examples: number of samples (> 0).
        seed: random seed.
        days: length of the time range starting at 2026-01-01T00:00:00Z (> 0).
        config: the world's parameters, or None for ``world``'s.
        world: a name of ``WORLDS`` (default ``two_tower``); not with ``config``.

    Returns:
        A ``Simulation`` whose columns are in timestamp order. Its ``truth`` holds what the
        labels were drawn from: ``interests`` ``[days or 1, k, users, dim]`` (one day when
        nothing drifts), ``day`` ``[examples]`` (the index into its first axis), ``user``,
        ``item``, ``scenario`` ``[examples]``, ``item_vec`` ``[items, dim]``, ``item_bias``,
        ``item_category`` ``[items]``, ``scenario_bias`` ``[scenarios]``, ``context``
        ``[scenarios, categories]`` (zeros when off), ``domain_bias`` ``[2]`` (content, ad),
        ``mean_interest`` ``[users, dim]`` (the static score's user vector).
    """
    _check_args(examples, days)
    world_name, cfg = resolve_world(world, config)
    # Streams 0-2 are the two_tower world's; each dynamic effect draws from its own further
    # stream, only when it is on, so turning effects on leaves every other draw untouched.
    streams = np.random.SeedSequence(seed).spawn(6)
    world_rng, event_rng, label_rng, spread_rng, drift_rng, context_rng = (
        np.random.default_rng(s) for s in streams)
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
    u_own = u_group + rng.normal(0, cfg.user_individual_scale, (n_users, dim))
    u_vec = _normalize(u_own)
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

    # ---- the dynamic effects (none in two_tower: one interest, no drift, no context).
    interests = _interests(cfg, u_own, u_vec, days, spread_rng, drift_rng)  # [D, k, users, dim]
    day = (np.minimum(t // SECONDS_PER_DAY, days - 1) if len(interests) > 1
           else np.zeros(examples, np.int64))  # [examples], index into interests' first axis
    n_scenarios = len(cfg.content_scenarios) + len(cfg.ad_scenarios)
    context = (context_rng.normal(0, cfg.context_scale, (n_scenarios, cfg.num_categories))
               if cfg.context_scale > 0 else None)  # [scenarios, categories]
    mean_interest = interests.mean(axis=(0, 1))  # [users, dim]; u_vec itself in two_tower

    # ---- labels from the known probability.
    rng = label_rng
    scenario_bias = np.array([b for _, _, b in cfg.content_scenarios + cfg.ad_scenarios])
    dot = _best_match(interests, day, user, v_vec[item])  # [examples]
    rest = scenario_bias[scenario] + item_bias[item] + cfg.alpha * dot
    if context is not None:
        rest = rest + context[scenario, category[item]]
    domain_bias = {
        "content": _calibrate_bias(rest[content_idx], cfg.content_rate),
        "ad": _calibrate_bias(rest[ad_idx], cfg.ad_rate),
    }
    bias_of_row = np.where(is_ad, domain_bias["ad"], domain_bias["content"])
    p_label = _sigmoid(bias_of_row + rest)
    label = rng.random(examples) < p_label
    p_conversion = _sigmoid(cfg.conversion_bias + cfg.conversion_alpha * dot)
    conversion = is_ad & label & (rng.random(examples) < p_conversion)
    # The score a model could reach from demographics and item features alone (no ids).
    feature_bias = np.where(np.arange(n_items) < n_content, 0.0,
                            adv_bias[np.maximum(item_adv, 0)])
    feature_score = scenario_bias[scenario] + feature_bias[item] + cfg.alpha * np.einsum(
        "ij,ij->i", _normalize(u_group)[user], _normalize(v_feat)[item])
    if context is not None:  # scenario and category are features
        feature_score = feature_score + context[scenario, category[item]]
    # The best static single-vector score: the user's interest averaged over days and over its
    # k interests, times the item vector, plus every bias; no context cross.
    p_static = _sigmoid(bias_of_row + scenario_bias[scenario] + item_bias[item]
                        + cfg.alpha * np.einsum("ij,ij->i", mean_interest[user], v_vec[item]))

    # ---- columns of the schema.
    item_vocab = _vocab("c", n_content) + _vocab("a", n_ad)
    hist_offsets, hist_items = user_history(user, t, item, label)
    tags_offsets, tags = ragged_take(tag_offsets, tag_values, item)
    scenario_names = [name.encode() for name, _, _ in cfg.content_scenarios + cfg.ad_scenarios]
    timestamp = START_TIMESTAMP + t
    columns: dict[str, Column] = {
        features.USER_ID: BytesColumn(_vocab("u", n_users), user),
        features.ITEM_ID: BytesColumn(item_vocab, item),
        features.DOMAIN: BytesColumn(
            [features.DOMAIN_CONTENT, features.DOMAIN_AD], is_ad.astype(np.int64)),
        features.SCENARIO: BytesColumn(scenario_names, scenario),
        features.TIMESTAMP: IntColumn(timestamp),
        features.USER_AGE: IntColumn(age[user]),
        features.USER_GENDER: BytesColumn(list(GENDERS), gender[user]),
        features.USER_GEO: BytesColumn(_vocab("geo", cfg.num_geos), geo[user]),
        features.USER_HIST_ITEMS: BytesColumn(item_vocab, hist_items, hist_offsets),
        features.ITEM_CATEGORY: BytesColumn(
            _vocab("cat", cfg.num_categories), category[item]),
        features.ITEM_TAGS: BytesColumn(_vocab("tag", cfg.num_tags), tags, tags_offsets),
        features.ITEM_ADVERTISER: BytesColumn(
            [b""] + _vocab("adv", cfg.num_advertisers), item_adv[item] + 1),
        features.LABEL: IntColumn(label.astype(np.int64)),
        features.CONVERSION: IntColumn(conversion.astype(np.int64)),
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
    # Each user's ground-truth interest group: the category nearest to the user's mean interest
    # (u_vec in two_tower: what the user engages with most in expectation, before item biases
    # and popularity).
    users = {
        "user_id": user_ids,
        "interest": np.argmax(mean_interest @ _normalize(cat_vec).T, axis=1).astype(np.int64),
        "geo": geo.astype(np.int64), "age": age.astype(np.int64),
        "gender": gender.astype(np.int64), "activity": activity.astype(np.float32),
    }
    cold_ad = is_ad & is_cold
    facts = {
        "world": world_name,
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
        "static_auc_ad": auc(label[is_ad], p_static[is_ad]),
        "static_auc_content": auc(label[~is_ad], p_static[~is_ad]),
        "features_only_auc_ad": auc(label[is_ad], feature_score[is_ad]),
        "features_only_auc_content": auc(label[~is_ad], feature_score[~is_ad]),
        "label_rate": {"content": _mean(label[~is_ad]), "ad": _mean(label[is_ad])},
        "conversion_rate_ad": _mean(conversion[is_ad]),
        "mean_history_length": float(hist_offsets[-1] / examples),
        "ground_truth": {"domain_bias": domain_bias, **dataclasses.asdict(cfg)},
    }
    truth = {
        "interests": interests, "day": day, "user": user, "item": item, "scenario": scenario,
        "item_vec": v_vec, "item_bias": item_bias, "item_category": category,
        "scenario_bias": scenario_bias,
        "context": (np.zeros((n_scenarios, cfg.num_categories)) if context is None
                    else context),
        "domain_bias": np.array([domain_bias["content"], domain_bias["ad"]]),
        "mean_interest": mean_interest,
    }
    return Simulation(columns=columns, oracle=oracle, facts=facts, users=users, truth=truth)


def _interests(cfg: SimConfig, u_own: np.ndarray, u_vec: np.ndarray, days: int,
               spread_rng: np.random.Generator,
               drift_rng: np.random.Generator) -> np.ndarray:
    """Every user's interests on every day: ``[days, k, users, dim]`` (``[1, k, users, dim]``
    without drift; ``u_vec[None, None]`` itself in two_tower).

    ``u_j(0) = normalize(u_own + interest_spread * eps_j)`` (``u_own``: the user's group effects +
    individual part before normalising) and ``u_j(d+1) = normalize(u_j(d) + interest_drift *
    eps_{j,d})``, every ``eps`` standard normal ``[users, dim]``.
    """
    k = cfg.interests_per_user
    if cfg.interest_spread > 0:
        start = _normalize(u_own[None] + cfg.interest_spread * spread_rng.standard_normal(
            (k,) + u_own.shape))  # [k, users, dim]
    else:
        start = u_vec[None]  # k == 1 (SimConfig checks it)
    if cfg.interest_drift == 0 or days == 1:
        return start[None]
    out = np.empty((days,) + start.shape)
    out[0] = start
    for d in range(1, days):
        out[d] = _normalize(out[d - 1] + cfg.interest_drift * drift_rng.standard_normal(
            start.shape))
    return out


def _best_match(interests: np.ndarray, day: np.ndarray, user: np.ndarray,
                item_vec: np.ndarray) -> np.ndarray:
    """``max_j <u_j(day), v>`` per row: ``interests`` ``[D, k, users, dim]``, ``day`` and
    ``user`` ``[rows]``, ``item_vec`` ``[rows, dim]`` (the item of each row); gives ``[rows]``."""
    best = None
    for j in range(interests.shape[1]):
        dot = np.einsum("ij,ij->i", interests[day, j, user], item_vec)  # [rows]
        best = dot if best is None else np.maximum(best, dot)
    return best


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
    config: SimConfig | None = None,
    num_shards: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    world: str | None = None,
) -> dict[str, Any]:
    """Simulates and writes a data set: shards, ``manifest.json``, ``oracle.npz`` and
    ``users.npz``.

    Args:
        out_dir: output directory; must be missing or empty unless ``overwrite``.
        examples: number of samples (> 0).
        seed: random seed; the same arguments give byte-identical files.
        days: days of data from 2026-01-01T00:00:00Z (> 0).
        config: the simulated world's parameters, or None for ``world``'s.
        num_shards: shards to write; default ``shards.default_num_shards(examples)``.
        workers: processes writing shards (the output does not depend on it).
        overwrite: replace a previous run's files in ``out_dir``.
        progress: tqdm progress bar on stderr.
        world: a name of ``WORLDS`` (default ``two_tower``); not with ``config``.

    Returns:
        The manifest (also written as ``manifest.json``).
    """
    _check_args(examples, days)
    resolve_world(world, config)  # bad names fail before ``out_dir`` is touched
    started = time.perf_counter()
    out = prepare_out_dir(out_dir, overwrite)
    sim = simulate(examples, seed, days, config, world)
    shards = write_examples(out, sim.columns, num_shards, workers, progress)
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
    write_manifest(out, manifest)
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
    parser = cli.ArgumentParser(
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
    parser.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD,
                        help=f"the simulated world (default {DEFAULT_WORLD}; see the module "
                             "docstring)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run's files in a non-empty --out")
    world_flags = cli.add_dataclass_flags(
        parser, SimConfig, skip=("content_scenarios", "ad_scenarios"),
        title="SimConfig fields (over --world's; defaults: two_tower's)")
    args = parser.parse_args(argv)
    given = world_flags.given(args)  # a world of its own: the manifest names it "custom"
    world = ({"config": world_flags.build(args, WORLDS[args.world])} if given
             else {"world": args.world})

    def write() -> dict[str, Any]:
        try:
            return generate(args.out, args.examples, seed=args.seed, days=args.days,
                            num_shards=args.shards, workers=args.workers,
                            overwrite=args.overwrite, **world)
        except FileExistsError as e:
            cli.fail(str(e))

    return cli.run(write, args, show=lambda manifest: _summary(manifest, args.out),
                   to_json=to_json)


def _summary(manifest: dict[str, Any], out: Path) -> str:
    """The two lines the command prints."""
    counts = manifest["counts"]

    def fmt(value: float | None) -> str:  # None: a slice with one class (AUC undefined)
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"wrote {manifest['examples']} examples ({counts['content']} content, {counts['ad']} ad)"
        f" of world {manifest['world']} to {out} in {len(manifest['shards'])} shards, "
        f"{manifest['seconds']:.1f} s "
        f"({manifest['examples_per_second']:.0f} examples/s)\n"
        f"label rate content {manifest['label_rate']['content']:.3f}, "
        f"ad {manifest['label_rate']['ad']:.3f}; oracle AUC content "
        f"{fmt(manifest['oracle_auc_content'])}, ad {fmt(manifest['oracle_auc_ad'])}, "
        f"cold-start ad {fmt(manifest['oracle_auc_cold_start'])}; static single-vector AUC "
        f"content {fmt(manifest['static_auc_content'])}, ad {fmt(manifest['static_auc_ad'])}"
    )


if __name__ == "__main__":
    sys.exit(main())
