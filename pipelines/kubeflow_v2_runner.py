"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (a JSON spec).

    python -m pipelines.kubeflow_v2_runner --output lfm4ads_pipeline.json \\
        --image gcr.io/PROJECT/lfm4ads:latest --pipeline_root gs://BUCKET/lfm4ads \\
        --data gs://BUCKET/data --serving_root gs://BUCKET/serving \\
        [--beam_runner DataflowRunner --beam_arg=--project=PROJECT --beam_arg=--region=REGION]

Compiling needs no cluster. Running it needs a container image with this repository and its
requirements (the image's entry point is TFX's), submitted with e.g.
`google.cloud.aiplatform.PipelineJob(template_path=..., ...).submit()`. The same
`create_pipeline` as the local runner; ML Metadata is the cluster's own, so none is set here.
"""

from __future__ import annotations

import argparse
import json
import sys

import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)
from pipelines import configs
from trainer import console

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
    console.add_verbose_flag(p)
    args = p.parse_args(argv)
    console.setup(args.verbose)
    spec = compile_pipeline(
        args.output, args.image, args.pipeline_root, args.data, args.serving_root,
        beam_pipeline_args=[f"--runner={args.beam_runner}", *args.beam_arg],
    )
    tasks = spec.get("pipelineSpec", spec).get("root", {}).get("dag", {}).get("tasks", {})
    print(f"wrote {args.output}: {len(tasks)} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
