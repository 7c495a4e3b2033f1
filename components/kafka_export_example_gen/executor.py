"""Executor of KafkaExportExampleGen.

Reads the data files of the span the driver resolved (JSON lines, gzipped JSON lines or Avro, in
Kafka Connect's storage-sink layout), parses every record through fraud.contract.TransactionEvent,
drops unlabeled rows (counted), converts the rest to tf.Examples (the 30 features, the label and the
identity keys of fraud.features) and splits them by event time: rows are ordered by
(event_time_ms, transaction_id) and cut at the proportions of the output split config, so the last
split holds the most recent rows. A span without its `_SUCCESS` marker is refused; when the span has a
manifest, the number of rows read must equal the manifest's.

With `window_spans` N > 1 the spans N-1 before the resolved one are read too, as one dataset (exports
are incremental, so this is the last N exports); the time split is over all of them, the manifest check
over their sum, and the artifact's `spans_read` lists them. A span of the window that was pruned is
skipped (logged); one that exists without its marker is refused.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.example_gen import utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils
from tfx_bsl.coders import example_coder

from components.kafka_export_example_gen import spec
from fraud import spans
from fraud.contract import ContractError, TransactionEvent
from fraud.features import CARD_ID_KEY, EVENT_TIME_KEY, FEATURE_NAMES, LABEL_KEY, TRANSACTION_ID_KEY

_COUNTS_URI_KEY = "_counts_uri"
SortKey = tuple[int, str]


#: One labeled row between Beam stages: compact tuples pickle far faster than event objects.
Row = tuple[str, int, str, int, tuple[float, ...]]  # transaction id, event time, card id, label, features


def event_to_row(event: TransactionEvent) -> Row:
    return (event.transaction_id, event.event_time_ms, event.card_id, int(event.label),
            tuple(event.features[name] for name in FEATURE_NAMES))


def rows_to_record_batch(rows: list[Row]) -> pa.RecordBatch:
    """The rows as Arrow list columns, the form tfx_bsl's tf.Example encoder reads."""
    def column(values: list, arrow_type: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(range(len(values) + 1), pa.int32()), pa.array(values, arrow_type))

    arrays = [column([r[4][i] for r in rows], pa.float32()) for i in range(len(FEATURE_NAMES))]
    arrays += [column([r[3] for r in rows], pa.int64()),
               column([r[0].encode("utf-8") for r in rows], pa.binary()),
               column([r[1] for r in rows], pa.int64()),
               column([r[2].encode("utf-8") for r in rows], pa.binary())]
    return pa.RecordBatch.from_arrays(arrays, [*FEATURE_NAMES, LABEL_KEY, TRANSACTION_ID_KEY, EVENT_TIME_KEY, CARD_ID_KEY])


class _EncodeExamples(beam.DoFn):
    """Rows -> serialized tf.Examples with tfx_bsl's C++ encoder, a batch at a time from Arrow columns
    (~37 us per example). Chosen when the environment had the pure-Python protobuf 3.20 runtime, where
    the tf.train.Example API took ~3.7 ms per example. On the pinned protobuf 4.25 (upb) that API is
    ~28 us, so both are cheap now."""

    def setup(self) -> None:
        self._encoder = example_coder.RecordBatchToExamplesEncoder()

    def process(self, rows: list[Row]):
        yield from self._encoder.encode(rows_to_record_batch(rows))


def rows_to_examples(rows: list[Row]) -> list[bytes]:
    """Serialized tf.Examples of `rows` (what the executor writes; for tests and tools)."""
    return example_coder.RecordBatchToExamplesEncoder().encode(rows_to_record_batch(rows))


class SpanRecordError(ValueError):
    """A record in a span breaks the event contract: the span is corrupt, the run stops."""


def _parse_json(item: tuple[str, str]) -> TransactionEvent:
    path, line = item
    try:
        return TransactionEvent.from_json(line)
    except ContractError as exc:
        raise SpanRecordError(f"{path}: record breaks the event contract ({exc.reason}: {exc})") from None


def _parse_avro(record: dict[str, Any]) -> TransactionEvent:
    try:
        return TransactionEvent.from_dict(record)
    except ContractError as exc:
        raise SpanRecordError(f"Avro record breaks the event contract ({exc.reason}: {exc})") from None


class _ExactBoundaries(beam.CombineFn):
    """Sort keys at which each split after the first begins (exact; holds the keys of one span)."""

    def __init__(self, proportions: Sequence[int]) -> None:
        self._cumulative = []
        total = 0
        for p in proportions[:-1]:
            total += p
            self._cumulative.append(total)
        self._total = sum(proportions)

    def create_accumulator(self) -> list[SortKey]:
        return []

    def add_input(self, acc: list[SortKey], key: SortKey) -> list[SortKey]:
        acc.append(key)
        return acc

    def merge_accumulators(self, accs: Iterable[list[SortKey]]) -> list[SortKey]:
        out: list[SortKey] = []
        for a in accs:
            out.extend(a)
        return out

    def extract_output(self, acc: list[SortKey]) -> list[SortKey]:
        keys = sorted(acc)
        n = len(keys)
        cuts = [n * c // self._total for c in self._cumulative]
        # A cut at n means "nothing after it": an empty later split.
        return [keys[c] if c < n else (2**63, "") for c in cuts]


def _split_index(keyed: tuple[SortKey, Row], num_partitions: int, boundaries: list[SortKey]) -> int:
    return bisect.bisect_right(boundaries, keyed[0])


def window(exec_properties: dict[str, Any]) -> list[int]:
    """The spans to read, oldest first: those of the `window_spans` ending with the resolved one that exist."""
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    span = int(exec_properties.get(utils.SPAN_PROPERTY_NAME) or 0)
    size = int(exec_properties.get(spec.WINDOW_SPANS_KEY) or 1)
    out = []
    for s in range(max(0, span - size + 1), span + 1):
        directory = os.path.join(input_base, spans.span_dir_name(s))
        if s != span and not tf.io.gfile.exists(directory):
            logging.warning("Span %d (in the %d-span window of span %d) does not exist; skipped", s, size, span)
            continue
        if not tf.io.gfile.exists(os.path.join(directory, spans.MARKER)):
            raise RuntimeError(f"Span {s} at {directory} has no {spans.MARKER} marker (export unfinished "
                               f"or crashed); refusing to read it")
        out.append(s)
    return out


def window_patterns(input_base: str, resolved_pattern: str, span: int, window_spans: Sequence[int]) -> list[str]:
    """The resolved input pattern (`span-0000000N/<topic>/...`) for each span of the window."""
    head, sep, rest = resolved_pattern.partition("/")
    if head != spans.span_dir_name(span) or not sep:
        raise ValueError(f"input pattern {resolved_pattern!r} does not start with {spans.span_dir_name(span)}/")
    return [os.path.join(input_base, spans.span_dir_name(s), rest) for s in window_spans]


def _read_events(pipeline: beam.Pipeline, patterns: Sequence[str]) -> beam.PCollection:
    files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
    json_files = [f for f in files if f.endswith(spans.EXTENSIONS[spans.JSON_FORMAT])]
    avro_files = [f for f in files if f.endswith(spans.EXTENSIONS[spans.AVRO_FORMAT])]
    logging.info("Span files: %d JSON, %d Avro (patterns %s)", len(json_files), len(avro_files), patterns)
    if not json_files and not avro_files:
        raise RuntimeError(f"No data files match {', '.join(patterns)}")
    parts = []
    if json_files:
        parts.append(pipeline
                     | "JsonFiles" >> beam.Create(json_files)
                     | "ReadJson" >> beam.io.ReadAllFromText(with_filename=True)
                     | "NonEmpty" >> beam.Filter(lambda item: bool(item[1].strip()))
                     | "ParseJson" >> beam.Map(_parse_json))
    if avro_files:
        parts.append(pipeline
                     | "AvroFiles" >> beam.Create(avro_files)
                     | "ReadAvro" >> beam.io.ReadAllFromAvro()
                     | "ParseAvro" >> beam.Map(_parse_avro))
    return parts | "AllEvents" >> beam.Flatten()


def _count(pcoll: beam.PCollection, name: str) -> beam.PCollection:
    return (pcoll
            | f"Count{name}" >> beam.combiners.Count.Globally()
            | f"Name{name}" >> beam.Map(lambda n, key=name: (key, n)))


def _write_counts(counts: dict[str, int], uri: str) -> None:
    with tf.io.gfile.GFile(uri, "w") as f:
        f.write(json.dumps(counts, sort_keys=True))


class Executor(BaseExampleGenExecutor):
    """Span files -> split tf.Examples (see the module docstring)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        # Never called: GenerateExamplesByBeam is overridden because the split is by event time,
        # which needs the whole span, not one record at a time.
        raise NotImplementedError

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: dict[str, Any]) -> dict[str, beam.PCollection]:
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        if len(input_config.splits) != 1 or not output_config.split_config.splits:
            raise ValueError("KafkaExportExampleGen reads one input pattern and needs output split_config")
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        span = int(exec_properties.get(utils.SPAN_PROPERTY_NAME) or 0)
        patterns = window_patterns(input_base, input_config.splits[0].pattern, span, window(exec_properties))
        split_names = [s.name for s in output_config.split_config.splits]
        proportions = [s.hash_buckets for s in output_config.split_config.splits]

        events = _read_events(pipeline, patterns)
        labeled, unlabeled = (events
                              | "ByLabel" >> beam.Partition(lambda e, n: 0 if e.label is not None else 1, 2))
        keyed = labeled | "Key" >> beam.Map(lambda e: ((e.event_time_ms, e.transaction_id), event_to_row(e)))
        boundaries = (keyed
                      | "SortKeys" >> beam.Keys()
                      | "Boundaries" >> beam.CombineGlobally(_ExactBoundaries(proportions)))
        parts = keyed | "SplitByTime" >> beam.Partition(
            _split_index, len(split_names), beam.pvalue.AsSingleton(boundaries))

        result = {}
        counts = [_count(events, spec.ROWS_READ), _count(unlabeled, spec.ROWS_UNLABELED)]
        for name, part in zip(split_names, parts, strict=True):
            result[name] = (part
                            | f"Values[{name}]" >> beam.Values()
                            | f"Batch[{name}]" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
                            | f"Encode[{name}]" >> beam.ParDo(_EncodeExamples()))
            counts.append(_count(part, spec.ROWS_SPLIT_PREFIX + name))
        counts_uri = exec_properties.get(_COUNTS_URI_KEY)
        if counts_uri:
            _ = (counts
                 | "AllCounts" >> beam.Flatten()
                 | "CountsDict" >> beam.combiners.ToDict()
                 | "WriteCounts" >> beam.Map(_write_counts, counts_uri))
        return result

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        counts_uri = os.path.join(examples.uri, spec.COUNTS_FILE)
        exec_properties = dict(exec_properties)
        exec_properties[_COUNTS_URI_KEY] = counts_uri
        super().Do(input_dict, output_dict, exec_properties)

        with tf.io.gfile.GFile(counts_uri) as f:
            counts = json.load(f)
        for key, value in counts.items():
            examples.set_int_custom_property(key, int(value))
        read = window(exec_properties)
        examples.set_string_custom_property(spec.SPANS_READ, ",".join(map(str, read)))
        label = f"Span {read[0]}" if len(read) == 1 else f"Spans {read[0]}..{read[-1]} ({len(read)})"
        labeled = counts[spec.ROWS_READ] - counts[spec.ROWS_UNLABELED]
        logging.info("%s: %d rows read, %d without a label dropped, %s", label, counts[spec.ROWS_READ],
                     counts[spec.ROWS_UNLABELED],
                     {k: v for k, v in counts.items() if k.startswith(spec.ROWS_SPLIT_PREFIX)})
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        manifests = [os.path.join(input_base, spans.span_dir_name(s), spans.MANIFEST) for s in read]
        if all(tf.io.gfile.exists(path) for path in manifests):
            expected = 0
            for path in manifests:
                with tf.io.gfile.GFile(path) as f:
                    expected += int(json.load(f)["rows"])
            if expected != counts[spec.ROWS_READ]:
                raise RuntimeError(f"{label}: read {counts[spec.ROWS_READ]} rows but the manifest lists {expected}"
                                   f" (files missing or truncated)")
        if labeled == 0:
            raise RuntimeError(f"{label}: none of its {counts[spec.ROWS_READ]} rows has a label; nothing to "
                               f"train on ({counts[spec.ROWS_UNLABELED]} unlabeled rows dropped)")
