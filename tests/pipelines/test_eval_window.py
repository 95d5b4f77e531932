"""The eval window (`eval_days`) is a pipeline setting that both runners' flags reach: it is
the time split of ExampleGen, hence every gate's test rows."""

import json

import pytest

from pipelines import kubeflow_v2_runner, local_runner


def _example_gen_eval_days(pipeline) -> float:
    from google.protobuf import struct_pb2
    from tfx.proto import example_gen_pb2
    from tfx.utils import proto_utils

    example_gen = next(c for c in pipeline.components if c.id == "ExampleGen")
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(example_gen.exec_properties["custom_config"], config)
    struct = struct_pb2.Struct()
    config.custom_config.Unpack(struct)
    return struct["eval_days"]


def test_the_local_runner_flag_reaches_the_time_split(tmp_path, monkeypatch):
    args = local_runner._parse_args(["--eval_days", "3.5"])
    assert args.eval_days == 3.5
    assert local_runner._parse_args([]).eval_days == local_runner.configs.EVAL_DAYS == 1.0
    built = {}
    monkeypatch.setattr(local_runner, "run", lambda *a, **kw: built.update(kw) or {})
    assert local_runner.main(["--eval_days", "3.5", "--data", str(tmp_path)]) == 0
    assert built["eval_days"] == 3.5
    pipeline = local_runner.build(str(tmp_path / "data"), str(tmp_path / "root"),
                                  str(tmp_path / "serving"), eval_days=built["eval_days"])
    assert _example_gen_eval_days(pipeline) == 3.5
    with pytest.raises(SystemExit):
        local_runner._parse_args(["--eval_days", "0"])


def test_the_kubeflow_runner_flag_reaches_the_time_split(tmp_path):
    out = tmp_path / "spec.json"
    assert kubeflow_v2_runner.main([
        "--output", str(out), "--image", "example.com/lfm4ads:test",
        "--pipeline_root", "gs://bucket/root", "--data", "gs://bucket/data",
        "--serving_root", "gs://bucket/serving", "--eval_days", "7"]) == 0
    tasks = json.loads(out.read_text())["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "DownstreamBlessingGate" in tasks
    # ExampleGen's custom_config, a JSON string inside the spec's JSON
    assert '\\"eval_days\\": 7.0' in out.read_text()
    with pytest.raises(SystemExit):
        kubeflow_v2_runner.main(["--output", str(out), "--eval_days", "-1"])
