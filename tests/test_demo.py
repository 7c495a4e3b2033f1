"""The demo orchestrator: its own logic (unit), its progress check against a real broker (integration),
and the whole `fraudctl demo run` end to end (slow: it trains the TFX pipeline)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fraud.dataset import count_rows
from fraud.errors import FraudError
from fraud.paths import SAMPLE_CSV, load_paths
from fraudctl import cli, demo


def _config(tmp_path: Path, **kw) -> demo.DemoConfig:
    paths = load_paths({"FRAUD_HOME": str(tmp_path / "home"), "FRAUD_CACHE": str(tmp_path / "cache")})
    return demo.DemoConfig(paths=paths, **kw)


def test_history_split_is_made_once(tmp_path):
    config = _config(tmp_path, history_fraction=0.5)
    total = count_rows(SAMPLE_CSV)
    history, live = demo.split_source(config)
    assert history == total // 2 and history + live == total
    lines = config.history_csv.read_text().splitlines()
    source = SAMPLE_CSV.read_text().splitlines()
    assert lines == source[: history + 1]  # header + the leading rows, byte for byte
    # A re-run with another fraction keeps the split: no row is both trained on and replayed live.
    again = _config(tmp_path, history_fraction=0.8)
    assert demo.split_source(again) == (history, live)


def test_anonymization_key_is_private_and_stable(tmp_path):
    config = _config(tmp_path)
    demo.ensure_key(config)
    first = config.key_file.read_text()
    assert stat.S_IMODE(config.key_file.stat().st_mode) == 0o600
    assert len(first.strip()) == 64
    demo.ensure_key(config)
    assert config.key_file.read_text() == first


@pytest.mark.parametrize("kw, message", [({"history_fraction": 0.99}, "--history-fraction"),
                                         ({"rate": -1}, "--rate"), ({"port_offset": -5}, "--port-offset")])
def test_bad_settings_are_refused_in_one_line(tmp_path, kw, message):
    with pytest.raises(FraudError, match=message):
        _config(tmp_path, **kw)


def test_service_commands_are_real_commands_on_shifted_ports(tmp_path):
    from serving.config import parse_args as parse_serving

    config = _config(tmp_path, port_offset=1000)
    parser = cli.build_parser()
    for svc in demo.services(config):
        if svc.args[0] == "fraudctl.cli":
            args = parser.parse_args(list(svc.args[1:]))
            assert callable(args.func)
            assert int(args.http_port) == config.port(svc.name) == demo.PORTS[svc.name] + 1000
        else:
            assert svc.args[0] == "serving"
            parsed = parse_serving(list(svc.args[1:]))
            assert parsed.port == demo.PORTS["grpc"] + 1000
        assert f":{config.port(svc.name if svc.name != 'serving' else 'rest')}/" in svc.ready_url


@pytest.mark.integration
def test_caught_up_holds_under_transactions(kafka_broker, kafka_topic, tmp_path):
    """End offsets count transaction markers; caught_up must not (a group at the last record is done)."""
    from confluent_kafka import Producer

    from fraud.kafka_config import KafkaClientConfig
    from fraud.stream.admin import KafkaAdmin

    topic = kafka_topic(partitions=2)
    config = KafkaClientConfig(bootstrap_servers=(kafka_broker.bootstrap,), client_id="test-demo")
    producer = Producer(config.confluent(**{"transactional.id": f"{topic}-tx"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=b"x", partition=i % 2)
    producer.commit_transaction(30)

    paths = load_paths({"FRAUD_HOME": str(tmp_path / "home")})
    group = f"{topic}-group"
    original = demo._bootstrap
    demo._bootstrap = lambda _paths: kafka_broker.bootstrap
    try:
        assert not demo.caught_up(paths, group, [topic])  # nothing committed: everything is pending
        assert demo.commit_at_end(paths, group, topic)  # commits at the end offsets (after the markers)
        assert demo.caught_up(paths, group, [topic])
        assert not demo.commit_at_end(paths, group, topic)  # a group with offsets is left alone
        # Committed at the last record, before the commit marker: caught up too.
        with KafkaAdmin(config) as admin:
            committed = admin.group_offsets(group, [topic])
            assert committed == {(topic, 0): 6, (topic, 1): 6}  # 5 records and a marker in each
            admin.set_group_offsets(group, {tp: o - 1 for tp, o in committed.items()})
            assert demo.caught_up(paths, group, [topic])
            admin.set_group_offsets(group, {(topic, 0): 0})
            assert not demo.caught_up(paths, group, [topic])
    finally:
        demo._bootstrap = original


# ---------------------------------------------------------------------------------------------
# The whole demo, once per module: `fraudctl demo run` on embedded defaults (ports shifted so it can run
# beside other brokers), then checks of what it printed, of privacy, and of a re-run.

DEMO_CMD = [sys.executable, "-m", "fraudctl.cli", "demo"]
PORT_OFFSET = "21000"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo") / "home"
    env = {**os.environ, "FRAUD_HOME": str(home)}
    try:
        done = subprocess.run([*DEMO_CMD, "run", "--port-offset", PORT_OFFSET, "--rate", "400"], env=env,
                              capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield env, load_paths({"FRAUD_HOME": str(home)}), done.stdout + done.stderr
    finally:
        subprocess.run([*DEMO_CMD, "stop"], env=env, capture_output=True, timeout=300)


@pytest.mark.integration
def test_demo_numbers_match_the_reports_it_points_to(demo_run):
    _env, paths, out = demo_run
    config = demo.DemoConfig(paths=paths)
    _history, live = demo.split_source(config)

    scored = int(re.search(r"live stream\s+: (\d+) transactions scored", out).group(1))
    assert scored == live
    pipeline_report = Path(re.search(r"pipeline report : (\S+)", out).group(1))
    monitor_report = Path(re.search(r"monitor report  : (\S+)", out).group(1))
    assert pipeline_report.is_file() and monitor_report.is_file()

    from warehouse.store import open_readonly

    con = open_readonly(config.warehouse)
    try:
        assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == scored
        assert con.execute("SELECT count(*) FROM labels").fetchone()[0] == live
        alerts = con.execute("SELECT count(*) FILTER (WHERE decision) FROM scores").fetchone()[0]
    finally:
        con.close()
    assert f"transactions scored by model versions 1, {alerts} alerts" in out
    # The model lines are the scorecard the pipeline report renders (same MLMD run, same ModelScorecard output).
    from components.scorecard import read_scorecard
    from pipeline.report import latest_run

    printed = dict(re.findall(r"^\s+(\w+)\s+eval AUPRC (\d\.\d{3})", out, re.M))
    record = latest_run(paths.metadata_path)
    card = read_scorecard(record.outputs["ModelScorecard"]["scorecard"][0].uri)["models"]
    assert set(printed) == set(card) and printed
    for model, figures in card.items():
        assert printed[model] == f"{figures['auprc']:.3f}"
    snapshot = json.loads(paths.monitor_snapshot.read_text())
    assert f"monitor alerts  : {len(snapshot['alerts'])} " in out


#: Lines libraries print when nothing keeps them off the terminal (TF's C++ start-up, absl, Beam, setuptools,
#: Python warnings).
LIBRARY_NOISE = re.compile(r"tensorflow|absl|apache_beam|oneDNN|cpu_feature_guard|cuda|setuptools|bdist_wheel|"
                           r"Warning:|WARNING:|^[IWE]\d{4} \d\d:\d\d", re.I | re.M)


@pytest.mark.integration
def test_demo_output_is_one_line_per_step_without_library_noise(demo_run):
    _env, paths, out = demo_run
    assert not LIBRARY_NOISE.search(out), LIBRARY_NOISE.search(out)
    for step in ("kafka", "data", "ingest", "preprocess", "train", "serving", "bridge", "replay", "reports"):
        assert re.search(rf"^{step}\s+(done|running|reused)\s+[\d.]+ s", out, re.M), (step, out)
    # the pipeline's components, one line each, under the train step
    for component in ("KafkaExportExampleGen", "Transform", "Pusher"):
        assert re.search(rf"^\s+{component}\s+(done|cached)\s+[\d.]+ s", out, re.M), (component, out)


@pytest.mark.integration
def test_no_raw_id_anywhere_after_the_demo(demo_run):
    """`fraudctl preprocess privacy-check` finds none of the card pool's raw ids in any downstream topic, the
    warehouse, or any file the installation wrote (exports, pipeline artifacts, reports, service logs).
    Kafka's own data directory is left out: it holds the upstream raw topic, where raw ids belong."""
    env, paths, _out = demo_run
    cmd = [sys.executable, "-m", "fraudctl.cli", "preprocess", "privacy-check"]
    warehouses = sorted(paths.home.rglob("*.duckdb"))
    assert warehouses, "the demo wrote a warehouse"
    args = list(cmd)
    for path in sorted(paths.home.iterdir()):
        if path.name != paths.kafka_dir.name:
            args += ["--path", str(path)]
    for w in warehouses:
        args += ["--warehouse", str(w)]
    check = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    out = check.stdout + check.stderr
    assert check.returncode == 0, out[-3000:]
    assert "privacy check passed" in out
    # The check looked where the data went: downstream topics with records, and the warehouse.
    assert "topic fraud.transactions: 0 records" not in out and "topic fraud.scores:" in out
    assert "warehouse" in out and "text columns, 0 raw ids" in out
    # The scan does see raw ids where they belong: the raw topic upstream of preprocessing.
    raw = subprocess.run([*cmd, "--topic", "fraud.transactions.raw"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert raw.returncode == 4 and "privacy check FAILED" in raw.stdout


@pytest.mark.integration
@pytest.mark.slow  # ~50 s more on top of the demo run the other tests share (default suite under 25 minutes)
def test_a_rerun_reuses_what_exists(demo_run):
    env, paths, _out = demo_run
    again = subprocess.run([*DEMO_CMD, "run", "--port-offset", PORT_OFFSET, "--rate", "0"], env=env,
                           capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for line in (r"^kafka\s+done\s+[\d.]+ s\s+already running", r"^train\s+reused\s+[\d.]+ s\s+reusing the pushed "
                 r"model versions \[1\]", r"^serving\s+running\s+[\d.]+ s\s+already running",
                 r"^bridge\s+running\s+[\d.]+ s\s+already running"):
        assert re.search(line, again.stdout, re.M), again.stdout
    assert demo.pushed_versions(paths) == [1]
