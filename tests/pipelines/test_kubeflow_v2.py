"""The same pipeline compiles to a Kubeflow Pipelines v2 / Vertex AI JSON spec."""

import json

from pipelines import kubeflow_v2_runner


def test_compiles_every_component(tmp_path):
    out = tmp_path / "spec.json"
    spec = kubeflow_v2_runner.compile_pipeline(
        str(out), image="example.com/lfm4ads:test", pipeline_root="gs://bucket/root",
        data_root="gs://bucket/data", serving_root="gs://bucket/serving",
        beam_pipeline_args=["--runner=DataflowRunner", "--project=p", "--region=r"])
    assert json.loads(out.read_text()) == spec
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for name in ("ExampleGen", "Transform", "Trainer", "Evaluator", "Pusher",
                 "RepresentationExtractor", "CrossRepresentationAggregator",
                 "RepresentationGuard", "ValidationGate"):
        assert name in tasks
    text = out.read_text()
    assert "example.com/lfm4ads:test" in text
    assert "--runner=DataflowRunner" in text
    assert "gs://bucket/data" in text
    assert "lfm4ads.Representations" in text  # custom artifact types travel with the spec
