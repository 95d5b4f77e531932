"""Train a downstream ranker on the ad domain with upstream representations, evaluate, export.

    python -m trainer.downstream.train --data DIR --upstream EXPORT_DIR [--tables DIR]
        [--upstream_protocol frozen|daily] --mode M --export_dir DIR [--<field> VALUE ...]
        [--json]

Every field of `DownstreamConfig` and `DownstreamTrainConfig` is a flag (`--help` lists them).

Time split, as in production: the representations come from an upstream trained on data
before the downstream window. `--tables` is a published representation version of that
upstream (`<publish_root>/<version>/`, or the publish root to take its LIVE version); the
downstream window starts after its newest row, unless `--downstream_days` sets it. The
upstream is replayed over the traffic after the tables (`trainer.downstream.replay`), so each
downstream row sees UR(u), IR(i), CR(u), CR(i) exactly as the online loop would have stored them
before the row (`trainer.downstream.point_in_time`). The window's last `--eval_days` are the
test window, the `--validation_days` before them the validation window (early stopping), and
the rest trains the ranker.

`--upstream_protocol daily` (an upstream that moves forward, as production's: paper Fig. 4):
`--upstream` is a model base path whose versions each record the end of the data they were
trained on (`train_end`, as `trainer.train` exports); each request is scored by the newest
version trained only on data before it (`trainer.downstream.replay.run_versions`), checked for
every row from the downstream window on. The window starts where the oldest version's training
data ends (or `--downstream_days`), so the ranker, whatever its mode, trains on every row no
version had seen; the modes that load the upstream read the newest version trained before the
validation window. `--tables` does not apply.

`--mode retrieval` trains the standalone retrieval model of Eq. 6 instead of a ranker and
exports it with a top-k index (`--top_k`, `--index brute_force|scann`) over the items the item
table holds when the test window begins; its `logloss` is `null` (a score, not a probability)
and it adds `recall_at_10` and `recall_at_100`.

`--json` ends with one JSON line with `auc`, `gauc`, `logloss`, `auc_cold_start`,
`expected_auc` (where the synthetic generator's oracle exists), row counts and the export path.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import numpy as np
import tensorflow as tf

from common import cli, features, signatures
from common.downstream_requests import example_with_representations
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS
from common.representations.tables import ITEM_TABLE
from trainer import data_input, distribute
from trainer.config import ModelConfig
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream import point_in_time, replay
from trainer.downstream.daily import DAILY, FROZEN, PROTOCOLS
from trainer.downstream.export import export_ranker
from trainer.downstream.ranker import FIELDS, DownstreamRanker
from trainer.evaluation import auc, expected_auc, gauc
from trainer.export import read_model_config, read_training_facts
from trainer.transform import SHARED_VOCABULARY, VOCABULARIES
from trainer.vocabulary import VocabularyPreprocessor

DAY = features.DAY
VOCABULARY_INPUTS = tuple(VOCABULARIES) + tuple(SHARED_VOCABULARY)


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Mean binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7]); None if empty."""
    y = np.asarray(labels, np.float64)
    if not y.size:
        return None
    p = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def make_preprocessor(rows: ranker_data.Rows) -> VocabularyPreprocessor:
    """Vocabularies of the ranker's own fields, counted on its training rows."""
    ds = tf.data.Dataset.from_tensor_slices(
        {name: tf.constant(rows[name]) for name in VOCABULARY_INPUTS}).batch(8192)
    return VocabularyPreprocessor.adapt(ds, ModelConfig())


def load_upstream_config(export_dir: str) -> ModelConfig:
    """The upstream `ModelConfig` that `trainer.export` writes beside the SavedModel."""
    path, _ = replay.resolve_export(export_dir)
    return read_model_config(path)


def ad_module_variables(export_dir: str) -> list[tf.Variable]:
    """The upstream SavedModel's `ad_module` variables (for `iim_warm_start`), from a load of
    their own: not `upstream_layer.load_upstream`'s shared one, whose variables a `finetune`
    ranker in the same process may have trained."""
    path, _ = replay.resolve_export(export_dir)
    loaded = tf.saved_model.load(path)
    module = getattr(loaded, signatures.AD_MODULE_ENDPOINT, None)
    if module is None:
        raise ValueError(f"the upstream export {path!r} has no reusable endpoint "
                         f"{signatures.AD_MODULE_ENDPOINT!r} (exported before endpoints existed?)")
    return list(module.variables)


class ExactValidationAUC(tf.keras.callbacks.Callback):
    """Writes the exact AUC of the validation rows into the epoch's logs as `val_auc`.

    Keras' `AUC` metric buckets probabilities into evenly spaced thresholds; at a click rate
    of a few percent a confident model puts almost every row below the first thresholds, and
    the metric drifts to 0.5 while the exact AUC does not, so early stopping on it stops on an
    artefact. This callback ranks the rows exactly (`evaluation.auc`); list it before
    `EarlyStopping(monitor="val_auc")`.
    """

    def __init__(self, rows: ranker_data.Rows, score_fn):
        super().__init__()
        self.rows, self.score_fn = rows, score_fn

    def on_epoch_end(self, epoch, logs=None):
        value = auc(self.rows[features.LABEL], self.score_fn(self.model, self.rows))
        if logs is not None:
            logs["val_auc"] = 0.5 if value is None else value


def _fit(model, train_rows: ranker_data.Rows, validation_rows: ranker_data.Rows | None, score_fn,
         train_config: downstream_config.DownstreamTrainConfig, verbose: int,
         started: float, log_dir: str | None = None) -> dict:
    """Keras `fit`; with validation rows, early stopping on their exact AUC (best weights
    kept); with `log_dir`, TensorBoard summaries of each epoch there (the exact AUC as
    `validation/epoch_auc`). Returns `{"epochs", "best_epoch", "trainable_parameters",
    "seconds"}`."""
    callbacks = []
    if validation_rows is not None and ranker_data.size(validation_rows):
        callbacks = [ExactValidationAUC(validation_rows, score_fn),
                     tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                      patience=train_config.patience,
                                                      restore_best_weights=True)]
    if log_dir is not None:  # last: it writes the `val_auc` that ExactValidationAUC adds
        callbacks.append(distribute.tensorboard_callback(log_dir))
    history = model.fit(ranker_data.to_dataset(train_rows, train_config.batch_size,
                                               train_config.seed),
                        epochs=train_config.epochs, verbose=verbose, callbacks=callbacks)
    epochs = len(history.history["loss"])
    best = (int(np.argmax(history.history["val_auc"])) + 1 if "val_auc" in history.history
            else epochs)
    return {"epochs": epochs, "best_epoch": best,
            "trainable_parameters": trainable_parameters(model),
            "seconds": round(time.perf_counter() - started, 2)}


def trainable_parameters(model) -> int:
    """The number of trainable weights (upstream towers included when fine-tuned)."""
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


def train_ranker(config: downstream_config.DownstreamConfig,
                 train_config: downstream_config.DownstreamTrainConfig,
                 train_rows: ranker_data.Rows, validation_rows: ranker_data.Rows | None = None,
                 upstream_config: ModelConfig | None = None, upstream_export: str | None = None,
                 verbose: int = 0, log_dir: str | None = None) -> tuple[DownstreamRanker, dict]:
    """Fits a `DownstreamRanker`; with `validation_rows`, stops early on their exact AUC
    (`ExactValidationAUC`) and keeps the best epoch's weights; with `log_dir`, writes
    TensorBoard summaries of each epoch there. Returns the model and
    `{"epochs", "best_epoch", "trainable_parameters", "seconds"}`."""
    tf.keras.utils.set_random_seed(train_config.seed)
    started = time.perf_counter()
    dims = {name: int(train_rows[name].shape[1]) for name in config.representation_features}
    rate = float(np.mean(train_rows[features.LABEL]))
    model = DownstreamRanker(config, make_preprocessor(train_rows), dims,
                             upstream_config=upstream_config, upstream_export=upstream_export,
                             label_prior=rate if 0.0 < rate < 1.0 else None)
    if config.iim_warm_start and model.iim is not None:
        if upstream_export is None:
            raise ValueError("iim_warm_start needs the upstream export (upstream_export)")
        model.warm_start_iim(ad_module_variables(upstream_export))
    model.compile(optimizer=tf.keras.optimizers.Adam(train_config.learning_rate))
    return model, _fit(model, train_rows, validation_rows, predict, train_config, verbose,
                       started, log_dir)


def predict(model: DownstreamRanker, rows: ranker_data.Rows, masked=()) -> np.ndarray:
    """Click probabilities `[n]` of `rows`, with the inputs of `masked` zeroed (Sec. 5.3.1)."""
    masked = frozenset(masked)
    cache = model.__dict__.setdefault("_lfm4ads_predict", {})  # one trace per masked set
    if masked not in cache:
        cache[masked] = tf.function(
            lambda batch: model.forward(batch, training=False, masked=masked))
    step = cache[masked]
    out = [step(batch)["prediction"].numpy()[:, 0] for batch in ranker_data.to_dataset(rows, 4096)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate(rows: ranker_data.Rows, scores: np.ndarray, train_items=None,
             probabilities: np.ndarray | None = None, calibrated: bool = True) -> dict:
    """AUC, GAUC (by user), logloss (`calibrated` scores only), cold-start AUC (items not in
    `train_items`) and, with the true `probabilities`, the AUC in expectation over the draw of
    the labels (`evaluation.expected_auc`)."""
    labels = rows[features.LABEL]
    cold = (~np.isin(rows[features.ITEM_ID], np.asarray(list(train_items), dtype=object))
            if train_items is not None else np.zeros(labels.shape[0], bool))
    return {
        "auc": auc(labels, scores),
        "gauc": gauc(rows[features.USER_ID], labels, scores),
        "logloss": logloss(labels, scores) if calibrated else None,
        "auc_cold_start": auc(labels[cold], scores[cold]),
        "expected_auc": (expected_auc(probabilities, scores) if probabilities is not None
                         else None),
        "rows": int(labels.shape[0]),
        "clicks": int(labels.sum()),
        "cold_start_rows": int(cold.sum()),
    }


def train_retrieval(config: downstream_config.DownstreamConfig,
                    train_config: downstream_config.DownstreamTrainConfig,
                    train_rows: ranker_data.Rows, validation_rows: ranker_data.Rows | None = None,
                    verbose: int = 0):
    """Fits a `StandaloneRetrieval` (Eq. 6) on the rows' UR and IR (InfoNCE over the clicked
    rows, in-batch negatives); with `validation_rows`, stops early on the exact AUC of its
    score there."""
    from trainer.downstream.retrieval import StandaloneRetrieval

    tf.keras.utils.set_random_seed(train_config.seed)
    started = time.perf_counter()
    names = (signatures.UR_FEATURE, signatures.IR_FEATURE, features.LABEL, features.ITEM_ID)
    model = StandaloneRetrieval(adapter_hidden=config.retrieval_hidden,
                                output_dim=config.retrieval_dim)
    model.compile(optimizer=tf.keras.optimizers.Adam(train_config.learning_rate))
    return model, _fit(model, {k: train_rows[k] for k in names}, validation_rows,
                       retrieval_scores, train_config, verbose, started)


def retrieval_scores(model, rows: ranker_data.Rows) -> np.ndarray:
    """score(u, i) of Eq. 6 `[n]` for each row (for the AUC on a labelled window)."""
    ds = ranker_data.to_dataset({k: rows[k] for k in (signatures.UR_FEATURE,
                                                      signatures.IR_FEATURE)}, 4096)
    out = [model.score(batch).numpy()[:, 0] for batch in ds]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def retrieval_recall(model, rows: ranker_data.Rows, candidate_ids: np.ndarray,
                     candidate_irs: np.ndarray, ks=(10, 100)) -> dict:
    """recall@k of the clicked rows whose UR was known and whose item is a candidate (the
    item table as of the window's start); also the share of clicked rows that qualified."""
    from trainer.downstream.retrieval import recall_at_k

    clicked = rows[features.LABEL] == 1
    query = clicked & (rows[signatures.found_feature(signatures.UR_FEATURE)] > 0) & np.isin(
        rows[features.ITEM_ID], candidate_ids)
    out = {"recall_queries": int(query.sum()),
           "recall_query_share": float(query.sum() / max(1, clicked.sum()))}
    for k in ks:
        k_eff = min(k, len(candidate_ids))
        out[f"recall_at_{k}"] = (recall_at_k(model, rows[signatures.UR_FEATURE][query],
                                             rows[features.ITEM_ID][query], candidate_ids,
                                             candidate_irs, k_eff) if query.any() else None)
    return out


@dataclasses.dataclass(frozen=True)
class Windows:
    """Half-open time windows `[start, end)` of the downstream split (unix seconds)."""

    replay_start: int  # the traffic the upstream is replayed over starts here
    train: tuple[int, int]
    validation: tuple[int, int]
    test: tuple[int, int]


def split_windows(files: list[str], eval_days: float, validation_days: float,
                  train_start: int) -> Windows:
    """Test = the data's last `eval_days`, validation = the `validation_days` before it,
    train = from `train_start` up to the validation window."""
    lo, hi = data_input.time_range(files)
    test_start = hi + 1 - int(round(eval_days * DAY))
    validation_start = test_start - int(round(validation_days * DAY))
    if not lo <= train_start < validation_start:
        raise data_input.DataError(
            f"no downstream training window: it would run from {train_start} to "
            f"{validation_start} (data from {lo} to {hi}, eval_days={eval_days}, "
            f"validation_days={validation_days})")
    return Windows(lo, (train_start, validation_start), (validation_start, test_start),
                   (test_start, hi + 1))


def representation_source(files: list[str], upstream: str, start: int,
                          base: point_in_time.HistorySource | None,
                          half_life_seconds: float) -> point_in_time.HistorySource:
    """The upstream replayed over the traffic from `start` (all domains), continuing `base`."""
    events = replay.run_upstream(replay.saved_model_fn(upstream),
                            data_input.records_in_window(files, start=start))
    return replay.histories(events, half_life_seconds, base)


def run(data: str, upstream: str, mode: str, export_dir: str | None, tables: str | None = None,
        config: downstream_config.DownstreamConfig | None = None,
        train_config: downstream_config.DownstreamTrainConfig | None = None, eval_days: float = 1.0,
        validation_days: float = 1.0, downstream_days: float | None = None,
        half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS, top_k: int = 100,
        index: str = "brute_force", verbose: int = 0,
        upstream_protocol: str = FROZEN) -> dict:
    """The whole CLI (module doc); returns the results dict."""
    if upstream_protocol not in PROTOCOLS:
        raise ValueError(f"upstream_protocol must be one of {PROTOCOLS}, got "
                         f"{upstream_protocol!r}")
    started = time.perf_counter()
    config = dataclasses.replace(config or downstream_config.DownstreamConfig(), mode=mode)
    train_config = train_config or downstream_config.DownstreamTrainConfig()
    files = data_input.list_files(data)
    data_input.check_files(files)
    if upstream_protocol == DAILY:
        windows, source, upstream_path, ad_prediction = _daily_inputs(
            files, upstream, tables, eval_days, validation_days, downstream_days,
            half_life_seconds, config.prediction_features)
    else:
        windows, source, upstream_path, ad_prediction = _frozen_inputs(
            files, upstream, tables, eval_days, validation_days, downstream_days,
            half_life_seconds, config.prediction_features)
    names = config.representation_features
    rows = {name: ranker_data.with_representations(ranker_data.read_rows(files, *window),
                                                   source, names)
            for name, window in (("train", windows.train), ("validation", windows.validation),
                                 ("test", windows.test))}
    if ad_prediction is not None:  # distill: the upstream's ad prediction on each row itself
        rows = {name: ad_prediction(r) for name, r in rows.items()}
    if not ranker_data.size(rows["train"]) or not ranker_data.size(rows["test"]):
        raise data_input.DataError(f"the downstream windows hold {ranker_data.size(rows['train'])} "
                                   f"training and {ranker_data.size(rows['test'])} test ad rows")
    probabilities = ranker_data.oracle_probabilities(data, rows["test"], *windows.test)
    train_items = set(rows["train"][features.ITEM_ID].tolist())
    if mode == downstream_config.RETRIEVAL:
        model, fit = train_retrieval(config, train_config, rows["train"], rows["validation"],
                                     verbose=verbose)
        results = {"mode": mode, **evaluate(rows["test"], retrieval_scores(model, rows["test"]),
                                            train_items, probabilities, calibrated=False)}
        # The index: every item the item table holds when the test window begins.
        items = source.histories[ITEM_TABLE].last()
        known = source.lookup(ITEM_TABLE, items.keys,
                              np.full(len(items), windows.test[0], np.int64))
        candidates, irs = items.keys[known.found], known.vectors[known.found]
        results.update(retrieval_recall(model, rows["test"], candidates, irs))
    else:
        upstream_config = (
            load_upstream_config(upstream_path) if mode in downstream_config.IIM_MODES else None
        )
        model, fit = train_ranker(config, train_config, rows["train"], rows["validation"],
                                  upstream_config=upstream_config,
                                  upstream_export=upstream_path, verbose=verbose)
        results = {"mode": mode, **evaluate(rows["test"], predict(model, rows["test"]),
                                            train_items, probabilities)}
    results.update(
        train_rows=ranker_data.size(rows["train"]),
        validation_rows=ranker_data.size(rows["validation"]),
        windows=dataclasses.asdict(windows), upstream=upstream_path, tables=tables,
        upstream_protocol=upstream_protocol, **fit)
    if export_dir:
        test = rows["test"]
        warmup = [example_with_representations(
            {name: test[name][r] for name in FIELDS},
            {name: test[name][r] for name in test if name not in features.ALL_FEATURES})
            for r in range(min(8, ranker_data.size(test)))]
        if mode == downstream_config.RETRIEVAL:
            from trainer.downstream.retrieval import export_retrieval

            results["export_path"] = export_retrieval(
                model, export_dir, candidates, irs, k=min(top_k, len(candidates)),
                index=index, warmup_examples=warmup)
        else:
            results["export_path"] = export_ranker(model, export_dir, warmup)
    results["config"] = dataclasses.asdict(config)
    results["seconds"] = round(time.perf_counter() - started, 2)
    return results




def _frozen_inputs(files, upstream, tables, eval_days, validation_days, downstream_days,
                   half_life_seconds, prediction_features):
    """`--upstream_protocol frozen`: one upstream export replayed over the traffic (module
    doc). Returns the windows, the representation source, the export the modes that load the
    upstream read, and the rows -> rows with the `distill` input (None when not read)."""
    upstream_path, upstream_version = replay.resolve_export(upstream)
    base = point_in_time.HistorySource.from_published(tables) if tables else None
    newest = base.newest() if base is not None else None
    if base is not None:
        versions = base.model_versions
        if upstream_version is not None and versions and versions != {upstream_version}:
            raise ValueError(f"the tables {tables!r} come from model version(s) "
                             f"{sorted(versions)}, the upstream {upstream_path!r} is version "
                             f"{upstream_version}: give the upstream that wrote them")
    lo, hi = data_input.time_range(files)
    if downstream_days is not None:
        test_start = hi + 1 - int(round(eval_days * DAY))
        train_start = test_start - int(round((validation_days + downstream_days) * DAY))
    elif newest is not None:
        train_start = newest + 1
    else:
        raise ValueError("give --tables (the downstream window starts after them) or "
                         "--downstream_days")
    windows = split_windows(files, eval_days, validation_days, train_start)
    trained_until = read_training_facts(upstream_path).get("train_end")
    if trained_until is not None and trained_until > windows.train[0]:
        raise ValueError(
            f"the upstream {upstream_path!r} was trained on data up to {trained_until}, after "
            f"the downstream window starts ({windows.train[0]}): it has seen the downstream "
            "rows; train it with an earlier end (trainer.train --skip_last_days) or start the "
            "downstream window later")
    if newest is not None and newest >= windows.train[0]:
        raise ValueError(
            f"the tables {tables!r} hold rows written at {newest}, not before the downstream "
            f"window starts ({windows.train[0]}): they were built on the downstream rows")
    replay_start = train_start if base is not None else lo
    source = representation_source(files, upstream_path, replay_start, base, half_life_seconds)
    ad_prediction = None
    if prediction_features:
        predict = ranker_data.saved_model_ad_prediction_fn(upstream_path)
        ad_prediction = functools.partial(ranker_data.with_upstream_prediction, predict=predict)
    return windows, source, upstream_path, ad_prediction


def _daily_inputs(files, upstream, tables, eval_days, validation_days, downstream_days,
                  half_life_seconds, prediction_features):
    """`--upstream_protocol daily`: every version under the model base path `upstream`, each
    request scored by the newest version trained only on data before it (`replay.run_versions`,
    checked by `replay.check_unseen` over the downstream windows); the modes that load the
    upstream read the newest version trained before the validation window."""
    if tables:
        raise ValueError("--tables continues the tables of one upstream version; under "
                         "--upstream_protocol daily the replay of every version starts at the "
                         "data's beginning: leave --tables out")
    versions = replay.upstream_versions(upstream)
    lo, hi = data_input.time_range(files)
    if downstream_days is not None:
        test_start = hi + 1 - int(round(eval_days * DAY))
        train_start = test_start - int(round((validation_days + downstream_days) * DAY))
    else:  # every row the oldest version never saw
        train_start = versions[0][0]
    windows = split_windows(files, eval_days, validation_days, train_start)
    before = [path for end, path in versions if end <= windows.validation[0]]
    if not before:
        raise ValueError(f"no upstream version under {upstream!r} was trained only on data "
                         f"before the validation window ({windows.validation[0]}); their "
                         f"train_end: {[end for end, _ in versions]}")
    fns = {path: replay.saved_model_fn(path) for _, path in versions}
    events = replay.run_versions([(end, fns[path]) for end, path in versions],
                            data_input.records_in_window(files).as_numpy_iterator())
    replay.check_unseen(events, windows.train[0])
    source = replay.histories(events, half_life_seconds)
    ad_prediction = None
    if prediction_features:
        predicts = [(end, ranker_data.saved_model_ad_prediction_fn(path)) for end, path in versions]

        def ad_prediction(rows):  # each row by the version that scored its request
            which = replay.version_index([e for e, _ in predicts], rows[features.TIMESTAMP])
            out = np.zeros(ranker_data.size(rows), np.float32)
            for k, (_, predict) in enumerate(predicts):
                keep = which == k
                if keep.any():
                    out[keep] = ranker_data.with_upstream_prediction(
                        ranker_data.select(rows, keep), predict
                    )[signatures.UPSTREAM_AD_PREDICTION_FEATURE]
            return {**rows, signatures.UPSTREAM_AD_PREDICTION_FEATURE: out}

    return windows, source, before[-1], ad_prediction


FLAG_HELP = {  # the flags of DownstreamConfig and DownstreamTrainConfig fields
    "mode": "what the ranker takes from the upstream (trainer.downstream.config.MODES)",
    "iim_warm_start": "start the Isomorphic Interaction Module from the upstream's ad branch",
    "distill_loss_weight": "distill: weight of the auxiliary loss on the upstream's prediction",
    "use_ur_ir": "the CR modes with UR and IR as features (--no-use_ur_ir: CR alone)",
    "mlp_hidden": "hidden sizes of the ranker's MLP, comma-separated",
    "retrieval_hidden": "retrieval: hidden sizes of the adapters, comma-separated",
}


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace,
                                          downstream_config.DownstreamConfig,
                                          downstream_config.DownstreamTrainConfig]:
    """The CLI's arguments and the ranker's configs: every field of DownstreamConfig and
    DownstreamTrainConfig is a flag (`common.cli`)."""
    p = cli.ArgumentParser(prog="python -m trainer.downstream.train",
                           description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="directory (or glob) of tf.Example TFRecords")
    p.add_argument("--upstream", required=True,
                   help="the upstream export: a version directory or its model base path "
                        "(with --upstream_protocol daily: the base path of every version)")
    p.add_argument("--upstream_protocol", choices=PROTOCOLS, default=FROZEN,
                   help="frozen: one upstream version scores every request; daily: each "
                        "request is scored by the newest version trained only on data before "
                        "it (each version's train_end)")
    p.add_argument("--tables", default=None,
                   help="a published representation version (or the publish root: its LIVE)")
    p.add_argument("--export_dir", default=None, help="model base path: <dir>/<version>/")
    p.add_argument("--eval_days", type=float, default=1.0)
    p.add_argument("--validation_days", type=float, default=1.0)
    p.add_argument("--downstream_days", type=float, default=None,
                   help="days of downstream training before the validation window "
                        "(default: everything after the tables)")
    p.add_argument("--half_life_seconds", type=float, default=DEFAULT_HALF_LIFE_SECONDS)
    p.add_argument("--top_k", type=int, default=100,
                   help="retrieval: items per query in the exported index")
    p.add_argument("--index", choices=("brute_force", "scann"), default="brute_force",
                   help="retrieval: the exported index")
    model = cli.add_dataclass_flags(p, downstream_config.DownstreamConfig, help_texts=FLAG_HELP,
                                    choices={"mode": downstream_config.MODES})
    training = cli.add_dataclass_flags(p, downstream_config.DownstreamTrainConfig)
    args = p.parse_args(argv)
    return args, model.build(args), training.build(args)


def format_table(results: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"downstream mode {results['mode']!r}: {results['train_rows']} training, "
             f"{results['validation_rows']} validation, {results['rows']} test ad rows "
             f"({results['clicks']} clicks), best epoch {results['best_epoch']}/"
             f"{results['epochs']}",
             f"AUC {fmt(results['auc'])}  GAUC {fmt(results['gauc'])}  logloss "
             f"{fmt(results['logloss'])}  cold-start AUC {fmt(results['auc_cold_start'])} "
             f"({results['cold_start_rows']} rows)  expected AUC {fmt(results['expected_auc'])}"]
    if results.get("recall_at_10") is not None:
        lines.append(f"recall@10 {fmt(results['recall_at_10'])}, recall@100 "
                     f"{fmt(results.get('recall_at_100'))} over {results['recall_queries']} "
                     "clicked rows")
    if results.get("export_path"):
        lines.append(f"exported: {results['export_path']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, config, train_config = _parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run(
        lambda: run(args.data, args.upstream, config.mode, args.export_dir, tables=args.tables,
                    config=config, train_config=train_config, eval_days=args.eval_days,
                    validation_days=args.validation_days, downstream_days=args.downstream_days,
                    half_life_seconds=args.half_life_seconds, top_k=args.top_k,
                    index=args.index, verbose=1 if sys.stdout.isatty() else 2,
                    upstream_protocol=args.upstream_protocol),
        args, show=format_table, errors=(data_input.DataError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
