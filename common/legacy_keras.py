"""The one place that selects Keras 2 (tf-keras) for the whole project.

TensorFlow Recommenders 0.7.7 refuses Keras 3, and TF 2.16 picks Keras 3 unless
``TF_USE_LEGACY_KERAS=1`` is in the environment *before* TensorFlow is imported.
Every package of the project (``trainer``, ``components``, ``pipelines``,
``serving``, ``benchmarks``) and the test suite import this module first.
"""

import os
import sys

ENV_VAR = "TF_USE_LEGACY_KERAS"


def ensure_legacy_keras() -> None:
    """Sets ``TF_USE_LEGACY_KERAS=1``; fails loudly if it is too late to take effect."""
    if os.environ.get(ENV_VAR) == "1":
        return
    if "tensorflow" in sys.modules:
        import tensorflow as tf  # noqa: PLC0415

        if not tf.keras.__name__.startswith("tf_keras"):
            raise RuntimeError(
                f"TensorFlow was imported before {ENV_VAR}=1 was set, so tf.keras is "
                f"{tf.keras.__name__!r} (Keras 3). Import the lfm4ads packages "
                "(trainer, pipelines, serving, components) before tensorflow, or "
                f"export {ENV_VAR}=1."
            )
    os.environ[ENV_VAR] = "1"


ensure_legacy_keras()

if "tensorflow" not in sys.modules:  # a project CLI's native log level, before TF's import
    from common import console

    if console.running_a_project_module():
        console.before_tensorflow()
