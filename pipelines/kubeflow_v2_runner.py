"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (a JSON spec).

    python -m pipelines.kubeflow_v2_runner --output lfm4ads_pipeline.json \\
        --image gcr.io/PROJECT/lfm4ads:latest --pipeline_root gs://BUCKET/lfm4ads \\
        --data gs://BUCKET/data --serving_root gs://BUCKET/serving \\
        [--beam_runner DataflowRunner --beam_arg=--project=PROJECT --beam_arg=--region=REGION] \\
        [--vertex_project PROJECT --vertex_region REGION --strategy parameter_server \\
         --workers 4 --parameter_servers 2 --machine_type n1-standard-16]

Compiling needs no cluster. Running it needs a container image with this repository and its
requirements (the image's entry point is TFX's), submitted with e.g.
`google.cloud.aiplatform.PipelineJob(template_path=..., ...).submit()`. The same
`create_pipeline` as the local runner; ML Metadata is the cluster's own, so none is set here.

With `--vertex_project`, the Trainer runs as a Vertex AI custom job with its own machines: a
chief, `--workers` and `--parameter_servers` (`pipelines.pipeline.vertex_trainer_config`);
Vertex sets each replica's TF_CONFIG and `--strategy` picks the `tf.distribute` strategy.
"""

from __future__ import annotations

import argparse
import json
import sys

import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)
from pipelines import configs
from trainer import console
from trainer.config import STRATEGIES
from trainer.representations.cr_domains import CHOICES as CR_DOMAIN_CHOICES

DEFAULT_IMAGE = "gcr.io/tfx-oss-public/tfx:1.16.0"


def compile_pipeline(
    output: str,
    image: str = DEFAULT_IMAGE,
    pipeline_root: str = configs.PIPELINE_ROOT,
    data_root: str = configs.DATA_ROOT,
    serving_root: str = configs.SERVING_ROOT,
    beam_pipeline_args: list[str] | None = None,
    **kwargs,
) -> dict:
    """Writes the pipeline spec JSON to `output` and returns it as a dict."""
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline

    pipeline = create_pipeline(
        pipeline_root=pipeline_root,
        data_root=data_root,
        serving_root=serving_root,
        beam_pipeline_args=beam_pipeline_args or ["--runner=DataflowRunner"],
        **kwargs,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_filename=output,
    )
    runner.run(pipeline, write_out=True)
    with open(output) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="lfm4ads_pipeline.json")
    p.add_argument("--image", default=DEFAULT_IMAGE)
    p.add_argument("--pipeline_root", default=configs.PIPELINE_ROOT)
    p.add_argument("--data", default=configs.DATA_ROOT)
    p.add_argument("--serving_root", default=configs.SERVING_ROOT)
    p.add_argument("--beam_runner", default="DataflowRunner")
    p.add_argument("--beam_arg", action="append", default=[],
                   help="extra Beam pipeline argument (repeatable)")
    p.add_argument("--eval_days", type=float, default=configs.EVAL_DAYS,
                   help="the eval window: the last days of the data, every gate's test rows "
                        "(more clicks in it resolve smaller differences)")
    p.add_argument("--cr_domains", choices=CR_DOMAIN_CHOICES, default=configs.CR_DOMAINS,
                   help="the requests whose CR(u,i) folds into CR(u), CR(i): ad (paper Sec. "
                        "4.3.1) or all (content too)")
    g = p.add_argument_group("the Trainer as a Vertex AI custom job (a cluster of its own)")
    g.add_argument("--vertex_project", help="run the Trainer on Vertex AI in this project")
    g.add_argument("--vertex_region", default="us-central1")
    g.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="tf.distribute strategy of the Trainer (trainer.distribute)")
    g.add_argument("--workers", type=int, default=1, help="training workers, the chief's "
                   "included for multi_worker, besides it for parameter_server")
    g.add_argument("--parameter_servers", type=int, default=0)
    g.add_argument("--machine_type", default="n1-standard-8")
    console.add_verbose_flag(p)
    args = p.parse_args(argv)
    console.setup(args.verbose)
    if not args.eval_days > 0:
        p.error(f"--eval_days must be a positive number of days, got {args.eval_days}")
    kwargs = {"cr_domains": args.cr_domains, "eval_days": args.eval_days}
    if args.strategy != "default":
        kwargs["train_overrides"] = {**configs.TRAIN_OVERRIDES, "strategy": args.strategy}
    if args.vertex_project:
        kwargs["vertex_training"] = {
            "project": args.vertex_project, "region": args.vertex_region, "image": args.image,
            "strategy": args.strategy, "workers": args.workers,
            "parameter_servers": args.parameter_servers, "machine_type": args.machine_type}
    elif args.strategy in ("multi_worker", "parameter_server"):
        p.error(f"--strategy {args.strategy} needs a cluster: give --vertex_project")
    spec = compile_pipeline(
        args.output, args.image, args.pipeline_root, args.data, args.serving_root,
        beam_pipeline_args=[f"--runner={args.beam_runner}", *args.beam_arg], **kwargs,
    )
    tasks = spec.get("pipelineSpec", spec).get("root", {}).get("dag", {}).get("tasks", {})
    print(f"wrote {args.output}: {len(tasks)} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
