"""`fraudctl ingest`: file checks (unit) and ingestion through a real Kafka Connect worker (integration)."""

from __future__ import annotations

import gzip

import pytest

from fraud.errors import FraudError
from fraud.paths import SAMPLE_CSV
from fraudctl.cli import main
from preprocessing.ingest import _count_line_ends, check_file, connector_name, ingest_file
from preprocessing.privacy import iter_topic

LINES = SAMPLE_CSV.read_bytes().splitlines()


def test_line_ends_are_counted_as_connect_reads_them():
    assert _count_line_ends(b"a\nb\n") == (2, False)
    assert _count_line_ends(b"a\r\nb\r\n\r\n") == (3, False)
    assert _count_line_ends(b"a\rb\n") == (2, False)
    assert _count_line_ends(b"a\nb") == (1, True)
    assert _count_line_ends(b"a\nb\r") == (1, True)  # a final \r may still become \r\n
    assert _count_line_ends(b"") == (0, False)


def test_check_file(tmp_path):
    good = tmp_path / "g.csv"
    good.write_bytes(b"\n".join(LINES[:11]) + b"\n\n" + LINES[11])
    checked = check_file(good, tmp_path / "staging")
    assert (checked.lines, checked.has_header, checked.incomplete_last_line) == (12, True, True)
    gz = tmp_path / "z.csv.gz"
    gz.write_bytes(gzip.compress(b"\n".join(LINES[:5]) + b"\n"))
    checked = check_file(gz, tmp_path / "staging")
    assert checked.path == (tmp_path / "staging" / "z.csv").resolve() and checked.lines == 5
    bad = tmp_path / "b.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(FraudError, match=r"b\.csv:1: expected the dataset's 31 columns"):
        check_file(bad, tmp_path)
    with pytest.raises(FraudError, match="no file to ingest"):
        check_file(tmp_path / "absent.csv", tmp_path)
    assert connector_name(good.resolve()).startswith("ingest-g-csv-")


def _values(config, topic) -> list[bytes]:
    return [r.value for r in iter_topic(config, topic)]


@pytest.mark.integration
def test_ingest_sends_each_line_once_resumes_and_again(kafka_connect, kafka_client_config, kafka_topic, tmp_path):
    topic = kafka_topic(1)
    path = tmp_path / "part.csv"
    # header, 40 rows, a blank line, and a last row without a line break (Connect waits for one)
    path.write_bytes(b"\n".join(LINES[:41]) + b"\n\n" + LINES[41])
    first = ingest_file(kafka_connect, kafka_client_config, path, topic, staging_dir=tmp_path / "s", timeout_s=120)
    assert (first.expected, first.sent, first.start_position) == (42, 42, 0)
    assert first.incomplete_last_line and "was not read" in first.summary()
    assert _values(kafka_client_config, topic) == LINES[:41] + [b""]

    # Lines appended since are all that a second ingest sends (Connect kept its offset for this file).
    with open(path, "ab") as f:
        f.write(b"\n" + b"\n".join(LINES[42:52]) + b"\n")
    second = ingest_file(kafka_connect, kafka_client_config, path, topic, staging_dir=tmp_path / "s", timeout_s=120)
    assert second.sent == 11 and second.start_position > 0
    assert _values(kafka_client_config, topic) == LINES[:41] + [b""] + LINES[41:52]

    third = ingest_file(kafka_connect, kafka_client_config, path, topic, staging_dir=tmp_path / "s", timeout_s=120)
    assert third.expected == 0 and "nothing new" in third.summary()

    again = ingest_file(kafka_connect, kafka_client_config, path, topic, staging_dir=tmp_path / "s", again=True,
                        timeout_s=120)
    assert again.sent == 53 and again.start_position == 0
    assert len(_values(kafka_client_config, topic)) == 53 + 53
    assert kafka_connect.connectors() == [], "the connector is removed after each ingest"


@pytest.mark.integration
def test_fraudctl_ingest_reads_a_gzip_file(kafka_broker, kafka_connect, kafka_client_config, kafka_topic, tmp_path,
                                           capsys):
    topic = kafka_topic(1)
    gz = tmp_path / "slice.csv.gz"
    gz.write_bytes(gzip.compress(b"\n".join(LINES[:101]) + b"\n"))
    code = main(["ingest", "--file", str(gz), "--topic", topic, "--connect-state-dir", str(kafka_connect.state_dir),
                 "--bootstrap", kafka_broker.bootstrap, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"ingested 101 lines of {kafka_connect.state_dir / 'ingest' / 'slice.csv'} into {topic}" in out
    assert _values(kafka_client_config, topic) == LINES[:101]
    assert kafka_connect.is_running(), "a worker the command did not start is left running"


@pytest.mark.integration
def test_ingest_refuses_a_missing_topic(kafka_broker, kafka_connect, tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\n".join(LINES[:3]) + b"\n")
    with pytest.raises(FraudError, match="topic no.such.topic.h6 does not exist"):
        ingest_file(kafka_connect, kafka_broker.client_config(), path, "no.such.topic.h6", staging_dir=tmp_path)
    assert kafka_connect.connectors() == []


@pytest.mark.integration
def test_fraudctl_ingest_starts_a_worker_when_none_runs_and_stops_it(kafka_broker, kafka_client_config, kafka_topic,
                                                                     tmp_path, capsys, monkeypatch):
    from fraud.embedded.connect import ConnectConfig, ConnectStandalone
    from fraud.embedded.process import free_port
    from fraud.paths import load_paths

    monkeypatch.setenv("FRAUD_HOME", str(tmp_path / "home"))
    topic = kafka_topic(1)
    path = tmp_path / "small.csv"
    path.write_bytes(b"\n".join(LINES[:21]) + b"\n")
    code = main(["ingest", "--file", str(path), "--topic", topic, "--bootstrap", kafka_broker.bootstrap,
                 "--rest-port", str(free_port()), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "starting Kafka Connect" in captured.err and "ingested 21 lines" in captured.out
    assert _values(kafka_client_config, topic) == LINES[:21]
    paths = load_paths()
    worker = ConnectStandalone(ConnectConfig(state_dir=paths.connect_dir, jars_dir=paths.jars_dir))
    assert not worker.is_running(), "the worker this command started is stopped again"
