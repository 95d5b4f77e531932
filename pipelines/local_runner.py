"""Runs the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

Three ways to start it (README):

    python -m pipelines.local_runner --data DIR --pipeline_root DIR --serving_root DIR \\
        [--preset NAME] [--<field> VALUE ...] [--json]
    tfx pipeline create --engine local --pipeline_path pipelines/local_runner.py
    tfx run create --engine local --pipeline_name lfm4ads

The `tfx` CLI runs this file as a script with no arguments: paths then come from the
environment (`LFM4ADS_DATA`, `LFM4ADS_PIPELINE_ROOT`, `LFM4ADS_SERVING_ROOT`, and the eval
window `LFM4ADS_EVAL_DAYS`) or the defaults of `pipelines.configs`. Every field of
`pipelines.pipeline_config.PipelineConfig` is a flag, with `--preset` and the Trainer's
`ModelConfig` / `TrainConfig` fields over it (`--help` lists them). With `--json` the last
printed line is one JSON object (`auc_ad`, `gauc_ad`, `pushed_version`, `cr_users`,
`cr_items`, `guard`, `lee_delta`, `lee_blessed`, `lee_verdict`, `lee_comparison`,
`published`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if __package__ in (None, ""):  # run as a script by `tfx run create`: no pipelines/ shadowing
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import trainer  # noqa: E402,F401  (selects tf-keras before TensorFlow loads)
from common import cli  # noqa: E402
from pipelines import configs, memory, pipeline_config  # noqa: E402


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
    from pipelines.summary import metadata_file

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
    from trainer import data_input

    if _compiling_for_tfx_cli():
        from tfx import v1 as tfx

        # `tfx pipeline create` runs this file to read the pipeline; nothing runs and the
        # data need not exist yet.
        tfx.orchestration.LocalDagRunner().run(build(data_root, pipeline_root, serving_root,
                                                     **kwargs))
        return {}
    data_input.check_files(data_input.list_files(data_root))  # clear error before any TFX work
    from tfx import v1 as tfx

    from pipelines.summary import metadata_file, run_summary

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
    from trainer import data_input

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

    from common import features, signatures
    from pipelines.summary import rounded
    from trainer.evaluation import auc

    parsed = features.parse_examples(tf.constant(records), (features.DOMAIN, features.LABEL))
    ad = parsed[features.DOMAIN].numpy() == features.DOMAIN_AD
    labels = parsed[features.LABEL].numpy()[ad]
    ad_records = [r for r, keep in zip(records, ad, strict=True) if keep]
    predict = tf.saved_model.load(baseline_model).signatures[signatures.SERVING_DEFAULT]
    baseline = np.concatenate([
        predict(**{signatures.INPUT_KEY: tf.constant(ad_records[i:i + 1024])})[
            signatures.DOWNSTREAM_PREDICTION].numpy().reshape(-1)
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
    """True inside `tfx pipeline create`: its patcher wraps LocalDagRunner.run (TFX is loaded
    before it runs this file)."""
    if "tfx" not in sys.modules:
        return False
    from tfx import v1 as tfx

    return hasattr(tfx.orchestration.LocalDagRunner.run, "__wrapped__")


# The runner's online loop and models.config serve the models under `configs`' names.
_NOT_FLAGS = ("model_name", "downstream_model_name")


def _parser() -> tuple[cli.ArgumentParser, pipeline_config.PipelineFlags]:
    """The flags: every `PipelineConfig` field (`pipelines.pipeline_config.add_flags`: the
    paths, `--preset` and the Trainer's config fields, the guard's, the downstream ranker's)
    but `_NOT_FLAGS`, and the local run's own."""
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--beam_workers", type=int, default=None,
                   help="DirectRunner workers (1: in-process; more: multi-processing)")
    p.add_argument("--online_requests", type=int, default=20_000,
                   help="after the run, serve the pushed model (and the downstream ranker) "
                        "in-process and run the online loop (Fig. 4) over this many of the "
                        "latest day's examples, replayed as the next day (0: skip)")
    flags = pipeline_config.add_flags(p, skip=_NOT_FLAGS, help_texts={
        "data_root": "directory of TFRecord shards",
        "pipeline_root": "artifacts and the SQLite ML Metadata file",
        "store_url": "the serving store the published tables go into (sqlite:///... or "
                     "redis://...; default: LFM4ADS_STORE_URL, else SQLite under "
                     "--serving_root; empty: none)"})
    return p, flags


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def _run(config: pipeline_config.PipelineConfig, args: argparse.Namespace) -> dict | None:
    """`run` with the config's fields (None: nothing ran, as under `tfx pipeline create`); the
    data failing the curated schema is an input error (`common.cli.Failure`)."""
    try:
        summary = run(config.data_root, config.pipeline_root, config.serving_root,
                      beam_workers=args.beam_workers, online_requests=args.online_requests,
                      **config.arguments("data_root", "pipeline_root", "serving_root"))
    except RuntimeError as e:
        from pipelines.validation_gate import DataValidationError  # tfx is loaded by now

        if isinstance(e, DataValidationError):
            raise cli.Failure("; ".join(str(e).splitlines())) from e
        raise
    return summary or None


def _show(summary: dict | None) -> str | None:
    if summary is None:
        return None
    from pipelines.summary import format_summary

    return f"{format_summary(summary)}\npipeline run in {summary['seconds']} s"


def main(argv: list[str] | None = None) -> int:
    from trainer import data_input

    parser, flags = _parser()
    args = parser.parse_args(argv)
    config = flags.build(args)
    if "store_url" not in flags.given(args):  # the local default: SQLite under serving_root
        config = dataclasses.replace(
            config, store_url=configs.default_store_url(config.serving_root))
    return cli.run(lambda: _run(config, args), args, show=_show, errors=(data_input.DataError,))


if __name__ == "__main__":
    sys.exit(main())
