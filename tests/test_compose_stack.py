"""The compose stack in Docker, end to end (slow: about 12 minutes here, most of it the TFX pipeline).

What a user does with deploy/docker-compose.yml, on the images `make images` builds:
1. scripts/install-docker.sh and scripts/images.sh (both no-ops when everything is there and current);
2. scripts/compose.sh up: Kafka (KRaft), Connect, the topics, the model server, preprocessing, the bridge,
   the sink and the monitor, as a project of its own (its own volumes, host ports chosen free here);
3. the history (the first 5,400 rows of the shipped sample, labels included) appended to Connect's ingest
   file -> fraud.ingest.csv -> preprocessing -> fraud.transactions;
4. `--profile train run --rm export`, then `run --rm train` in the pipeline image: a model is pushed into
   the shared volume, and the model server serves it;
5. 3,000 live events replayed from the host (`fraudctl replay` -> fraud.transactions.raw, labels to
   fraud.labels);
6. read back: every clean transaction scored exactly once in fraud.scores (read_committed; input set =
   output set, no duplicates, read until quiescent), the same rows in the sink's DuckDB warehouse, the
   labels too; /healthz, /readyz and /metrics of every service, the model server's Prometheus metrics;
7. `down -v`, whatever happened.

Figures (per step seconds) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fraud.paths import SAMPLE_CSV
from fraud.topics import SCORES, TRANSACTIONS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
HISTORY_ROWS = 5400
LIVE_ROWS = 3000
#: Host ports of the stack, by the compose variable that moves them.
PORT_VARS = ("FRAUD_KAFKA_HOST_PORT", "FRAUD_CONNECT_HOST_PORT", "FRAUD_SERVING_GRPC_HOST_PORT",
             "FRAUD_SERVING_REST_HOST_PORT", "FRAUD_PREPROCESS_HOST_PORT", "FRAUD_BRIDGE_HOST_PORT",
             "FRAUD_SINK_HOST_PORT", "FRAUD_MONITOR_HOST_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Stack:
    env: dict[str, str]
    tmp: Path
    timings: dict[str, float] = field(default_factory=dict)

    def port(self, var: str) -> int:
        return int(self.env[var])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port('FRAUD_KAFKA_HOST_PORT')}"

    def compose(self, *args: str, timeout: float = 600, stdin: Path | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        with (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as fh:
            done = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), *args], env=self.env, stdin=fh,
                                  capture_output=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"docker compose {' '.join(args)}:\n{done.stderr.decode()[-4000:]}"
        return done

    def timed(self, name: str, start: float) -> float:
        self.timings[name] = round(time.monotonic() - start, 1)
        print(f"compose stack: {name} {self.timings[name]} s", flush=True)
        return self.timings[name]

    def metrics(self, var: str, path: str = "/metrics") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        status, text = _get(f"http://127.0.0.1:{self.port(var)}{path}")
        assert status == 200, (var, path, status, text[:300])
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}


def _run_script(name: str, env: dict[str, str], timeout: float) -> None:
    done = subprocess.run([str(ROOT / "scripts" / name)], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"scripts/{name} failed:\n{done.stderr[-4000:]}"
    for line in done.stderr.splitlines():
        if line.startswith(("images:", "install-docker:", "rootfs:", "compose:", "  ")):
            print(line, flush=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    key = tmp / "anonymize.key"
    key.write_text("compose-stack-test-key-0123456789abcdef\n")
    key.chmod(0o644)  # compose mounts it as it is; the containers run as uid 10001
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "COMPOSE_"))}
    env.update({var: str(_free_port()) for var in PORT_VARS})
    env.update(COMPOSE_PROJECT_NAME=f"fraud-tfx-test-{os.getpid()}", FRAUD_ANONYMIZE_KEY_PATH=str(key),
               FRAUD_HOME=str(tmp / "home"))
    s = Stack(env, tmp)
    t = time.monotonic()
    _run_script("install-docker.sh", env, 1800)
    _run_script("images.sh", env, 3600)
    s.timed("install-docker + images (cached)", t)
    t = time.monotonic()
    try:
        done = subprocess.run([str(ROOT / "scripts" / "compose.sh"), "up"], env=env, capture_output=True, text=True,
                              timeout=900)
        print(done.stderr, flush=True)
        assert done.returncode == 0, done.stderr[-4000:]
        s.timed("compose up (healthy)", t)
        yield s
    finally:
        logs = s.compose("logs", "--no-color", "--timestamps", timeout=120, check=False)
        (tmp / "compose.log").write_bytes(logs.stdout)
        t = time.monotonic()
        s.compose("down", "--volumes", "--remove-orphans", timeout=300, check=False)
        s.timed("compose down -v", t)
        print(f"compose stack: logs in {tmp / 'compose.log'}; timings {json.dumps(s.timings)}", flush=True)


def _wait(what: str, predicate, timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s"
        time.sleep(every_s)


def _read_topic(bootstrap: str, topic: str, expected: int, settle_s: float = 10.0,
                timeout_s: float = 300.0) -> list[dict]:
    """Every committed record of `topic` (read_committed), read until `expected` are in and nothing new has
    come for `settle_s` (never "stop when complete": a duplicate after the last expected record counts)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"compose-test-{os.getpid()}-{topic}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=30)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions])
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, timeout=1.0)
            for m in msgs:
                if m.error() is None:
                    out.append(json.loads(m.value()))
            if msgs:
                last_new = time.monotonic()
            elif len(out) >= expected and time.monotonic() - last_new >= settle_s:
                break
        return out
    finally:
        consumer.close()


def test_compose_stack_ingests_trains_scores_and_stores_exactly_once(stack: Stack) -> None:
    # 3. The history through Kafka Connect's file source.
    history = stack.tmp / "history.csv"
    with open(SAMPLE_CSV) as src, open(history, "w") as out:
        for i, line in enumerate(src):
            if i > HISTORY_ROWS:  # line 0 is the header
                break
            out.write(line)
    t = time.monotonic()
    stack.compose("exec", "-T", "connect", "sh", "-c", "cat >> /var/lib/fraud/ingest/transactions.csv", stdin=history)

    def clean_from_csv() -> bool:
        m = stack.metrics("FRAUD_PREPROCESS_HOST_PORT")
        return m.get(("fraud_preprocess_records_clean_total", (("source", "csv"),)), 0) >= HISTORY_ROWS

    _wait("preprocessing of the ingested history", clean_from_csv, 300)
    stack.timed("history: Connect -> preprocessing", t)
    m = stack.metrics("FRAUD_PREPROCESS_HOST_PORT")
    assert m[("fraud_preprocess_records_filtered_total", (("reason", "csv_header"),))] == 1

    # 4. Export a span and train in the pipeline image; the model server picks the pushed version up.
    t = time.monotonic()
    done = stack.compose("--profile", "train", "run", "--rm", "export", timeout=600)
    assert f"{HISTORY_ROWS} rows, 0 without a label, 0 rejected" in done.stdout.decode(), done.stdout.decode()
    stack.timed("export (pipeline image)", t)
    t = time.monotonic()
    stack.compose("--profile", "train", "run", "--rm", "train", timeout=3600)
    stack.timed("train: TFX pipeline (pipeline image)", t)
    t = time.monotonic()
    rest = f"http://127.0.0.1:{stack.port('FRAUD_SERVING_REST_HOST_PORT')}"
    status = _wait("the model server serving the pushed model",
                   lambda: (lambda r: r[1] if r[0] == 200 and '"AVAILABLE"' in r[1] else None)(_get(f"{rest}/v1/models/fraud")),
                   180, every_s=1.0)
    stack.timed("pushed model AVAILABLE in the model server", t)
    version = json.loads(status)["model_version_status"][0]["version"]
    # The monitor can now find the training statistics (it was restarting until then, by design).
    stack.compose("restart", "monitor", timeout=120)

    # 5. Live traffic from the host.
    t = time.monotonic()
    replay = subprocess.run([sys.executable, "-m", "fraudctl.cli", "replay", "--bootstrap", stack.bootstrap,
                             "--start-row", str(HISTORY_ROWS), "--limit", str(LIVE_ROWS), "--flush-labels",
                             "--no-progress"], capture_output=True, text=True, timeout=600,
                            env={k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")})
    assert replay.returncode == 0, replay.stderr[-3000:]
    stack.timed(f"replay {LIVE_ROWS} live events from the host", t)

    # 6. Every clean transaction scored exactly once.
    expected = HISTORY_ROWS + LIVE_ROWS
    t = time.monotonic()
    transactions = _read_topic(stack.bootstrap, TRANSACTIONS.name, expected)
    scores = _read_topic(stack.bootstrap, SCORES.name, expected, timeout_s=600)
    stack.timed(f"scores read back from Kafka ({len(scores)})", t)
    # Multisets, not sets: the sample has identical rows, and a CSV line's transaction id is derived from its
    # content, so a few ids come twice in the input (26 in these 5,400 rows); each record is scored once.
    tx_ids = Counter(e["transaction_id"] for e in transactions)
    score_ids = Counter(s["transaction_id"] for s in scores)
    assert sum(tx_ids.values()) == expected
    lost, duplicated = tx_ids - score_ids, score_ids - tx_ids
    assert not lost and not duplicated, f"lost {sum(lost.values())}, duplicated {sum(duplicated.values())}"
    assert {str(s["model_version"]) for s in scores} == {str(version)}
    assert all(0.0 <= s["score"] <= 1.0 for s in scores)

    # Health and metrics of every service.
    for var in ("FRAUD_PREPROCESS_HOST_PORT", "FRAUD_BRIDGE_HOST_PORT", "FRAUD_SINK_HOST_PORT",
                "FRAUD_MONITOR_HOST_PORT"):
        base = f"http://127.0.0.1:{stack.port(var)}"
        for path in ("/healthz", "/readyz"):
            code, body = _wait(f"{var} {path}", lambda b=base, p=path: (lambda r: r if r[0] == 200 else None)(_get(b + p)),
                               120)
            assert '"status":"ok"' in body.replace(" ", ""), (var, path, body)
    bridge = stack.metrics("FRAUD_BRIDGE_HOST_PORT")
    produced = sum(v for (name, labels), v in bridge.items()
                   if name == "fraud_bridge_records_produced_total" and ("topic", SCORES.name) in labels)
    assert produced >= expected, {k: v for k, v in bridge.items() if "produced" in k[0]}
    serving = stack.metrics("FRAUD_SERVING_REST_HOST_PORT", "/monitoring/prometheus/metrics")
    requests = sum(v for (name, labels), v in serving.items()
                   if name.startswith(":tensorflow:serving:request_count") and ("model_name", "fraud") in labels)
    assert requests > 0, sorted({k[0] for k in serving})[:20]
    connect = _get(f"http://127.0.0.1:{stack.port('FRAUD_CONNECT_HOST_PORT')}/connectors/fraud-ingest-file/status")
    assert connect[0] == 200 and json.loads(connect[1])["connector"]["state"] == "RUNNING"

    # The warehouse: the sink stops cleanly (DuckDB has one writer), then its file is read here.
    t = time.monotonic()
    _wait("the sink to store every score", lambda: _sink_rows(stack) >= len(tx_ids), 300)
    stack.compose("stop", "sink", timeout=120)
    db = stack.tmp / "fraud.duckdb"
    stack.compose("cp", "sink:/var/lib/fraud/warehouse/fraud.duckdb", str(db), timeout=120)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT transaction_id) FROM scores").fetchone()
        labels = con.execute("SELECT count(*) FROM labels").fetchone()[0]
        stored = {r[0] for r in con.execute("SELECT transaction_id FROM scores").fetchall()}
    finally:
        con.close()
    stack.timed("warehouse rows read back", t)
    assert rows == distinct == len(tx_ids) and stored == set(tx_ids)  # one row per transaction id
    assert labels == LIVE_ROWS
    print(f"compose stack: {expected} transactions in ({len(tx_ids)} ids), {len(scores)} scores, {rows} warehouse rows, "
          f"{labels} labels, 0 lost, 0 duplicated; model version {version}", flush=True)


def _sink_rows(stack: Stack) -> float:
    m = stack.metrics("FRAUD_SINK_HOST_PORT")
    return sum(v for (name, labels), v in m.items() if name == "fraud_sink_rows_written_total"
               and ("table", "scores") in labels)
