"""Runs the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

Three ways to start it (README):

    python -m pipelines.local_runner --data DIR --pipeline_root DIR --serving_root DIR [--json]
    tfx pipeline create --engine local --pipeline_path pipelines/local_runner.py
    tfx run create --engine local --pipeline_name lfm4ads

The `tfx` CLI runs this file as a script with no arguments: paths then come from the
environment (`LFM4ADS_DATA`, `LFM4ADS_PIPELINE_ROOT`, `LFM4ADS_SERVING_ROOT`, and the eval
window `LFM4ADS_EVAL_DAYS`) or the defaults of `pipelines.configs`. With `--json` the last
printed line is one JSON object (`auc_ad`, `gauc_ad`, `pushed_version`, `cr_users`,
`cr_items`, `guard`, `lee_delta`, `lee_blessed`, `lee_verdict`, `lee_comparison`,
`published`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script by `tfx run create`: no pipelines/ shadowing
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import trainer  # noqa: E402,F401  (selects tf-keras before TensorFlow loads)
from pipelines import configs, memory  # noqa: E402
from pipelines.summary import format_summary, metadata_file, run_summary  # noqa: E402
from trainer import console  # noqa: E402
from trainer.representations.cr_domains import CHOICES as CR_DOMAIN_CHOICES  # noqa: E402


def build(
    data_root: str,
    pipeline_root: str,
    serving_root: str,
    pipeline_name: str = configs.PIPELINE_NAME,
    beam_workers: int | None = None,
    **kwargs,
):
    """The pipeline with SQLite ML Metadata under `pipeline_root`."""
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline

    kwargs.setdefault("store_url", configs.default_store_url(serving_root))
    return create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=os.path.abspath(pipeline_root),
        data_root=os.path.abspath(data_root),
        serving_root=os.path.abspath(serving_root),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            metadata_file(os.path.abspath(pipeline_root))),
        beam_pipeline_args=configs.beam_pipeline_args(beam_workers),
        **kwargs,
    )


def run(data_root: str, pipeline_root: str, serving_root: str, online_requests: int = 0,
        **kwargs) -> dict:
    """Runs the whole pipeline once; returns `pipelines.summary.run_summary` + `seconds`.

    With `online_requests`, then serves the pushed model in-process and runs the online loop
    over that many of the latest examples (`online_check`, with the pipeline's `cr_domains`)."""
    from tfx import v1 as tfx

    from trainer import input as data_input

    if _compiling_for_tfx_cli():
        # `tfx pipeline create` runs this file to read the pipeline; nothing runs and the
        # data need not exist yet.
        tfx.orchestration.LocalDagRunner().run(build(data_root, pipeline_root, serving_root,
                                                     **kwargs))
        return {}
    data_input.check_files(data_input.list_files(data_root))  # clear error before any TFX work
    os.makedirs(pipeline_root, exist_ok=True)
    memory.return_freed_memory()  # every component runs in this process
    pipeline = build(data_root, pipeline_root, serving_root, **kwargs)
    started = time.perf_counter()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    summary = run_summary(metadata_file(os.path.abspath(pipeline_root)), pipeline.pipeline_info
                          .pipeline_name)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["model_config_file"] = write_model_config(serving_root, summary)
    # Only when this run's tables went live: the store then holds this model's representations
    # (a held run leaves the previous version's tables, which the new model must not update).
    if online_requests and summary["published"] and summary.get("store_url"):
        summary.update(online_check(data_root, summary, online_requests,
                                    cr_domains=kwargs.get("cr_domains", configs.CR_DOMAINS)))
    return summary


def _next_day(record: bytes, shift: int) -> bytes:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(record)
    timestamp = example.features.feature["timestamp"].int64_list.value
    timestamp[0] += shift
    return example.SerializeToString()


def online_check(data_root: str, summary: dict, requests: int, shift: int = 86_400,
                 cr_domains: str = configs.CR_DOMAINS) -> dict:
    """The online loop of Fig. 4 on the pushed model: the in-process server answers the last
    `requests` examples of the data, replayed in time order `shift` seconds later (as the next
    day's traffic: the published tables already hold the data's own events), and the store's
    UR, IR, CR(u), CR(i) are updated from them (CR from the requests `cr_domains` selects).
    When the pipeline pushed a downstream ranker, the server hosts it too, the loop scores
    every request with it from the stored representations, and the AUC of those scores on the
    ad requests is returned beside the `none` baseline's on the same requests
    (`online_downstream_auc`, `online_baseline_auc`)."""
    from serving.online import serve_and_replay
    from trainer import input as data_input

    files = data_input.list_files(data_root)
    _, hi = data_input.time_range(files)
    # The latest day, in time order (the shards are written in timestamp order).
    records = [r.numpy() for r in data_input.records_in_window(files, start=hi + 1 - 86_400)]
    records = [_next_day(r, shift) for r in records[-requests:]]
    ranker = None
    if summary.get("downstream_pushed"):
        ranker = (configs.DOWNSTREAM_MODEL_NAME,
                  os.path.dirname(summary["downstream_pushed_path"]))
    out = serve_and_replay(configs.MODEL_NAME, os.path.dirname(summary["pushed_path"]),
                           summary["store_url"], records,
                           half_life_seconds=configs.CR_HALF_LIFE_SECONDS, ranker=ranker,
                           cr_domains=cr_domains)
    scores = out.pop("scores", None)
    if scores is not None:
        out.update(_online_downstream(records, scores, summary["downstream_baseline_model"]))
    return out


def _online_downstream(records: list[bytes], scores, baseline_model: str) -> dict:
    """AUC of the loop's ranker scores on the ad requests, and of the `none` baseline's
    predictions on the same requests (it reads no representations)."""
    import numpy as np
    import tensorflow as tf

    from pipelines.summary import rounded
    from trainer import features as F
    from trainer import signatures as S
    from trainer.evaluation import auc

    parsed = F.parse_examples(tf.constant(records), (F.DOMAIN, F.LABEL))
    ad = parsed[F.DOMAIN].numpy() == F.DOMAIN_AD
    labels = parsed[F.LABEL].numpy()[ad]
    ad_records = [r for r, keep in zip(records, ad, strict=True) if keep]
    predict = tf.saved_model.load(baseline_model).signatures[S.SERVING_DEFAULT]
    baseline = np.concatenate([
        predict(**{S.INPUT_KEY: tf.constant(ad_records[i:i + 1024])})[
            S.DOWNSTREAM_PREDICTION].numpy().reshape(-1)
        for i in range(0, len(ad_records), 1024)]) if ad_records else np.zeros(0)

    return {"online_ad_requests": int(ad.sum()), "online_ad_clicks": int(labels.sum()),
            "online_downstream_auc": rounded(auc(labels, np.asarray(scores)[ad])),
            "online_baseline_auc": rounded(auc(labels, baseline))}


def write_model_config(serving_root: str, summary: dict) -> str | None:
    """`<serving_root>/models.config`: a TF Serving `--model_config_file` serving the upstream
    and, when one was pushed, the downstream ranker (the model server's two models)."""
    if not summary.get("pushed_path"):
        return None
    from google.protobuf import text_format

    from serving.online import model_config

    models = {configs.MODEL_NAME: os.path.dirname(summary["pushed_path"])}
    if summary.get("downstream_pushed_path"):
        models[configs.DOWNSTREAM_MODEL_NAME] = os.path.dirname(summary["downstream_pushed_path"])
    path = os.path.join(os.path.abspath(serving_root), "models.config")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(model_config(models)))
    return path


def _compiling_for_tfx_cli() -> bool:
    """True inside `tfx pipeline create`: its patcher wraps LocalDagRunner.run."""
    from tfx import v1 as tfx

    return hasattr(tfx.orchestration.LocalDagRunner.run, "__wrapped__")


def _positive_days(text: str) -> float:
    """An `--eval_days` value: a positive number of days."""
    days = float(text)
    if not days > 0:
        raise argparse.ArgumentTypeError(f"the eval window must be a positive number of days, "
                                         f"got {text}")
    return days


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=configs.DATA_ROOT, help="directory of TFRecord shards")
    p.add_argument("--pipeline_root", default=configs.PIPELINE_ROOT,
                   help="artifacts and the SQLite ML Metadata file")
    p.add_argument("--serving_root", default=configs.SERVING_ROOT,
                   help="pushed models go to <serving_root>/<model_name>/<version>")
    p.add_argument("--pipeline_name", default=configs.PIPELINE_NAME)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 2)")
    p.add_argument("--eval_days", type=_positive_days, default=configs.EVAL_DAYS,
                   help="the eval window: the last days of the data, every gate's test rows "
                        "(more clicks in it resolve smaller differences; default "
                        "LFM4ADS_EVAL_DAYS or 1)")
    p.add_argument("--beam_workers", type=int, default=None,
                   help="DirectRunner workers (1: in-process; more: multi-processing)")
    p.add_argument("--cr_domains", choices=CR_DOMAIN_CHOICES, default=configs.CR_DOMAINS,
                   help="the requests whose CR(u,i) folds into CR(u), CR(i): ad (paper Sec. "
                        "4.3.1) or all (content too); the aggregator, DownstreamExamples and "
                        "the online check alike")
    p.add_argument("--online_requests", type=int, default=20_000,
                   help="after the run, serve the pushed model (and the downstream ranker) "
                        "in-process and run the online loop (Fig. 4) over this many of the "
                        "latest day's examples, replayed as the next day (0: skip)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    console.add_verbose_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    console.setup(args.verbose)
    kwargs = {"cr_domains": args.cr_domains, "eval_days": args.eval_days}
    if args.epochs is not None:
        kwargs["train_overrides"] = {**configs.TRAIN_OVERRIDES, "epochs": args.epochs}
    summary = run(args.data, args.pipeline_root, args.serving_root,
                  pipeline_name=args.pipeline_name, beam_workers=args.beam_workers,
                  online_requests=args.online_requests, **kwargs)
    if not summary:
        return 0
    print(format_summary(summary))
    print(f"pipeline run in {summary['seconds']} s")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
