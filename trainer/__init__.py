"""Upstream LFM4Ads model: features, cross layers, towers, triple-tower model, export."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)
