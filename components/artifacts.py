"""Artifact types of the custom components (recorded by type name in ML Metadata)."""

from __future__ import annotations

from tfx.types import artifact

from common.representations.tables import (  # noqa: F401 (the table names, defined there)
    CROSS_ITEM_TABLE,
    CROSS_USER_TABLE,
    ITEM_TABLE,
    TABLES,
    USER_TABLE,
)


class Representations(artifact.Artifact):
    """RepresentationExtractor output: `user/`, `item/` tables and `cross_events/` batches.

    Custom properties: `model_version` (int), `skipped` (1 when the model was not pushed),
    `user_rows`, `item_rows`, `cross_events`.
    """

    TYPE_NAME = "lfm4ads.Representations"


class CrossRepresentationTables(artifact.Artifact):
    """CrossRepresentationAggregator output: `cross_user/` CR(u) and `cross_item/` CR(i)."""

    TYPE_NAME = "lfm4ads.CrossRepresentationTables"


class GuardResult(artifact.Artifact):
    """RepresentationGuard output: `verdict.json`; custom properties `verdict` and friends."""

    TYPE_NAME = "lfm4ads.RepresentationGuardResult"


class EmbeddingEvaluation(artifact.Artifact):
    """LightweightEmbeddingEvaluator output: `evaluation.json`; custom properties `blessed`,
    `delta`, `candidate_auc`, `reference_auc`, `reference`, row counts, `published_path`."""

    TYPE_NAME = "lfm4ads.EmbeddingEvaluation"


# Table names inside the artifacts and the published directory (one sub-directory each).
CROSS_EVENTS = "cross_events"
TABLE_PREFIX = "part"
