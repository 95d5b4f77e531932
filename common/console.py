"""The command-line tools' console: library logs at one level, set once, and a clean exit.

TensorFlow, absl, TFX and Beam print hundreds of INFO/WARNING lines a user can do nothing about,
and TensorFlow's function objects raise `TypeError`s from `__del__` while the interpreter tears
down, which Python prints as "Exception ignored in ..." tracebacks that read as a crash.

* When a process runs one of the project's modules (`python -m trainer.train`, ...),
  `common.legacy_keras`, which every package imports before TensorFlow, calls
  `before_tensorflow`: TensorFlow's C++ log level is read once, at its import.
* Every entry point's `main` adds `--verbose` (`add_verbose_flag`) and calls
  `setup(args.verbose)` after parsing its flags.

`--verbose` (or `LFM4ADS_VERBOSE=1`) keeps every library line. Errors are never hidden:
TensorFlow's C++ errors surface as Python exceptions, and those are printed as always. Library
use (a notebook, the tests) is left as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_FLAG = "--verbose"
ENV_VAR = "LFM4ADS_VERBOSE"
LIBRARY_LOGGERS = ("tensorflow", "absl", "apache_beam", "tfx", "ml_metadata",
                   "tensorflow_transform", "tensorflow_data_validation",
                   "tensorflow_model_analysis", "googleapiclient", "google", "h5py", "urllib3")


def _verbose(argv: list[str] | None = None) -> bool:
    return VERBOSE_FLAG in (sys.argv if argv is None else argv) or os.environ.get(ENV_VAR) == "1"


def before_tensorflow(argv: list[str] | None = None) -> None:
    """TensorFlow's native (C++) log level, which it reads once, when it is imported: errors
    only (`TF_CPP_MIN_LOG_LEVEL=3`) unless `--verbose`; a level the user set is kept. Also
    drops the Python Future/Deprecation warnings that importing the libraries prints."""
    if not _verbose(argv):
        _quiet_native_and_warnings()


def _quiet_native_and_warnings() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ[ENV_VAR] = "0"  # Beam's worker processes inherit the choice
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # TFMA divides by zero on an empty confusion-matrix bucket (its metric is NaN, as it says)
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            module="tensorflow_model_analysis")


PROJECT_PACKAGES = ("trainer", "pipelines", "serving", "components", "benchmarks")


def running_a_project_module() -> bool:
    """Whether this process was started as `python -m <one of the project's modules>`, or runs
    one of their files as a script (as `tfx run create` runs the local runner)."""
    argv = list(getattr(sys, "orig_argv", ()))  # the interpreter's own command line
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].split(".")[0] in PROJECT_PACKAGES
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    relative = os.path.relpath(script, root).split(os.sep) if script else [""]
    return relative[0] in PROJECT_PACKAGES


def add_verbose_flag(parser) -> None:
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="print the libraries' (TensorFlow, absl, TFX, Beam) log lines")


def _quiet_unraisable(unraisable) -> None:
    """Drops what TensorFlow's objects raise from `__del__` while the interpreter shuts down
    (their modules are half torn down); anything else goes to Python's default hook."""
    if sys.is_finalizing() or _is_tensorflow_teardown(unraisable):
        return
    sys.__unraisablehook__(unraisable)


def _is_tensorflow_teardown(unraisable) -> bool:
    obj = getattr(unraisable, "object", None)
    module = getattr(obj, "__module__", "") or ""
    return (module.startswith("tensorflow") and getattr(obj, "__name__", "") == "__del__"
            and isinstance(unraisable.exc_value, (TypeError, AttributeError, ImportError)))


def setup(verbose: bool = False) -> None:
    """Library log levels for a command-line run: ERROR for TensorFlow, absl, TFX and Beam
    (WARNING and below dropped) unless `verbose`; the project's own loggers are left alone."""
    if verbose or _verbose():
        return
    _quiet_native_and_warnings()
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl comes with TensorFlow; nothing to quiet without it
        pass
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].get_logger().setLevel(logging.ERROR)
    sys.unraisablehook = _quiet_unraisable
