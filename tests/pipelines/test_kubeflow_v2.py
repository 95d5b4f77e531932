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


def test_the_trainer_gets_the_preset_and_overrides(tmp_path):
    """`create_pipeline(preset=...)` reaches the Trainer's custom_config, where
    `trainer.tfx_trainer.run_fn` reads it with `trainer.config.from_preset`."""
    from pipelines.pipeline import create_pipeline
    from trainer.config import from_preset

    pipeline = create_pipeline(
        "p", str(tmp_path / "root"), str(tmp_path / "data"), str(tmp_path / "serving"),
        preset="paper", model_overrides={"dropout": 0.1}, train_overrides={"epochs": 1})
    trainer = next(c for c in pipeline.components if c.id == "Trainer")
    custom = json.loads(trainer.exec_properties["custom_config"])
    assert custom == {"preset": "paper", "model": {"dropout": 0.1}, "train": {"epochs": 1}}
    model, train = from_preset(custom["preset"], custom["model"], custom["train"])
    assert (model.mix_id_fields, model.dropout, train.epochs) == (True, 0.1, 1)
