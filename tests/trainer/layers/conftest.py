"""Fixtures shared by the cross-layer tests."""

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    """Runs the test under each mixed-precision policy, then restores float32."""
    tf.keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
