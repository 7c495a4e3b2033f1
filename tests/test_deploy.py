"""The deployment files agree with the code: Dockerfiles, docker compose, Kubernetes (kustomize), Makefile.

No Docker engine or cluster here, so each file is read the way Docker, Compose or kustomize reads it
(kustomize through `kubectl kustomize` when kubectl is installed) and what it gives a container (command,
environment, ports, probes, paths, topics) is handed to the project's own parsers and constants. The
processes themselves are started from these settings in tests/test_deploy_integration.py.
"""

from __future__ import annotations

import argparse
import ast
import base64
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import deploy_helpers as h
import pytest
import yaml
from packaging.requirements import Requirement

from fraud import signature, topics
from fraud.kafka_config import parse_bootstrap
from fraud.paths import load_paths

TOPIC_NAMES = {t.name for t in topics.ALL_TOPICS}
PARTITIONS = {t.name: t.partitions for t in topics.ALL_TOPICS}
CONTAINER_PATHS = load_paths({"FRAUD_HOME": h.CONTAINER_HOME})


def _key_file(tmp_path: Path) -> Path:
    key = tmp_path / "anonymize.key"
    key.write_text("a-test-key-of-enough-bytes-0123456789\n")
    return key


def _local_files(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Container paths of mounted secrets -> files here, so parsers that open them can (names unchanged)."""
    out = dict(env)
    for name in ("FRAUD_ANONYMIZE_KEY_FILE", "FRAUD_KAFKA_SSL_CAFILE"):
        if name in out:
            f = tmp_path / name.lower()
            f.write_text("a-test-key-of-enough-bytes-0123456789\n")
            out[name] = str(f)
    return out


# ---------------------------------------------------------------------------------------------
# Every file parses


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    files = sorted(p for p in h.DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    assert len(files) >= 10, files
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            docs = h.load_yaml_docs(path)
            assert docs, f"{path} is empty"
            for doc in docs:
                assert isinstance(doc, dict), f"{path}: a document is not a mapping"


DOCKERFILES = list(h.DOCKERFILES.values())
DOCKERFILE_IDS = list(h.DOCKERFILES)


def test_dockerfiles_are_read_as_instructions() -> None:
    known = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL",
             "HEALTHCHECK"}
    for path in DOCKERFILES:
        instructions = h.read_dockerfile(path)
        assert {i.keyword for i in instructions} <= known, path
        assert instructions[0].keyword in ("ARG", "FROM")
        # The engine here runs the classic builder (no buildx): no BuildKit-only syntax.
        text = path.read_text()
        assert "--mount=" not in text and "<<" not in text and "# syntax=" not in text, path


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def test_base_image_is_bookworm_python_of_the_dev_python_line() -> None:
    """The base builds on python:3.11-slim-bookworm, or on the Debian bookworm root image rootfs.sh makes from
    the archive (Debian's python3 is 3.11 there): the same Debian release and the same Python minor as here,
    against which the subset locks are checked."""
    (image,) = h.from_images(h.read_dockerfile(h.BASE_DOCKERFILE))
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-(\w+)", image)
    assert match, image
    assert (int(match.group(1)), int(match.group(2))) == sys.version_info[:2]
    rootfs = (h.DEPLOY / "docker" / "rootfs.sh").read_text()
    assert re.search(r"^suite=(\w+)$", rootfs, re.M).group(1) == match.group(3)
    assert "python3" in re.search(r"^packages=(\S+)$", rootfs, re.M).group(1).split(",")
    # The build checks the interpreter it got.
    run = " ".join(i.args for i in h.read_dockerfile(h.BASE_DOCKERFILE) if i.keyword == "RUN")
    assert f"sys.version_info[:2] == {sys.version_info[:2]}" in run


@pytest.mark.parametrize("name", ["kafka", "services", "pipeline"])
def test_project_images_build_on_the_base_the_script_builds(name: str) -> None:
    instructions = h.read_dockerfile(h.DOCKERFILES[name])
    assert set(h.from_images(instructions)) == {"fraud-tfx-base:0.1.0"}
    script = (h.ROOT / "scripts" / "images.sh").read_text()
    assert f"build {name} {h.DOCKERFILES[name].relative_to(h.ROOT)} --build-arg \"$base\"" in script
    assert 'base="BASE_IMAGE=fraud-tfx-base:$tag"' in script and 'tag="${IMAGE_TAG:-0.1.0}"' in script


@pytest.mark.parametrize("name", DOCKERFILE_IDS)
def test_images_run_as_the_non_root_user_with_a_healthcheck(name: str) -> None:
    dockerfile = h.DOCKERFILES[name]
    instructions = h.read_dockerfile(dockerfile)
    final = [i for i in instructions if i.stage == max(j.stage for j in instructions)]
    if dockerfile == h.BASE_DOCKERFILE:
        run = " ".join(i.args for i in final if i.keyword == "RUN")
        assert "useradd --system --uid 10001" in run and "chown fraud:fraud /var/lib/fraud" in run
        env = " ".join(i.args for i in final if i.keyword == "ENV")
        assert f"FRAUD_HOME={h.CONTAINER_HOME}" in env and "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in env
        return
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1] == "10001:10001"
    check = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert check and "CMD" in check[-1]
    assert h.image_healthcheck(f"fraud-tfx-{name}")[0] == "fraud-healthcheck"


@pytest.mark.parametrize("name", ["services", "pipeline"])
def test_python_images_run_fraudctl(name: str) -> None:
    instructions = h.read_dockerfile(h.DOCKERFILES[name])
    assert h.image_entrypoint(f"fraud-tfx-{name}") == ["fraudctl"]
    assert h.console_scripts()["fraudctl"] == "fraudctl.cli:main"
    final = [i for i in instructions if i.stage == max(j.stage for j in instructions)]
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PATH=/opt/fraud/bin:$PATH" in env  # `fraudctl` and `python` are the venv's
    cmd = [h.exec_form(i.args) for i in final if i.keyword == "CMD"][-1]
    from fraudctl.cli import build_parser

    with pytest.raises(SystemExit) as exc:  # --help exits 0 after printing
        build_parser().parse_args(cmd)
    assert exc.value.code == 0
    # The heavy layer (the pinned lock) comes before any project source, so a code change rebuilds seconds.
    runs = [i for i in final if i.keyword in ("RUN", "COPY")]
    lock_step = next(n for n, i in enumerate(runs) if i.keyword == "RUN" and f"requirements-{name}.lock" in i.args)
    wheel_step = next(n for n, i in enumerate(runs) if i.keyword == "COPY" and "--from=wheel" in i.args)
    assert lock_step < wheel_step
    assert "--only-binary=:all:" in runs[lock_step].args  # nothing compiled in the final image


def test_pipeline_image_keeps_the_kubeflow_executor_reachable() -> None:
    """KubeflowV2DagRunner sets each container's command (`python -m <executor module>`); that module must
    exist in TFX 1.16 and import in the image, with `python` the venv's."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    assert kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD[:2] == ("python", "-m")
    module = kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD[2]
    assert module == "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
    assert importlib.util.find_spec(module) is not None
    run = [i.args for i in h.read_dockerfile(h.PIPELINE_DOCKERFILE) if i.keyword == "RUN"]
    assert any(f"import {module}" in r for r in run), "the image build does not check that the executor imports"


def test_the_wheel_stage_is_the_same_in_both_python_images() -> None:
    """Identical instructions: the second build reuses the first one's cached wheel stage."""
    def wheel_stage(path: Path) -> list[tuple[str, str]]:
        instructions = h.read_dockerfile(path)
        (stage,) = {i.stage for i in instructions if i.keyword == "FROM" and i.args.endswith(" AS wheel")}
        return [(i.keyword, i.args) for i in instructions if i.stage == stage]

    assert wheel_stage(h.SERVICES_DOCKERFILE) == wheel_stage(h.PIPELINE_DOCKERFILE)
    runs = [args for keyword, args in wheel_stage(h.SERVICES_DOCKERFILE) if keyword == "RUN"]
    assert "-r /tmp/requirements-build.lock" in runs[0] and "--no-build-isolation" in runs[1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    patterns = h.dockerignore_patterns()
    local = [c for c in h.copies(h.read_dockerfile(dockerfile)) if c.from_stage is None]
    assert local
    for copy in local:
        for src in copy.sources:
            if src == ".":
                continue
            assert (h.ROOT / src).exists(), f"{dockerfile.name}:{copy.line}: COPY {src}: no such path"
            assert h.ignored_by_dockerignore(src, patterns) is None, \
                f"{dockerfile.name}:{copy.line}: COPY {src} is excluded by .dockerignore"
    if any(src == "." for c in local for src in c.sources):
        # The wheel is built from the whole context: every package setup.py installs (and its data) is in it.
        for package in h.setup_packages():
            assert h.ignored_by_dockerignore(package, patterns) is None, f"{package} is not in the build context"
            for f in (h.ROOT / package).rglob("*"):
                rel = f.relative_to(h.ROOT).as_posix()
                if f.is_file() and "__pycache__" not in rel and f.suffix not in (".pyc", ".md"):
                    assert h.ignored_by_dockerignore(rel, patterns) is None, f"{rel} is not in the build context"
        assert h.ignored_by_dockerignore("setup.py", patterns) is None
        assert h.ignored_by_dockerignore("pyproject.toml", patterns) is None


def test_dockerignore_keeps_state_and_tests_out_of_the_context() -> None:
    patterns = h.dockerignore_patterns()
    for path in (".venv/bin/python", "var/kafka/x", ".git/HEAD", "tests/test_deploy.py", "deploy/secrets/anonymize.key",
                 "fraudctl/__pycache__/cli.cpython-311.pyc", "fraud_tfx.egg-info/PKG-INFO", "deploy/k8s/base/bridge.yaml",
                 "serving/README.md", "Dockerfile", "deploy/docker/services.Dockerfile"):
        assert h.ignored_by_dockerignore(path, patterns), path
    for path in ("fraudctl/cli.py", "preprocessing/rules.yaml", "deploy/docker/pins.py", "schema/schema.pbtxt",
                 "fraud/embedded/pom.xml", "deploy/docker/healthcheck.py", "deploy/docker/certs/x.crt",
                 "deploy/docker/kafka/run", "deploy/requirements-services.lock"):
        assert h.ignored_by_dockerignore(path, patterns) is None, path
    # The build machine's CA certificates are copied into deploy/docker/certs by scripts/images.sh: never committed.
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/docker/certs/machine.crt"], cwd=h.ROOT)
    assert ignored.returncode == 0


def test_setup_ships_every_data_file_the_code_opens_next_to_itself() -> None:
    """A non-editable install (every image) must contain rules.yaml, the schema, the embedded Kafka files
    (READMEs aside, every non-Python file inside a package is data the code reads)."""
    tree = ast.parse((h.ROOT / "setup.py").read_text())
    package_data: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            package_data = ast.literal_eval(node.value)
    import fnmatch

    for package in h.setup_packages():
        pkg_dir = h.ROOT / package
        for f in pkg_dir.rglob("*"):
            if not f.is_file() or f.suffix in (".py", ".pyc", ".md") or "__pycache__" in f.parts:
                continue
            rel = f.relative_to(pkg_dir).as_posix()
            globs = package_data.get(package, [])
            assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{package}/{rel} is not in setup.py package_data"


# ---------------------------------------------------------------------------------------------
# Pinned subsets of the lock


def _pins_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_pins", h.DEPLOY / "docker" / "pins.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["deploy_pins"] = module
    spec.loader.exec_module(module)
    return module


SUBSET_LOCKS = [h.SERVICES_LOCK, h.PIPELINE_LOCK, h.BUILD_LOCK]
SUBSET_IDS = ["services", "pipeline", "build"]


@pytest.mark.parametrize("lock", SUBSET_LOCKS, ids=SUBSET_IDS)
def test_subset_lock_is_regenerated_from_requirements_lock(lock: Path) -> None:
    pins = _pins_module()
    assert lock.read_text() == pins.render_subset(lock), f"stale: python deploy/docker/pins.py subset {lock}"
    full = pins.read_lock()
    for pin in pins.read_pins(lock):
        assert full[pin.name].version == pin.version


@pytest.mark.parametrize("lock", SUBSET_LOCKS, ids=SUBSET_IDS)
def test_subset_lock_is_closed_under_the_installed_packages_requirements(lock: Path) -> None:
    """An independent check of the `# via` closure: each pin's own Requires-Dist (for this Python, no
    extras) is pinned in the subset too."""
    pins = _pins_module()
    names = {p.name for p in pins.read_pins(lock)}
    env = {"extra": ""}
    for name in sorted(names):
        for raw in importlib.metadata.requires(name) or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            assert pins.canonical(req.name) in names, f"{name} requires {req.name}, which {lock.name} lacks"


def test_pins_tool_uses_only_the_standard_library() -> None:
    tree = ast.parse((h.DEPLOY / "docker" / "pins.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_source_only_pins_are_the_ones_pip_reports_without_a_wheel(tmp_path: Path) -> None:
    """build-sdists builds exactly the pins pip's --report would fetch as source distributions. pip is
    replaced by a script that writes such a report (the real pip needs the index: the pipeline image's build
    runs it for real)."""
    lock = tmp_path / "requirements-x.lock"
    lock.write_text("# roots: a\ndill==0.3.1.1\nnumpy==1.26.4\npyfarmhash==0.3.2\n")
    report = {"install": [
        {"metadata": {"name": "dill"}, "download_info": {"url": "https://files/dill-0.3.1.1.tar.gz"}},
        {"metadata": {"name": "numpy"}, "download_info": {"url": "https://files/numpy-1.26.4-cp311-manylinux.whl"}},
        {"metadata": {"name": "PyFarmHash"}, "download_info": {"url": "https://files/pyfarmhash-0.3.2.tar.gz"}},
    ]}
    fake = tmp_path / "fake_pip.py"
    fake.write_text("import json, sys\nargs = sys.argv[1:]\nassert '--dry-run' in args and '--no-deps' in args\n"
                    f"open(args[args.index('--report') + 1], 'w').write({json.dumps(json.dumps(report))})\n")
    pins = _pins_module()
    found = pins.source_only_pins(lock, pip=[sys.executable, str(fake)])
    assert [p.line for p in found] == ["dill==0.3.1.1", "pyfarmhash==0.3.2"]
    failing = tmp_path / "failing_pip.py"
    failing.write_text("import sys\nsys.exit('ERROR: No matching distribution found for dill==0.3.1.1')\n")
    with pytest.raises(RuntimeError, match="No matching distribution"):
        pins.source_only_pins(lock, pip=[sys.executable, str(failing)])
    # The pipeline image builds these wheels in a stage with a compiler and installs wheels only afterwards.
    runs = [i.args for i in h.read_dockerfile(h.PIPELINE_DOCKERFILE) if i.keyword == "RUN"]
    assert any("pins.py build-sdists /tmp/pins/requirements-pipeline.lock --wheel-dir /wheels" in r for r in runs)
    assert any(re.search(r"--only-binary=:all: +--find-links /tmp/sdist-wheels -r /tmp/requirements-pipeline.lock", r)
               for r in runs)


def test_pipeline_lock_is_the_tfx_stack_without_the_test_tools() -> None:
    names = set(h.lock_names(h.PIPELINE_LOCK))
    assert {"tfx", "tensorflow", "apache-beam", "ml-metadata", "tensorflow-serving-api", "kfp", "duckdb"} <= names
    assert not names & {"pytest", "pytest-timeout", "ruff", "kubernetes-validate"}


def test_services_lock_has_no_tensorflow_stack() -> None:
    names = set(h.lock_names(h.SERVICES_LOCK))
    assert not names & {"tensorflow", "tfx", "apache-beam", "tensorflow-data-validation", "ml-metadata", "pyarrow"}


#: Code the services image runs: the bridge, preprocessing, the sink (DuckDB and BigQuery), topic init, the
#: stream machinery and fraud's core. Left out, with the image that has them: fraud/dataset.py and
#: fraud/replay.py (`fraudctl data`/`replay`, developer tools), fraud/spans.py (export spans, pipeline image),
#: fraud/report_kit.py (the HTML reports, pipeline image), fraudctl/demo.py, fraud/embedded/ (the
#: embedded broker, not used in containers), monitoring/{monitor,drift,alerts,windows,report,testing}.py
#: (the monitor, on the pipeline image).
SERVICE_SOURCES = ("kafka_bridge/*.py", "preprocessing/*.py", "fraud/stream/*.py", "fraud/*.py", "fraudctl/cli.py",
                   "fraudctl/kafka.py", "warehouse/*.py", "monitoring/config.py", "monitoring/metrics.py",
                   "monitoring/cli.py")
# Core modules only the pipeline image's jobs use (the model server, training, reports, replay): they may
# import TensorFlow and the data stack.
NOT_IN_SERVICES = ("fraud/dataset.py", "fraud/replay.py", "fraud/spans.py", "fraud/report_kit.py",
                   "fraud/model_info.py")


def test_every_package_the_services_code_imports_is_in_the_services_lock() -> None:
    """Static: every import statement (also the lazy ones inside functions) of the services' code resolves
    to a distribution of requirements-services.lock, the standard library or the project."""
    import os

    pins = _pins_module()
    allowed = {pins.canonical(n) for n in h.lock_names(h.SERVICES_LOCK)}
    candidates = importlib.metadata.packages_distributions()
    files_of: dict[str, set[str]] = {}

    def owner(top: str, where: str) -> str | None:
        for name in candidates.get(top, []):
            dist = importlib.metadata.distribution(name)
            rel = os.path.relpath(os.path.realpath(where), os.path.realpath(dist.locate_file("")))
            if name not in files_of:
                files_of[name] = {str(f) for f in dist.files or ()}
            if rel in files_of[name] or any(f.startswith(rel + "/") for f in files_of[name]):
                return pins.canonical(name)
        return None

    project = set(h.setup_packages())
    files = sorted({f for pattern in SERVICE_SOURCES for f in h.ROOT.glob(pattern)}
                   - {h.ROOT / f for f in NOT_IN_SERVICES})
    assert any(f.name == "bigquery.py" for f in files)
    missing = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in project or top == "__future__":
                    continue
                spec = importlib.util.find_spec(name)
                assert spec is not None, f"{path}: {name} is not installed at all"
                where = spec.origin if spec.origin not in (None, "namespace") else list(spec.submodule_search_locations)[0]
                dist = owner(top, where)
                if dist not in allowed:
                    missing.append(f"{path.relative_to(h.ROOT)}: {name} ({dist})")
    assert not missing, "imported but not in requirements-services.lock:\n" + "\n".join(missing)


# ---------------------------------------------------------------------------------------------
# The services image's packages are enough for what runs from it


def _guarded(argv: list[str], allowed: list[str]) -> subprocess.CompletedProcess:
    proc = h.guarded_fraudctl(argv, allowed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_import_guard_hides_what_the_services_image_lacks() -> None:
    """The guard is not vacuous: with the services lock, `fraudctl serve` (TensorFlow) cannot start."""
    allowed = h.lock_names(h.SERVICES_LOCK)
    done = _guarded(["serve", "--model_base_path=/nonexistent", "--port=1"], allowed)
    assert done.returncode != 0
    assert "not in the image" in done.stderr, done.stderr[-2000:]


def test_services_image_commands_parse_with_only_the_services_lock() -> None:
    allowed = h.lock_names(h.SERVICES_LOCK)
    for argv in (["--help"], ["bridge", "run", "--help"], ["preprocess", "run", "--help"], ["sink", "run", "--help"],
                 ["topics", "--help"]):
        done = _guarded(argv, allowed)
        assert done.returncode == 0, f"fraudctl {' '.join(argv)}: {done.stderr[-2000:]}"
        assert "usage: fraudctl" in done.stdout
    done = _guarded(["preprocess", "check-rules"], allowed)
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# docker compose


COMPOSE = h.load_compose()
SERVICES = COMPOSE["services"]
#: Services that run `fraudctl` from the project's Python images.
PROJECT_SERVICES = sorted(n for n, s in SERVICES.items()
                          if re.search(r"fraud-tfx-(services|pipeline):", h.compose_image(s)))
KAFKA_IMAGE_SERVICES = sorted(n for n, s in SERVICES.items() if "fraud-tfx-kafka:" in h.compose_image(s))


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to the compose file)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (h.COMPOSE_FILE.parent / source).resolve()
    return out


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    for target, source in _bind_mounts(service).items():
        if container_path.startswith(target + "/"):
            return source / container_path[len(target) + 1:]
    raise AssertionError(f"{container_path} is on no bind mount")


def _model_server_argv_here(service: dict[str, Any]) -> list[str]:
    """The model server's command with its config file flags pointing at the files compose mounts."""
    out = []
    for a in h.compose_argv(service):
        flag, _, value = a.partition("=")
        out.append(f"{flag}={_host_path(service, value)}" if flag.endswith("_config_file") else a)
    return out


def test_compose_images_are_the_ones_make_images_builds() -> None:
    """Every container runs an image scripts/images.sh builds (nothing to pull here), in the right role."""
    for name, service in SERVICES.items():
        image = h.compose_image(service)
        assert h.image_dockerfile(image), name  # KeyError for anything else
        assert image.endswith(":0.1.0") and "build" not in service, name
        if name in PROJECT_SERVICES:
            assert service.get("pull_policy") == "never", f"{name}: would try a registry for a local image"
    assert set(KAFKA_IMAGE_SERVICES) == {"kafka", "connect"}
    # TensorFlow/TFDV services run from the pipeline image, the streaming services from the slim one.
    for name in ("monitor", "model-server", "export", "train"):
        assert "fraud-tfx-pipeline:" in h.compose_image(SERVICES[name]), name
    for name in ("bridge", "preprocessing", "sink", "topics"):
        assert "fraud-tfx-services:" in h.compose_image(SERVICES[name]), name
    # Upstream's images remain a choice (deploy/README.md): the Kafka image follows apache/kafka's conventions.
    from fraud.embedded.jars import EMBEDDED_DIR

    kafka_version = re.search(r"<kafka.version>([^<]+)<", (EMBEDDED_DIR / "pom.xml").read_text()).group(1)
    assert h.interpolate(SERVICES["kafka"]["image"], {"FRAUD_KAFKA_IMAGE": f"apache/kafka:{kafka_version}"}) \
        == f"apache/kafka:{kafka_version}"
    assert h.interpolate(SERVICES["bridge"]["image"], {"FRAUD_IMAGE_REGISTRY": "r.example/x/", "FRAUD_IMAGE_TAG": "9"}) \
        == "r.example/x/fraud-tfx-services:9"


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_compose_service_command_env_and_ports_are_the_codes(name: str, tmp_path: Path) -> None:
    service = SERVICES[name]
    argv = h.compose_argv(service)
    env = h.compose_env(service)
    local = _local_files(env, tmp_path)
    if name == "model-server":  # config files are read from where compose mounts them from
        argv = _model_server_argv_here(service)
    parsed = h.parse_container(argv, h.RecordingEnv(local))
    unread = sorted(set(env) - parsed.read - h.NON_PROJECT_ENV)
    assert not unread, f"{name}: the code never reads {unread}"
    assert env.get("FRAUD_HOME") == h.CONTAINER_HOME
    for topic in parsed.topics:
        assert topic in TOPIC_NAMES, f"{name}: topic {topic} is not in fraud.topics"
    ports = h.published_ports(service)
    if parsed.http_port is not None:
        assert parsed.http_host == "0.0.0.0", f"{name}: health endpoint bound to {parsed.http_host} in a container"
        assert list(ports) == [parsed.http_port] and ports[parsed.http_port] == ("127.0.0.1", parsed.http_port)
        # The healthcheck asks that service's /readyz (fraud-healthcheck finds the port in the environment).
        assert h.healthcheck_argv(service) == ["fraud-healthcheck"]
        checker = _healthcheck_module()
        calls = []
        checker.check_http = lambda url, expect=None: calls.append(url)
        assert checker.check_own_service(env) is None and calls == [f"http://127.0.0.1:{parsed.http_port}/readyz"]
    elif name == "model-server":
        assert set(ports) == {parsed.config.port, parsed.config.rest_api_port}
        assert parsed.config.host == parsed.config.rest_api_host == "0.0.0.0", "not reachable from other containers"
    elif name not in ("topics", "export", "train"):
        raise AssertionError(f"{name} runs without a health endpoint")


def _healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("fraud_healthcheck", h.HEALTHCHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_compose_images_expose_the_ports_compose_uses(tmp_path: Path) -> None:
    for image in ("services", "pipeline"):
        exposed = {int(p) for i in h.read_dockerfile(h.DOCKERFILES[image]) if i.keyword == "EXPOSE" for p in i.args.split()}
        used = set()
        for name in PROJECT_SERVICES:
            if f"fraud-tfx-{image}:" in h.compose_image(SERVICES[name]):
                used |= set(h.published_ports(SERVICES[name]))
        assert used and used == exposed, image
    exposed = {int(p) for i in h.read_dockerfile(h.KAFKA_DOCKERFILE) if i.keyword == "EXPOSE" for p in i.args.split()}
    assert {9092, 9093, 8083} == exposed


def test_compose_bridge_scores_with_the_model_server(tmp_path: Path) -> None:
    from serving.config import ServerConfig

    bridge = h.compose_env(SERVICES["bridge"])
    server = SERVICES["model-server"]
    host, port = parse_bootstrap(bridge["FRAUD_BRIDGE_SERVER"])[0].rsplit(":", 1)
    assert host == "model-server" == server["hostname"]
    config = h.parse_container(_model_server_argv_here(server), {}).config
    assert int(port) == config.port == ServerConfig(models=()).port
    assert config.rest_api_port == ServerConfig(models=()).rest_api_port
    (model,) = config.models
    assert model.name == bridge["FRAUD_BRIDGE_MODEL_NAME"] == signature.DEFAULT_MODEL_NAME
    # The Pusher writes FRAUD_HOME/serving/models/<name>/<version>: the model's base path is that directory.
    assert model.base_path == str(CONTAINER_PATHS.serving_model_dir / signature.DEFAULT_MODEL_NAME)
    assert f"fraud-home:{h.CONTAINER_HOME}:ro" in server["volumes"]
    assert f"fraud-home:{h.CONTAINER_HOME}" in SERVICES["train"]["volumes"]
    # Prometheus metrics on the REST port, and the healthcheck waits for an AVAILABLE version of that model.
    assert config.monitoring_path == "/monitoring/prometheus/metrics"
    assert h.healthcheck_argv(server) == ["fraud-healthcheck", "http",
                                          f"http://127.0.0.1:{config.rest_api_port}/v1/models/{model.name}",
                                          "--expect", '"AVAILABLE"']


def test_compose_tf_serving_override_runs_the_same_model_server_flags(tmp_path: Path) -> None:
    """deploy/compose/tf-serving.yml swaps in tensorflow/serving (machines that can pull it) with the flags
    of the project's model server: the project's tensorflow_model_server-compatible parser accepts them."""
    override = yaml.safe_load((h.DEPLOY / "compose" / "tf-serving.yml").read_text())["services"]["model-server"]
    assert override["image"] == f"tensorflow/serving:{importlib.metadata.version('tensorflow-serving-api')}"
    assert override["entrypoint"] == ["tensorflow_model_server"]
    ours = [a for a in SERVICES["model-server"]["command"] if a.startswith("--") and not a.startswith("--host=")]
    assert override["command"] == ours
    assert override["healthcheck"]["test"][0] == "CMD"  # the image has bash, no python


def test_compose_dependencies_volumes_and_secrets_exist() -> None:
    for name, service in SERVICES.items():
        for dep in service.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (h.COMPOSE_FILE.parent / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in COMPOSE["volumes"], f"{name}: volume {source} is not declared"
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]
            assert h.compose_env(service)["FRAUD_ANONYMIZE_KEY_FILE"] == f"/run/secrets/{secret}"
    # Every project container that keeps state shares FRAUD_HOME's volume at the same path (MLMD stores
    # absolute URIs).
    for name in PROJECT_SERVICES:
        if name in ("bridge", "preprocessing"):
            continue  # stateless
        assert any(v.startswith(f"fraud-home:{h.CONTAINER_HOME}") for v in SERVICES[name]["volumes"]), name
    secret_file = COMPOSE["secrets"]["anonymize_key"]["file"]
    default = re.fullmatch(r"\$\{\w+:-(.+)\}", secret_file).group(1)
    assert (h.COMPOSE_FILE.parent / default).parent.is_dir()
    # ... and that directory keeps real keys out of git.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(h.COMPOSE_FILE.parent / default)], cwd=h.ROOT)
    assert ignored.returncode == 0, f"{default} would be committed"


def test_compose_kafka_listeners_serve_the_services_bootstrap() -> None:
    kenv = h.compose_env(SERVICES["kafka"])
    advertised = dict(reversed(item.split("://")) for item in kenv["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in kenv["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in kenv["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for name in PROJECT_SERVICES:
        env = h.compose_env(SERVICES[name])
        if "FRAUD_KAFKA_BOOTSTRAP" in env:
            (server,) = parse_bootstrap(env["FRAUD_KAFKA_BOOTSTRAP"])
            assert server in advertised, f"{name}: {server} is not an advertised listener"
            listener = advertised[server]
            assert protocols[listener] == env.get("FRAUD_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
            assert listeners[listener].rsplit(":", 1)[1] == server.rsplit(":", 1)[1]
    assert kenv["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kenv['KAFKA_NODE_ID']}@kafka:9093"
    # The host's listener advertises the port published on the host, wherever FRAUD_KAFKA_HOST_PORT moves it.
    for env in ({}, {"FRAUD_KAFKA_HOST_PORT": "19094"}):
        (spec,) = SERVICES["kafka"]["ports"]
        _, host_port, port = h.interpolate(spec, env).rsplit(":", 2)
        adv = h.interpolate(SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"], env)
        assert port == "9094" and f"PLAINTEXT_HOST://127.0.0.1:{host_port}" in adv.split(","), adv
    assert listeners["PLAINTEXT_HOST"] == ":9094" and 9094 in h.published_ports(SERVICES["kafka"])
    # The healthcheck asks the broker itself (an ApiVersions request on the services' listener port).
    assert h.healthcheck_argv(SERVICES["kafka"]) == ["fraud-healthcheck", "kafka", "127.0.0.1:9092"]
    # Topics come from fraud.topics only; transactions (exactly-once) need their state log on one broker.
    assert kenv["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kenv["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == kenv["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"


def _properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_compose_connect_reads_the_ingest_file_into_the_ingest_topic(tmp_path: Path) -> None:
    from fraud.embedded.connect import FILE_STREAM_SOURCE, STRING_CONVERTER
    from fraud.embedded.jars import EMBEDDED_DIR

    connect = SERVICES["connect"]
    argv = h.compose_argv(connect)
    assert argv[:2] == ["bash", "-c"] and "exec /opt/kafka/bin/connect-standalone.sh \"$@\"" in argv[2]
    files = argv[4:]
    worker, connector = (_properties(_host_path(connect, f)) for f in files)
    kenv = h.compose_env(SERVICES["kafka"])
    advertised = {item.split("://")[1] for item in kenv["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert worker["bootstrap.servers"] in advertised
    assert worker["key.converter"] == worker["value.converter"] == STRING_CONVERTER
    assert worker["listeners"] == "http://0.0.0.0:8083" and 8083 in h.published_ports(connect)
    offsets = worker["offset.storage.file.filename"]
    assert any(offsets.startswith(v.split(":")[1] + "/") and v.split(":")[0] in COMPOSE["volumes"]
               for v in connect["volumes"]), "Connect's source offsets are not on a volume"
    assert connector["connector.class"] == FILE_STREAM_SOURCE
    assert "<artifactId>connect-file</artifactId>" in (EMBEDDED_DIR / "pom.xml").read_text()
    # Its lines go where preprocessing reads CSV lines from, and the file is in the shared volume.
    from preprocessing.job import PreprocessConfig

    assert connector["topic"] == topics.INGEST_CSV.name
    pp = h.parse_container(h.compose_argv(SERVICES["preprocessing"]),
                           _local_files(h.compose_env(SERVICES["preprocessing"]), tmp_path))
    assert isinstance(pp.config, PreprocessConfig) and connector["topic"] in pp.input_topics
    assert connector["file"].startswith(h.CONTAINER_HOME + "/") and f"touch {connector['file']}" in argv[2]
    assert f"fraud-home:{h.CONTAINER_HOME}" in connect["volumes"]
    assert connector["name"] in " ".join(h.healthcheck_argv(connect))


def _assert_downstream_reads_committed() -> None:
    """The sink reads through fraud.stream.reader.GroupReader and the monitor through PartitionReader:
    both are fraud.stream's confluent-kafka readers, read_committed unless told otherwise, and neither job
    tells them otherwise (an aborted score must never reach the warehouse)."""
    import inspect

    import monitoring.monitor
    import warehouse.sink
    from fraud.stream import reader

    assert warehouse.sink.GroupReader is reader.GroupReader
    assert monitoring.monitor.PartitionReader is reader.PartitionReader
    for cls in (reader.GroupReader, reader.PartitionReader):
        assert issubclass(cls, reader._Reader)
        assert "read_committed=False" not in inspect.getsource(cls)
    assert inspect.signature(reader._Reader.__init__).parameters["read_committed"].default is True
    assert '"isolation.level": "read_committed" if read_committed' in inspect.getsource(reader._Reader.__init__)
    for module in (warehouse.sink, monitoring.monitor):
        assert "read_committed=False" not in inspect.getsource(module), module.__name__


def test_compose_delivers_exactly_once(tmp_path: Path) -> None:
    """What the README promises: preprocessing and the bridge write in Kafka transactions, each with a
    transactional id that is stable across container restarts and distinct between the two; the readers
    downstream (sink, monitor) only see committed records."""
    ids = {}
    for name in ("preprocessing", "bridge"):
        env = _local_files(h.compose_env(SERVICES[name]), tmp_path)
        parsed = h.parse_container(h.compose_argv(SERVICES[name]), env)
        stream = parsed.config.stream
        assert stream.exactly_once, f"{name} runs {stream.delivery.value}"
        # The default instance id is the host name: a new container id at every re-creation. Fixed here.
        assert any(k.endswith("_INSTANCE_ID") for k in h.compose_env(SERVICES[name])), name
        ids[name] = stream.transactional_id
        again = h.parse_container(h.compose_argv(SERVICES[name]), env).config.stream.transactional_id
        assert again == ids[name]
        assert "deploy" not in SERVICES[name] or SERVICES[name]["deploy"].get("replicas", 1) == 1
    assert len(set(ids.values())) == 2, ids
    _assert_downstream_reads_committed()


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    """`docker compose config` (Compose's own schema and interpolation), when the plugin is installed."""
    import shutil

    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                        timeout=30).returncode != 0:
        pytest.skip("docker compose is not installed (scripts/install-docker.sh installs it)")
    key = _key_file(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")},
           "FRAUD_ANONYMIZE_KEY_PATH": str(key)}
    for profile in ([], ["--profile", "train"]):
        done = subprocess.run(["docker", "compose", "-f", str(h.COMPOSE_FILE), *profile, "config", "--format", "json"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        rendered = json.loads(done.stdout)["services"]
        assert set(rendered) == ({*SERVICES} if profile else {n for n, s in SERVICES.items() if "profiles" not in s})
        for name, service in rendered.items():
            assert service["image"] == h.compose_image(SERVICES[name]), name


def test_compose_topics_named_anywhere_are_project_topics() -> None:
    found = [v for v in _strings(COMPOSE) if v.startswith("fraud.") and not v.endswith((".duckdb", ".json"))]
    assert found
    assert set(found) <= TOPIC_NAMES, set(found) - TOPIC_NAMES


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)] + [k for k in node if isinstance(k, str)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


# ---------------------------------------------------------------------------------------------
# Kubernetes (kustomize)


def _kustomizations() -> list[Path]:
    return sorted(h.K8S.rglob("kustomization.yaml"))


def test_kustomize_files_referenced_exist() -> None:
    assert {p.parent.name for p in _kustomizations()} == {"base", *h.OVERLAYS}
    for kust_path in _kustomizations():
        kust = yaml.safe_load(kust_path.read_text())
        for res in kust.get("resources", []):
            target = kust_path.parent / res
            assert target.exists(), f"{kust_path}: resource {res} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists()
        for patch in kust.get("patches", []):
            if "path" in patch:
                assert (kust_path.parent / patch["path"]).is_file(), f"{kust_path}: patch {patch['path']}"
            else:
                assert "patch" in patch and "target" in patch
    # Every manifest in a directory is used by its kustomization.
    for kust_path in _kustomizations():
        kust = yaml.safe_load(kust_path.read_text())
        used = set(kust.get("resources", [])) | {p["path"] for p in kust.get("patches", []) if "path" in p}
        unused = {p.name for p in kust_path.parent.glob("*.yaml")} - used - {"kustomization.yaml"}
        assert not unused, f"{kust_path.parent}: {unused} not referenced"


def _builds() -> list[tuple[str, list[dict[str, Any]]]]:
    """("base", raw base resources) always; each overlay built by kubectl kustomize when kubectl exists."""
    out = [("base", h.base_documents())]
    if h.kubectl():
        out += [(o, h.kustomize_build(h.K8S / "overlays" / o)) for o in h.OVERLAYS]
    return out


BUILDS = _builds()


def test_kubectl_builds_every_overlay() -> None:
    if not h.kubectl():
        pytest.skip("kubectl is not installed: overlays are only checked structurally")
    names = [name for name, _ in BUILDS]
    assert names == ["base", *h.OVERLAYS]
    for name, docs in BUILDS[1:]:
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for expected in (("StatefulSet", "fraud-bridge"), ("StatefulSet", "fraud-preprocessing"), ("Deployment", "fraud-sink"),
                         ("Deployment", "fraud-monitor"), ("Deployment", "tf-serving"), ("Job", "fraud-topics"),
                         ("Service", "tf-serving"), ("PodDisruptionBudget", "fraud-bridge"),
                         ("HorizontalPodAutoscaler", "fraud-bridge")):
            assert expected in kinds, f"{name}: {expected} missing"
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {f"fraud{'-local' if name == 'local' else ''}"}


@pytest.mark.parametrize("build", BUILDS, ids=[b[0] for b in BUILDS])
def test_k8s_containers_commands_env_ports_and_probes_are_the_codes(build: tuple[str, list[dict[str, Any]]],
                                                                    tmp_path: Path) -> None:
    name, docs = build
    seen = set()
    for w in h.workloads(docs):
        c = w.container
        assert c.get("resources", {}).get("requests") and c["resources"].get("limits"), f"{w.name}: no resources"
        sc = w.pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, f"{w.name} runs as root"
        if "tensorflow/serving" in c["image"]:
            continue  # checked below
        parsed = h.parse_container(w.argv, _local_files(w.env, tmp_path))
        seen.add(parsed.service)
        unread = sorted(set(w.env) - parsed.read - h.NON_PROJECT_ENV)
        assert not unread, f"{name} {w.name}: the code never reads {unread}"
        for topic in parsed.topics:
            assert topic in TOPIC_NAMES, f"{name} {w.name}: topic {topic}"
        if w.kind == "Job":
            continue
        assert parsed.http_port is not None and parsed.http_host == "0.0.0.0", f"{w.name}: no reachable health port"
        probes = {k: c[k] for k in ("livenessProbe", "readinessProbe", "startupProbe") if k in c}
        assert {"livenessProbe", "readinessProbe"} <= set(probes), f"{w.name}: probes missing"
        for kind, probe in probes.items():
            get = probe["httpGet"]
            assert w.port(get["port"]) == parsed.http_port, f"{w.name} {kind} port"
            assert get["path"] == ("/readyz" if kind == "readinessProbe" else "/healthz"), f"{w.name} {kind} path"
        annotations = next(d for d in docs if d["metadata"]["name"] == w.name and d["kind"] == w.kind)
        annotations = annotations["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(parsed.http_port)
        assert annotations.get("prometheus.io/path") == "/metrics"
        cafile = w.env.get("FRAUD_KAFKA_SSL_CAFILE")
        if cafile:  # the overlay's CA must be in every pod that talks to Kafka
            _mounted(w, Path(cafile))
        if parsed.service == "sink":
            assert parsed.config.duckdb_path.parent == CONTAINER_PATHS.warehouse_dir
            assert _mounted(w, CONTAINER_PATHS.warehouse_dir), "the warehouse is not on a volume"
        if parsed.service == "monitor":
            assert parsed.config.snapshot_path.parent == CONTAINER_PATHS.monitor_dir
            assert _mounted(w, parsed.config.snapshot_path.parent) and _mounted(w, parsed.config.training_stats)
        if parsed.service == "preprocess":
            key = w.env["FRAUD_ANONYMIZE_KEY_FILE"]
            mount = _mounted(w, Path(key))
            volume = next(v for v in w.pod["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == "fraud-anonymize-key"
            secret = h.find(docs, "Secret", "fraud-anonymize-key")
            if secret is not None:  # the local overlay's development key: one the job accepts
                from preprocessing.anonymize import load_key

                key_file = tmp_path / "mounted-key"
                key_file.write_bytes(base64.b64decode(secret["data"]["key"]))
                assert load_key({}, key_file).secret
            assert w.pod["securityContext"].get("fsGroup") == w.pod["securityContext"]["runAsUser"]
        hpa = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["spec"]["scaleTargetRef"]["name"] == w.name]
        for a in hpa:
            useful = sum(PARTITIONS[t] for t in parsed.input_topics)
            assert a["spec"]["maxReplicas"] <= useful, f"{w.name}: more replicas than partitions of {parsed.input_topics}"
    assert seen == {"bridge", "preprocess", "sink", "monitor", "topics"}, seen


def _mounted(w: h.Workload, path: Path | None) -> dict[str, Any]:
    assert path is not None
    for m in w.container.get("volumeMounts", []):
        if Path(path) == Path(m["mountPath"]) or Path(m["mountPath"]) in Path(path).parents:
            assert any(v["name"] == m["name"] for v in w.pod["volumes"]), f"{w.name}: volume {m['name']} undeclared"
            return m
    raise AssertionError(f"{w.name}: {path} is on no volume")


@pytest.mark.parametrize("build", BUILDS, ids=[b[0] for b in BUILDS])
def test_k8s_services_pdbs_hpas_and_claims_point_at_real_things(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = build
    pods = list(h.workloads(docs))
    for d in docs:
        kind, spec = d["kind"], d.get("spec", {})
        if kind == "Service":
            selected = [w for w in pods if w.kind != "Job" and spec["selector"].items() <= w.labels.items()]
            assert selected, f"{name}: Service {d['metadata']['name']} selects no pod"
            for p in spec["ports"]:
                for w in selected:
                    assert w.port(p["targetPort"]) == p["port"], f"Service {d['metadata']['name']} port {p}"
        if kind == "PodDisruptionBudget":
            assert any(spec["selector"]["matchLabels"].items() <= w.labels.items() for w in pods)
        if kind == "HorizontalPodAutoscaler":
            assert h.find(docs, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]), spec["scaleTargetRef"]
            assert spec["minReplicas"] <= spec["maxReplicas"]
        if kind in ("Deployment", "StatefulSet"):
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        if kind == "StatefulSet":  # its governing Service: headless, selecting its pods
            service = h.find(docs, "Service", spec["serviceName"])
            assert service is not None and service["spec"].get("clusterIP") == "None", spec["serviceName"]
            assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    for w in pods:
        for v in w.pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert h.find(docs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]), v
            if "configMap" in v:
                assert h.find(docs, "ConfigMap", v["configMap"]["name"]), v
        for m in w.container.get("volumeMounts", []):
            assert any(v["name"] == m["name"] for v in w.pod.get("volumes", [])), f"{w.name}: mount {m['name']}"


@pytest.mark.parametrize("build", BUILDS, ids=[b[0] for b in BUILDS])
def test_k8s_tf_serving_serves_what_the_bridge_asks_for(build: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    from serving.config import add_flags, config_from_args

    name, docs = build
    (serving,) = [w for w in h.workloads(docs) if "tensorflow/serving" in w.container["image"]]
    (bridge,) = [w for w in h.workloads(docs) if w.name == "fraud-bridge"]
    c = serving.container
    assert c["image"].endswith(":" + importlib.metadata.version("tensorflow-serving-api"))
    model_name, base = serving.env["MODEL_NAME"], serving.env["MODEL_BASE_PATH"]
    assert model_name == bridge.env["FRAUD_BRIDGE_MODEL_NAME"] == signature.DEFAULT_MODEL_NAME
    host, port = bridge.env["FRAUD_BRIDGE_SERVER"].rsplit(":", 1)
    service = h.find(docs, "Service", host)
    assert service is not None, f"{name}: the bridge's server {host} is no Service"
    grpc = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert grpc and serving.port(grpc[0]["targetPort"]) == 8500 and grpc[0]["name"] == "grpc"
    # The flags, as the image's entrypoint completes them, are tensorflow_model_server's, and the
    # monitoring config parses as TF Serving's MonitoringConfig.
    monitoring = h.find(docs, "ConfigMap", "tf-serving-monitoring")["data"]["monitoring.config"]
    (tmp_path / "monitoring.config").write_text(monitoring)
    args = [a.replace("/etc/tf-serving", str(tmp_path)) for a in c["args"]]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser)
    local_base = base if "://" not in base else str(tmp_path)
    config = config_from_args(parser.parse_args(["--port=8500", "--rest_api_port=8501", f"--model_name={model_name}",
                                                 f"--model_base_path={local_base}/{model_name}", *args]))
    pod_annotations = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tf-serving")
    pod_annotations = pod_annotations["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["prometheus.io/path"] == config.monitoring_path
    assert int(pod_annotations["prometheus.io/port"]) == config.rest_api_port == serving.port("http")
    # The models: the Pusher's layout on a volume, or (prod) the Kubeflow pipeline's object store.
    if "://" in base:
        assert name == "prod"
        assert not any(m["mountPath"] == base for m in c.get("volumeMounts", []))
        assert base == _make_var("KFP_ROOT") + "/serving/models", "prod serves another root than Kubeflow pushes to"
    else:
        assert base == str(CONTAINER_PATHS.serving_model_dir)
        assert _mounted(serving, Path(base))["readOnly"] is True
    # Readiness is the AVAILABLE check of compose's tensorflow/serving override (run for real in the
    # integration test against a TF Serving-compatible REST API).
    override = yaml.safe_load((h.DEPLOY / "compose" / "tf-serving.yml").read_text())["services"]["model-server"]
    assert c["readinessProbe"]["exec"]["command"] == h.healthcheck_argv(override)
    assert h.compose_env(override)["MODEL_NAME"] == model_name
    assert c["livenessProbe"]["tcpSocket"]["port"] == "grpc"


def _make_var(name: str) -> str:
    out = subprocess.run(["make", "-s", "-f", "Makefile", "-f", "-", "print"], cwd=h.ROOT, capture_output=True,
                         text=True, input=f"print:\n\t@echo $({name})\n", timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_prod_images_are_the_ones_make_builds_and_kubeflow_runs() -> None:
    kust = yaml.safe_load((h.K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kust["images"]}
    registry, tag = _make_var("REGISTRY"), _make_var("IMAGE_TAG")
    assert images == {n: f"{registry}{n}:{tag}" for n in ("fraud-tfx-services", "fraud-tfx-pipeline")}
    dry = subprocess.run(["make", "-n", "images", "kfp-compile"], cwd=h.ROOT, capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    # scripts/images.sh builds fraud-tfx-<name>:IMAGE_TAG and tags each REGISTRY<name>:IMAGE_TAG too.
    assert f"IMAGE_TAG={tag} REGISTRY={registry} scripts/images.sh" in lines
    script = (h.ROOT / "scripts" / "images.sh").read_text()
    assert 'image="fraud-tfx-$1:$tag"' in script and 'docker tag "$image" "$registry$(basename "$image")"' in script
    compile_line = next(ln for ln in lines if "pipeline.kubeflow_v2_runner" in ln).split()
    assert compile_line[compile_line.index("--image") + 1] == images["fraud-tfx-pipeline"]
    assert importlib.util.find_spec("pipeline.kubeflow_v2_runner") is not None


def test_k8s_topics_named_anywhere_are_project_topics() -> None:
    for name, docs in BUILDS:
        found = {v for d in docs for v in _strings(d) if v.startswith("fraud.") and not v.endswith((".duckdb", ".json"))}
        assert found and found <= TOPIC_NAMES, (name, found - TOPIC_NAMES)


# ---------------------------------------------------------------------------------------------
# Kubernetes: exactly-once as the README describes it, and the API schemas


@pytest.mark.parametrize("build", BUILDS, ids=[b[0] for b in BUILDS])
def test_k8s_bridge_and_preprocessing_run_exactly_once_as_statefulsets(build: tuple[str, list[dict[str, Any]]],
                                                                       tmp_path: Path) -> None:
    """README: "distinct --instance-ids (the transactional id is derived from it; in Kubernetes, the
    StatefulSet pod name)". Each replica's transactional id is <group id>-<pod name>: stable across
    restarts (a restarted pod fences its predecessor) and distinct between replicas."""
    name, docs = build
    readme = (h.ROOT / "README.md").read_text()
    assert "StatefulSet pod" in readme and "exactly once" in readme
    for workload in ("fraud-bridge", "fraud-preprocessing"):
        (w,) = [w for w in h.workloads(docs) if w.name == workload]
        assert w.kind == "StatefulSet", f"{name}: {workload} is a {w.kind}"
        doc = h.find(docs, "StatefulSet", workload)
        replicas = doc["spec"].get("replicas", 1)
        instance_vars = [e for e in w.container["env"] if e["name"].endswith("_INSTANCE_ID")]
        assert [e["valueFrom"]["fieldRef"]["fieldPath"] for e in instance_vars] == ["metadata.name"], workload
        tx_ids = set()
        for ordinal in range(max(replicas, 2)):
            env = _local_files({**w.env, instance_vars[0]["name"]: f"{workload}-{ordinal}"}, tmp_path)
            stream = h.parse_container(w.argv, env).config.stream
            assert stream.exactly_once, f"{name}: {workload} runs {stream.delivery.value}"
            assert stream.transactional_id == f"{stream.group_id}-{workload}-{ordinal}"
            tx_ids.add(stream.transactional_id)
        assert len(tx_ids) == max(replicas, 2)
    # The readers downstream see committed records only (the sink and the monitor read read_committed).
    _assert_downstream_reads_committed()


#: Kubernetes versions the manifests are validated against: the oldest still common on managed clusters,
#: and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", "1.37.0")


@pytest.mark.parametrize("build", BUILDS, ids=[b[0] for b in BUILDS])
def test_k8s_manifests_validate_against_the_kubernetes_schemas(build: tuple[str, list[dict[str, Any]]]) -> None:
    """Offline, against the JSON schemas of the Kubernetes API that kubernetes-validate (pinned in the lock)
    bundles, strict: a misspelt or misplaced field fails, as `kubectl apply --validate=strict` would. What
    only an API server checks (admission, defaults, quota, the cluster's own CRDs) is not covered."""
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    name, docs = build
    assert docs
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as exc:
                raise AssertionError(f"{name} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                                     f"{exc.message} at {'.'.join(map(str, exc.path))}") from None
    # The validator is not vacuous: a field in the wrong place and a wrong type are refused.
    (bridge,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "fraud-bridge"]
    for broken in ({**bridge, "spec": {**bridge["spec"], "replica": 2}},
                   {**bridge, "spec": {**bridge["spec"], "replicas": "two"}}):
        with pytest.raises(ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
