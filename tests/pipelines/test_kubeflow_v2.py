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
    `trainer.tfx.upstream_module.run_fn` reads it with `trainer.config.from_preset`."""
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


def test_the_trainer_runs_as_a_vertex_job_with_a_cluster(tmp_path):
    """`--vertex_project` swaps in TFX's Vertex AI Trainer with one worker pool per role; the
    strategy reaches `run_fn` through `train`, and Vertex gives each replica its TF_CONFIG."""
    from tfx import v1 as tfx

    vertex = tfx.extensions.google_cloud_ai_platform
    out = tmp_path / "spec.json"
    assert kubeflow_v2_runner.main([
        "--output", str(out), "--image", "example.com/lfm4ads:test",
        "--pipeline_root", "gs://bucket/root", "--data", "gs://bucket/data",
        "--serving_root", "gs://bucket/serving", "--vertex_project", "proj",
        "--vertex_region", "europe-west4", "--strategy", "parameter_server", "--workers", "3",
        "--parameter_servers", "2", "--machine_type", "n1-highmem-16"]) == 0
    text = out.read_text()
    assert "Trainer" in json.loads(text)["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "google_cloud_ai_platform" in text  # the Vertex trainer's executor
    from pipelines.pipeline import vertex_trainer_config

    config = vertex_trainer_config("proj", "europe-west4", "example.com/lfm4ads:test",
                                   "parameter_server", 3, 2, "n1-highmem-16")
    pools = config[vertex.TRAINING_ARGS_KEY]["job_spec"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 3, 2]  # chief, workers, ps
    assert {p["container_spec"]["image_uri"] for p in pools} == {"example.com/lfm4ads:test"}
    assert config[vertex.ENABLE_VERTEX_KEY] is True
    assert config[vertex.VERTEX_REGION_KEY] == "europe-west4"
    assert config[vertex.TRAINING_ARGS_KEY]["project"] == "proj"
    mirrored = vertex_trainer_config("p", "r", "i", "multi_worker", workers=4)
    assert [p["replica_count"]
            for p in mirrored[vertex.TRAINING_ARGS_KEY]["job_spec"]["worker_pool_specs"]] == [1, 3]


def test_vertex_cluster_shapes_a_strategy_cannot_use_are_refused():
    import pytest

    from pipelines.pipeline import vertex_trainer_config

    with pytest.raises(ValueError, match="parameter_servers >= 1"):
        vertex_trainer_config("p", "r", "i", "parameter_server", workers=2)
    with pytest.raises(ValueError, match="needs the parameter_server strategy"):
        vertex_trainer_config("p", "r", "i", "multi_worker", workers=2, parameter_servers=1)
    with pytest.raises(ValueError, match="runs on one machine"):
        vertex_trainer_config("p", "r", "i", "default", workers=2)
    with pytest.raises(SystemExit):
        kubeflow_v2_runner.main(["--strategy", "multi_worker"])  # no cluster to run on
