"""ValidationGate: fails the run when ExampleValidator found anomalies.

TFX's ExampleValidator records anomalies but does not stop a run; this component reads them
(every split) and raises, naming each anomalous feature, so Transform and everything after it
never run on data that breaks the curated schema.
"""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

ANOMALIES_FILE = "SchemaDiff.pb"


class DataValidationError(RuntimeError):
    """The examples do not match the curated schema."""


def read_anomalies(anomalies) -> dict[str, anomalies_pb2.Anomalies]:
    """Split name -> Anomalies proto of an ExampleAnomalies artifact."""
    out = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        with open(path, "rb") as f:
            out[split] = anomalies_pb2.Anomalies.FromString(f.read())
    return out


def describe(found: dict[str, anomalies_pb2.Anomalies]) -> list[str]:
    """One line per anomalous feature: `split: feature: description`."""
    lines = []
    for split, proto in sorted(found.items()):
        for feature, info in sorted(proto.anomaly_info.items()):
            lines.append(f"{split}: {feature}: {info.short_description} ({info.description})")
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            lines.append(f"{split}: dataset: {info.short_description} ({info.description})")
    return lines


@tfx.dsl.components.component
def ValidationGate(  # noqa: N802 (TFX component naming)
    anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies],
) -> None:
    """Raises DataValidationError listing every anomaly; passes when there is none."""
    lines = describe(read_anomalies(anomalies))
    if lines:
        raise DataValidationError(
            "the examples do not match the curated schema:\n  " + "\n  ".join(lines))
