"""The command-line console: library logs quieted only for the project's own CLIs, TensorFlow's
teardown noise dropped, anything else still reported."""

import logging
import sys
import types

import pytest

from common import console


def _unraisable(obj, exc):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                 err_msg=None, object=obj)


def test_only_the_projects_modules_are_cli_runs(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "trainer.train", "--data", "d"])
    assert console.running_a_project_module()
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest", "tests"])
    assert not console.running_a_project_module()  # library use: the tests, a notebook


def test_tensorflow_teardown_is_dropped_and_the_rest_reported(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "__unraisablehook__", seen.append)

    def __del__(self):  # what AtomicFunction.__del__ is, for the hook
        pass

    __del__.__module__ = "tensorflow.python.eager.polymorphic_function.atomic_function"
    console._quiet_unraisable(_unraisable(__del__, TypeError("'NoneType' object is not callable")))
    assert seen == []
    mine = _unraisable(test_only_the_projects_modules_are_cli_runs, ValueError("real"))
    console._quiet_unraisable(mine)
    assert seen == [mine]


def test_setup_quiets_library_loggers_unless_verbose(monkeypatch):
    monkeypatch.delenv(console.ENV_VAR, raising=False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored afterwards
    for name in ("apache_beam", "absl"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    console.setup(verbose=True)
    assert logging.getLogger("apache_beam").level == logging.NOTSET
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # a level the user set is kept
    console.setup(verbose=False)
    assert logging.getLogger("apache_beam").level == logging.ERROR
    assert sys.unraisablehook is console._quiet_unraisable
    import os

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.parametrize("argv", [["x", "--verbose"]])
def test_verbose_flag_and_environment(argv, monkeypatch):
    monkeypatch.delenv(console.ENV_VAR, raising=False)
    assert console._verbose(argv)
    assert not console._verbose(["x"])
    monkeypatch.setenv(console.ENV_VAR, "1")
    assert console._verbose(["x"])
