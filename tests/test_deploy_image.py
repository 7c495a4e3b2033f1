"""The images, built and run with Docker (slow: a few minutes when `make images` is current, plus one TFX
pipeline run, about 6-13 minutes here).

scripts/install-docker.sh and scripts/images.sh run first (no-ops when all is there and current). Then,
from inside the images: each Python image holds exactly its pinned lock (and the project), `pip check`
passes there, the images run as uid 10001 with their health checks; and the pipeline image trains on a
data directory mounted from the host and pushes into a mounted model directory, while a model server
container, serving an older version from that directory, picks the new one up.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import deploy_helpers as h
import pytest

pytestmark = pytest.mark.slow

TAG = "0.1.0"


def _docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args[:3])} ...: {done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGE_TAG", "REGISTRY")}
    for script, timeout in (("install-docker.sh", 1800), ("images.sh", 3600)):
        done = subprocess.run([str(h.ROOT / "scripts" / script)], env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"scripts/{script}:\n{done.stderr[-4000:]}"
        print(done.stderr, flush=True)
    yield {name: f"fraud-tfx-{name}:{TAG}" for name in h.DOCKERFILES}


def _norm(pin: str) -> str:
    name, _, version = pin.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


@pytest.mark.parametrize("name,lock", [("services", h.SERVICES_LOCK), ("pipeline", h.PIPELINE_LOCK)])
def test_python_images_hold_exactly_their_lock(images: dict[str, str], name: str, lock: Path) -> None:
    frozen = _docker("run", "--rm", "--entrypoint", "python", images[name], "-m", "pip", "list", "--format=freeze",
                     "--exclude", "pip", "--exclude", "setuptools").stdout.split()
    if name == "pipeline":  # setuptools is a pin of that lock (pip's own copy is excluded above)
        frozen.append(f"setuptools=={_docker('run', '--rm', '--entrypoint', 'python', images[name], '-c', 'import setuptools; print(setuptools.__version__)').stdout.strip()}")
    wanted = sorted(_norm(ln) for ln in lock.read_text().splitlines() if ln and not ln.startswith("#"))
    have = sorted(_norm(f) for f in frozen if not _norm(f).startswith("fraud-tfx=="))
    assert have == wanted, {"extra": sorted(set(have) - set(wanted)), "missing": sorted(set(wanted) - set(have))}
    assert any(_norm(f) == "fraud-tfx==0.1.0" for f in frozen)
    check = _docker("run", "--rm", "--entrypoint", "python", images[name], "-m", "pip", "check", check=False)
    problems = []
    for line in check.stdout.splitlines():
        if not line.strip() or line.startswith("apache-beam 2.74.0 has requirement envoy-data-plane"):
            continue  # known and accepted: see tests/test_environment.py
        missing = re.fullmatch(r"fraud-tfx 0\.1\.0 requires ([\w.-]+), which is not installed\.", line)
        if name == "services" and missing and _norm(missing.group(1) + "==").split("==")[0] not in \
                {_norm(p).split("==")[0] for p in lock.read_text().splitlines() if "==" in p}:
            continue  # setup.py lists the whole stack; the services image leaves TensorFlow & co. out on purpose
        problems.append(line)
    assert not problems, problems


@pytest.mark.parametrize("name", ["kafka", "services", "pipeline"])
def test_images_run_as_uid_10001_with_a_health_check(images: dict[str, str], name: str) -> None:
    inspect = json.loads(_docker("image", "inspect", images[name]).stdout)[0]["Config"]
    assert inspect["User"] == "10001:10001"
    assert inspect["Healthcheck"]["Test"][:2] == ["CMD", "fraud-healthcheck"]
    uid = _docker("run", "--rm", "--entrypoint", "id", images[name], "-u").stdout.strip()
    assert uid == "10001"
    size = int(_docker("image", "inspect", "-f", "{{.Size}}", images[name]).stdout)
    print(f"{images[name]}: {size / 1e6:.0f} MB", flush=True)
    if name == "kafka":
        out = _docker("run", "--rm", images[name], "/opt/kafka/bin/kafka-storage.sh", "random-uuid").stdout
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", out.strip()), out
    else:
        assert "usage: fraudctl" in _docker("run", "--rm", images[name]).stdout  # ENTRYPOINT fraudctl, CMD --help
        assert _docker("run", "--rm", images[name], "preprocess", "check-rules").stdout.startswith("ok:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_status(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, urllib.error.HTTPError, ValueError):
        return {}


def test_pipeline_image_trains_on_mounted_dirs_and_the_server_container_picks_the_version_up(
        images: dict[str, str], tmp_path: Path) -> None:
    """`docker run fraud-tfx-pipeline train` with the exports mounted read-only and the model directory
    mounted read-write; a model server container (`fraudctl serve` from the same image, the directory
    mounted read-only) that serves version 1 switches to the pushed version 2."""
    from dataclasses import replace

    from bridge_helpers import save_model

    from fraud.dataset import iter_rows
    from fraud.paths import SAMPLE_CSV
    from fraud.replay import CardPool, transaction_event
    from fraud.topics import TRANSACTIONS
    from pipeline.export import write_span

    exports, models, pipeline_root = tmp_path / "exports", tmp_path / "models", tmp_path / "tfx"
    cards = CardPool()
    records = ((i % 2, i // 2, replace(transaction_event(row, cards), label=row.label))
               for i, row in enumerate(iter_rows(SAMPLE_CSV)))
    write_span(exports, 1, TRANSACTIONS.name, records)
    save_model(models / "fraud", version=1)  # what is being served before the run
    pipeline_root.mkdir()
    # The containers run as uid 10001 (no root in them): the host directories they write are theirs.
    # On a machine where you are not root, `--user "$(id -u):$(id -g)"` does the same (deploy/README.md).
    subprocess.run(["chown", "-R", "10001:10001", str(models), str(pipeline_root)], check=True)
    home = h.CONTAINER_HOME
    rest = _free_port()
    server = f"fraud-image-test-serve-{os.getpid()}"
    _docker("run", "-d", "--name", server, "-p", f"127.0.0.1:{rest}:8501",
            "-v", f"{models}:{home}/serving/models:ro", images["pipeline"],
            "serve", "--host=0.0.0.0", "--port=8500", "--rest_api_port=8501", "--model_name=fraud",
            f"--model_base_path={home}/serving/models/fraud", "--file_system_poll_wait_seconds=2")
    try:
        url = f"http://127.0.0.1:{rest}/v1/models/fraud"
        deadline = time.monotonic() + 180
        while _model_status(url).get("model_version_status", [{}])[0].get("version") != "1":
            assert time.monotonic() < deadline, _docker("logs", server, check=False).stderr[-3000:]
            time.sleep(1)
        # Train; meanwhile watch for the pushed version on the host and for the server serving it.
        start = time.monotonic()
        log = tmp_path / "train.log"
        with log.open("wb") as out:
            train = subprocess.Popen(["docker", "run", "--rm", "-v", f"{exports}:{home}/exports:ro",
                                      "-v", f"{models}:{home}/serving/models", "-v", f"{pipeline_root}:{home}/tfx",
                                      images["pipeline"], "train"], stdout=out, stderr=subprocess.STDOUT)
        pushed_at = available_at = None
        try:
            while train.poll() is None or available_at is None:
                now = time.monotonic()
                if pushed_at is None and (models / "fraud" / "2").is_dir():
                    pushed_at = now
                if pushed_at is not None and available_at is None and any(
                        v["version"] == "2" and v["state"] == "AVAILABLE"
                        for v in _model_status(url).get("model_version_status", [])):
                    available_at = time.monotonic()
                assert now - start < 3600, "training did not finish within an hour"
                if train.poll() is not None and pushed_at is None:
                    break
                assert train.poll() is None or now - (pushed_at or now) < 120, \
                    (_model_status(url), _docker("logs", server, check=False).stderr[-3000:])
                time.sleep(0.25)
            train.wait(timeout=60)
        finally:
            if train.poll() is None:
                train.kill()
        trained = time.monotonic() - start
        assert train.returncode == 0, log.read_text(errors="replace")[-4000:]
        assert pushed_at is not None and available_at is not None
        assert sorted(p.name for p in (models / "fraud").iterdir()) == ["1", "2"]
        assert (pipeline_root / "metadata.sqlite").is_file()
        print(f"pipeline image: `train` on the mounted span in {trained:.0f} s; version 2 appeared in the mounted "
              f"model dir {pushed_at - start:.0f} s in, and the server container served it "
              f"{available_at - pushed_at:.1f} s later (poll interval 2 s)", flush=True)
    finally:
        _docker("rm", "-f", server, check=False)
