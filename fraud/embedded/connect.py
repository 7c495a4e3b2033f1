"""Kafka Connect standalone (Kafka 4.1.1, from the same Maven jars) on 127.0.0.1, and its REST API.

State directory layout:
    worker.properties   written from ConnectConfig at every start
    connect.offsets     source offsets (FileStreamSource remembers how far it read a file)
    connect.pid, connect.json, logs/connect.log, logs/connect.out

Connectors come from properties (or JSON) files given at start, or are created over the REST API
(`create_connector`, PUT /connectors/<name>/config, which standalone mode accepts). Standalone mode keeps
connector configs in memory only: after a restart, connectors created over REST are gone (their source
offsets are not) and must be created again; files given at start are read again at every start.
Plugins are found on the classpath by their service manifests (connect-file ships FileStreamSource/Sink).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud.embedded import jars
from fraud.embedded.broker import _HEAP_RE, write_properties
from fraud.embedded.process import JvmService, ServiceStatus, tcp_accepts
from fraud.errors import FraudError

MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectStandalone"
DEFAULT_REST_PORT = 8083
STRING_CONVERTER = "org.apache.kafka.connect.storage.StringConverter"
FILE_STREAM_SOURCE = "org.apache.kafka.connect.file.FileStreamSourceConnector"
FILE_STREAM_SINK = "org.apache.kafka.connect.file.FileStreamSinkConnector"


@dataclass(frozen=True)
class ConnectConfig:
    state_dir: Path
    jars_dir: Path
    bootstrap: str = "127.0.0.1:9092"
    host: str = "127.0.0.1"
    rest_port: int = DEFAULT_REST_PORT
    heap: str = "256m"
    key_converter: str = STRING_CONVERTER
    value_converter: str = STRING_CONVERTER
    #: How often source offsets are written to connect.offsets (upstream default 60 s).
    offset_flush_interval_ms: int = 10_000
    #: Extra worker.properties entries (they win), e.g. producer.security.protocol for a secured broker.
    overrides: Mapping[str, str] = field(default_factory=dict)
    jvm_opts: tuple[str, ...] = ()
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.rest_port < 65536:
            raise FraudError(f"rest-port must be in 1..65535, got {self.rest_port}")
        if not _HEAP_RE.match(self.heap):
            raise FraudError(f"heap must look like 256m or 1g, got {self.heap!r}")

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def worker_properties(self) -> dict[str, str]:
        props = {
            "bootstrap.servers": self.bootstrap,
            "key.converter": self.key_converter,
            "value.converter": self.value_converter,
            "offset.storage.file.filename": str(self.state_dir / "connect.offsets"),
            "offset.flush.interval.ms": str(self.offset_flush_interval_ms),
            "listeners": f"http://{self.host}:{self.rest_port}",
            "rest.advertised.host.name": self.host,
            "rest.advertised.port": str(self.rest_port),
            # Plugins sit on the classpath with ServiceLoader manifests: no reflective scan of every jar.
            "plugin.discovery": "service_load",
        }
        props.update(self.overrides)
        return props


class ConnectStandalone:
    """Start, stop and inspect the Connect worker of one state directory; manage connectors over REST."""

    def __init__(self, config: ConnectConfig) -> None:
        self.config = config
        self._service = JvmService("connect", "Kafka Connect worker", config.state_dir, MAIN_CLASS)

    @property
    def rest_url(self) -> str:
        """The running worker's REST address (from its run record), else the configured one."""
        info = self.status().info or {}
        return info.get("rest_url", self.config.rest_url)

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def properties_file(self) -> Path:
        return self.config.state_dir / "worker.properties"

    @property
    def offsets_file(self) -> Path:
        return self.config.state_dir / "connect.offsets"

    @property
    def log_file(self) -> Path:
        return self._service.log_file

    def status(self) -> ServiceStatus:
        return self._service.status()

    def is_running(self) -> bool:
        return self.status().running

    def start(self, connector_files: Sequence[Path] = (), *, die_with_parent: bool = False) -> float | None:
        """Start the worker (with connectors from `connector_files`) and wait until its REST API answers.

        Returns the seconds it took, or None if it was already running (a no-op; the files are then not
        read: create connectors with `create_connector`).
        """
        cfg = self.config
        with self._service.start_lock():
            status = self.status()
            if status.running:
                return None
            if status.state != "stopped":
                raise self._service.stale_error(status, f"fraudctl connect stop --state-dir {cfg.state_dir}")
            files = [Path(f).resolve() for f in connector_files]
            for path in files:
                if not path.is_file():
                    raise FraudError(f"connector config {path} does not exist")
            self._service.check_ports_free({"REST": (cfg.host, cfg.rest_port)}, {"REST": "--rest-port"})
            host, _, port = cfg.bootstrap.split(",")[0].rpartition(":")
            if not tcp_accepts(host, int(port), timeout_s=2.0):
                raise FraudError(f"no Kafka broker answers at {cfg.bootstrap}; start one with `fraudctl kafka start`")
            jars.ensure_jars(cfg.jars_dir)
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            write_properties(self.properties_file, cfg.worker_properties(), "written by fraud.embedded.connect at every start")
            cmd = jars.java_command(
                cfg.jars_dir,
                MAIN_CLASS,
                [str(self.properties_file), *map(str, files)],
                heap=cfg.heap,
                logs_dir=self._service.logs_dir,
                log_name="connect",
                jvm_opts=cfg.jvm_opts,
            )
            info = {"rest_url": cfg.rest_url, "rest_port": cfg.rest_port, "bootstrap": cfg.bootstrap,
                    "connector_files": [str(f) for f in files]}
            return self._service.launch(
                cmd, info, self._ready, timeout_s=cfg.start_timeout_s, die_with_parent=die_with_parent
            )

    def _ready(self) -> bool:
        if not tcp_accepts(self.config.host, self.config.rest_port):
            return False
        # /connectors answers only once the herder runs (connectors from files are created before that).
        self._request("GET", "/connectors", timeout_s=5.0)
        return True

    def stop(self) -> str:
        return self._service.stop(self.config.stop_timeout_s)

    def log_summary(self) -> str:
        return self._service.log_summary()

    # -- REST API --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.rest_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", "")
            except ValueError:
                message = ""
            raise FraudError(f"Kafka Connect {method} {path}: HTTP {exc.code} {message}".rstrip()) from exc
        except OSError as exc:
            raise FraudError(f"Kafka Connect at {self.rest_url} not reachable: {exc}") from exc
        return json.loads(raw) if raw else None

    def request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 30.0) -> Any:
        """Any other call of the worker's REST API, e.g. KIP-875's GET /connectors/<name>/offsets or POST
        /connectors with an initial state (KIP-980); the JSON answer, or FraudError."""
        return self._request(method, path, body, timeout_s=timeout_s)

    def connectors(self) -> list[str]:
        return sorted(self._request("GET", "/connectors"))

    def create_connector(self, name: str, config: Mapping[str, str]) -> dict:
        """Create (or update) a connector; standalone mode keeps it until the worker stops."""
        body = {str(k): str(v) for k, v in config.items()}
        body["name"] = name
        return self._request("PUT", f"/connectors/{name}/config", body)

    def connector_status(self, name: str) -> dict:
        """GET /connectors/<name>/status: {"connector": {"state": ...}, "tasks": [{"state": ...}, ...]}."""
        return self._request("GET", f"/connectors/{name}/status")

    def delete_connector(self, name: str) -> None:
        self._request("DELETE", f"/connectors/{name}")

    def wait_running(self, name: str, timeout_s: float = 30.0) -> dict:
        """Wait until the connector and all its tasks are RUNNING; FraudError with the trace if one FAILED."""
        import time

        deadline = time.monotonic() + timeout_s
        status: dict = {}
        while time.monotonic() < deadline:
            try:
                status = self.connector_status(name)
            except FraudError:
                status = {}
            states = [status.get("connector", {}).get("state")] + [t.get("state") for t in status.get("tasks", [])]
            if "FAILED" in states:
                failed = [status.get("connector", {})] + status.get("tasks", [])
                trace = next((s.get("trace", "") for s in failed if s.get("state") == "FAILED"), "")
                raise FraudError(f"connector {name} FAILED: {trace.splitlines()[0] if trace else 'no trace'}")
            if status.get("tasks") and all(s == "RUNNING" for s in states):
                return status
            time.sleep(0.25)
        raise FraudError(f"connector {name} not RUNNING after {timeout_s:.0f} s (last status: {status})")


def file_source_config(path: Path, topic: str, *, batch_size: int = 2000) -> dict[str, str]:
    """Connector config for FileStreamSource: every line of `path` becomes one record of `topic`."""
    return {
        "connector.class": FILE_STREAM_SOURCE,
        "tasks.max": "1",
        "file": str(Path(path).resolve()),
        "topic": topic,
        "batch.size": str(batch_size),
    }
