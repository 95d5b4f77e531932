"""The Light-weight Embedding Evaluator (paper Sec. 4.3.3), without TFX: is a candidate
representation version more useful to a downstream model than the live one?

A small proxy ranker (`trainer.downstream`, `lfm4ads` mode, few parameters, few epochs) is
trained twice on the same recent downstream rows, once with the candidate tables' UR(u),
IR(i), CR(u), CR(i) as features and once with the reference's, and both are tested on the same
later rows:

    train   = the ad rows of a recent window (in the pipeline: the last days before the eval
              split), test = later ad rows (the eval split, which the upstream did not train on)
    AUC_c   = AUC(test | proxy trained with the candidate tables)
    AUC_r   = AUC(test | proxy trained with the reference: the live tables, or no
              representations (`none` mode) before the first publication)
    delta   = AUC_c - AUC_r

Both proxies start from the same seed and see the same rows in the same order, so the delta
is paired: `trainer.paired_comparison` resamples the test users (the label draw; the proxy's
own training noise comes on top) and gives its standard error, 95% interval, the smallest
difference the test rows could resolve (`detectable_effect`, 2.8 SE) and a verdict:
`better` (interval above 0), `worse` (interval below `-tolerance`) or `inconclusive`.

The policy (`publishes`), per verdict and reference:

    reference       better    inconclusive    worse        too few clicks to measure
    live tables     publish   keep live       keep live    keep live
    none (first)    publish   publish         hold         publish

A candidate replaces the live tables only when it is shown better; while nothing is live,
any candidate not shown worse than no representations (by more than `tolerance`) goes live,
since there is nothing to protect. Too few test clicks (`min_test_clicks`) measure nothing and
count as inconclusive; the proxies are then not trained at all.

The features are the tables as they would be served: each key's one stored row, looked up by
the row's user and item (a key a table lacks is a cold start: zeros, found 0). They are not
point in time: the candidate's CR(u), CR(i) already fold in the window's own impressions (the
upstream's view of those rows' features, never their labels). What this catches that the
guard's statistics cannot is a table whose vectors are fine but belong to the wrong keys, a
model that learnt less, or a representation that stopped carrying what the downstream uses.
With the 108 test clicks of the quickstart's one-day eval window the detectable effect is
about 0.08 AUC: only a longer window (`eval_days`) or more traffic resolves smaller ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from common import features
from common.representations import tables
from trainer import paired_comparison
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream import point_in_time
from trainer.downstream.train import predict, train_ranker
from trainer.evaluation import auc, expected_auc

# A lookup time after every stored row: the tables as served, not as of each row.
_AFTER_EVERYTHING = np.iinfo(np.int64).max


class TooFewRows(ValueError):
    """The window's test rows cannot give an AUC worth comparing (too few clicks)."""


@dataclasses.dataclass(frozen=True)
class LeeConfig:
    """The proxy and the comparison (module doc). `tolerance`: how far below the reference a
    candidate must be shown to be to count as `worse`; `resamples`: bootstrap resamples of the
    test users; `seed`: the proxies' and the resamples' seed."""

    tolerance: float = 0.01
    embedding_dim: int = 8
    num_cross_layers: int = 1
    mlp_hidden: tuple[int, ...] = (64,)
    epochs: int = 2
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    resamples: int = paired_comparison.RESAMPLES
    # Fewer clicks (or non-clicks) than this among the test rows: nothing measured
    # (`TooFewRows`; inconclusive).
    min_test_clicks: int = paired_comparison.MIN_CLICKS

    def __post_init__(self):
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def ranker(self, mode: str) -> downstream_config.DownstreamConfig:
        return downstream_config.DownstreamConfig(mode=mode, embedding_dim=self.embedding_dim,
                                  num_cross_layers=self.num_cross_layers,
                                  mlp_hidden=tuple(self.mlp_hidden))

    def training(self) -> downstream_config.DownstreamTrainConfig:
        return downstream_config.DownstreamTrainConfig(epochs=self.epochs,
                                                       batch_size=self.batch_size,
                                       learning_rate=self.learning_rate, seed=self.seed)


def table_source(directories: Mapping[str, str]) -> point_in_time.HistorySource:
    """The four tables from their directories (`{table: dir}`); every table must be there."""
    missing = [t for t in tables.TABLES if t not in directories]
    if missing:
        raise ValueError(f"the representation version lacks the tables {missing}; "
                         f"expected {list(tables.TABLES)}")
    return point_in_time.HistorySource.from_tables({t: directories[t] for t in tables.TABLES})


def served_features(rows: ranker_data.Rows, source: point_in_time.RepresentationSource,
                    names: Sequence[str] = downstream_config.MODE_FEATURES[
                        downstream_config.LFM4ADS]) -> ranker_data.Rows:
    """`rows` plus each representation feature as the tables serve it now (module doc)."""
    n = ranker_data.size(rows)
    extra = point_in_time.attach(source, rows[features.USER_ID], rows[features.ITEM_ID],
                     np.full(n, _AFTER_EVERYTHING, np.int64), names)
    return {**rows, **extra}


def publishes(comparison: str, live: bool) -> bool:
    """The policy (module doc): does a candidate with this verdict (`better`, `worse`,
    `inconclusive`) go live, when tables are `live` already or not?"""
    if comparison not in paired_comparison.VERDICTS:
        raise ValueError(
            f"unknown verdict {comparison!r}; expected one of {paired_comparison.VERDICTS}"
        )
    return comparison == paired_comparison.BETTER if live else comparison != paired_comparison.WORSE


def proxy_auc(config: LeeConfig, mode: str, train: ranker_data.Rows, test: ranker_data.Rows,
              probabilities: np.ndarray | None = None) -> dict:
    """Trains the proxy in `mode` on `train`; its AUC (and expected AUC) on `test`."""
    model, fit = train_ranker(config.ranker(mode), config.training(), train)
    scores = predict(model, test)
    return {"auc": auc(test[features.LABEL], scores), "scores": scores,
            "expected_auc": (expected_auc(probabilities, scores)
                             if probabilities is not None else None),
            "seconds": fit["seconds"]}


def evaluate(train: ranker_data.Rows, test: ranker_data.Rows,
             candidate: point_in_time.RepresentationSource,
             reference: point_in_time.RepresentationSource | None, config: LeeConfig = LeeConfig(),
             probabilities: np.ndarray | None = None) -> dict:
    """The candidate against the reference (`None`: no representations): proxies trained on
    the ad rows `train`, tested on the later ad rows `test`. `probabilities`: the test rows'
    true click probabilities where known (the simulator's oracle), for the expected AUCs.

    Returns `comparison` (better | worse | inconclusive), `blessed` (whether the policy
    publishes the candidate, `publishes`), `delta`, `delta_stderr`, `delta_low`, `delta_high`
    (the 95% interval), `detectable_effect`, `tolerance`, `candidate_auc`, `reference_auc`
    (and their expected AUCs), `reference` (`"live"` or `"none"`), `train_rows`,
    `test_rows`, `test_clicks`, `test_users`, `seconds`.
    Raises `TooFewRows` when the test rows hold fewer than `min_test_clicks` clicks or
    non-clicks (an AUC on them says nothing).
    """
    started = time.perf_counter()
    p_test = None if probabilities is None else np.asarray(probabilities, np.float64)
    if not ranker_data.size(train):
        raise TooFewRows("the LEE has no training rows; give it a longer window")
    clicks = int(np.sum(test[features.LABEL]))
    if min(clicks, ranker_data.size(test) - clicks) < max(1, config.min_test_clicks):
        raise TooFewRows(
            f"the LEE test rows ({ranker_data.size(test)} rows, {clicks} clicks) are too few "
            f"to compare AUCs (min_test_clicks={config.min_test_clicks}); give it "
            "a longer window (eval_days)"
        )
    names = downstream_config.MODE_FEATURES[downstream_config.LFM4ADS]
    with_candidate = proxy_auc(config, downstream_config.LFM4ADS,
                               served_features(train, candidate, names),
                               served_features(test, candidate, names), p_test)
    if reference is None:
        with_reference = proxy_auc(config, downstream_config.NONE, train, test, p_test)
    else:
        with_reference = proxy_auc(config, downstream_config.LFM4ADS,
                                   served_features(train, reference, names),
                                   served_features(test, reference, names), p_test)
    if with_candidate["auc"] is None or with_reference["auc"] is None:
        raise ValueError("the LEE proxy gave no AUC on its test rows")
    c = paired_comparison.paired_comparison(test[features.USER_ID], test[features.LABEL],
                                            with_candidate["scores"],
                             with_reference["scores"], tolerance=config.tolerance,
                             resamples=config.resamples, seed=config.seed,
                             min_clicks=config.min_test_clicks)
    return {
        "comparison": c.verdict,
        "blessed": publishes(c.verdict, live=reference is not None),
        "delta": round(c.delta, 6),
        "delta_stderr": _rounded(c.stderr),
        "delta_low": _rounded(c.low),
        "delta_high": _rounded(c.high),
        "detectable_effect": _rounded(c.detectable_effect),
        "tolerance": config.tolerance,
        "candidate_auc": round(with_candidate["auc"], 6),
        "reference_auc": round(with_reference["auc"], 6),
        "candidate_expected_auc": with_candidate["expected_auc"],
        "reference_expected_auc": with_reference["expected_auc"],
        "reference": "none" if reference is None else "live",
        "train_rows": ranker_data.size(train),
        "test_rows": ranker_data.size(test),
        "test_clicks": clicks,
        "test_users": c.users,
        "min_test_clicks": config.min_test_clicks,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
