"""Train the upstream model on a time-based split, evaluate it on the latest window, export it.

    python -m trainer.train --data DIR --export_dir DIR [--preset NAME] [--<field> VALUE ...]
        [--json]

Every field of `ModelConfig` and `TrainConfig` is a flag (`--help` lists them), over a named
preset (`trainer.config.PRESETS`: `default`, `paper`, `feature_path`).

The last `--eval_days` of the data (by `timestamp`) are held out; the rest trains the model
with Keras `fit` (`--skip_last_days` first leaves the data's last days out, to evaluate on an
earlier window). The evaluation reports the AUC of the ad branch on ad rows, of the content
branch on content rows, and of the ad branch on cold-start items (ad rows whose item never
appears in the training window), next to the oracle AUC (the AUC of the true probabilities)
when the data directory holds the synthetic generator's `oracle.npz`.

TensorBoard summaries (epoch scalars, training and validation) go to
`<export_dir>/logs/<start time>/` (`--tensorboard_dir`): `tensorboard --logdir <export_dir>/logs`.

`--strategy mirrored|multi_worker|parameter_server` trains under a `tf.distribute` strategy on
the cluster of `TF_CONFIG` (`trainer.distribute`): start the same command on every host.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import tensorflow as tf

from common import cli, features, signatures
from common.representations.ema import (
    DEFAULT_HALF_LIFE_SECONDS,
    aggregate_sorted,
    half_life_decay,
)
from common.representations.spectrum import spectrum
from trainer import data_input, distribute, oracle
from trainer.config import ModelConfig, TrainConfig, add_config_flags, configs_from_flags
from trainer.evaluation import auc, gauc
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel
from trainer.transform import SHARED_VOCABULARY, VOCABULARIES
from trainer.vocabulary import VocabularyPreprocessor

VOCABULARY_INPUTS = tuple(VOCABULARIES) + tuple(SHARED_VOCABULARY)  # what the count reads

DAY = features.DAY


REPRESENTATIONS = (signatures.USER_REPRESENTATION, signatures.ITEM_REPRESENTATION,
                   signatures.CROSS_REPRESENTATION)


def _collect(model: LFM4AdsModel, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    predict = tf.function(lambda raw: model(raw, training=False))
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("ad", "content", "label", "is_ad", "user", "item", "timestamp",
                        *REPRESENTATIONS)
    }
    for raw in dataset:
        out = predict(raw)
        parts["ad"].append(out[signatures.AD_PREDICTION].numpy()[:, 0])
        parts["content"].append(out[signatures.CONTENT_PREDICTION].numpy()[:, 0])
        parts["label"].append(raw[features.LABEL].numpy())
        is_ad = raw[features.DOMAIN].numpy() == features.DOMAIN_AD
        parts["is_ad"].append(is_ad)
        parts["user"].append(raw[features.USER_ID].numpy())
        parts["item"].append(raw[features.ITEM_ID].numpy())
        parts["timestamp"].append(raw[features.TIMESTAMP].numpy())
        for name in REPRESENTATIONS:  # kept for the ad rows only (what is transferred)
            parts[name].append(out[name].numpy()[is_ad])
    return {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}


def representation_statistics(ev: dict[str, np.ndarray],
                              half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS) -> dict:
    """What each representation holds on the eval window's ad rows
    (`common.representations.spectrum`: width, dead units, top direction's share of the
    variance, participation ratio, entropy effective rank).

    UR, IR and CR(u,i) are read row by row on the ad rows; CR(u) and CR(i) are the tables the
    time-aware EMA (Eq. 1-2) folds from those rows' CR(u,i), one vector per user and per item
    as of the window's end (Sec. 4.3.1 folds a CR on ad requests only).
    """
    is_ad = ev["is_ad"].astype(bool)
    cr = ev[signatures.CROSS_REPRESENTATION]
    out = {"ur": spectrum(ev[signatures.USER_REPRESENTATION]).to_dict(),
           "ir": spectrum(ev[signatures.ITEM_REPRESENTATION]).to_dict(),
           "cr": spectrum(cr).to_dict()}
    beta = half_life_decay(half_life_seconds)
    for name, keys in (("cr_user", ev["user"][is_ad]), ("cr_item", ev["item"][is_ad])):
        if len(keys):
            _, table, _ = aggregate_sorted(keys.astype(object), ev["timestamp"][is_ad], cr, beta)
        else:
            table = np.zeros((0, cr.shape[1] if cr.ndim == 2 else 0), np.float32)
        out[name] = spectrum(table).to_dict()
    return out


def _train_items(files: list[str], cut: int) -> tuple[set[bytes], int]:
    ds = data_input.make_dataset(files, 8192, end=cut, names=(features.ITEM_ID, features.TIMESTAMP))
    ids = [batch[features.ITEM_ID].numpy() for batch in ds]
    seen = np.concatenate(ids) if ids else np.array([], dtype=object)
    return set(np.unique(seen).tolist()), int(seen.size)


def _clone_preprocessor(preprocessor):
    """A fresh preprocessor of the same ids (its own lookup tables, outside any strategy)."""
    return None if preprocessor is None else type(preprocessor).from_config(
        preprocessor.get_config())


def fit_and_evaluate(
    data: str,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    verbose: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    log_dir: str | None = None,
) -> tuple[LFM4AdsModel, dict, list[bytes]]:
    """Trains and evaluates (no export): the model, the metrics and a few serialized examples
    of the eval window (for an export's warmup file).

    `strategy` defaults to the one `train_config.strategy` names (`trainer.distribute`, cluster
    from TF_CONFIG). The model returned is always a plain one (no strategy, no shards).
    `log_dir`: TensorBoard summaries of each epoch of `fit` (`distribute.tensorboard_callback`;
    the feature path's first stage is not among them); None writes none.
    """
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    if strategy is None:
        strategy = distribute.strategy_for(train_config)
    name = distribute.strategy_name(strategy)
    distributed = name != "default"
    distribute.check_supported(name, model_config, train_config)
    tf.keras.utils.set_random_seed(train_config.seed)
    files = data_input.list_files(data)
    examples = data_input.check_files(files)
    lo, cut, hi = data_input.time_split(files, train_config.eval_days,
                                        train_config.skip_last_days)

    train_end = cut - int(round(train_config.validation_days * DAY))
    if train_end <= lo:
        raise data_input.DataError(
            f"validation_days={train_config.validation_days} and eval_days="
            f"{train_config.eval_days} leave nothing to train on")
    train_items, train_examples = _train_items(files, train_end)
    train_batches = distribute.training_batches(lambda drop_remainder: data_input.make_dataset(
        files, train_config.batch_size, end=train_end, shuffle_buffer=train_config.shuffle_buffer,
        seed=train_config.seed, cache=True, drop_remainder=drop_remainder))
    eval_ds = data_input.make_dataset(files, 4096, start=cut, end=hi + 1, cache=True)
    preprocessor = None
    if train_config.vocabularies:  # counted on the training split only, as the Transform does
        preprocessor = VocabularyPreprocessor.adapt(data_input.make_dataset(
            files, 8192, end=train_end, names=VOCABULARY_INPUTS), model_config)

    def build() -> LFM4AdsModel:
        return LFM4AdsModel(model_config, train_config,
                            preprocessor=_clone_preprocessor(preprocessor))

    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    with strategy.scope():  # variables (sharded under parameter_server), tables, optimizer
        model = build() if distributed else LFM4AdsModel(
            model_config, train_config, preprocessor=preprocessor)
    path_history, started = [], time.perf_counter()
    if model.feature_path is not None and train_config.feature_path_epochs:
        path_history = model.fit_feature_path(train_batches(), verbose=bool(verbose))  # stage 1
    path_seconds, started = time.perf_counter() - started, time.perf_counter()
    with strategy.scope():
        model.compile(optimizer=tf.keras.optimizers.Adam(train_config.learning_rate))
    fit_args = {}
    if train_config.validation_days > 0:
        fit_args["validation_data"] = data_input.make_dataset(
            files, 4096, start=train_end, end=cut, cache=True)
        fit_args["callbacks"] = [tf.keras.callbacks.EarlyStopping(
            monitor="val_ad_auc", mode="max", patience=train_config.patience,
            restore_best_weights=True)]
    history = distribute.fit(model, strategy, train_batches, train_examples, train_config,
                             verbose, log_dir=log_dir, **fit_args)
    epochs_run = len(history.history["loss"])
    fit_seconds = time.perf_counter() - started
    sharded = len(distribute.sharded_variables(model))
    if distributed:  # evaluated and exported as one plain model
        first = next(iter(data_input.make_dataset(files, 64, start=cut, end=hi + 1)))
        model = distribute.unsharded_copy(model, build, first)

    ev = _collect(model, eval_ds)
    is_ad = ev["is_ad"].astype(bool)
    cold = is_ad & ~np.isin(ev["item"], list(train_items))
    results = {
        "examples": examples,
        "train_examples": train_examples,
        "eval_examples": int(ev["label"].size),
        "eval_ad_examples": int(is_ad.sum()),
        "eval_content_examples": int((~is_ad).sum()),
        "eval_cold_start_examples": int(cold.sum()),
        "eval_window": [cut, hi],
        "auc_ad": auc(ev["label"][is_ad], ev["ad"][is_ad]),
        "auc_content": auc(ev["label"][~is_ad], ev["content"][~is_ad]),
        "auc_cold_start": auc(ev["label"][cold], ev["ad"][cold]),
        "gauc_ad": gauc(ev["user"][is_ad], ev["label"][is_ad], ev["ad"][is_ad]),
        "oracle_auc_ad": None,
        "oracle_auc_content": None,
        "oracle_auc_cold_start": None,
        "epochs": epochs_run,
        "best_epoch": (int(np.argmax(history.history["val_ad_auc"])) + 1
                       if "val_ad_auc" in history.history else epochs_run),
        "fit_seconds": round(fit_seconds, 2),
        "examples_per_second": round(train_examples * epochs_run / fit_seconds, 1),
        "final_loss": float(history.history["loss"][-1]),
        "feature_path_epochs": len(path_history),
        "feature_path_seconds": round(path_seconds, 2),
        "preprocessing": "vocabulary" if preprocessor is not None else "hashing",
        "strategy": name,
        "replicas": strategy.num_replicas_in_sync,
        "sharded_variables": sharded,
        "chief": distribute.is_chief(strategy),
        "vocabulary_sizes": {name: model.preprocessor.vocabulary_size(name)
                             for name in VOCABULARY_INPUTS},
    }
    results.update(oracle.metrics(data, cut, train_end, ev, end=hi + 1))
    results["representations"] = representation_statistics(ev)
    results["model_config"] = dataclasses.asdict(model_config)
    results["train_window"] = [lo, train_end]  # [start, end) of the training rows
    warmup = [s.numpy() for s in data_input.records_in_window(files, start=cut, end=hi + 1).take(8)]
    return model, results, warmup


def summaries_dir(export_dir: str, tensorboard_dir: str,
                  started: float | None = None) -> str | None:
    """Where `train_and_export` writes a run's TensorBoard summaries: a directory named by the
    run's start, `YYYYmmdd-HHMMSS` (local time, as TensorFlow's tutorials name runs), in
    `tensorboard_dir`; that is under the model base path `export_dir` (`logs` by default: TF
    Serving and `common.serving_layout` read only its integer version directories), or as is
    when absolute or a URL (`gs://...`). None when `tensorboard_dir` is empty."""
    if not tensorboard_dir:
        return None
    if not (os.path.isabs(tensorboard_dir) or "://" in tensorboard_dir):
        tensorboard_dir = os.path.join(export_dir, tensorboard_dir)
    run = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return f"{tensorboard_dir.rstrip('/')}/{run}"


def train_and_export(
    data: str,
    export_dir: str,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    verbose: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains, evaluates and exports; returns the metrics and the export path (None on a
    `multi_worker` worker that is not the chief: only the chief exports). TensorBoard
    summaries go to `summaries_dir(export_dir, train_config.tensorboard_dir)`."""
    train_config = train_config or TrainConfig()
    if strategy is None:
        strategy = distribute.strategy_for(train_config)
    # Only the chief writes summaries, as only it exports: under multi_worker the other
    # workers leave the export directory untouched.
    log_dir = (summaries_dir(export_dir, train_config.tensorboard_dir)
               if distribute.is_chief(strategy) else None)
    model, results, warmup = fit_and_evaluate(data, model_config, train_config, verbose,
                                              strategy, log_dir=log_dir)
    start, end = results["train_window"]
    results["export_path"] = None  # a multi_worker worker other than the chief writes nothing
    if results["chief"]:
        results["export_path"] = export_saved_model(
            model, export_dir, warmup_examples=warmup,
            training_facts={"train_start": start, "train_end": end, "data": data})
    distribute.barrier(strategy)  # the other workers return once the chief has exported
    return results


def format_table(results: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    rows = [("ad (latest window)", "auc_ad", "oracle_auc_ad", "eval_ad_examples")]
    rows.append(("content", "auc_content", "oracle_auc_content", "eval_content_examples"))
    rows.append(("ad, cold-start items", "auc_cold_start", "oracle_auc_cold_start",
                 "eval_cold_start_examples"))
    lines = [f"{'slice':<24}{'model AUC':>11}{'oracle AUC':>12}{'gap':>9}{'rows':>9}"]
    for label, key, oracle_key, rows_key in rows:
        model_auc, oracle_auc = results.get(key), results.get(oracle_key)
        gap = None if model_auc is None or oracle_auc is None else oracle_auc - model_auc
        lines.append(f"{label:<24}{fmt(model_auc):>11}{fmt(oracle_auc):>12}{fmt(gap):>9}"
                     f"{results[rows_key]:>9}")
    if results.get("features_only_auc_ad") is not None:
        lines.append(f"the simulator's score from features alone (no ids): ad "
                     f"{fmt(results['features_only_auc_ad'])}, content "
                     f"{fmt(results.get('features_only_auc_content'))}")
    if results.get("expected_auc_ad") is not None:
        lines.append(f"in expectation over the labels' draw (true probabilities): ad "
                     f"{fmt(results['expected_auc_ad'])} (oracle "
                     f"{fmt(results.get('oracle_expected_auc_ad'))}), content "
                     f"{fmt(results.get('expected_auc_content'))} (oracle "
                     f"{fmt(results.get('oracle_expected_auc_content'))})")
    if results.get("representations"):
        lines.append(format_representations(results["representations"]))
    lines.append(f"GAUC ad: {fmt(results.get('gauc_ad'))}   training: "
                 f"{results['examples_per_second']:.0f} examples/s over {results['epochs']} epochs")
    lines.append(f"exported: {results['export_path']}")
    return "\n".join(lines)


REPRESENTATION_LABELS = {"ur": "UR", "ir": "IR", "cr": "CR(u,i)", "cr_user": "CR(u)",
                         "cr_item": "CR(i)"}


def format_representations(statistics: dict) -> str:
    """The table of `representation_statistics`."""
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = [f"{'representation (ad rows)':<26}{'rows':>8}{'width':>7}{'dead':>6}"
             f"{'top share':>11}{'PR':>7}{'eff. rank':>11}"]
    for key, label in REPRESENTATION_LABELS.items():
        s = statistics.get(key)
        if s is not None:
            lines.append(f"{label:<26}{s['rows']:>8}{s['dim']:>7}{s['dead_units']:>6}"
                         f"{fmt(s['top_share'], '.1%'):>11}"
                         f"{fmt(s['participation_ratio'], '.2f'):>7}"
                         f"{fmt(s['effective_rank'], '.2f'):>11}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="directory (or glob) of tf.Example TFRecords")
    p.add_argument("--export_dir", required=True, help="model base path: <dir>/<version>/")
    add_config_flags(p)
    return p.parse_args(argv)


def configs_from_args(argv: list[str]) -> tuple[argparse.Namespace, ModelConfig, TrainConfig]:
    """The CLI's arguments and the model and training configs they describe (`--preset`, then
    any field flag given); a value a config refuses exits with `error: ...` (`common.cli`)."""
    args = parse_args(argv)
    model_config, train_config = configs_from_flags(args)
    return args, model_config, train_config


def _train(args: argparse.Namespace, model_config: ModelConfig,
           train_config: TrainConfig) -> dict:
    try:
        return train_and_export(args.data, args.export_dir, model_config, train_config)
    except tf.errors.UnavailableError as e:  # a task of the cluster went away: exit 3
        raise cli.Failure(distribute.lost_task_message(e), code=3) from e


def _show(results: dict) -> str:
    if results["export_path"] is None:
        return f"worker done ({results['strategy']}): the chief exports"
    return format_table(results)


def main(argv: list[str] | None = None) -> int:
    args, model_config, train_config = configs_from_args(sys.argv[1:] if argv is None else argv)
    return cli.run(lambda: _train(args, model_config, train_config), args, show=_show,
                   errors=(data_input.DataError, distribute.StrategyError))


if __name__ == "__main__":
    sys.exit(main())
