"""benchmarks package of LFM4Ads on TFX."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)
