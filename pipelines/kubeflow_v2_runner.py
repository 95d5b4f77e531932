"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (a JSON spec).

    python -m pipelines.kubeflow_v2_runner --output lfm4ads_pipeline.json \\
        --image gcr.io/PROJECT/lfm4ads:latest --pipeline_root gs://BUCKET/lfm4ads \\
        --data gs://BUCKET/data --serving_root gs://BUCKET/serving \\
        [--beam_runner DataflowRunner --beam_arg=--project=PROJECT --beam_arg=--region=REGION] \\
        [--vertex_project PROJECT --vertex_region REGION --strategy parameter_server \\
         --workers 4 --parameter_servers 2 --machine_type n1-standard-16]

Compiling needs no cluster. Running it needs a container image with this repository and its
requirements (the repository's Dockerfile builds it; TFX sets each container's command),
submitted with e.g.
`google.cloud.aiplatform.PipelineJob(template_path=..., ...).submit()`. The same
`create_pipeline` as the local runner; ML Metadata is the cluster's own, so none is set here.

Every field of `pipelines.pipeline_config.PipelineConfig` is a flag, with `--preset` and the
Trainer's `ModelConfig` / `TrainConfig` fields over it (`--help` lists them).

With `--vertex_project`, the Trainer runs as a Vertex AI custom job with its own machines: a
chief, `--workers` and `--parameter_servers` (`pipelines.pipeline.vertex_trainer_config`);
Vertex sets each replica's TF_CONFIG and `--strategy` picks the `tf.distribute` strategy.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)
from common import cli
from pipelines import configs, pipeline_config

# The image the repository's Dockerfile builds (docs/GUIDE.md: build and push it to your
# project; TFX's own image lacks this repository's modules).
DEFAULT_IMAGE = "gcr.io/PROJECT/lfm4ads:latest"


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
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="lfm4ads_pipeline.json")
    p.add_argument("--image", default=DEFAULT_IMAGE)
    p.add_argument("--beam_runner", default="DataflowRunner")
    p.add_argument("--beam_arg", action="append", default=[],
                   help="extra Beam pipeline argument (repeatable)")
    flags = pipeline_config.add_flags(p)
    vertex_flags = cli.add_dataclass_flags(
        p, pipeline_config.VertexTraining, skip=("image", "strategy"),
        rename={"project": "vertex_project", "region": "vertex_region"},
        help_texts={"project": "run the Trainer on Vertex AI in this project",
                    "workers": "training workers, the chief's included for multi_worker, "
                               "besides it for parameter_server"},
        title="the Trainer as a Vertex AI custom job (a cluster of its own; --strategy picks "
              "the tf.distribute strategy)")
    args = p.parse_args(argv)
    config = flags.build(args)
    strategy = config.trainer_configs()[1].strategy
    if args.vertex_project:
        config = dataclasses.replace(config, vertex=vertex_flags.build(
            args, project=args.vertex_project, image=args.image, strategy=strategy))
    elif strategy in ("multi_worker", "parameter_server"):
        cli.fail(f"--strategy {strategy} needs a cluster: give --vertex_project")

    def compile_spec() -> dict:
        spec = compile_pipeline(
            args.output, args.image, config.pipeline_root, config.data_root,
            config.serving_root, beam_pipeline_args=[f"--runner={args.beam_runner}",
                                                     *args.beam_arg],
            **config.arguments("pipeline_root", "data_root", "serving_root"))
        tasks = spec.get("pipelineSpec", spec).get("root", {}).get("dag", {}).get("tasks", {})
        return {"output": args.output, "tasks": sorted(tasks)}

    return cli.run(compile_spec, args,
                   show=lambda result: f"wrote {result['output']}: {len(result['tasks'])} tasks")


if __name__ == "__main__":
    sys.exit(main())
