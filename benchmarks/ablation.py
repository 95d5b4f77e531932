"""Does transfer help? The paper's downstream ablations on one production-like time split.

    python -m benchmarks.ablation (--dataset synthetic|movielens | --data DIR) [--seeds 5]
        [--upstream frozen|daily] [--world two_tower|dynamic] [--sim_seed N] [--quick]
        [--cr_domains ad|all] [--cr_study] [--upstream_model JSON] [--json]

LFM4Ads (arXiv 2508.14948) Table 1 (the six rows: baseline, SUM dual / same branch, linear
fusion, no aggregation, LFM4Ads) plus `iim`, `lfm4ads_iim`, `finetune` and `retrieval`;
the layer study of Fig. 5 (Sec. 5.1.3); importance by masking (Sec. 5.3.1); upstreams trained
on content only, ads only and both (Sec. 5.3.6). `--cr_study` trains only the rows that say
whether CR carries weight (`CR_STUDY_ROWS`, with the masking table); `--upstream_model` gives
the upstream's `ModelConfig` fields (JSON), e.g. another CR reading.

Beside the mean ± std tables: what UR, IR, CR(u,i), CR(u), CR(i) hold on the test window's ad
rows (`representation_spectra`: dead units, top direction's share, participation ratio,
effective rank), and 95% intervals (`benchmarks.intervals`: the seeds' spread plus a paired
bootstrap over test users) of the masking drops and of `INTERVAL_PAIRS`.

Split, the same for every row, as in production: the upstream trains only on data before the
downstream window (all domains; `--split_days U,T,V` = U upstream days, then T days that train
the downstream ranker on the ad domain, V validation days, and the rest is the test window;
on other data `--split`, three fractions of the rows by time snapped to whole days, so the test
window holds at least 10% of the rows). Two protocols for the upstream (`--upstream`):
`frozen` trains it once on the first U days (default 10,2,1 days; 0.6,0.8,0.9); `daily`
pretrains it on them and then moves it forward one day at a time, each day scored by
yesterday's model and then trained on (`trainer.downstream.daily`; default 4,7,1 days;
0.3,0.8,0.9), so every ranker, `none` included, trains on every ad row after the first days,
and the rankers that load the upstream (`finetune`, the IIMs) load it as the validation window
begins. Under both, the harness checks that every request from the downstream windows on was
scored by a model trained only on earlier data (`replay.check_unseen`).
Every downstream row sees UR(u), IR(i), CR(u), CR(i) as of strictly before its timestamp, from
the upstream replayed over the traffic as the online loop would (`trainer.downstream.
replay`; CR(u), CR(i) fold the CR(u,i) of the requests `--cr_domains` selects: ad requests
by default, paper Sec. 4.3.1, or all of them), and `distill` the upstream's ad prediction on
the row itself by the model that scored it.

Data no one tuned on: with `--dataset synthetic` and no `--sim_seed`, study seed s reads the
simulated world of seed 101 + s (its own data, split and test window); seed 1 is the
development world every default was chosen on (`--sim_seed 1` reads it for every seed).

Downstream settings are the `DownstreamConfig` / `DownstreamTrainConfig` defaults, shared by
every mode; each run stops early on the validation window's AUC; the test window is only read
for the figures.

Metrics per row: AUC (mean ± std over seeds), the AUC in expectation over the labels' draw
where the synthetic oracle exists (far less noisy; the metric for orderings on synthetic data),
GAUC, logloss, cold-start AUC (test items absent from the downstream training window). Seed s
trains its own upstreams and downstream models. `--json` prints one JSON object as the last
line: `{"rows", "layers", "domains", "importance", "seconds", ...}`.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks import datasets, intervals
from common import cli, features, signatures
from common.representations import cr_folding, tables
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS
from common.representations.spectrum import spectrum
from trainer import data_input
from trainer.config import ModelConfig, TrainConfig
from trainer.downstream import config as downstream_config
from trainer.downstream import daily, point_in_time, replay
from trainer.downstream import data as ranker_data
from trainer.downstream import train as downstream_train
from trainer.downstream.ranker import FIELD_GROUPS
from trainer.export import export_saved_model
from trainer.train import fit_and_evaluate

DAY = features.DAY
IIM_WARM = "iim (warm start)"
TABLE_ROWS = (downstream_config.NONE, downstream_config.UR, downstream_config.UR_SAME_BRANCH,
              downstream_config.UR_IR, downstream_config.CR_LINEAR, downstream_config.CR_LATEST,
              downstream_config.LFM4ADS,
              downstream_config.DISTILL, downstream_config.IIM, IIM_WARM,
              downstream_config.LFM4ADS_IIM, downstream_config.FINETUNE,
              downstream_config.RETRIEVAL)
# How the upstream that feeds the rankers is trained (issue 26 §1): `frozen` trains it once on
# the days before the downstream windows; `daily` pretrains it on those days and then moves it
# forward one day at a time (`trainer.downstream.daily`): each day scored by yesterday's model.
FROZEN, DAILY, PROTOCOLS = daily.FROZEN, daily.DAILY, daily.PROTOCOLS
# Default split (days on the 14-day synthetic data, fractions of the rows elsewhere): the
# upstream's days, the rankers' training days, the validation days; the rest is the test window.
# Under `daily` every row after the upstream's first days is a row the rankers train on.
DEFAULT_SPLIT_DAYS = {FROZEN: "10,2,1", DAILY: "4,7,1"}
DEFAULT_SPLIT = {FROZEN: "0.6,0.8,0.9", DAILY: "0.3,0.8,0.9"}
# `--dataset synthetic` without `--sim_seed`: study seed s reads the simulated world of seed
# HELD_OUT_SIM_SEED + s, which no development choice read (seed 1 is the development world).
HELD_OUT_SIM_SEED = 101
METRICS = ("auc", "expected_auc", "gauc", "logloss", "auc_cold_start")
CR_GROUP = (signatures.CR_USER_FEATURE, signatures.CR_ITEM_FEATURE)
REPRESENTATION_GROUPS = {
    "UR": (signatures.UR_FEATURE,), "IR": (signatures.IR_FEATURE,),
    "CR(u)": (signatures.CR_USER_FEATURE,),
    "CR(i)": (signatures.CR_ITEM_FEATURE,), "CR(u)+CR(i)": CR_GROUP,
    "all representations": (signatures.UR_FEATURE, signatures.IR_FEATURE,
                            signatures.CR_USER_FEATURE, signatures.CR_ITEM_FEATURE),
}
ALL_FEATURES = tuple(point_in_time.FEATURE_TABLES)  # every representation feature a mode may read
# `--cr_study`: the rows that say whether CR carries weight (Sec. 5.3.1 masking on lfm4ads;
# lfm4ads against cr_latest, the aggregation, and cr_linear, the adapter).
CR_STUDY_ROWS = (downstream_config.NONE, downstream_config.UR, downstream_config.UR_IR,
                 downstream_config.CR_LINEAR, downstream_config.CR_LATEST,
                 downstream_config.LFM4ADS, downstream_config.DISTILL)
# Differences reported with a 95% interval (`benchmarks.intervals`): (a, b) for a - b.
# lfm4ads - ur_ir is CR's own share; lfm4ads - ur mixes IR in.
INTERVAL_PAIRS = (
    (downstream_config.LFM4ADS, downstream_config.NONE),
    (downstream_config.LFM4ADS, downstream_config.UR),
    (downstream_config.LFM4ADS, downstream_config.UR_IR),
    (downstream_config.LFM4ADS, downstream_config.CR_LATEST),
    (downstream_config.LFM4ADS, downstream_config.CR_LINEAR),
    (downstream_config.LFM4ADS, downstream_config.DISTILL),
    (downstream_config.UR, downstream_config.NONE),
    (downstream_config.UR_IR, downstream_config.NONE),
    (downstream_config.DISTILL, downstream_config.NONE),
)
# What each representation holds (`representation_spectra`): name -> feature (None: CR(u,i)).
SPECTRA = {"ur": signatures.UR_FEATURE, "ir": signatures.IR_FEATURE, "cr": None,
           "cr_user": signatures.CR_USER_FEATURE,
           "cr_item": signatures.CR_ITEM_FEATURE}


@dataclasses.dataclass
class UpstreamRun:
    """An upstream under a protocol (`Ablation.upstream_run`): the export the downstream reads
    (under `daily`, the model as the validation window begins), its events over every request,
    and its ad prediction on each downstream row by the model that scored the row
    (`{window: float32 [n]}`)."""

    export: str
    events: replay.UpstreamEvents
    predictions: dict[str, np.ndarray]


@dataclasses.dataclass
class Study:
    """What the seeds of one study collect (over one data set, or one simulated world per
    seed), and the result they make (`result`)."""

    runs: dict[str, list[dict]] = dataclasses.field(
        default_factory=lambda: {mode: [] for mode in TABLE_ROWS})
    layers: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    domains: dict[str, list[dict]] = dataclasses.field(
        default_factory=lambda: {"content only": [], "ads only": [], "both": []})
    importance: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    reference: list[dict] = dataclasses.field(default_factory=list)
    spectra: list[dict] = dataclasses.field(default_factory=list)
    paired: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    upstream: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    windows: list[dict] = dataclasses.field(default_factory=list)
    metric: str = "auc"
    updates: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def result(self) -> dict:
        """The `--json` object (module doc)."""
        runs = self.runs
        paired = {name: intervals.interval([d for d, _ in v], [b for _, b in v])
                  for name, v in self.paired.items()}
        first = self.windows[0]
        total = {k: sum(w[k] for w in self.windows)
                 for k in ("test_rows", "test_clicks", "train_rows", "validation_rows")}
        return {
            "rows": {mode: summarize(r) for mode, r in runs.items() if r},
            "layers": {layer: summarize(r) for layer, r in self.layers.items()},
            "domains": {name: summarize(r) for name, r in self.domains.items() if r},
            "importance": {group: summarize(r, ("auc", "expected_auc"))
                           for group, r in self.importance.items()},
            "upstream": {name: summarize(r, ("auc_ad", "auc_content", "expected_auc_ad"))
                         for name, r in self.upstream.items()},
            "reference": {"upstream ad head": summarize(self.reference)},
            "orderings": with_intervals(orderings(runs), paired),
            "intervals": paired,
            "interval_metric": self.metric,
            "transfer_ratio": transfer_ratios(runs, self.reference),
            "representations": summarize_spectra(self.spectra),
            "per_seed": {mode: [{k: r.get(k) for k in METRICS} for r in rs]
                         for mode, rs in runs.items()},
            "split": first["split"],
            "worlds": self.windows,
            # per data set / world, the mean (each world is one seed's test window)
            **{k: int(round(v / len(self.windows))) for k, v in total.items()},
            "upstream_updates": self.updates,
            "seeds": [s for w in self.windows for s in w["seeds"]],
            "seconds": round(time.perf_counter() - self.started, 1),
        }


def representation_spectra(rows: ranker_data.Rows, events: replay.UpstreamEvents,
                           window: tuple[int, int]) -> dict:
    """What UR, IR, CR(u,i), CR(u) and CR(i) hold on a window's ad rows
    (`common.representations.spectrum`): UR, IR and CR(u,i) as the upstream computed them on
    those rows; CR(u) and CR(i) one vector per user / item, the point-in-time value its first
    row in the window sees (keys with no earlier folded event left out)."""
    out = {}
    lo, hi = window
    ad = (events.timestamp >= lo) & (events.timestamp < hi)
    # the replay's events are every request; the window's ad rows are the downstream's rows
    keys = set(zip(rows[features.USER_ID].tolist(), rows[features.ITEM_ID].tolist(),
                   rows[features.TIMESTAMP].tolist(), strict=True))
    ad &= np.array([(u, i, t) in keys for u, i, t in zip(
        events.user_id.tolist(), events.item_id.tolist(), events.timestamp.tolist(),
        strict=True)])
    for name, feature in SPECTRA.items():
        if feature is None:
            matrix = events.outputs[replay.CR][ad]
        elif feature in CR_GROUP:
            key = features.USER_ID if feature == signatures.CR_USER_FEATURE else features.ITEM_ID
            found = rows[signatures.found_feature(feature)].astype(bool)
            first = np.unique(rows[key][found], return_index=True)[1]
            matrix = rows[feature][found][first]
        else:
            matrix = events.outputs[replay.UR if feature == signatures.UR_FEATURE
                                    else replay.IR][ad]
        out[name] = spectrum(matrix).to_dict()
    return out


@dataclasses.dataclass(frozen=True)
class Split:
    """`[lo, upstream_end)` trains the upstream; then the downstream train, validation and
    test windows (half-open, unix seconds)."""

    lo: int
    hi: int
    upstream_end: int
    train: tuple[int, int]
    validation: tuple[int, int]
    test: tuple[int, int]


def split_by_days(files, upstream_days: float, train_days: float, validation_days: float):
    lo, hi = data_input.time_range(files)
    cuts = np.cumsum([upstream_days, train_days, validation_days]) * DAY + lo
    return _split(lo, hi, [int(c) for c in cuts])


def split_by_fractions(files, fractions):
    """Cut points at the given fractions of the rows by time, moved back to the start of
    their day (so each later window only grows: the test window keeps >= its share)."""
    lo, hi = data_input.time_range(files)
    stamps = np.concatenate([b[features.TIMESTAMP].numpy() for b in data_input.make_dataset(
        files, 65536, names=(features.TIMESTAMP,))])
    cuts = []
    for q in fractions:
        t = int(np.quantile(stamps, q))
        cuts.append(max(lo + 1, lo + (t - lo) // DAY * DAY))
    return _split(lo, hi, cuts)


def _split(lo, hi, cuts):
    upstream_end, validation_start, test_start = cuts
    if not lo < upstream_end < validation_start < test_start <= hi:
        raise ValueError(f"the split {cuts} does not fit the data's time range [{lo}, {hi}]")
    return Split(lo, hi, upstream_end, (upstream_end, validation_start),
                 (validation_start, test_start), (test_start, hi + 1))


def domain_copy(files, domain: bytes, out: str) -> str:
    """The records of one domain, written to `out` (for the single-domain upstreams)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"part-{domain.decode()}.tfrecord.gz")
    if os.path.exists(path):
        return out
    spec = features.feature_spec((features.DOMAIN,))
    records = data_input.records_in_window(files).filter(
        lambda s: tf.equal(tf.io.parse_single_example(s, spec)[features.DOMAIN], domain))
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)
    with tf.io.TFRecordWriter(path + ".tmp", options) as writer:
        for record in records.batch(4096):
            for r in record.numpy():
                writer.write(r)
    os.rename(path + ".tmp", path)
    return out


class Ablation:
    """One ablation run: data, split, upstreams per seed, downstream runs (module doc)."""

    def __init__(self, data: str, split: Split, seeds: list[int], work: str,
                 upstream_epochs: int, train_config: downstream_config.DownstreamTrainConfig,
                 config: downstream_config.DownstreamConfig, layers: tuple[str, ...] | None,
                 half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS, log=print,
                 cr_domains: str = cr_folding.DEFAULT, upstream_model: dict | None = None,
                 cr_study: bool = False, upstream_protocol: str = FROZEN):
        if upstream_protocol not in PROTOCOLS:
            raise ValueError(f"upstream_protocol must be one of {PROTOCOLS}, got "
                             f"{upstream_protocol!r}")
        self.protocol = upstream_protocol
        self.data, self.split, self.seeds, self.work = data, split, seeds, work
        self.cr_domains = cr_folding.check(cr_domains)
        self.upstream_model = dict(upstream_model or {})
        self.base_config = ModelConfig.from_dict(self.upstream_model)  # fails on a bad field
        self.cr_study = cr_study
        self.files = data_input.list_files(data)
        self.upstream_epochs = upstream_epochs
        self.train_config, self.config = train_config, config
        self.layers = layers
        self.half_life = half_life_seconds
        self.log = log
        self.rows = {name: ranker_data.read_rows(self.files, *window) for name, window in (
            ("train", split.train), ("validation", split.validation), ("test", split.test))}
        self.train_items = set(self.rows["train"][features.ITEM_ID].tolist())
        self.probabilities = ranker_data.oracle_probabilities(data, self.rows["test"], *split.test)
        self.records = [r.numpy() for r in data_input.records_in_window(self.files)]
        self.upstream_metrics: dict[str, list[dict]] = {}
        self.updates = 0  # daily updates of the upstreams (`--upstream daily`)

    # -- upstream ---------------------------------------------------------------------------
    def upstream(self, name: str, seed: int, model_config: ModelConfig, data: str | None = None):
        """Trains an upstream on `[lo, upstream_end)` (its own eval: the first downstream day,
        which it never trains on)."""
        started = time.perf_counter()
        skip = (self.split.hi + 1 - (self.split.upstream_end + DAY)) / DAY
        model, results, warmup = fit_and_evaluate(
            data or self.data, model_config,
            TrainConfig(epochs=self.upstream_epochs, seed=seed, skip_last_days=skip),
            verbose=0)
        self.upstream_metrics.setdefault(name, []).append(
            {k: results.get(k) for k in ("auc_ad", "auc_content", "expected_auc_ad",
                                         "train_examples")})
        self.log(f"  upstream {name} seed {seed}: ad AUC {results['auc_ad']}, content AUC "
                 f"{results['auc_content']} ({time.perf_counter() - started:.0f} s)")
        return model, warmup

    def upstream_run(self, name: str, seed: int, model_config: ModelConfig,
                     domain: bytes | None = None, layers: tuple[str, ...] = ()) -> UpstreamRun:
        """An upstream under this run's protocol: its events over every request (each scored by
        a model trained only on earlier data from the downstream windows on, checked), the
        export the downstream modes that load the upstream read (`finetune`, the IIMs), and its
        ad prediction on each downstream row (`distill`, the reference)."""
        data = None if domain is None else domain_copy(
            self.files, domain, os.path.join(self.work, f"data-{domain.decode()}"))
        model, warmup = self.upstream(name, seed, model_config, data)
        path = os.path.join(self.work, f"upstream-{name.replace(' ', '-')}-{seed}")
        fn = functools.partial(replay.keras_model_fn, cr_layers=layers)
        predictions = {k: np.zeros(ranker_data.size(v), np.float32) for k, v in self.rows.items()}
        predict = ranker_data.keras_ad_prediction_fn(model)  # the model as it stands when called

        def predict_rows(model, window=None):
            for k, rows in self.rows.items():
                keep = (
                    np.ones(ranker_data.size(rows), bool)
                    if window is None
                    else (
                        (rows[features.TIMESTAMP] >= window[0])
                        & (rows[features.TIMESTAMP] < window[1])
                    )
                )
                if keep.any():
                    predictions[k][keep] = ranker_data.with_upstream_prediction(
                        ranker_data.select(rows, keep),
                        predict)[signatures.UPSTREAM_AD_PREDICTION_FEATURE]

        if self.protocol == FROZEN:
            export = export_saved_model(model, path, warmup)
            predict_rows(model)
            events = replay.run_upstream(fn(model), self.records).scored_by(self.split.upstream_end)
        else:
            exported = []

            def before_day(model, window):
                if not exported and window[1] > self.split.validation[0]:
                    # the model as it stands when the validation window begins
                    exported.append(export_saved_model(model, path, warmup))
                predict_rows(model, window)

            events = daily.replay_daily(
                model, self.records, self.split.upstream_end, seed=seed, model_fn=fn,
                before_day=before_day, batch_size=TrainConfig().batch_size,
                trains_on=None if domain is None else self.record_domains() == domain)
            # the last day is scored, not trained on
            self.updates += len(daily.day_windows(self.split.upstream_end,
                                                  self.split.hi + 1)) - 1
            export = exported[0]
        replay.check_unseen(events, self.split.upstream_end)
        return UpstreamRun(export, events, predictions)

    def record_domains(self) -> np.ndarray:
        """object [n]: each request's domain."""
        if not hasattr(self, "_domains"):
            spec = features.feature_spec((features.DOMAIN,))
            self._domains = np.concatenate([
                tf.io.parse_example(b, spec)[features.DOMAIN].numpy().astype(object)
                for b in tf.data.Dataset.from_tensor_slices(
                    tf.constant(self.records, tf.string)).batch(65536)])
        return self._domains

    def upstream_reference(self, run: UpstreamRun) -> dict:
        """The upstream's own ad head on the test rows: not a downstream mode, a yardstick
        (under `frozen` the upstream saw ~5x the ad rows the downstream trains on, plus the
        content rows; under `daily` each test day is scored by the model of the day before)."""
        return downstream_train.evaluate(self.rows["test"], run.predictions["test"],
                                         self.train_items,
                           self.probabilities)

    def attach(self, source, run: UpstreamRun | None = None) -> dict[str, ranker_data.Rows]:
        """The rows with every representation feature of `source` (and, with `run`, the
        upstream's ad prediction on each row, the `distill` input)."""
        out = {k: ranker_data.with_representations(v, source, ALL_FEATURES) for k,
               v in self.rows.items()}
        if run is not None:
            for k, rows in out.items():
                rows[signatures.UPSTREAM_AD_PREDICTION_FEATURE] = run.predictions[k]
        return out

    def histories(self, events: replay.UpstreamEvents, **kwargs):
        """The replayed tables (`replay.histories`) with this run's half-life and
        `cr_domains`."""
        return replay.histories(events, self.half_life, cr_domains=self.cr_domains, **kwargs)

    # -- downstream -------------------------------------------------------------------------
    def ranker(self, rows, mode: str, seed: int, upstream_config=None, upstream_export=None,
               **overrides):
        config = dataclasses.replace(self.config, mode=mode, **overrides)
        train_config = dataclasses.replace(self.train_config, seed=seed)
        model, fit = downstream_train.train_ranker(config, train_config, rows["train"],
                                                   rows["validation"],
                                     upstream_config=upstream_config,
                                     upstream_export=upstream_export)
        return model, fit

    def score(self, model, rows, masked=(), keep: list | None = None) -> dict:
        """The test window's metrics; `keep` gets the scores `[n]` appended."""
        scores = downstream_train.predict(model, rows["test"], masked)
        if keep is not None:
            keep.append(scores)
        return downstream_train.evaluate(rows["test"], scores, self.train_items, self.probabilities)

    def paired(self, a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
        """metric(a) - metric(b) on the test rows, and its bootstrap variance over users."""
        test = self.rows["test"]
        diff = intervals.metric(test, a, self.probabilities) - intervals.metric(
            test, b, self.probabilities
        )
        draws = intervals.paired_bootstrap(test[features.USER_ID], (test, a, self.probabilities),
                                   (test, b, self.probabilities), seed)
        return float(diff), float(np.var(draws, ddof=1))

    def retrieval(self, rows, source, seed: int) -> dict:
        """Eq. 6 as the whole model: AUC of its score on the test rows, recall@k against every
        item known before the window, as the item table held them when the window began."""
        model, fit = downstream_train.train_retrieval(self.config,
                                                      dataclasses.replace(self.train_config,
                                                                         seed=seed),
                                        rows["train"], rows["validation"])
        test = rows["test"]
        result = {**downstream_train.evaluate(test, downstream_train.retrieval_scores(model, test),
                                              self.train_items,
                                self.probabilities, calibrated=False), **fit}
        items = self.items_before(self.split.test[0])
        known = source.lookup(tables.ITEM_TABLE, items,
                              np.full(items.shape[0], self.split.test[0], np.int64))
        result.update(downstream_train.retrieval_recall(model, test, items[known.found],
                                          known.vectors[known.found]))
        result["recall_candidates"] = int(known.found.sum())
        return result

    def items_before(self, t: int) -> np.ndarray:
        """Every item of a request before `t` (the retrieval's candidates: what the item
        table holds when the test window begins, not only the window's own items)."""
        if not hasattr(self, "_item_times"):
            parsed = [
                tf.io.parse_example(
                    batch, features.feature_spec((features.ITEM_ID, features.TIMESTAMP))
                )
                for batch in tf.data.Dataset.from_tensor_slices(
                    tf.constant(self.records, tf.string)
                ).batch(8192)
            ]
            self._item_times = (
                np.concatenate([p[features.ITEM_ID].numpy() for p in parsed]).astype(object),
                np.concatenate([p[features.TIMESTAMP].numpy() for p in parsed]).astype(np.int64))
        ids, times = self._item_times
        return np.unique(ids[times < t])

    def run(self, study: Study | None = None) -> dict:
        """Every seed of this data set into `study` (a new one by default); its result."""
        study = study or Study()
        for seed in self.seeds:
            self.run_seed(seed, study)
        study.windows.append({"data": self.data, "split": dataclasses.asdict(self.split),
                              "test_rows": ranker_data.size(self.rows["test"]),
                              "test_clicks": int(self.rows["test"][features.LABEL].sum()),
                              "train_rows": ranker_data.size(self.rows["train"]),
                              "validation_rows": ranker_data.size(self.rows["validation"]),
                              "seeds": self.seeds})
        for name, metrics in self.upstream_metrics.items():
            study.upstream.setdefault(name, []).extend(metrics)
        study.updates += self.updates
        study.metric = "expected_auc" if self.probabilities is not None else "auc"
        return study.result()

    def run_seed(self, seed: int, study: Study) -> None:
        """Seed `seed`'s upstreams and downstream models, into `study`."""
        runs, paired = study.runs, study.paired
        self.log(f"seed {seed}")
        base = self.base_config
        layers = () if self.cr_study else (
            self.layers if self.layers is not None else _all_layers(base))
        dual = self.upstream_run("dual", seed, base, layers=layers)
        study.reference.append(self.upstream_reference(dual))
        source = self.histories(dual.events)
        rows = self.attach(source, dual)
        study.spectra.append(representation_spectra(rows["test"], dual.events, self.split.test))
        scores: dict[str, np.ndarray] = {}
        modes = CR_STUDY_ROWS if self.cr_study else (
            downstream_config.NONE, downstream_config.UR, downstream_config.UR_IR,
            downstream_config.CR_LINEAR, downstream_config.CR_LATEST, downstream_config.LFM4ADS,
            downstream_config.DISTILL, downstream_config.IIM,
            downstream_config.LFM4ADS_IIM, downstream_config.FINETUNE)
        for mode in modes:
            model, fit = self.ranker(rows, mode, seed, upstream_config=base,
                                     upstream_export=dual.export)
            keep: list = []
            runs[mode].append({**self.score(model, rows, keep=keep), **fit})
            scores[mode] = keep[0]
            self._log_run(mode, runs[mode][-1])
            if mode == downstream_config.LFM4ADS:
                study.domains["both"].append(runs[mode][-1])
                base_scores = runs[mode][-1]
                for group, names in {**FIELD_GROUPS, **REPRESENTATION_GROUPS}.items():
                    keep = []
                    masked = self.score(model, rows, names, keep=keep)
                    study.importance.setdefault(group, []).append(
                        {k: _drop(base_scores.get(k), masked.get(k))
                         for k in ("auc", "expected_auc")})
                    if group in REPRESENTATION_GROUPS:
                        paired.setdefault(f"masked {group}", []).append(
                            self.paired(scores[downstream_config.LFM4ADS], keep[0], seed))
        for a, b in INTERVAL_PAIRS:
            if a in scores and b in scores:
                paired.setdefault(f"{a} - {b}", []).append(self.paired(scores[a], scores[b],
                                                                       seed))
        del scores
        if self.cr_study:
            tf.keras.backend.clear_session()
            return
        # The module warm-started from the upstream's ad branch (an option; the paper
        # re-initialises it, the `iim` row).
        model, fit = self.ranker(rows, downstream_config.IIM, seed, upstream_config=base,
                                 upstream_export=dual.export, iim_warm_start=True)
        runs[IIM_WARM].append({**self.score(model, rows), **fit})
        self._log_run(IIM_WARM, runs[IIM_WARM][-1])
        runs[downstream_config.RETRIEVAL].append(self.retrieval(rows, source, seed))
        self._log_run(downstream_config.RETRIEVAL, runs[downstream_config.RETRIEVAL][-1])
        for layer in layers:  # Fig. 5: CR of one layer, linearly fused, on the baseline
            layer_rows = self.attach(self.histories(dual.events,
                                                    cr_output=f"{replay.CR}:{layer}"))
            model, fit = self.ranker(layer_rows, downstream_config.CR_LINEAR, seed, use_ur_ir=False)
            study.layers.setdefault(layer, []).append({**self.score(model, layer_rows), **fit})
            self._log_run(f"layer {layer}", study.layers[layer][-1])
        del dual, rows, source
        shared = self.upstream_run("shared", seed, dataclasses.replace(base, branches="shared"))
        rows = self.attach(self.histories(shared.events))
        model, fit = self.ranker(rows, downstream_config.UR_SAME_BRANCH, seed)
        runs[downstream_config.UR_SAME_BRANCH].append({**self.score(model, rows), **fit})
        self._log_run(downstream_config.UR_SAME_BRANCH, runs[downstream_config.UR_SAME_BRANCH][-1])
        del shared
        # Sec. 5.3.6: one domain only. Content only trains one shared branch (a dual model's
        # ad branch would see no data); ads only keeps the dual architecture. The upstream
        # trains (and, under `daily`, updates) on its domain only; it scores every request.
        for name, domain, config in (
                ("content only", features.DOMAIN_CONTENT, dataclasses.replace(base,
                                                                       branches="shared")),
                ("ads only", features.DOMAIN_AD, base)):
            one = self.upstream_run(name, seed, config, domain=domain)
            rows = self.attach(self.histories(one.events))
            ranker, fit = self.ranker(rows, downstream_config.LFM4ADS, seed)
            study.domains[name].append({**self.score(ranker, rows), **fit})
            self._log_run(f"lfm4ads, upstream on {name}", study.domains[name][-1])
        tf.keras.backend.clear_session()

    def _log_run(self, name: str, result: dict) -> None:
        parts = [f"{k} {result[k]:.4f}" for k in METRICS if result.get(k) is not None]
        self.log(f"  {name}: " + ", ".join(parts))


def transfer_ratios(runs: dict[str, list[dict]], reference: list[dict]) -> dict:
    """Per mode, the mean over seeds of `(mode - none) / (upstream ad head - none)` on the
    expected AUC where the oracle exists, else the AUC: the share of the upstream's own gain
    over the baseline that the ranker keeps (None when the upstream does not beat `none`)."""
    out = {}
    base = runs.get(downstream_config.NONE, [])
    if not base or not reference:
        return out
    key = "expected_auc" if base[0].get("expected_auc") is not None else "auc"
    for mode, rs in runs.items():
        ratios = []
        for r, b, up in zip(rs, base, reference, strict=False):
            if r.get(key) is None or up.get(key) is None or up[key] <= b[key]:
                continue
            ratios.append((r[key] - b[key]) / (up[key] - b[key]))
        out[mode] = float(np.mean(ratios)) if ratios else None
    return out


def summarize_spectra(spectra: list[dict]) -> dict:
    """Per representation, the median over seeds of each `representation_spectra` figure,
    and whether CR(u,i) meets issue 25's target (no dead unit, participation ratio at least
    half of UR's)."""
    out = {}
    for name in SPECTRA:
        out[name] = {k: float(np.median([s[name][k] or 0.0 for s in spectra]))
                     for k in ("rows", "dim", "dead_units", "top_share", "participation_ratio",
                               "effective_rank")}
    out["cr_meets_target"] = bool(out["cr"]["dead_units"] == 0 and out["cr"][
        "participation_ratio"] >= 0.5 * out["ur"]["participation_ratio"])
    return out


def _all_layers(config: ModelConfig) -> tuple[str, ...]:
    return (("embedding",) + tuple(f"cross_{i + 1}" for i in range(config.num_cross_outputs))
            + tuple(f"mlp_{i + 1}" for i in range(len(config.mlp_hidden))))


def _drop(base, masked):
    return None if base is None or masked is None else base - masked


# The orderings: (better, worse, metric); compared per seed (the same upstream and the
# same downstream seed on both sides), so the upstream's own seed-to-seed spread cancels.
ORDERINGS = (
    (downstream_config.LFM4ADS, downstream_config.NONE, None),
    (downstream_config.LFM4ADS, downstream_config.UR, None),
    (downstream_config.LFM4ADS, downstream_config.UR_IR, None),
    (downstream_config.UR, downstream_config.NONE, None),
    (downstream_config.LFM4ADS, downstream_config.CR_LINEAR, None),
    (downstream_config.LFM4ADS, downstream_config.CR_LATEST, None),
    (downstream_config.UR, downstream_config.UR_SAME_BRANCH, None),
    (downstream_config.LFM4ADS, downstream_config.UR, "auc_cold_start"),
)


def orderings(runs: dict[str, list[dict]]) -> list[dict]:
    """Paired differences `better - worse` over seeds for `ORDERINGS`, on the AUC in
    expectation over the labels where the oracle exists, else the AUC (or the named metric)."""
    out = []
    for better, worse, metric in ORDERINGS:
        pairs = list(zip(runs.get(better, []), runs.get(worse, []), strict=False))
        if not pairs:
            continue
        key = metric or ("expected_auc" if pairs[0][0].get("expected_auc") is not None
                         else "auc")
        diffs = [a[key] - b[key] for a, b in pairs
                 if a.get(key) is not None and b.get(key) is not None]
        if not diffs:
            continue
        out.append({"better": better, "worse": worse, "metric": key,
                    "difference": float(np.mean(diffs)),
                    "std": float(np.std(diffs)) if len(diffs) > 1 else None,
                    "seeds_holding": int(sum(d > 0 for d in diffs)), "seeds": len(diffs),
                    # the seeds' spread only; `Ablation.run` puts in the interval with the
                    # test window's sampling where it scored both rows (`INTERVAL_PAIRS`)
                    "interval": (intervals.interval(diffs, [0.0] * len(diffs)) if len(diffs) > 1
                                 else None),
                    "test_sampling": False})
    return out


def with_intervals(ordered: list[dict], intervals: dict[str, dict]) -> list[dict]:
    """`ordered` (from `orderings`) with each default-metric ordering's interval replaced by
    the one of `intervals` (seeds' spread plus the bootstrap over test users) when there is
    one."""
    out = []
    for o in ordered:
        full = intervals.get(f"{o['better']} - {o['worse']}")
        if full is not None and o["metric"] in ("expected_auc", "auc"):
            o = {**o, "interval": full, "test_sampling": True}
        out.append(o)
    return out


def summarize(runs: list[dict], keys=METRICS) -> dict:
    """Mean and standard deviation (over seeds) of each metric; `<key>_std` beside `<key>`."""
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values)) if len(values) > 1 else None
    for key in ("recall_at_10", "recall_at_100", "recall_candidates", "epochs", "best_epoch",
                "trainable_parameters"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = float(np.mean(values))
    out["runs"] = len(runs)
    return out


def format_tables(result: dict) -> str:
    def fmt(value, std=None, digits=4):
        if value is None:
            return "n/a"
        return f"{value:.{digits}f}" + (f" ± {std:.4f}" if std is not None else "")

    worlds = len(result.get("worlds", [])) > 1
    lines = [f"test window{' (mean per world)' if worlds else ''}: {result['test_rows']} ad "
             f"rows, {result['test_clicks']} clicks; training {result['train_rows']}, "
             f"validation {result['validation_rows']}; seeds {result['seeds']}; "
             f"{result['seconds']:.0f} s"]
    settings = result.get("settings", {})
    if settings.get("upstream"):
        lines[0] += f"; upstream {settings['upstream']}"
    if settings.get("sim_seeds"):
        lines[0] += f"; simulator seeds {settings['sim_seeds']}"
    if result.get("settings", {}).get("cr_domains"):
        lines[0] += f"; CR(u,i) folded from: {result['settings']['cr_domains']} requests"
    header = (f"{'row':<28}{'AUC':>18}{'expected AUC':>18}{'GAUC':>9}{'logloss':>9}"
              f"{'cold AUC':>10}{'params':>10}{'ratio':>7}")
    ratios = result.get("transfer_ratio", {})

    def table(title, rows):
        lines.extend(["", title, header])
        base = result["rows"][downstream_config.NONE]
        for name, r in rows.items():
            lines.append(f"{name:<28}{fmt(r['auc'], r.get('auc_std')):>18}"
                         f"{fmt(r['expected_auc'], r.get('expected_auc_std')):>18}"
                         f"{fmt(r['gauc']):>9}{fmt(r['logloss']):>9}"
                         f"{fmt(r['auc_cold_start']):>10}"
                         f"{r.get('trainable_parameters') or 0:>10,.0f}"
                         f"{fmt(ratios.get(name), None, 2):>7}")
            if (
                name != downstream_config.NONE
                and r.get("auc") is not None
                and base.get("auc") is not None
            ):
                lines[-1] += f"   Δ AUC {r['auc'] - base['auc']:+.4f}"
            if r.get("recall_at_10") is not None:
                lines[-1] += (f"   recall@10 {r['recall_at_10']:.4f}, recall@100 "
                              f"{r['recall_at_100']:.4f}")

    table("Table 1 and the other transfer modes", result["rows"])
    lines.append("params: trainable weights of the ranker (finetune: the upstream towers too; "
                 "finetune and the IIM modes add capacity and stay out of the orderings); "
                 "ratio: (row - none) / (upstream ad head - none), the share of the upstream's "
                 "own gain the ranker keeps")
    if result.get("reference"):
        table("Reference, not a downstream mode: the upstream's own ad head",
              result["reference"])
    table("Fig. 5: CR of one upstream layer, linearly fused, on the baseline", result["layers"])
    table("Sec. 5.3.6: lfm4ads with upstreams trained on", result["domains"])
    lines.extend(["", "Orderings, paired by seed: the difference with its 95% interval (* the "
                  "seeds' spread only, without the test window's sampling), and the seeds where "
                  "it is positive",
                  f"{'ordering':<30}{'metric':<16}{'difference [95% interval]':<58}{'seeds':>6}"])
    for o in result.get("orderings", []):
        verdict = intervals.describe(o["interval"]) if o.get("interval") else fmt(o["difference"])
        mark = "" if o.get("test_sampling", True) else " *"
        lines.append(f"{o['better'] + ' > ' + o['worse']:<30}{o['metric']:<16}"
                     f"{verdict + mark:<58}{o['seeds_holding']:>4}/{o['seeds']}")
    if result.get("intervals"):
        lines.extend(["", f"95% intervals of paired differences on {result['interval_metric']} "
                      "(benchmarks.intervals: seeds' spread and a bootstrap over test users)",
                      f"{'difference':<36}{'mean [95% interval]':<48}"])
        for name, i in result["intervals"].items():
            lines.append(f"{name:<36}{intervals.describe(i)}")
    if result.get("representations"):
        lines.extend(["", "What each representation holds on the test window's ad rows "
                      "(median over seeds)",
                      f"{'table':<10}{'rows':>8}{'width':>7}{'dead':>6}{'top share':>11}"
                      f"{'PR':>8}{'eff. rank':>11}"])
        for name in SPECTRA:
            r = result["representations"][name]
            lines.append(f"{name:<10}{r['rows']:>8.0f}{r['dim']:>7.0f}{r['dead_units']:>6.0f}"
                         f"{r['top_share']:>11.1%}{r['participation_ratio']:>8.2f}"
                         f"{r['effective_rank']:>11.2f}")
        lines.append("CR(u,i) meets the target (no dead unit, PR >= UR's / 2): "
                     f"{result['representations']['cr_meets_target']}")
    lines.extend(["", "Sec. 5.3.1: AUC drop of the lfm4ads ranker when a group is masked",
                  f"{'group':<28}{'AUC drop':>18}{'expected AUC drop':>20}"])
    for group, r in sorted(result["importance"].items(), key=lambda kv: -(kv[1]["auc"] or 0)):
        lines.append(f"{group:<28}{fmt(r['auc'], r.get('auc_std')):>18}"
                     f"{fmt(r['expected_auc'], r.get('expected_auc_std')):>20}")
    return "\n".join(lines)


def _prepare(args, sim_seed: int = 1) -> tuple[str, Split]:
    protocol = getattr(args, "upstream", FROZEN)
    data = args.data or datasets.prepare(args.dataset, args.cache, args.examples,
                                         seed=sim_seed,
                                         world=getattr(args, "world", "two_tower"))
    files = data_input.list_files(data)
    if args.split_days or (args.dataset == "synthetic" and not args.data and not args.split):
        days = [float(x) for x in (args.split_days or DEFAULT_SPLIT_DAYS[protocol]).split(",")]
        return data, split_by_days(files, *days)
    fractions = [float(x) for x in (args.split or DEFAULT_SPLIT[protocol]).split(",")]
    return data, split_by_fractions(files, fractions)


def ablate(dataset: str | None = None, data: str | None = None, seeds: int = 5,
           quick: bool = False, examples: int = 200_000, split_days: str | None = None,
           split: str | None = None, upstream_epochs: int = TrainConfig().epochs,
           cache: str = os.path.join("build", "ablation"), log=None,
           cr_domains: str = cr_folding.DEFAULT, world: str = "two_tower",
           upstream_model: dict | None = None, cr_study: bool = False,
           sim_seed: int | None = None, upstream: str = FROZEN) -> dict:
    """Runs the ablation (the arguments are the command line's); returns the `--json` object.

    `--dataset synthetic` with `sim_seed=None`: study seed s reads the held-out world of
    simulator seed `HELD_OUT_SIM_SEED + s` (its own data, split and test window); with a
    `sim_seed`, every study seed reads that one world. `log` gets one line per trained model
    (default: printed)."""
    if (dataset is None) == (data is None):
        raise ValueError("give one of dataset ('synthetic' or 'movielens') and data (a "
                         "directory in the project's schema)")
    if upstream not in PROTOCOLS:
        raise ValueError(f"upstream must be one of {PROTOCOLS}, got {upstream!r}")
    cr_folding.check(cr_domains)
    args = argparse.Namespace(dataset=dataset, data=data, examples=examples,
                              split_days=split_days, split=split, cache=cache, world=world,
                              upstream=upstream)
    if dataset == "synthetic" and sim_seed is None:
        worlds = [(HELD_OUT_SIM_SEED + s, [s]) for s in range(seeds)]
    else:
        worlds = [(1 if sim_seed is None else sim_seed, list(range(seeds)))]
    train_config = (
        downstream_config.DownstreamTrainConfig(epochs=3)
        if quick
        else downstream_config.DownstreamTrainConfig()
    )
    config = downstream_config.DownstreamConfig()
    study = Study()
    for world_seed, study_seeds in worlds:
        data, split = _prepare(args, world_seed)
        with tempfile.TemporaryDirectory(prefix="ablation-") as work:
            ablation = Ablation(
                data, split, study_seeds, work,
                upstream_epochs=1 if quick else upstream_epochs,
                train_config=train_config, config=config,
                layers=("embedding", f"mlp_{len(ModelConfig().mlp_hidden)}") if quick else None,
                log=log or (lambda line: print(line, flush=True)), cr_domains=cr_domains,
                upstream_model=upstream_model, cr_study=cr_study, upstream_protocol=upstream)
            result = ablation.run(study)
            del ablation
    result["data"] = data if len(worlds) == 1 else [w["data"] for w in study.windows]
    result["settings"] = {"downstream": dataclasses.asdict(config),
                          "training": dataclasses.asdict(train_config),
                          "upstream_epochs": 1 if quick else upstream_epochs,
                          "upstream": upstream,
                          "cr_domains": cr_domains, "world": world if dataset == "synthetic"
                          else None,
                          "upstream_model": dataclasses.asdict(
                              ModelConfig.from_dict(dict(upstream_model or {}))),
                          "cr_study": cr_study,
                          "sim_seeds": [w for w, _ in worlds] if dataset == "synthetic"
                          else None}
    return result


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.ablation",
                           description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=("synthetic", "movielens"))
    source.add_argument("--data", help="any directory in the project's schema "
                                       "(oracle.npz optional)")
    p.add_argument("--seeds", type=int, default=5,
                   help="upstream and ranker seeds 0..N-1 (each difference's interval is over "
                        "them)")
    p.add_argument("--quick", action="store_true",
                   help="1 upstream epoch, 3 downstream epochs, 2 layers: a smoke run")
    p.add_argument("--examples", type=int, default=200_000, help="synthetic data size")
    p.add_argument("--split_days", type=three_numbers, default=None,
                   help="U,T,V: upstream, downstream training and validation days")
    p.add_argument("--split", type=three_numbers, default=None,
                   help="three cut fractions of the rows by time")
    p.add_argument("--upstream_epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--cache", default=os.path.join("build", "ablation"),
                   help="where generated data sets are kept")
    p.add_argument("--cr_domains", choices=cr_folding.CHOICES, default=cr_folding.DEFAULT,
                   help="the requests whose CR(u,i) folds into CR(u), CR(i): ad (paper Sec. "
                        "4.3.1) or all (content too)")
    p.add_argument("--world", default="two_tower",
                   help="the simulator's world (--dataset synthetic): two_tower | dynamic")
    p.add_argument("--sim_seed", type=int, default=None,
                   help="the simulator's seed (--dataset synthetic): every study seed reads "
                        "this world (1 is the development world); default: study seed s reads "
                        f"the held-out world {HELD_OUT_SIM_SEED} + s, which no development "
                        "choice read")
    p.add_argument("--upstream", choices=PROTOCOLS, default=FROZEN,
                   help="frozen: the upstream trains once on the days before the rankers' "
                        "windows; daily: it is pretrained on them, then each later day is "
                        "scored by yesterday's model and trained on (every ranker trains on "
                        "every row after the first days; default split 4,7,1 days or "
                        "0.3,0.8,0.9)")
    p.add_argument("--upstream_model", type=model_fields, default=None,
                   help='ModelConfig fields of the upstream, as JSON (e.g. \'{"cr_layer": null, '
                        '"cr_activation": "post"}\': the paper\'s CR reading)')
    p.add_argument("--cr_study", action="store_true",
                   help="only the rows that say whether CR carries weight (none, ur, "
                        "cr_linear, cr_latest, lfm4ads with the masking table)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run(lambda: ablate(args.dataset, args.data, args.seeds, args.quick, args.examples,
                                  args.split_days, args.split, args.upstream_epochs, args.cache,
                                  cr_domains=args.cr_domains, world=args.world,
                                  upstream_model=args.upstream_model, cr_study=args.cr_study,
                                  sim_seed=args.sim_seed, upstream=args.upstream),
                   args, show=format_tables, errors=(data_input.DataError,))


def three_numbers(text: str) -> str:
    """A `--split_days` / `--split` value: three comma-separated numbers (kept as text)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return text


def model_fields(text: str) -> dict:
    """An `--upstream_model` value: `ModelConfig` fields as a JSON object."""
    try:
        fields = json.loads(text)
        ModelConfig.from_dict(fields)
    except (TypeError, ValueError, AttributeError) as e:
        raise argparse.ArgumentTypeError(f"expected ModelConfig fields as JSON, got {text!r}: "
                                         f"{e}") from None
    return fields


if __name__ == "__main__":
    sys.exit(main())
