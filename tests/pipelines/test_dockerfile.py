"""The Kubeflow/Vertex runner's image (Dockerfile): it installs the lock on the lock's Python,
puts the repository on the path, and gives the runner's default image what TFX runs in it.
The image is not built here (no docker); these read the Dockerfile and the compiled spec."""

import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from pipelines import configs, kubeflow_v2_runner

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's `(INSTRUCTION, arguments)`, continuation lines joined, comments
    dropped."""
    out, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            out.append((keyword.upper(), " ".join(arguments.split())))
            pending = ""
    return out


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def index(steps, keyword: str, contains: str = "") -> int:
    return next(i for i, (k, args) in enumerate(steps) if k == keyword and contains in args)


def test_the_image_installs_the_lock_on_the_python_it_was_made_on():
    steps = instructions()
    base = next(args for k, args in steps if k == "FROM" and " AS " not in args.upper())
    # the venv this suite runs in is made from the same lock (the Makefile)
    assert base == f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    assert 'requires-python = ">=3.10,<3.11"' in (REPO / "pyproject.toml").read_text()
    copy_lock = index(steps, "COPY", "requirements.lock")
    install = index(steps, "RUN", "requirements.lock")
    assert copy_lock < install
    assert re.search(r"pip install [^&]*--no-deps -r requirements\.lock", steps[install][1])
    assert "pip check" in steps[install][1]  # as `make venv` checks it
    env = " ".join(args for k, args in steps if k == "ENV")
    assert re.search(r"\bTF_USE_LEGACY_KERAS=1\b", env)


def test_the_repository_is_copied_to_the_workdir_and_on_the_path():
    steps = instructions()
    (workdir,) = [args for k, args in steps if k == "WORKDIR"]
    copy_repo = index(steps, "COPY", ". .")
    assert index(steps, "WORKDIR") < copy_repo < index(steps, "RUN", ".pth")
    pth = steps[index(steps, "RUN", ".pth")][1]
    assert f"echo {workdir} >" in pth and "purelib" in pth  # as the Makefile's lfm4ads.pth
    # the modules TFX imports by name come with the copy, and the build imports each once
    for function in (configs.RUN_FN, configs.PREPROCESSING_FN, configs.DOWNSTREAM_RUN_FN):
        module = function.rpartition(".")[0]
        assert re.search(rf"\bimport [\w., ]*\b{re.escape(module)}\b", pth), module
        assert not ignored(module.replace(".", "/") + ".py"), module


def dockerignore() -> list[str]:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")]  # no exceptions to reason about
    return [p.rstrip("/") for p in patterns]


def ignored(path: str) -> bool:
    """Whether `.dockerignore` leaves `path` (relative to the repository) out of the build
    context: a pattern matching it or one of its parent directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, p) or (p.startswith("**/")
                                                  and fnmatch.fnmatchcase(prefix, p[3:]))
               for p in dockerignore() for prefix in prefixes)


def test_the_build_context_leaves_out_data_outputs_and_the_venv_only():
    for path in ("data/synthetic/part-0.tfrecord.gz", "build/pipeline/Trainer", ".venv/bin/python",
                 ".git/HEAD", "trainer/__pycache__/train.cpython-310.pyc"):
        assert ignored(path), path
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "requirements.lock" in tracked
    assert not [p for p in tracked if ignored(p)]  # every tracked file is in the image


def test_the_runners_default_image_runs_tfx_commands_the_image_has(tmp_path):
    """Compiled with its defaults, every step of the spec runs in `DEFAULT_IMAGE` (the tag the
    GUIDE builds) with TFX's `python -m ...` command: `python` is the base image's, the module
    the lock's tfx."""
    from tfx.extensions.google_cloud_ai_platform import training_clients
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    spec = kubeflow_v2_runner.compile_pipeline(
        str(tmp_path / "spec.json"), pipeline_root="gs://bucket/root",
        data_root="gs://bucket/data", serving_root="gs://bucket/serving")
    containers = [e["container"] for e in
                  spec["pipelineSpec"]["deploymentSpec"]["executors"].values() if "container" in e]
    assert len(containers) >= 10
    assert {c["image"] for c in containers} == {kubeflow_v2_runner.DEFAULT_IMAGE}
    commands = {tuple(c["command"]) for c in containers}
    assert commands == {kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD}
    # the Vertex AI Trainer's custom job runs its replicas with a command of its own
    for command in (*commands, tuple(training_clients._CONTAINER_COMMAND)):
        assert command[:2] == ("python", "-m")
        assert importlib.util.find_spec(command[2]) is not None, command
    import tfx

    assert lock()["tfx"] == tfx.__version__
    guide = (REPO / "docs" / "GUIDE.md").read_text()
    assert f"docker build -t {kubeflow_v2_runner.DEFAULT_IMAGE} ." in guide
    assert f"docker push {kubeflow_v2_runner.DEFAULT_IMAGE}" in guide


def test_beams_worker_harness_is_the_locks_beam_on_the_same_python():
    steps = instructions()
    (source,) = [re.search(r"--from=(\S+)", args).group(1) for k, args in steps
                 if k == "COPY" and "--from=" in args]
    assert source == (f"apache/beam_python{sys.version_info.major}.{sys.version_info.minor}"
                      f"_sdk:{lock()['apache-beam']}")
    assert ("ENTRYPOINT", json.dumps(["/opt/apache/beam/boot"])) in steps

