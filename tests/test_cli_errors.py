"""Every command line refuses a bad input the same way (`common.cli`): one line on stderr,
`error: <message naming the file or the flag>`, and exit code 2, before any heavy work.

The trainers', the pipeline runners', the simulator's and the client's CLIs run as
`python -m ...` in subprocesses, two at a time (the console set-up, the exit code of
`sys.exit(main())` and TensorFlow's native log lines are part of what is checked); the
benchmarks' and MovieLens's `main` run in this process (each subprocess costs a TensorFlow
import: the test stays under a minute)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMPTY, FULL, MISSING = "{empty}", "{full}", "{missing}"

# module: (arguments, what the error line must name)
SUBPROCESS = {
    "trainer.train": (["--data", EMPTY, "--export_dir", MISSING], EMPTY),
    "trainer.downstream.train": (["--data", EMPTY, "--upstream", MISSING], EMPTY),
    "pipelines.local_runner": (["--data", EMPTY, "--pipeline_root", MISSING, "--serving_root",
                                MISSING, "--online_requests", "0"], EMPTY),
    "pipelines.kubeflow_v2_runner": (["--output", MISSING, "--eval_days", "-1"],
                                     "--eval_days"),
    "pipelines.sources.synthetic": (["--out", FULL, "--examples", "100"], FULL),
    "serving.client": (["--input", MISSING, "--output", "x.npy"], MISSING),
}
IN_PROCESS = {
    "pipelines.sources.movielens": (["--out", FULL], FULL),
    "benchmarks.quality_baseline": (["--data", EMPTY, "--epochs", "1"], EMPTY),
    "benchmarks.ablation": (["--data", EMPTY, "--split_days", "3,1,1", "--quick"], EMPTY),
    "benchmarks.cr_choice": (["--data", EMPTY, "--split_days", "3,1,1"], EMPTY),
    "benchmarks.presets": (["--data", EMPTY, "--seeds", "1"], EMPTY),
    "benchmarks.grpc_load": (["--target", "127.0.0.1:1", "--request", MISSING], MISSING),
    "benchmarks.pipeline": (["--examples", "0"], "--examples"),
    "benchmarks.scaling": (["--part", "stages", "--root", MISSING], MISSING),
    "benchmarks.serving": (["--batching_parameters", "max_batch_size { value: -1 }"],
                           "--batching_parameters"),
    "benchmarks.online_loop": (["--seconds", "0"], "--seconds"),
    "benchmarks.cross_layers": (["--models", "nope"], "--models"),
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """An empty directory, one that holds a file, and a path that does not exist."""
    tmp = tmp_path_factory.mktemp("cli")
    paths = {EMPTY: tmp / "empty", FULL: tmp / "full", MISSING: tmp / "missing"}
    paths[EMPTY].mkdir()
    paths[FULL].mkdir()
    (paths[FULL] / "kept.txt").write_text("not ours")
    return paths


def _fill(text: str, paths: dict[str, Path]) -> str:
    for key, path in paths.items():
        text = text.replace(key, str(path))
    return text


@pytest.fixture(scope="module")
def failures(paths) -> dict[str, subprocess.CompletedProcess]:
    """Every SUBPROCESS case run once, two at a time."""
    env = {k: v for k, v in os.environ.items() if k not in ("LFM4ADS_VERBOSE",
                                                            "TF_CPP_MIN_LOG_LEVEL")}

    def run(module: str) -> subprocess.CompletedProcess:
        argv = [_fill(arg, paths) for arg in SUBPROCESS[module][0]]
        return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(SUBPROCESS, pool.map(run, SUBPROCESS), strict=True))


def _assert_one_error_line(code, stdout: str, stderr: str, named: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == cli.INPUT_ERROR, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert named in lines[0]
    assert "Traceback" not in stdout + stderr


@pytest.mark.slow  # every CLI as a subprocess: ~20 s of TensorFlow imports
@pytest.mark.parametrize("module", sorted(SUBPROCESS))
def test_a_bad_input_is_one_error_line_and_exit_2(failures, paths, module):
    done = failures[module]
    _assert_one_error_line(done.returncode, done.stdout, done.stderr,
                           _fill(SUBPROCESS[module][1], paths))


@pytest.mark.parametrize("module", sorted(IN_PROCESS))
def test_a_benchmark_refuses_a_bad_input_the_same_way(paths, module, capsys):
    argv, named = IN_PROCESS[module]
    main = importlib.import_module(module).main
    try:
        code = main([_fill(arg, paths) for arg in argv])
    except SystemExit as e:  # a flag refused while parsing
        code = e.code
    out = capsys.readouterr()
    _assert_one_error_line(code, out.out, out.err, _fill(named, paths))


def test_a_flag_a_config_refuses_is_named(capsys):
    """`ConfigFlags.build`: the dataclass's own check, as one line, exit 2."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        width: int = 4
        sizes: tuple[int, ...] = (1, 2)
        name: str | None = None
        on: bool = False

        def __post_init__(self):
            if self.width < 1:
                raise ValueError(f"width must be >= 1, got {self.width}")

    parser = cli.ArgumentParser(prog="x")
    flags = cli.add_dataclass_flags(parser, Config)
    args = parser.parse_args(["--sizes", "3,4", "--name", "none", "--on"])
    # only the flags given, None included
    assert flags.given(args) == {"sizes": (3, 4), "name": None, "on": True}
    assert flags.build(args, Config(width=2)) == Config(2, (3, 4), None, True)
    assert flags.build(parser.parse_args(["--sizes", ""])).sizes == ()
    with pytest.raises(SystemExit, match="error: width must be >= 1, got 0") as error:
        flags.build(parser.parse_args(["--width", "0", "--no-on"]))
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        parser.parse_args(["--width", "wide"])
    assert error.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: width must be >= 1, got 0",
        "error: argument --width: invalid int value: 'wide'"]


def test_the_runner_prints_the_result_and_maps_errors(capsys):
    args = cli.ArgumentParser(prog="x").parse_args(["--json"])
    assert cli.run(lambda: {"auc": 0.5}, args, show=lambda r: f"auc {r['auc']}") == 0
    assert capsys.readouterr().out.splitlines() == ["auc 0.5", '{"auc": 0.5}']

    def missing():
        open("/nonexistent/data.tfrecord")

    assert cli.run(missing, args) == 2
    assert capsys.readouterr().err == (
        "error: /nonexistent/data.tfrecord: No such file or directory\n")

    class Offline(RuntimeError):
        pass

    def offline():
        raise Offline("could not fetch\npip said: no network")

    assert cli.run(offline, args, exit_codes={Offline: 1}) == 1  # its report kept as it is
    assert capsys.readouterr().err == "error: could not fetch\npip said: no network\n"
    with pytest.raises(KeyError):  # not an input error: its traceback
        cli.run(lambda: {}["nope"], args)
