"""Batch extraction of UR, IR and CR(u,i) from the upstream SavedModel (paper Sec. 3.2, 4.3.1),
in Beam. The table format and its tie-break (`sample_digest`) are
`common.representations.tables`."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.representation_extractor.beam_transforms import (
    CROSS_EVENTS,
    ITEM,
    USER,
    ExtractRepresentations,
)

__all__ = ["CROSS_EVENTS", "ITEM", "USER", "ExtractRepresentations"]
