"""DataValidationGate: stops the run when ExampleValidator found anomalies, and says which.

ExampleValidator records anomalies but never fails; the pipeline makes Transform (and so every
trainer, evaluator and pusher) wait on this gate, which raises with a one-line summary per anomaly.
"""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts

#: File name ExampleValidator (TFX 1.16) writes per split.
ANOMALIES_FILE = "SchemaDiff.pb"


class DataValidationError(RuntimeError):
    """The examples break the curated schema: nothing downstream may run."""


def summarize_anomalies(anomalies_uri: str, split_names: list[str]) -> list[str]:
    """One line per anomaly: `split eval: feature V3: Out-of-range values (...)`."""
    lines = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        if not fileio.exists(path):
            raise DataValidationError(f"no anomalies file for split {split} at {path}")
        anomalies = anomalies_pb2.Anomalies()
        with fileio.open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reason = "; ".join(r.short_description for r in info.reason) or info.short_description
            lines.append(f"split {split}: feature {feature}: {reason} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"split {split}: dataset: {info.short_description} ({info.description})")
    return lines


@tfx.dsl.components.component
def DataValidationGate(anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Raises DataValidationError listing every anomaly; passes when there is none."""
    lines = summarize_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
    if lines:
        raise DataValidationError(f"data validation failed, {len(lines)} anomalies: " + " | ".join(lines))
