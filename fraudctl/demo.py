"""`fraudctl demo run|stop|status`: the whole flow on embedded defaults, from a CSV file to live scores.

`demo run`:
 1. starts the embedded Kafka broker and creates the project's topics;
 2. splits the sample (or --file) in time order: the first part is history (ingested and trained on),
    the rest is held out and later replayed as live traffic;
 3. ingests the history CSV through Kafka Connect (FileStreamSource -> fraud.ingest.csv);
 4. runs the preprocessing job (validate, filter, anonymize) as a service and waits until it caught up;
 5. exports a training span from fraud.transactions and runs the TFX pipeline, which pushes a model;
 6. starts the model server, the bridge, the warehouse sink and the monitor as services;
 7. replays the held-out rows as live raw transactions (labels follow after a delay);
 8. waits until every live transaction is scored and its label is in, renders the reports, and prints
    where they are with headline numbers read from the same sources as the reports.

A re-run reuses what exists: running services are left alone, Connect sends only lines it has not
sent, an export with nothing new writes nothing, training is skipped when a model is already pushed
and no new span was exported, and the bridge continues from its committed offsets.
`demo stop` stops every service the demo started, in reverse order. Services are ordinary processes
with pid files and logs under FRAUD_HOME/run/<service>/.
"""

from __future__ import annotations

import argparse
import gzip
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fraud import spans, topics
from fraud.console import Console, quiet_output, timestamped_log
from fraud.dataset import count_rows
from fraud.embedded.broker import BrokerConfig, KafkaBroker, running_bootstrap
from fraud.embedded.connect import ConnectConfig, ConnectStandalone
from fraud.embedded.process import PythonService
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV, Paths, load_paths
from fraud.stream.admin import KafkaAdmin, ensure_topics
from kafka_bridge.config import DEFAULT_GROUP as BRIDGE_GROUP
from monitoring.report import load_snapshot
from pipeline.report import artifact_property, latest_run
from preprocessing.job import DEFAULT_GROUP as PREPROCESS_GROUP
from warehouse.config import SinkConfig
from warehouse.store import live_summary

MODEL_NAME = "fraud"

#: Loopback ports of the demo (the services' as in deploy/docker-compose.yml); --port-offset shifts them all.
PORTS = {"kafka": 9092, "controller": 9093, "connect": 8083, "grpc": 8500, "rest": 8501,
         "bridge": 9464, "preprocess": 9465, "sink": 9466, "monitor": 9467}


@dataclass(frozen=True)
class DemoConfig:
    paths: Paths
    source: Path = SAMPLE_CSV
    history_fraction: float = 0.6
    rate: float = 200.0  # live events per second
    label_delay_s: float = 5.0
    delivery: str = "exactly_once"
    wait_timeout_s: float = 600.0
    port_offset: int = 0

    def __post_init__(self) -> None:
        if not 0.1 <= self.history_fraction <= 0.95:
            raise FraudError(f"--history-fraction must be in [0.1, 0.95], got {self.history_fraction}")
        if self.rate < 0:
            raise FraudError(f"--rate must be >= 0, got {self.rate}")
        if not self.source.is_file():
            raise FraudError(f"no such file: {self.source}")
        if not 0 <= self.port_offset <= 50_000:
            raise FraudError(f"--port-offset must be in 0..50000, got {self.port_offset}")

    def port(self, name: str) -> int:
        return PORTS[name] + self.port_offset

    @property
    def demo_dir(self) -> Path:
        return self.paths.home / "demo"

    @property
    def history_csv(self) -> Path:
        return self.demo_dir / "history.csv"

    @property
    def key_file(self) -> Path:
        return self.demo_dir / "anonymize.key"

    @property
    def warehouse(self) -> Path:
        return self.paths.warehouse_dir / "fraud.duckdb"

    @property
    def logs_dir(self) -> Path:
        return self.demo_dir / "logs"


# ---------------------------------------------------------------------------------------------
# Small helpers


def _fraudctl(args: Sequence[str], logs_dir: Path, console: Console | None = None) -> str:
    """Runs `fraudctl ARGS` (same interpreter) and returns what it printed on stdout. Its stderr (library
    output, warnings) goes to `logs_dir/<command>.log`; with a console, its stdout lines are shown as they
    come, indented under the step that runs it."""
    cmd = [sys.executable, "-m", "fraudctl.cli", *args]
    log = logs_dir / ("-".join(a for a in args[:2] if not a.startswith("-")) + ".log")
    logs_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(log, "a") as err:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if console is not None and line.strip():
                    console.echo("    " + line.rstrip())
    if proc.returncode != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
        raise FraudError(f"`fraudctl {' '.join(args)}` failed (exit {proc.returncode}): {tail[0][:300]} (log: {log})")
    return "".join(lines)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(what: str, condition: Callable[[], bool], timeout_s: float, poll_s: float = 1.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise FraudError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Services


@dataclass(frozen=True)
class Service:
    name: str
    label: str
    args: tuple[str, ...]  # after `python -m`
    ready_url: str

    def handle(self, paths: Paths):
        return PythonService(self.name, self.label, paths.run_dir / self.name, self.args[0])

    def start(self, paths: Paths, timeout_s: float = 180.0) -> str:
        """Starts the service (FRAUD_HOME/FRAUD_CACHE are inherited, so it sees the same paths)."""
        svc = self.handle(paths)
        status = svc.status()
        if status.running:
            return f"already running (pid {status.pid})"
        if status.state == "stale":
            svc.stop()
        svc.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", *self.args]
        took = svc.launch(cmd, {"ready_url": self.ready_url}, lambda: _http_ok(self.ready_url), timeout_s=timeout_s)
        return f"started in {took:.1f} s (pid {svc.status().pid}, log {svc.out_file})"


def services(config: DemoConfig) -> list[Service]:
    paths = config.paths
    bootstrap = ("--bootstrap", _bootstrap(paths))
    preprocess = Service(
        "preprocess", "preprocessing job",
        ("fraudctl.cli", "preprocess", "run", "--key-file", str(config.key_file), "--delivery", config.delivery,
         "--http-port", str(config.port("preprocess")), *bootstrap),
        f"http://127.0.0.1:{config.port('preprocess')}/readyz")
    server = Service(
        "serving", "model server",
        ("serving", f"--port={config.port('grpc')}", f"--rest_api_port={config.port('rest')}", f"--model_name={MODEL_NAME}",
         f"--model_base_path={paths.serving_model_dir / MODEL_NAME}", "--file_system_poll_wait_seconds=2"),
        f"http://127.0.0.1:{config.port('rest')}/v1/models/{MODEL_NAME}")
    bridge = Service(
        "bridge", "bridge",
        ("fraudctl.cli", "bridge", "run", "--server", f"127.0.0.1:{config.port('grpc')}", "--delivery", config.delivery,
         "--http-port", str(config.port("bridge")), *bootstrap),
        f"http://127.0.0.1:{config.port('bridge')}/readyz")
    sink = Service(
        "sink", "warehouse sink",
        ("fraudctl.cli", "sink", "run", "--duckdb-path", str(config.warehouse),
         "--http-port", str(config.port("sink")), *bootstrap),
        f"http://127.0.0.1:{config.port('sink')}/healthz")
    monitor = Service(
        "monitor", "monitor",
        ("fraudctl.cli", "monitor", "run", "--http-port", str(config.port("monitor")), "--publish-interval-s", "5",
         *bootstrap),
        f"http://127.0.0.1:{config.port('monitor')}/healthz")
    return [preprocess, server, bridge, sink, monitor]


def _service(config: DemoConfig, name: str) -> Service:
    return next(s for s in services(config) if s.name == name)


def _bootstrap(paths: Paths) -> str:
    return running_bootstrap(paths.kafka_dir) or f"127.0.0.1:{PORTS['kafka']}"


# ---------------------------------------------------------------------------------------------
# Kafka progress


def _client(paths: Paths, client_id: str):
    return KafkaClientConfig(bootstrap_servers=(_bootstrap(paths),), client_id=client_id)


def caught_up(paths: Paths, group: str, topics: Sequence[str]) -> bool:
    """True when `group` has committed every committed record of `topics` (see KafkaAdmin.caught_up: end
    offsets alone are no measure under transactions)."""
    with KafkaAdmin(_client(paths, "fraud-demo")) as admin:
        return admin.caught_up(group, topics)


def commit_at_end(paths: Paths, group: str, topic: str) -> bool:
    """Commit `group` at the current end of `topic` if the group has no offsets yet (skip the history)."""
    with KafkaAdmin(_client(paths, "fraud-demo")) as admin:
        if admin.group_offsets(group, [topic]):
            return False
        admin.set_group_offsets(group, admin.end_offsets([topic]))
    return True


# ---------------------------------------------------------------------------------------------
# Steps


def split_source(config: DemoConfig) -> tuple[int, int]:
    """Writes the history CSV (header + the leading rows) once; returns (history rows, live rows).

    The split is made once: a re-run keeps the existing history file, so no row is both trained on and
    replayed as live traffic.
    """

    total = count_rows(config.source)
    if config.history_csv.exists():
        history = count_rows(config.history_csv)
        return history, total - history
    history = int(total * config.history_fraction)
    config.demo_dir.mkdir(parents=True, exist_ok=True)
    tmp = config.history_csv.with_suffix(".tmp")
    opener = gzip.open if config.source.suffix == ".gz" else open
    with opener(config.source, "rt") as src, open(tmp, "w") as out:
        for i, line in enumerate(src):
            if i > history:  # line 0 is the header
                break
            out.write(line)
    tmp.rename(config.history_csv)
    return history, total - history


def ensure_key(config: DemoConfig) -> None:
    """A random anonymization key for this installation's demo (0600), made once."""
    if config.key_file.exists():
        return
    config.demo_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")


def pushed_versions(paths: Paths) -> list[int]:
    base = paths.serving_model_dir / MODEL_NAME
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []


def run(config: DemoConfig, console: Console) -> int:
    paths = config.paths
    started = time.monotonic()
    logs = config.logs_dir

    with console.step("kafka") as step:
        broker = KafkaBroker(BrokerConfig(state_dir=paths.kafka_dir, jars_dir=paths.jars_dir,
                                          port=config.port("kafka"), controller_port=config.port("controller")))
        took = broker.start()
        step.detail("already running" if took is None else f"started at {broker.bootstrap}")
        results = ensure_topics(_client(paths, "fraud-demo"), topics.ALL_TOPICS)
        step.detail(f"{step.text}; {len(results)} topics ready")

    with console.step("data") as step:
        history, live = split_source(config)
        step.detail(f"{config.source.name}: {history} rows of history, {live} held out for live replay")

    with console.step("ingest"):
        _fraudctl(["ingest", "--file", str(config.history_csv), "--bootstrap", broker.bootstrap, "--no-progress",
                   "--rest-port", str(config.port("connect"))], logs, console)

    ensure_key(config)
    with console.step("preprocess") as step:
        if not _service(config, "preprocess").handle(paths).status().running:
            # The seed's users table, which the job joins transactions with (a compacted topic: re-writing
            # is idempotent).
            _fraudctl(["preprocess", "users", "--synthetic", "--bootstrap", broker.bootstrap], logs, console)
        step.detail(_service(config, "preprocess").start(paths))
    inputs = [topics.INGEST_CSV.name, topics.TRANSACTIONS_RAW.name]
    with console.step("preprocess history") as step:
        _wait("the preprocessing job to catch up", lambda: caught_up(paths, PREPROCESS_GROUP, inputs),
              config.wait_timeout_s)
        step.detail("caught up with the ingested history")

    with console.step("train") as step:
        if pushed_versions(paths):
            step.state = "reused"
            step.detail(f"reusing the pushed model versions {pushed_versions(paths)} "
                        "(`fraudctl export && fraudctl train` retrains on new data)")
        else:
            if not any(s.complete for s in spans.list_spans(paths.exports_dir)):
                _fraudctl(["export", "--bootstrap", broker.bootstrap], logs, console)
            _fraudctl(["train"], logs, console)
            step.detail(f"pushed versions {pushed_versions(paths)}")
    if not pushed_versions(paths):
        raise FraudError("the pipeline pushed no model (not blessed?); see `fraudctl report`")

    if commit_at_end(paths, BRIDGE_GROUP, topics.TRANSACTIONS.name):
        console.say("bridge", "first run: the bridge starts after the history (only live traffic is scored)")
    for name in ("serving", "bridge", "sink", "monitor"):
        with console.step(name) as step:
            detail = _service(config, name).start(paths)
            step.state = "running" if detail.startswith("already") else step.state
            step.detail(detail)

    with console.step("replay"):
        sample_rows = ["--file", str(config.source), "--start-row", str(history)]
        _fraudctl(["replay", *sample_rows, "--rate", str(config.rate), "--label-delay", str(config.label_delay_s),
                   "--bootstrap", broker.bootstrap], logs, console)

    with console.step("score live traffic") as step:
        for what, group, names in (
            ("the preprocessing job", PREPROCESS_GROUP, inputs),
            ("the bridge", BRIDGE_GROUP, [topics.TRANSACTIONS.name]),
            ("the warehouse sink", SinkConfig.group_id, [topics.SCORES.name, topics.LABELS.name]),
        ):
            step.detail(f"waiting for {what}")
            _wait(what, lambda g=group, n=names: caught_up(paths, g, n), config.wait_timeout_s)
        step.detail("waiting for the monitor's next snapshot")
        time.sleep(6)  # one monitor publish interval (it keeps no group offsets): its snapshot holds the last window
        step.detail("all live transactions scored and their labels stored")

    with console.step("reports"):
        summary = summarize(config)
    console.echo(summary)
    console.say("done", f"in {time.monotonic() - started:.0f} s; `fraudctl demo stop` stops everything")
    return 0


def summarize(config: DemoConfig) -> str:
    """Renders both reports, stops the sink (so the warehouse file can be opened), prints headline numbers."""
    paths = config.paths
    pipeline_report = _fraudctl(["report"], config.logs_dir).strip().splitlines()[-1]
    monitor_report = _fraudctl(["monitor", "report"], config.logs_dir).strip().splitlines()[-1]
    monitor_report = monitor_report.removeprefix("monitor report: ")
    _service(config, "sink").handle(paths).stop()

    live = live_summary(config.warehouse)
    versions = ",".join(str(v) for v in live.model_versions)
    return "\n".join([
        "",
        "=== fraud detection demo ===",
        f"pipeline report : {pipeline_report}",
        *model_lines(paths),
        f"monitor report  : {monitor_report}",
        monitor_line(paths),
        f"warehouse       : {config.warehouse} (tables scores, labels; the sink was stopped so you can open it)",
        f"live stream     : {live.scored} transactions scored by model versions {versions}, {live.alerts} alerts",
        f"labelled        : {live.labelled}; at the shipped threshold precision {live.precision:.3f}, "
        f"recall {live.recall:.3f} ({live.true_positives} frauds caught, {live.false_negatives} missed, "
        f"{live.false_positives} false alerts)",
        "",
    ])


def model_lines(paths: Paths) -> list[str]:
    """Every candidate's eval figures, the one chosen on validation, the Evaluator's verdict and what was
    pushed in the latest pipeline run (as `fraudctl report` shows)."""
    from components.scorecard import read_scorecard  # imports TFX: only when there is a run to summarize

    record = latest_run(paths.metadata_path)
    lines = []
    cards = record.outputs.get("ModelScorecard", {}).get("scorecard", [])
    if cards:
        for kind, c in sorted(read_scorecard(cards[0].uri)["models"].items()):
            nan = float("nan")
            lines.append(f"  {kind:<12} eval AUPRC {c.get('auprc') or nan:.3f} "
                         f"[{c.get('auprc_low') or nan:.3f}, {c.get('auprc_high') or nan:.3f}], ROC-AUC "
                         f"{c.get('roc_auc') or nan:.3f}, recall@1%FPR {c.get('recall_at_1pct_fpr') or nan:.3f}; "
                         f"validation AUPRC {c.get('validation_auprc') or nan:.3f} ({c.get('rows')} eval rows)")
    selected = record.outputs.get("ModelSelector", {}).get("model", [])
    verdict = record.outputs.get("Evaluator", {}).get("blessing", [])
    pushed = record.outputs.get("Pusher", {}).get("pushed_model", [])
    choice = (f"selected {artifact_property(selected[0], 'selected_model')} on validation" if selected
              else "no selection")
    if verdict:
        choice += ", blessed" if artifact_property(verdict[0], "blessed") else ", not blessed"
    if pushed and artifact_property(pushed[0], "pushed"):
        choice += f", pushed as version {artifact_property(pushed[0], 'pushed_version')}"
    return [f"models          : {choice} (run {record.run_id})", *lines]


def monitor_line(paths: Paths) -> str:
    """The alerts in the monitor's snapshot (what `fraudctl monitor report` renders)."""
    from collections import Counter


    if not paths.monitor_snapshot.exists():
        return "monitor         : no snapshot yet"
    alerts = load_snapshot(paths.monitor_snapshot).get("alerts", [])
    kinds = Counter(a.get("kind", "?") for a in alerts)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    return f"monitor alerts  : {len(alerts)} ({detail})"


def stop(paths: Paths, console: Console) -> int:
    config = DemoConfig(paths=paths)
    for svc in reversed(services(config)):
        console.say(svc.name, svc.handle(paths).stop())
    console.say("connect", ConnectStandalone(ConnectConfig(state_dir=paths.connect_dir, jars_dir=paths.jars_dir)).stop())
    console.say("kafka", KafkaBroker(BrokerConfig(state_dir=paths.kafka_dir, jars_dir=paths.jars_dir)).stop())
    return 0


def status(paths: Paths, console: Console) -> int:
    broker = KafkaBroker(BrokerConfig(state_dir=paths.kafka_dir, jars_dir=paths.jars_dir)).status()
    console.say("kafka", broker.detail or "stopped")
    for svc in services(DemoConfig(paths=paths)):
        console.say(svc.name, svc.handle(paths).status().detail or "stopped")
    return 0


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="the whole flow on embedded defaults (make demo)",
                                 description=__doc__.split("\n\n")[0])
    sub = demo.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    run_p = sub.add_parser("run", help="ingest, preprocess, train, serve, score live traffic, report")
    run_p.add_argument("--file", type=Path, default=SAMPLE_CSV, help="dataset CSV (default: the shipped sample)")
    run_p.add_argument("--history-fraction", type=float, default=0.6,
                       help="leading share of rows ingested and trained on; the rest is replayed live (default 0.6)")
    run_p.add_argument("--rate", type=float, default=200.0, help="live events per second (0: as fast as possible)")
    run_p.add_argument("--label-delay", type=float, default=5.0, help="seconds until a transaction's label arrives")
    run_p.add_argument("--delivery", choices=("exactly_once", "at_least_once"), default="exactly_once")
    run_p.add_argument("--port-offset", type=int, default=0,
                       help="add this to every port the demo uses (Kafka 9092, Connect 8083, gRPC 8500, ...), "
                            "e.g. to run beside another broker")
    run_p.set_defaults(func=_run)
    sub.add_parser("stop", help="stop every service the demo started").set_defaults(
        func=lambda a: stop(load_paths(), Console(sys.stdout)))
    sub.add_parser("status", help="which demo services run").set_defaults(
        func=lambda a: status(load_paths(), Console(sys.stdout)))


def _run(args: argparse.Namespace) -> int:
    config = DemoConfig(paths=load_paths(), source=args.file.resolve(), history_fraction=args.history_fraction,
                        rate=args.rate, label_delay_s=args.label_delay, delivery=args.delivery,
                        port_offset=args.port_offset)
    log = timestamped_log(config.logs_dir, "demo")
    try:
        with quiet_output(log, verbose=getattr(args, "verbose", False)) as console:
            return run(config, console)
    finally:
        print(f"library output: {config.logs_dir}/", flush=True)
