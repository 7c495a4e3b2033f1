"""KafkaExportExampleGen: the driver resolves {SPAN}, the executor's Do() runs for real (Beam), and
the Split-* outputs are read back."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_export import TOPIC, event
from tfx.components.example_gen import driver
from tfx.types import artifact_utils, standard_artifacts

from components.kafka_export_example_gen import KafkaExportExampleGen
from components.kafka_export_example_gen import executor as eg_executor
from components.kafka_export_example_gen.component import time_split_config
from fraud import spans
from fraud.features import EVENT_TIME_KEY, FEATURE_NAMES, LABEL_KEY, TRANSACTION_ID_KEY
from pipeline.export import write_span


def _run(tmp_path: Path, base: Path, output_config=None, eval_fraction: float = 0.25,
         window_spans: int = 1) -> standard_artifacts.Examples:
    component = KafkaExportExampleGen(input_base=str(base), topic=TOPIC, eval_fraction=eval_fraction,
                                      output_config=output_config, window_spans=window_spans)
    exec_properties = dict(component.exec_properties)
    exec_properties = driver.FileBasedDriver(None).resolve_exec_properties(exec_properties, None, None)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "out")
    driver.update_output_artifact(exec_properties, examples.mlmd_artifact)  # span, as the driver records it
    eg_executor.Executor().Do({}, {"examples": [examples]}, exec_properties)
    return examples


def _read(examples: standard_artifacts.Examples, split: str) -> list[tf.train.Example]:
    uri = artifact_utils.get_split_uri([examples], split)
    files = tf.io.gfile.glob(os.path.join(uri, "*"))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _ids(rows: list[tf.train.Example]) -> list[str]:
    return sorted(r.features.feature[TRANSACTION_ID_KEY].bytes_list.value[0].decode() for r in rows)


def test_latest_span_split_by_event_time_with_exact_counts(tmp_path: Path) -> None:
    base = tmp_path / "exports"
    # Span 1 is older and must be ignored; span 2 is read. Rows arrive out of time order across
    # partitions, and two rows share an event time (the transaction id breaks the tie).
    write_span(base, 1, TOPIC, [(0, 0, event(999))])
    rows = [event(i, label=int(i % 10 == 0)) for i in range(40)]
    rows[21] = replace(rows[21], event_time_ms=rows[20].event_time_ms)
    rows.append(event(40, label=None))  # unlabeled: dropped with a count
    records = [(i % 3, i // 3, e) for i, e in enumerate(reversed(rows))]
    write_span(base, 2, TOPIC, records, rows_per_file=5)

    examples = _run(tmp_path, base, eval_fraction=0.25)
    assert examples.get_int_custom_property("span") == 2
    train, evaluation = _read(examples, "train"), _read(examples, "eval")
    assert len(train) == 30 and len(evaluation) == 10  # floor(40 * 0.75) oldest rows train
    assert _ids(train) == [f"tx-{i:06d}" for i in range(30)]
    assert _ids(evaluation) == [f"tx-{i:06d}" for i in range(30, 40)]
    assert examples.get_int_custom_property("rows_read") == 41
    assert examples.get_int_custom_property("rows_unlabeled_dropped") == 1
    assert examples.get_int_custom_property("rows_eval") == 10

    sample = train[0].features.feature
    assert set(sample) == set(FEATURE_NAMES) | {LABEL_KEY, TRANSACTION_ID_KEY, EVENT_TIME_KEY, "card_id"}
    source = rows[int(sample[TRANSACTION_ID_KEY].bytes_list.value[0].decode()[3:])]
    assert [sample[n].float_list.value[0] for n in FEATURE_NAMES] == \
        [float(np.float32(source.features[n])) for n in FEATURE_NAMES]
    assert sample[LABEL_KEY].int64_list.value[0] == source.label
    assert sample[EVENT_TIME_KEY].int64_list.value[0] == source.event_time_ms
    assert sample["card_id"].bytes_list.value[0].decode() == source.card_id
    assert max(e.features.feature[EVENT_TIME_KEY].int64_list.value[0] for e in train) <= \
        min(e.features.feature[EVENT_TIME_KEY].int64_list.value[0] for e in evaluation)


def test_a_window_of_spans_is_one_dataset_split_by_time_and_skips_pruned_spans(tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "exports"
    # Four incremental exports of 10 rows each; span 2 was pruned. A 3-span window ending at span 4
    # reads spans 3 and 4 (never 1, outside the window) and splits their 20 rows by event time.
    for span in range(1, 5):
        write_span(base, span, TOPIC, [(0, i, event(i, label=int(i % 5 == 0))) for i in range(10 * span, 10 * span + 10)],
                   rows_per_file=4)
    shutil.rmtree(spans.span_dir(base, 2))
    examples = _run(tmp_path, base, eval_fraction=0.25, window_spans=3)
    assert examples.get_int_custom_property("span") == 4
    assert examples.get_string_custom_property("spans_read") == "3,4"
    assert examples.get_int_custom_property("rows_read") == 20
    assert _ids(_read(examples, "train")) == [f"tx-{i:06d}" for i in range(30, 45)]
    assert _ids(_read(examples, "eval")) == [f"tx-{i:06d}" for i in range(45, 50)]
    assert _run(tmp_path / "one", base).get_string_custom_property("spans_read") == "4"

    # a lost file in an older span of the window fails the summed manifest check
    spans.list_data_files(spans.span_dir(base, 3), TOPIC)[0].path.unlink()
    with pytest.raises(RuntimeError, match=r"Spans 3..4 \(2\): read 16 rows but the manifest lists 20"):
        _run(tmp_path / "lost", base, window_spans=3)
    # an older span of the window that exists without its marker is refused, not skipped
    (spans.span_dir(base, 3) / spans.MARKER).unlink()
    with pytest.raises(RuntimeError, match="Span 3 .* no _SUCCESS marker"):
        _run(tmp_path / "unmarked", base, window_spans=2)
    with pytest.raises(ValueError, match="window_spans must be >= 1"):
        KafkaExportExampleGen(input_base=str(base), topic=TOPIC, window_spans=0)


def test_three_way_split_and_avro(tmp_path: Path) -> None:
    base = tmp_path / "exports"
    write_span(base, 1, TOPIC, [(0, i, event(i, label=i % 2)) for i in range(100)], file_format=spans.AVRO_FORMAT)
    config = time_split_config(0.2)
    config.split_config.splits.insert(1, type(config.split_config.splits[0])(name="validation", hash_buckets=100))
    config.split_config.splits[0].hash_buckets = 700
    examples = _run(tmp_path, base, output_config=config)
    assert [len(_read(examples, s)) for s in ("train", "validation", "eval")] == [70, 10, 20]
    assert _ids(_read(examples, "validation")) == [f"tx-{i:06d}" for i in range(70, 80)]


def test_span_without_marker_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "exports"
    write_span(base, 1, TOPIC, [(0, i, event(i)) for i in range(10)])
    write_span(base, 2, TOPIC, [(0, i, event(i)) for i in range(10, 20)])
    (spans.span_dir(base, 2) / spans.MARKER).unlink()  # an export that has not finished
    with pytest.raises(RuntimeError, match="no _SUCCESS marker"):
        _run(tmp_path, base)


def test_manifest_row_count_is_checked(tmp_path: Path) -> None:
    base = tmp_path / "exports"
    write_span(base, 1, TOPIC, [(0, i, event(i)) for i in range(10)], rows_per_file=4)
    victim = spans.list_data_files(spans.span_dir(base, 1), TOPIC)[1].path
    victim.unlink()  # a data file lost after the export
    with pytest.raises(RuntimeError, match="manifest lists 10"):
        _run(tmp_path, base)


def test_a_record_breaking_the_contract_stops_the_run(tmp_path: Path) -> None:
    base = tmp_path / "exports"
    write_span(base, 1, TOPIC, [(0, i, event(i)) for i in range(5)])
    (data_file,) = spans.list_data_files(spans.span_dir(base, 1), TOPIC)
    with open(data_file.path, "ab") as f:
        f.write(b'{"transaction_id": "tx-bad"}\n')
    with pytest.raises(Exception, match="breaks the event contract"):
        _run(tmp_path, base)


def test_connect_written_span_reads_like_ours(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    rows = [event(i, label=i % 2) for i in range(12)]
    write_span(ours, 1, TOPIC, [(i % 2, i // 2, e) for i, e in enumerate(rows)])
    # A Connect storage sink: files named by first offset, no plan/manifest until sealed.
    for p in (0, 1):
        d = spans.span_dir(theirs, 1) / TOPIC / f"partition={p}"
        d.mkdir(parents=True)
        part = [e for i, e in enumerate(rows) if i % 2 == p]
        (d / f"{TOPIC}+{p}+0000000000.json").write_bytes(b"".join(e.to_json() + b"\n" for e in part[:4]))
        (d / f"{TOPIC}+{p}+0000000004.json").write_bytes(b"".join(e.to_json() + b"\n" for e in part[4:]))
    spans.seal_span(spans.span_dir(theirs, 1), TOPIC)
    a = _run(tmp_path / "a", ours)
    b = _run(tmp_path / "b", theirs)
    for split in ("train", "eval"):
        ours_rows = sorted(_read(a, split), key=lambda r: r.features.feature[TRANSACTION_ID_KEY].bytes_list.value[0])
        theirs_rows = sorted(_read(b, split), key=lambda r: r.features.feature[TRANSACTION_ID_KEY].bytes_list.value[0])
        assert len(ours_rows) == len(theirs_rows) > 0
        assert ours_rows == theirs_rows  # proto equality: same features, same values
