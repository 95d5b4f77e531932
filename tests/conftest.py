"""Test set-up: Keras 2 (tf-keras) is selected before any test module imports TensorFlow."""

import trainer  # noqa: F401
