"""Spec of KafkaExportExampleGen: the FileBasedExampleGen parameters plus the exported topic and the
training window in spans.

Key constants live here so the component, the executor and the tests share them.
"""

from __future__ import annotations

from tfx.types import standard_component_specs
from tfx.types.component_spec import ExecutionParameter

#: Execution property: the Kafka topic whose exports are read (its directory inside a span).
TOPIC_KEY = "topic"
#: Execution property: how many spans, ending with the one the driver resolved, are read as one dataset.
#: Exports are incremental (each span holds what arrived since the previous one), so a training window
#: of several exports is N spans; 1 (the default) reads only the resolved span.
WINDOW_SPANS_KEY = "window_spans"
#: Custom properties the executor sets on the Examples artifact.
ROWS_READ = "rows_read"
ROWS_UNLABELED = "rows_unlabeled_dropped"
ROWS_SPLIT_PREFIX = "rows_"
SPANS_READ = "spans_read"  # e.g. "5,6,7": the spans the window covered
#: File the executor writes into the Examples artifact with the same counts (for people and tests).
COUNTS_FILE = "ingest_counts.json"


class KafkaExportExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    """FileBasedExampleGen's parameters (input_base, input/output/range config, formats) + `topic` and
    `window_spans`."""

    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        TOPIC_KEY: ExecutionParameter(type=str),
        WINDOW_SPANS_KEY: ExecutionParameter(type=int, optional=True),
    }
