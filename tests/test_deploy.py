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
import re
import subprocess
import sys
import venv
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


def test_dockerfiles_are_read_as_instructions() -> None:
    for path in (h.PIPELINE_DOCKERFILE, h.SERVICES_DOCKERFILE):
        instructions = h.read_dockerfile(path)
        known = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}
        assert {i.keyword for i in instructions} <= known, path
        assert instructions[0].keyword in ("ARG", "FROM")


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def test_pipeline_image_is_the_official_tfx_image_of_the_installed_tfx() -> None:
    import tfx

    images = h.from_images(h.read_dockerfile(h.PIPELINE_DOCKERFILE))
    assert images == [f"gcr.io/tfx-oss-public/tfx:{tfx.__version__}"]
    # ... the image KubeflowV2DagRunner itself defaults to for this TFX version.
    assert images[0] == h.pipeline_image_default()


def test_pipeline_image_keeps_the_kubeflow_executor_reachable() -> None:
    """KubeflowV2DagRunner sets each container's command; the module it names must exist in TFX 1.16."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    assert kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD[:2] == ("python", "-m")
    module = kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD[2]
    assert module == "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
    assert importlib.util.find_spec(module) is not None
    run = [i.args for i in h.read_dockerfile(h.PIPELINE_DOCKERFILE) if i.keyword == "RUN"]
    assert any(f"import {module}" in r for r in run), "the image build does not check that the executor imports"
    # No ENTRYPOINT of its own: the base's Beam boot stays (the image doubles as Beam SDK harness).
    assert not [i for i in h.read_dockerfile(h.PIPELINE_DOCKERFILE) if i.keyword in ("ENTRYPOINT", "CMD")]


def test_services_image_is_slim_python_of_the_dev_python_line() -> None:
    images = h.from_images(h.read_dockerfile(h.SERVICES_DOCKERFILE))
    assert len(images) == 2 and images[0] == images[1]  # build stage and runtime stage
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-bookworm", images[0])
    assert match, images[0]
    # The subset lock is checked (below) against this interpreter's packages: same Python minor.
    assert (int(match.group(1)), int(match.group(2))) == sys.version_info[:2]


def test_services_image_runs_fraudctl_as_a_non_root_user() -> None:
    instructions = h.read_dockerfile(h.SERVICES_DOCKERFILE)
    final = [i for i in instructions if i.stage == max(j.stage for j in instructions)]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entry = [h.exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    assert entry == [["fraudctl"]]
    assert h.console_scripts()["fraudctl"] == "fraudctl.cli:main"
    cmd = [h.exec_form(i.args) for i in final if i.keyword == "CMD"][-1]
    from fraudctl.cli import build_parser

    with pytest.raises(SystemExit) as exc:  # --help exits 0 after printing
        build_parser().parse_args(cmd)
    assert exc.value.code == 0


@pytest.mark.parametrize("dockerfile", [h.PIPELINE_DOCKERFILE, h.SERVICES_DOCKERFILE], ids=["pipeline", "services"])
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    patterns = h.dockerignore_patterns()
    local = [c for c in h.copies(h.read_dockerfile(dockerfile)) if c.from_stage is None]
    assert local
    for copy in local:
        for src in copy.sources:
            assert (h.ROOT / src).exists(), f"{dockerfile.name}:{copy.line}: COPY {src}: no such path"
            assert h.ignored_by_dockerignore(src, patterns) is None, \
                f"{dockerfile.name}:{copy.line}: COPY {src} is excluded by .dockerignore"
    copied = {s for c in local for s in c.sources}
    # The wheel built in the image must hold every package setup.py installs.
    missing = [p for p in h.setup_packages() if p not in copied]
    assert not missing, f"{dockerfile.name} does not COPY {missing}"
    assert {"setup.py", "pyproject.toml"} <= copied


def test_dockerignore_keeps_state_and_tests_out_of_the_context() -> None:
    patterns = h.dockerignore_patterns()
    for path in (".venv/bin/python", "var/kafka/x", ".git/HEAD", "tests/test_deploy.py", "deploy/secrets/anonymize.key",
                 "fraudctl/__pycache__/cli.cpython-311.pyc", "fraud_tfx.egg-info/PKG-INFO"):
        assert h.ignored_by_dockerignore(path, patterns), path
    for path in ("fraudctl/cli.py", "preprocessing/rules.yaml", "deploy/docker/pins.py", "schema/schema.pbtxt"):
        assert h.ignored_by_dockerignore(path, patterns) is None, path


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


@pytest.mark.parametrize("lock", [h.SERVICES_LOCK, h.PIPELINE_LOCK], ids=["services", "pipeline"])
def test_subset_lock_is_regenerated_from_requirements_lock(lock: Path) -> None:
    pins = _pins_module()
    assert lock.read_text() == pins.render_subset(lock), f"stale: python deploy/docker/pins.py subset {lock}"
    full = pins.read_lock()
    for pin in pins.read_pins(lock):
        assert full[pin.name].version == pin.version


@pytest.mark.parametrize("lock", [h.SERVICES_LOCK, h.PIPELINE_LOCK], ids=["services", "pipeline"])
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


def test_install_missing_installs_nothing_the_interpreter_already_has(tmp_path: Path) -> None:
    tool = h.DEPLOY / "docker" / "pins.py"
    here = subprocess.run([sys.executable, str(tool), "install-missing", "--dry-run", str(h.PIPELINE_LOCK)],
                          capture_output=True, text=True, timeout=60)
    assert here.returncode == 0 and here.stdout == "", here.stdout + here.stderr
    # A bare interpreter (nothing installed) lacks them all.
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    out = subprocess.run([str(bare / "bin" / "python"), str(tool), "install-missing", "--dry-run",
                          str(h.PIPELINE_LOCK)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [p.line for p in _pins_module().read_pins(h.PIPELINE_LOCK)]


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
NOT_IN_SERVICES = ("fraud/dataset.py", "fraud/replay.py", "fraud/spans.py", "fraud/report_kit.py")


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
PROJECT_SERVICES = sorted(n for n, s in SERVICES.items() if "fraud-tfx" in s.get("image", ""))


def test_compose_images_and_builds() -> None:
    from fraud.embedded.jars import EMBEDDED_DIR

    kafka_version = re.search(r"<kafka.version>([^<]+)<", (EMBEDDED_DIR / "pom.xml").read_text()).group(1)
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{kafka_version}"  # the broker the tests run
    assert SERVICES["tf-serving"]["image"] == f"tensorflow/serving:{importlib.metadata.version('tensorflow-serving-api')}"
    builds = {}
    for name in PROJECT_SERVICES:
        build = SERVICES[name]["build"]
        dockerfile = (h.COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile in (h.PIPELINE_DOCKERFILE, h.SERVICES_DOCKERFILE), dockerfile
        image = SERVICES[name]["image"].split("}", 1)[-1].split(":")[0]
        assert builds.setdefault(image, dockerfile) == dockerfile, f"{image} built from two Dockerfiles"
    assert set(builds) == {"fraud-tfx-services", "fraud-tfx-pipeline"}
    # The monitor needs TFDV: it must run from the pipeline image.
    assert "fraud-tfx-pipeline" in SERVICES["monitor"]["image"]
    for name in ("bridge", "preprocessing", "sink", "topics"):
        assert "fraud-tfx-services" in SERVICES[name]["image"]


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_compose_service_command_env_and_ports_are_the_codes(name: str, tmp_path: Path) -> None:
    service = SERVICES[name]
    argv = h.compose_argv(service)
    env = h.compose_env(service)
    parsed = h.parse_container(argv, h.RecordingEnv(_local_files(env, tmp_path)))
    unread = sorted(set(env) - parsed.read - h.NON_PROJECT_ENV)
    assert not unread, f"{name}: the code never reads {unread}"
    assert env.get("FRAUD_HOME") == h.CONTAINER_HOME
    for topic in parsed.topics:
        assert topic in TOPIC_NAMES, f"{name}: topic {topic} is not in fraud.topics"
    if parsed.http_port is not None:
        assert parsed.http_host == "0.0.0.0", f"{name}: health endpoint bound to {parsed.http_host} in a container"
        ports = [p.split(":") for p in service.get("ports", [])]
        assert [int(p[-1]) for p in ports] == [parsed.http_port] and int(ports[0][-2]) == parsed.http_port
        check = " ".join(h.healthcheck_argv(service))
        assert f"http://127.0.0.1:{parsed.http_port}/readyz" in check, check
    elif name not in ("topics", "export", "train"):
        raise AssertionError(f"{name} runs without a health endpoint")


def test_compose_services_image_exposes_the_ports_compose_uses(tmp_path: Path) -> None:
    exposed = {int(p) for i in h.read_dockerfile(h.SERVICES_DOCKERFILE) if i.keyword == "EXPOSE" for p in i.args.split()}
    used = set()
    for name in PROJECT_SERVICES:
        if "fraud-tfx-services" in SERVICES[name]["image"]:
            env = _local_files(h.compose_env(SERVICES[name]), tmp_path)
            port = h.parse_container(h.compose_argv(SERVICES[name]), env).http_port
            if port is not None:
                used.add(port)
    assert used and used == exposed


def test_compose_bridge_scores_with_the_tf_serving_service() -> None:
    from serving.config import ServerConfig

    bridge = h.compose_env(SERVICES["bridge"])
    serving = SERVICES["tf-serving"]
    host, port = parse_bootstrap(bridge["FRAUD_BRIDGE_SERVER"])[0].rsplit(":", 1)
    assert host == "tf-serving" and int(port) == ServerConfig(models=()).port == 8500
    published = {int(p.split(":")[-1]) for p in serving["ports"]}
    assert published == {ServerConfig(models=()).port, ServerConfig(models=()).rest_api_port}
    senv = h.compose_env(serving)
    assert senv["MODEL_NAME"] == bridge["FRAUD_BRIDGE_MODEL_NAME"] == signature.DEFAULT_MODEL_NAME
    # The Pusher writes FRAUD_HOME/serving/models/<name>/<version>: TF Serving's base path is that directory.
    assert senv["MODEL_BASE_PATH"] == str(CONTAINER_PATHS.serving_model_dir)
    mounts = {v.split(":")[1]: v for v in serving["volumes"]}
    assert h.CONTAINER_HOME in mounts and mounts[h.CONTAINER_HOME].endswith(":ro")
    assert SERVICES["train"]["volumes"] == [f"fraud-home:{h.CONTAINER_HOME}"]


def test_compose_tf_serving_flags_are_tensorflow_model_server_flags(tmp_path: Path) -> None:
    """The image's entrypoint adds --port/--rest_api_port/--model_name/--model_base_path; the rest are ours.
    The project's server implements tensorflow_model_server's flags, so its parser judges them."""
    from serving.config import add_flags, config_from_args

    senv = h.compose_env(SERVICES["tf-serving"])
    argv = ["--port=8500", "--rest_api_port=8501", f"--model_name={senv['MODEL_NAME']}",
            f"--model_base_path={senv['MODEL_BASE_PATH']}/{senv['MODEL_NAME']}", *SERVICES["tf-serving"]["command"]]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser)
    config = config_from_args(parser.parse_args(argv))
    assert config.models[0].base_path == str(CONTAINER_PATHS.serving_model_dir / signature.DEFAULT_MODEL_NAME)


def test_compose_dependencies_volumes_and_secrets_exist() -> None:
    for name, service in SERVICES.items():
        for dep in service.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in COMPOSE["volumes"], f"{name}: volume {source} is not declared"
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]
            assert h.compose_env(service)["FRAUD_ANONYMIZE_KEY_FILE"] == f"/run/secrets/{secret}"
    # Every project container shares FRAUD_HOME's volume at the same path (MLMD stores absolute URIs).
    for name in PROJECT_SERVICES:
        if name in ("bridge", "preprocessing"):
            continue  # stateless
        assert f"fraud-home:{h.CONTAINER_HOME}" in SERVICES[name]["volumes"], name
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
    host_port = [p for p in SERVICES["kafka"]["ports"]][0].rsplit(":", 2)
    assert f"127.0.0.1:{host_port[-2]}" in advertised  # the host's bootstrap (README)
    # The healthcheck asks the listener the services use.
    assert "--bootstrap-server kafka:9092" in SERVICES["kafka"]["healthcheck"]["test"][1]


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
        for expected in (("Deployment", "fraud-bridge"), ("Deployment", "fraud-preprocessing"), ("Deployment", "fraud-sink"),
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
        annotations = next(d for d in docs if d["metadata"]["name"] == w.name and d["kind"] == "Deployment")
        annotations = annotations["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(parsed.http_port)
        assert annotations.get("prometheus.io/path") == "/metrics"
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
            selected = [w for w in pods if w.kind == "Deployment" and spec["selector"].items() <= w.labels.items()]
            assert selected, f"{name}: Service {d['metadata']['name']} selects no pod"
            for p in spec["ports"]:
                for w in selected:
                    assert w.port(p["targetPort"]) == p["port"], f"Service {d['metadata']['name']} port {p}"
        if kind == "PodDisruptionBudget":
            assert any(spec["selector"]["matchLabels"].items() <= w.labels.items() for w in pods)
        if kind == "HorizontalPodAutoscaler":
            assert h.find(docs, "Deployment", spec["scaleTargetRef"]["name"])
            assert spec["minReplicas"] <= spec["maxReplicas"]
        if kind == "Deployment":
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
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
    # Readiness is the same AVAILABLE check as compose's healthcheck (run for real in the integration test).
    compose_check = h.healthcheck_argv(SERVICES["tf-serving"])
    assert c["readinessProbe"]["exec"]["command"] == compose_check
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
    assert f"docker build -t {images['fraud-tfx-pipeline']} ." in lines
    assert f"docker build -f deploy/docker/services.Dockerfile -t {images['fraud-tfx-services']} ." in lines
    compile_line = next(ln for ln in lines if "pipeline.kubeflow_v2_runner" in ln).split()
    assert compile_line[compile_line.index("--image") + 1] == images["fraud-tfx-pipeline"]
    assert importlib.util.find_spec("pipeline.kubeflow_v2_runner") is not None


def test_k8s_topics_named_anywhere_are_project_topics() -> None:
    for name, docs in BUILDS:
        found = {v for d in docs for v in _strings(d) if v.startswith("fraud.") and not v.endswith((".duckdb", ".json"))}
        assert found and found <= TOPIC_NAMES, (name, found - TOPIC_NAMES)
