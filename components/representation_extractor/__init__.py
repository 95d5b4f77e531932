"""Batch extraction of UR, IR and CR(u,i) from the upstream SavedModel (paper Sec. 3.2, 4.3.1)."""

from trainer import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.representation_extractor.beam_transforms import (
    CROSS_EVENTS,
    ITEM,
    USER,
    ExtractRepresentations,
)
from trainer.representations.tables import sample_digest

__all__ = ["CROSS_EVENTS", "ITEM", "USER", "ExtractRepresentations", "sample_digest"]
