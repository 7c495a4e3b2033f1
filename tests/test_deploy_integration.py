"""The containers' commands, run here without Docker: each project service of deploy/docker-compose.yml is
started with the compose file's own command line and environment (only what cannot exist on this machine is
replaced: the Kafka address, the model server address, the HTTP port, FRAUD_HOME and the secret file)
against a real Kafka broker, and the images' health check (deploy/docker/healthcheck.py, what the compose
healthchecks run) must pass; /healthz and /metrics must answer; SIGTERM must stop it cleanly. The services
image's processes run under an import guard that hides every package outside deploy/requirements-services.lock.
The model server runs from its compose command on a model with the project's signature. The Kafka image's
entrypoint renders the compose broker's environment, and that configuration starts a real broker. The
tensorflow/serving override's readiness command runs against a TF Serving-compatible server (the
project's, or a real tensorflow/serving named by FRAUD_SERVING_* as in tests/conftest.py).

tests/test_compose_stack.py (slow) runs the same stack in Docker.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import deploy_helpers as h
import pytest

from fraud.embedded.testing import EmbeddedKafka, temporary_broker
from fraud.topics import ALL_TOPICS

pytestmark = pytest.mark.integration

SERVICES = h.load_compose()["services"]
SERVICES_LOCK = h.lock_names(h.SERVICES_LOCK)


@pytest.fixture(scope="module")
def deploy_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A broker of its own: `fraudctl topics` creates the project's real topic names, which the shared
    session broker's tests must not see."""
    with temporary_broker(tmp_path_factory.mktemp("deploy-kafka")) as kafka:
        yield kafka


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_env(name: str, home: Path, bootstrap: str, port: int | None, **extra: str) -> dict[str, str]:
    """The compose service's environment with the machine-specific values replaced."""
    env = h.compose_env(SERVICES[name])
    local = {}
    for key, value in env.items():
        value = value.replace(h.CONTAINER_HOME, str(home))
        if key == "FRAUD_KAFKA_BOOTSTRAP":
            value = bootstrap
        if key.endswith("_HTTP_PORT") and port is not None:
            value = str(port)
        if key == "FRAUD_ANONYMIZE_KEY_FILE":
            key_file = home / "anonymize.key"
            key_file.write_text("a-test-key-of-enough-bytes-0123456789\n")
            value = str(key_file)
        local[key] = value
    local.update(extra)
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    return {**base, **local}


def _healthcheck(name: str) -> list[str]:
    """The service's healthcheck command, run with this Python (the script is the image's fraud-healthcheck)."""
    argv = h.healthcheck_argv(SERVICES[name])
    assert argv[0] == "fraud-healthcheck"
    return [sys.executable, str(h.HEALTHCHECK_SCRIPT), *argv[1:]]


def _start(name: str, env: dict[str, str], guarded: bool, log: Path) -> subprocess.Popen:
    argv = h.compose_argv(SERVICES[name])
    assert argv[0] == "fraudctl"
    out = log.open("wb")
    if guarded:
        return h.guarded_fraudctl(argv[1:], SERVICES_LOCK, env, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.Popen([sys.executable, "-m", "fraudctl.cli", *argv[1:]], env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    return proc.returncode


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _run_topics(kafka: EmbeddedKafka, home: Path) -> str:
    env = _local_env("topics", home, kafka.bootstrap, None)
    argv = h.compose_argv(SERVICES["topics"])
    proc = h.guarded_fraudctl(argv[1:], SERVICES_LOCK, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def deploy_topics(deploy_kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The compose `topics` one-shot, run once against the module's broker: its output."""
    return _run_topics(deploy_kafka, tmp_path_factory.mktemp("topics"))


def test_topics_init_creates_every_project_topic(deploy_kafka: EmbeddedKafka, deploy_topics: str,
                                                 tmp_path: Path) -> None:
    rows = {line.split()[0]: line.split()[-1] for line in deploy_topics.splitlines() if line.strip()}
    assert rows == {spec.name: "created" for spec in ALL_TOPICS}, deploy_topics
    # Idempotent: the one-shot container runs again on every `docker compose up`.
    again = _run_topics(deploy_kafka, tmp_path)
    assert {line.split()[-1] for line in again.splitlines() if line.strip()} == {"exists"}, again


@pytest.mark.parametrize("name", ["preprocessing", "bridge", "sink", "monitor"])
def test_service_runs_from_compose_settings_and_passes_its_healthcheck(
        name: str, deploy_kafka: EmbeddedKafka, deploy_topics: str, tmp_path: Path) -> None:
    h_env = {}
    if name == "bridge":
        # Any reachable gRPC address: the bridge only calls it for records, and there are none.
        h_env["FRAUD_BRIDGE_SERVER"] = f"127.0.0.1:{_free_port()}"
    if name == "monitor":
        # No pipeline has run here, so there are no training statistics to check drift against.
        h_env["FRAUD_MONITOR_DRIFT"] = "0"
    port = _free_port()
    env = _local_env(name, tmp_path, deploy_kafka.bootstrap, port, **h_env)
    guarded = "fraud-tfx-services" in SERVICES[name]["image"]
    log = tmp_path / f"{name}.log"
    proc = _start(name, env, guarded, log)
    try:
        check = _healthcheck(name)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            done = subprocess.run(check, capture_output=True, timeout=30, env=env)
            if done.returncode == 0:
                break
            assert time.monotonic() < deadline, f"{name} never passed its healthcheck:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and b'"status":"ok"' in body.replace(b" ", b"")
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"# HELP" in body
        assert _get(f"http://127.0.0.1:{port}/nothing-here")[0] == 404
    finally:
        code = _stop(proc)
    assert code == 0, f"{name} did not stop cleanly on SIGTERM ({code}):\n{log.read_text()[-3000:]}"
    if name == "sink":
        assert (tmp_path / "warehouse" / "fraud.duckdb").is_file()  # FRAUD_SINK_DUCKDB_PATH, under FRAUD_HOME


def test_service_healthcheck_fails_when_nothing_listens() -> None:
    """The healthcheck can fail: nothing on the service's port -> non-zero, with the reason."""
    env = {"PATH": os.environ["PATH"], "FRAUD_BRIDGE_HTTP_PORT": str(_free_port())}
    done = subprocess.run(_healthcheck("bridge"), capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 1 and "unhealthy:" in done.stderr and "/readyz" in done.stderr
    # A container that runs no HTTP service (the topics one-shot, `fraudctl --help`) is healthy.
    done = subprocess.run(_healthcheck("bridge"), capture_output=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0


def test_kafka_healthcheck_asks_the_broker(deploy_kafka: EmbeddedKafka) -> None:
    """The Kafka image's health check (an ApiVersions request) passes on a broker, fails where none is, and
    fails on something that is not Kafka."""
    argv = [sys.executable, str(h.HEALTHCHECK_SCRIPT), "kafka"]
    ok = subprocess.run([*argv, deploy_kafka.bootstrap], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    closed = subprocess.run([*argv, f"127.0.0.1:{_free_port()}"], capture_output=True, text=True, timeout=30)
    assert closed.returncode == 1 and "refused" in closed.stderr
    import http.server
    import threading

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    try:
        other = subprocess.run([*argv, f"127.0.0.1:{httpd.server_port}"], capture_output=True, text=True, timeout=30)
    finally:
        httpd.server_close()
    assert other.returncode == 1, other.stderr


def test_model_server_runs_from_compose_settings_and_passes_its_healthcheck(tmp_path: Path) -> None:
    """The compose model server (`fraudctl serve` with TF Serving's flags, from the pipeline image) on a model
    with the project's signature under the Pusher's layout: AVAILABLE by its healthcheck, Prometheus
    metrics on its REST port, and a new version pushed later is picked up."""
    from bridge_helpers import save_model

    service = SERVICES["model-server"]
    home = tmp_path / "home"
    base = home / "serving" / "models" / "fraud"
    save_model(base, version=1)
    grpc_port, rest_port = _free_port(), _free_port()
    argv = []
    for arg in h.compose_argv(service):
        flag, _, value = arg.partition("=")
        value = value.replace(h.CONTAINER_HOME, str(home))
        if flag == "--monitoring_config_file":
            value = str(h.DEPLOY / "compose" / "model-server" / Path(value).name)
        value = {"--port": str(grpc_port), "--rest_api_port": str(rest_port),
                 "--file_system_poll_wait_seconds": "1"}.get(flag, value)
        argv.append(f"{flag}={value}" if value else arg)
    assert argv[:2] == ["fraudctl", "serve"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")},
           **{k: v.replace(h.CONTAINER_HOME, str(home)) for k, v in h.compose_env(service).items()}}
    log = tmp_path / "model-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fraudctl.cli", *argv[1:]], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    check = [sys.executable, str(h.HEALTHCHECK_SCRIPT),
             *[a.replace(":8501/", f":{rest_port}/") for a in h.healthcheck_argv(service)[1:]]]
    try:
        def wait_for(version: int) -> None:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                done = subprocess.run(check, capture_output=True, text=True, timeout=30)
                body = _get(f"http://127.0.0.1:{rest_port}/v1/models/fraud")[1] if done.returncode == 0 else b""
                if f'"version":"{version}"' in body.decode().replace(" ", ""):
                    return
                assert time.monotonic() < deadline, f"version {version} never AVAILABLE: {done.stderr}\n{body[:500]}"
                time.sleep(0.5)

        wait_for(1)
        status, body = _get(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics")
        assert status == 200 and b":tensorflow:serving:" in body, body[:500]
        save_model(base, version=2)  # what the Pusher does; the server polls the base path
        wait_for(2)
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()[-3000:]


def test_tf_serving_readiness_command_waits_for_an_available_version(model_server) -> None:
    """The bash /dev/tcp check of the tensorflow/serving compose override and the Kubernetes readiness probe,
    run against a TF Serving-compatible REST API: passes for a model with an AVAILABLE version, fails otherwise."""
    import yaml

    override = yaml.safe_load((h.DEPLOY / "compose" / "tf-serving.yml").read_text())["services"]["model-server"]
    argv = h.healthcheck_argv(override)
    port = model_server.rest.rsplit(":", 1)[1]
    argv = [a.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}") for a in argv]
    assert any(f"/{port}" in a for a in argv)
    env = {"PATH": os.environ["PATH"]}
    ok = subprocess.run(argv, env={**env, "MODEL_NAME": "examples"}, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(argv, env={**env, "MODEL_NAME": "no-such-model"}, capture_output=True, timeout=30)
    assert missing.returncode != 0
    closed = [a.replace(f"/dev/tcp/127.0.0.1/{port}", f"/dev/tcp/127.0.0.1/{_free_port()}") for a in argv]
    assert subprocess.run(closed, env={**env, "MODEL_NAME": "examples"}, capture_output=True, timeout=30).returncode != 0


def _image_properties(env: dict[str, str]) -> dict[str, str]:
    """server.properties as the apache/kafka image renders them from KAFKA_* variables
    (docker/resources/common-scripts: prefix dropped, '___' -> '-', '__' -> '_', '_' -> '.', lower case)."""
    excluded = {"KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
                "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL", "KAFKA_LOG4J_LOGGERS",
                "KAFKA_TOOLS_LOG4J_LOGLEVEL"}
    props = {}
    for key, value in env.items():
        if key.startswith("KAFKA_") and key not in excluded:
            name = key[len("KAFKA_"):].replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")
            props[name.lower()] = value
    return props


def _rendered_by_image_entrypoint(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """server.properties as deploy/docker/kafka/run writes it from `env`, with KAFKA_HOME in `tmp_path`."""
    home = tmp_path / "kafka-home"
    (home / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        stub = home / "bin" / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        stub.chmod(0o755)
    full = {"PATH": os.environ["PATH"], "KAFKA_HOME": str(home), **env,
            "KAFKA_LOG_DIRS": str(tmp_path / "stub-data")}
    done = subprocess.run(["bash", str(h.DEPLOY / "docker" / "kafka" / "run")], env=full, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    props_file = home / "config" / "run" / "server.properties"
    lines = calls.read_text().splitlines()
    assert lines == [f"kafka-storage.sh format --cluster-id {env['CLUSTER_ID']} --config {props_file} --ignore-formatted",
                     f"kafka-server-start.sh {props_file}"]
    rendered = dict(line.split("=", 1) for line in props_file.read_text().splitlines() if not line.startswith("#"))
    assert rendered.pop("log.dirs") == str(tmp_path / "stub-data")
    rendered["log.dirs"] = env["KAFKA_LOG_DIRS"]
    return rendered


def test_compose_kafka_settings_make_a_working_broker(tmp_path: Path) -> None:
    """The compose broker's environment, rendered as the image renders it, formats (with its CLUSTER_ID) and
    starts a real Kafka 4.1.1 broker+controller here; the compose `topics` one-shot then creates every topic
    through the listener the services use. Only host names and ports are moved to free loopback ports."""
    from fraud.embedded import jars
    from fraud.embedded.broker import MAIN_CLASS, STORAGE_TOOL, write_properties
    from fraud.paths import load_paths

    env = h.compose_env(SERVICES["kafka"])
    ports = {p: _free_port() for p in ("9092", "9093", "9094")}

    def local(value: str) -> str:
        value = re.sub(r"(?<=//)(?=:)", "127.0.0.1", value)  # ':9092' listeners bind to loopback here
        value = value.replace("@kafka:", "@127.0.0.1:").replace("//kafka:", "//127.0.0.1:")
        return re.sub(r":(909[234])\b", lambda m: f":{ports[m.group(1)]}", value)

    props = {k: local(v) for k, v in _image_properties(env).items()}
    # The Kafka image's entrypoint renders exactly these (its storage and start scripts replaced by stubs
    # that record their arguments: only the rendering is checked here, the broker starts below).
    assert _rendered_by_image_entrypoint(env, tmp_path) == _image_properties(env)
    assert props["log.dirs"] == "/var/lib/kafka/data"  # the image's VOLUME
    props["log.dirs"] = str(tmp_path / "data")
    properties = tmp_path / "server.properties"
    write_properties(properties, props, "rendered from deploy/docker-compose.yml's kafka environment")
    jars_dir = jars.ensure_jars(load_paths().jars_dir)
    jars.run_tool(jars_dir, STORAGE_TOOL, ["format", "-t", env["CLUSTER_ID"], "-c", str(properties)])
    log = (tmp_path / "kafka.out").open("wb")
    broker = subprocess.Popen(jars.java_command(jars_dir, MAIN_CLASS, [str(properties)], heap="512m",
                                                jvm_opts=("-XX:TieredStopAtLevel=1",)),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        bootstrap = f"127.0.0.1:{ports['9092']}"  # kafka:9092, what every service is given
        deadline = time.monotonic() + 120
        while True:
            assert broker.poll() is None, (tmp_path / "kafka.out").read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", ports["9092"])) == 0:
                    break
            assert time.monotonic() < deadline, "the broker never listened"
            time.sleep(0.5)
        rendered = _local_env("topics", tmp_path, bootstrap, None)
        proc = h.guarded_fraudctl(h.compose_argv(SERVICES["topics"])[1:], SERVICES_LOCK, rendered,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert {line.split()[0] for line in out.splitlines() if line.strip()} == {t.name for t in ALL_TOPICS}
        # The host listener (127.0.0.1:9094 in compose) answers too.
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{ports['9094']}", request_timeout_ms=10_000)
        try:
            assert {t.name for t in ALL_TOPICS} <= set(admin.list_topics())
        finally:
            admin.close()
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=10)
        log.close()
