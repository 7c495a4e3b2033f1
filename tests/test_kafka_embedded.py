"""The embedded broker and Connect worker: `fraudctl kafka|connect|topics`, restarts, bad states.

Unit tests here start no JVM (stale pid files and taken ports are refused before anything runs);
`integration` tests start real brokers and workers from the Maven jars.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraud.embedded import jars
from fraud.embedded.process import free_port, pid_alive
from fraud.errors import FraudError
from fraudctl.cli import main


def _fraudctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# -- no JVM needed -----------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("service", ["kafka", "connect"])
def test_start_with_a_stale_pid_file_is_one_line_and_nonzero(service, tmp_path, capsys):
    pid_file = tmp_path / f"{service}.pid"
    for pid, why in ((_dead_pid(), "not running"), (os.getpid(), "which is not this")):
        pid_file.write_text(f"{pid}\n")
        code, out, err = _fraudctl(capsys, service, "start", "--state-dir", str(tmp_path))
        line = _one_line(err)
        assert code == 1 and out == ""
        assert "stale pid file" in line and str(pid) in line and why in line and str(pid_file) in line
        code, _, err = _fraudctl(capsys, service, "status", "--state-dir", str(tmp_path))
        assert code == 1 and "stale pid file" in _one_line(err)
    assert pid_file.exists()  # refused, not silently cleaned
    code, out, _ = _fraudctl(capsys, service, "stop", "--state-dir", str(tmp_path))
    assert code == 0 and "removed stale pid file" in out
    assert not pid_file.exists()
    code, out, _ = _fraudctl(capsys, service, "status", "--state-dir", str(tmp_path))
    assert code == 3 and "not running" in out


def test_start_on_a_taken_port_is_one_line_and_nonzero(tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, out, err = _fraudctl(capsys, "kafka", "start", "--state-dir", str(tmp_path / "k"),
                                   "--port", str(port), "--controller-port", str(free_port()))
        line = _one_line(err)
        assert code == 1 and f"127.0.0.1:{port}" in line and "already taken" in line and "--port" in line
        code, _, err = _fraudctl(capsys, "kafka", "start", "--state-dir", str(tmp_path / "k"),
                                 "--port", str(free_port()), "--controller-port", str(port))
        assert code == 1 and "--controller-port" in _one_line(err)
        code, _, err = _fraudctl(capsys, "connect", "start", "--state-dir", str(tmp_path / "c"),
                                 "--rest-port", str(port), "--bootstrap", "127.0.0.1:9")
        assert code == 1 and "REST port" in _one_line(err)
    assert not (tmp_path / "k" / "kafka.pid").exists()


def test_connect_start_without_a_broker_is_one_line(tmp_path, capsys):
    code, _, err = _fraudctl(capsys, "connect", "start", "--state-dir", str(tmp_path),
                             "--rest-port", str(free_port()), "--bootstrap", f"127.0.0.1:{free_port()}")
    assert code == 1 and "no Kafka broker answers" in _one_line(err)


def test_bad_port_flag_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["kafka", "start", "--state-dir", str(tmp_path), "--port", "70000"])
    assert exc.value.code == 2
    assert "70000" in capsys.readouterr().err


def test_missing_maven_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn here
    with pytest.raises(FraudError, match=r"`mvn` not found on PATH"):
        jars.ensure_jars(tmp_path / "jars")


def test_maven_failure_is_one_line_and_leaves_no_marker(tmp_path):
    if not Path("/usr/bin/mvn").exists() and not __import__("shutil").which("mvn"):
        pytest.skip("mvn not installed")
    pom = tmp_path / "pom.xml"
    pom.write_text("<project><modelVersion>4.0.0</modelVersion>")  # malformed: Maven fails before any download
    with pytest.raises(FraudError) as exc:
        jars.ensure_jars(tmp_path / "jars", pom)
    message = str(exc.value)
    assert "Maven failed" in message and "\n" not in message
    assert not jars.jars_ready(tmp_path / "jars", pom)


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "a.jar").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FraudError, match=r"`java` not found on PATH; it is needed to run Apache Kafka"):
        jars.java_command(tmp_path, "kafka.Kafka", [])


def test_jars_marker_follows_the_pom(tmp_path):
    pom = tmp_path / "pom.xml"
    pom.write_text("<project/>")
    jar_dir = tmp_path / "jars"
    jar_dir.mkdir()
    (jar_dir / jars.MARKER_NAME).write_text(jars.pom_digest(pom) + "\n")
    assert jars.jars_ready(jar_dir, pom)
    pom.write_text("<project><!-- changed --></project>")
    assert not jars.jars_ready(jar_dir, pom)


# -- real broker -------------------------------------------------------------------------------


def _produce(config, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**config.producer_kwargs(acks="all", enable_idempotence=True))
    for i, value in enumerate(values):
        producer.send(topic, key=str(i).encode(), value=value)
    producer.flush(timeout=30)
    producer.close()


def _consume(config, topic: str, n: int, group: str | None = None, timeout_s: float = 30.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **config.consumer_kwargs(group, auto_offset_reset="earliest"))
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=n - len(got)).values():
                got.extend(batch)
        if group:
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return got


@pytest.mark.integration
def test_produce_consume_round_trip(kafka_client_config, kafka_topic):
    topic = kafka_topic(partitions=3)
    values = [f"event-{i}".encode() for i in range(100)]
    _produce(kafka_client_config, topic, values)
    got = _consume(kafka_client_config, topic, 100)
    assert sorted(r.value for r in got) == sorted(values)
    assert {r.partition for r in got} == {0, 1, 2}


@pytest.mark.integration
def test_restart_keeps_records_topics_and_group_offsets(kafka_broker, kafka_client_config, kafka_topic):
    topic = kafka_topic(partitions=2)
    values = [f"before-restart-{i}".encode() for i in range(40)]
    _produce(kafka_client_config, topic, values)
    group = f"{topic}.g"
    first = _consume(kafka_client_config, topic, 15, group)
    assert len(first) == 15
    cluster_id = kafka_broker.broker.cluster_id()
    old_pid = kafka_broker.broker.status().pid

    try:
        kafka_broker.restart()
    finally:
        if not kafka_broker.is_running():
            kafka_broker.start()
    assert kafka_broker.broker.status().pid != old_pid
    assert kafka_broker.broker.cluster_id() == cluster_id

    everything = _consume(kafka_client_config, topic, 40)
    assert sorted(r.value for r in everything) == sorted(values)
    rest = _consume(kafka_client_config, topic, 25, group)
    assert len(rest) == 25
    assert sorted(r.value for r in first + rest) == sorted(values)


@pytest.mark.integration
def test_fraudctl_topics_creates_every_topic_with_its_partitions(kafka_broker, capsys):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from fraud.topics import ALL_TOPICS, USERS

    code, out, _ = _fraudctl(capsys, "topics", "--bootstrap", kafka_broker.bootstrap)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == len(ALL_TOPICS)
    admin = KafkaAdminClient(**kafka_broker.client_config().admin_kwargs())
    try:
        described = {t["name"]: t for t in admin.describe_topics([s.name for s in ALL_TOPICS])}
        for spec in ALL_TOPICS:
            assert described[spec.name]["error_code"] == 0
            assert len(described[spec.name]["partitions"]) == spec.partitions, spec.name
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, USERS.name, ["cleanup.policy"])],
                                         config_filter="all")
        assert configs["topic"][USERS.name]["cleanup.policy"]["value"] == "compact"
    finally:
        admin.close()
    # again: nothing to do
    code, out, _ = _fraudctl(capsys, "topics", "--bootstrap", kafka_broker.bootstrap)
    assert code == 0 and all(line.endswith("exists") for line in out.strip().splitlines())


@pytest.mark.integration
def test_ensure_topics_partition_mismatch_is_an_error_or_an_explicit_increase(kafka_client_config, kafka_topic):
    from fraud.kafka_config import ensure_topics
    from fraud.topics import TopicSpec

    name = kafka_topic(partitions=2)
    with pytest.raises(FraudError, match=r"has 2 partitions, fraud.topics declares 1"):
        ensure_topics(kafka_client_config, [TopicSpec(name, 1)])
    with pytest.raises(FraudError, match=r"has 2 partitions, fraud.topics declares 4 \(pass --increase-partitions"):
        ensure_topics(kafka_client_config, [TopicSpec(name, 4)])
    (result,) = ensure_topics(kafka_client_config, [TopicSpec(name, 4)], increase_partitions=True)
    assert (result.action, result.partitions) == ("increased", 4)
    (result,) = ensure_topics(kafka_client_config, [TopicSpec(name, 4)])
    assert result.action == "exists"
    with pytest.raises(FraudError, match=r"cleanup.policy=delete, but fraud.topics declares cleanup.policy=compact"):
        ensure_topics(kafka_client_config, [TopicSpec(name, 4, {"cleanup.policy": "compact"})])


def test_ensure_topics_with_no_broker_is_a_clear_error():
    from fraud.kafka_config import KafkaClientConfig, ensure_topics
    from fraud.topics import ALL_TOPICS

    config = KafkaClientConfig(bootstrap_servers=(f"127.0.0.1:{free_port()}",))
    with pytest.raises(FraudError, match=r"cannot reach Kafka at 127.0.0.1:\d+"):
        ensure_topics(config, ALL_TOPICS, timeout_s=3)


@pytest.mark.integration
def test_fraudctl_kafka_start_status_noop_stop(tmp_path, capsys):
    state = tmp_path / "kafka"
    port, cport = free_port(), free_port()
    args = ["--state-dir", str(state)]
    try:
        code, out, _ = _fraudctl(capsys, "kafka", "start", *args, "--port", str(port),
                                 "--controller-port", str(cport), "--heap", "256m")
        assert code == 0 and f"bootstrap 127.0.0.1:{port}" in out
        code, out, _ = _fraudctl(capsys, "kafka", "status", *args)
        assert code == 0 and f"127.0.0.1:{port}" in out
        pid = int((state / "kafka.pid").read_text())
        code, out, _ = _fraudctl(capsys, "kafka", "start", *args, "--port", str(port),
                                 "--controller-port", str(cport), "--heap", "256m")
        assert code == 0 and "already running" in out and int((state / "kafka.pid").read_text()) == pid
        assert (state / "data" / "meta.properties").is_file()
        assert (state / "logs" / "kafka.log").stat().st_size > 0
    finally:
        code, out, _ = _fraudctl(capsys, "kafka", "stop", *args)
    assert code == 0 and f"stopped (pid {pid})" in out
    assert not (state / "kafka.pid").exists()
    assert not pid_alive(pid)  # (a zombie until this test process reaps it: it started the JVM)
    assert (state / "data" / ".kafka_cleanshutdown").exists()  # a clean, controlled shutdown
    code, out, _ = _fraudctl(capsys, "kafka", "status", *args)
    assert code == 3 and "not running" in out


@pytest.mark.integration
def test_concurrent_starts_of_one_state_dir_make_one_broker(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from fraud.embedded.broker import KafkaBroker
    from fraud.embedded.testing import broker_config_for_tests

    config = broker_config_for_tests(tmp_path)
    brokers = [KafkaBroker(config), KafkaBroker(config)]
    try:
        with ThreadPoolExecutor(2) as pool:
            # not die_with_parent: that signal fires when the starting *thread* ends, i.e. the pool's
            results = list(pool.map(lambda b: b.start(), brokers))
        assert sorted(results, key=lambda r: r is not None)[0] is None  # one started, one found it running
        assert any(r is not None and r > 0 for r in results)
        assert brokers[0].status().pid == brokers[1].status().pid
    finally:
        for broker in brokers:
            broker.stop()
    assert not brokers[0].is_running()


@pytest.mark.integration
def test_a_broker_that_dies_while_starting_reports_its_log(tmp_path):
    from fraud.embedded.broker import KafkaBroker
    from fraud.embedded.testing import broker_config_for_tests

    broker = KafkaBroker(broker_config_for_tests(tmp_path, start_timeout_s=60))
    broker.start(die_with_parent=True)
    broker.stop()
    meta = tmp_path / "data" / "meta.properties"
    meta.write_text(meta.read_text().replace("node.id=1", "node.id=7"))  # storage of another node
    with pytest.raises(FraudError) as exc:
        broker.start(die_with_parent=True)
    message = str(exc.value)
    assert "exited with code" in message and "node" in message and "\n" not in message
    assert str(broker.log_file) in message
    assert not broker.is_running() and not (tmp_path / "kafka.pid").exists()


def test_an_invalid_broker_setting_fails_at_format_time_in_one_line(tmp_path):
    from fraud.embedded.broker import KafkaBroker
    from fraud.embedded.testing import broker_config_for_tests

    broker = KafkaBroker(broker_config_for_tests(tmp_path, overrides={"num.io.threads": "many"}))
    if not jars.jars_ready(broker.config.jars_dir):
        pytest.skip("Kafka jars not fetched yet")
    with pytest.raises(FraudError, match=r"^StorageTool format failed .*Invalid value many for configuration num.io.threads"):
        broker.start()
    assert not (tmp_path / "kafka.pid").exists()


# -- Kafka Connect -----------------------------------------------------------------------------


@pytest.mark.integration
def test_connect_file_stream_source_moves_lines_into_a_topic(kafka_connect, kafka_client_config, kafka_topic, tmp_path):
    from fraud.embedded.connect import file_source_config

    topic = kafka_topic()
    source = tmp_path / "lines.csv"
    lines = ['"Time","V1","Amount","Class"'] + [f'{i},0.{i},{i}.5,"0"' for i in range(25)]
    source.write_text("\n".join(lines) + "\n")
    name = f"src-{topic}"
    kafka_connect.create_connector(name, file_source_config(source, topic))
    try:
        status = kafka_connect.wait_running(name)
        assert status["connector"]["state"] == "RUNNING"
        assert name in kafka_connect.connectors()
        got = _consume(kafka_client_config, topic, len(lines))
        assert [r.value.decode() for r in got] == lines  # one partition: file order, header included
        # lines appended later are picked up too
        with source.open("a") as fh:
            fh.write("99,0.99,99.5,\"1\"\n")
        got = _consume(kafka_client_config, topic, len(lines) + 1)
        assert got[-1].value.decode() == '99,0.99,99.5,"1"'
    finally:
        kafka_connect.delete_connector(name)
    assert name not in kafka_connect.connectors()


@pytest.mark.integration
def test_fraudctl_connect_start_with_a_connector_file(kafka_broker, kafka_client_config, kafka_topic, tmp_path, capsys):
    from fraud.embedded.connect import FILE_STREAM_SOURCE

    topic = kafka_topic()
    data = tmp_path / "in.txt"
    data.write_text("one\ntwo\nthree\n")
    props = tmp_path / "source.properties"
    props.write_text(f"name=file-source\nconnector.class={FILE_STREAM_SOURCE}\ntasks.max=1\nfile={data}\ntopic={topic}\n")
    state = tmp_path / "connect"
    args = ["--state-dir", str(state)]
    rest = free_port()
    try:
        code, out, _ = _fraudctl(capsys, "connect", "start", *args, "--rest-port", str(rest),
                                 "--bootstrap", kafka_broker.bootstrap, "--heap", "192m", str(props))
        assert code == 0 and f"http://127.0.0.1:{rest}" in out
        got = _consume(kafka_client_config, topic, 3)
        assert [r.value for r in got] == [b"one", b"two", b"three"]
        code, out, _ = _fraudctl(capsys, "connect", "status", *args)
        assert code == 0 and "connector file-source: RUNNING (task 0 RUNNING)" in out
        code, out, _ = _fraudctl(capsys, "connect", "start", *args, "--rest-port", str(rest),
                                 "--bootstrap", kafka_broker.bootstrap)
        assert code == 0 and "already running" in out
    finally:
        code, out, _ = _fraudctl(capsys, "connect", "stop", *args)
    assert code == 0 and "stopped" in out
    code, out, _ = _fraudctl(capsys, "connect", "status", *args)
    assert code == 3


def test_a_given_broker_is_used_as_is_and_nothing_is_started(tmp_path):
    from fraud.embedded.testing import given_or_temporary_broker

    with given_or_temporary_broker("kafka.example:9092", tmp_path / "kafka") as bootstrap:
        assert bootstrap == "kafka.example:9092"
    assert not (tmp_path / "kafka").exists()
