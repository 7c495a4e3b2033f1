"""Readers for the deployment files (Dockerfiles, compose, kustomize) and the checks tests/test_deploy*.py share.

Nothing here fakes a service: the files are read as Docker, Compose and kustomize read them, and the
settings they give each container are handed to the project's own config parsers.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
PIPELINE_DOCKERFILE = ROOT / "Dockerfile"
SERVICES_DOCKERFILE = DEPLOY / "docker" / "services.Dockerfile"
BASE_DOCKERFILE = DEPLOY / "docker" / "base.Dockerfile"
KAFKA_DOCKERFILE = DEPLOY / "docker" / "kafka.Dockerfile"
#: image name -> Dockerfile, as scripts/images.sh builds them (fraud-tfx-<name>:TAG).
DOCKERFILES = {"base": BASE_DOCKERFILE, "kafka": KAFKA_DOCKERFILE, "services": SERVICES_DOCKERFILE,
               "pipeline": PIPELINE_DOCKERFILE}
SERVICES_LOCK = DEPLOY / "requirements-services.lock"
PIPELINE_LOCK = DEPLOY / "requirements-pipeline.lock"
BUILD_LOCK = DEPLOY / "requirements-build.lock"
HEALTHCHECK_SCRIPT = DEPLOY / "docker" / "healthcheck.py"
OVERLAYS = ("local", "prod")
#: Kinds whose pod template runs the project's containers.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")

#: Where FRAUD_HOME is inside every project container (images, compose, manifests).
CONTAINER_HOME = "/var/lib/fraud"
#: Environment variables a container may carry that no project parser reads (the OS's own).
NON_PROJECT_ENV = frozenset({"HOME"})


# ---------------------------------------------------------------------------------------------
# Dockerfiles


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to
    keyword: str  # upper case
    args: str
    line: int


def read_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (no heredocs are used)."""
    out: list[Instruction] = []
    stage = -1
    pending, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip(), start))
    assert not pending, f"{path}: ends inside a continued line"
    return out


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM (what `${NAME}` in FROM lines resolves to)."""
    out = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            out.setdefault(name.strip(), value.strip())
    return out


def from_images(instructions: list[Instruction]) -> list[str]:
    """The image of every FROM, with ARG defaults substituted (stage names dropped)."""
    args = build_args(instructions)
    images = []
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    line: int


def copies(instructions: list[Instruction]) -> list[Copy]:
    out = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(ins.args)
        flags = [t for t in tokens if t.startswith("--")]
        paths = [t for t in tokens if not t.startswith("--")]
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        out.append(Copy(tuple(paths[:-1]), paths[-1], from_stage, ins.line))
    return out


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD in exec (JSON) form; the project's Dockerfiles use no shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored_by_dockerignore(path: str, patterns: list[str]) -> str | None:
    """The pattern that keeps `path` (relative to the context) out of the build context, if any.

    Docker matches each pattern against the path and its parents (a matched directory excludes its
    contents); `**` matches any number of directories. No `!` exceptions are used in .dockerignore.
    """
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not handled here"
        regex = fnmatch.translate(pattern).replace(".*.*/", "(?:.*/)?")
        if any(re.match(regex, c) for c in candidates):
            return pattern
    return None


def setup_packages() -> tuple[str, ...]:
    """PACKAGES of setup.py (the top-level packages the wheel installs)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no PACKAGES")


def console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(\w+)\s*=\s*([\w.:]+)"', text.split("console_scripts", 1)[1].split("]", 1)[0]))


# ---------------------------------------------------------------------------------------------
# Compose


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


_VAR = re.compile(r"\$\{(\w+)(?::?-([^{}]*))?\}")


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default} (nested defaults too), `$$` a literal `$`.

    `env` is the environment compose runs in (default: empty, i.e. every default applies).
    """
    env = env or {}
    text = value.replace("$$", "\0")
    while True:
        new = _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)
        if new == text:
            return new.replace("\0", "$")
        text = new


def compose_value(value: Any) -> str:
    """An environment value as the container sees it (YAML ints become strings; variables substituted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return interpolate(str(value))


def compose_image(service: Mapping[str, Any]) -> str:
    """The image a compose service runs, with the file's defaults (FRAUD_IMAGE_TAG etc. unset)."""
    return interpolate(service["image"])


def published_ports(service: Mapping[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) of a service's `ports` (defaults substituted)."""
    out = {}
    for spec in service.get("ports", []):
        host, host_port, port = interpolate(spec).rsplit(":", 2)
        out[int(port)] = (host, int(host_port))
    return out


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: compose_value(v) for k, v in env.items()}


def compose_argv(service: Mapping[str, Any]) -> list[str]:
    """entrypoint + command as the container runs them (entrypoint from the image when not overridden)."""
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        entrypoint = image_entrypoint(compose_image(service))
    return [compose_value(a) for a in [*entrypoint, *(service.get("command") or [])]]


def image_dockerfile(image: str) -> Path:
    """The Dockerfile of one of the project's images (fraud-tfx-<name>[:tag], any registry prefix)."""
    m = re.search(r"(?:^|/)fraud-tfx-(\w+)(?::|$)", image)
    if m is None or m.group(1) not in DOCKERFILES:
        raise KeyError(image)
    return DOCKERFILES[m.group(1)]


def image_entrypoint(image: str) -> list[str]:
    """ENTRYPOINT of the project's images, read from their Dockerfiles."""
    entry = [exec_form(i.args) for i in read_dockerfile(image_dockerfile(image)) if i.keyword == "ENTRYPOINT"]
    assert entry, f"{image} has no ENTRYPOINT"
    return entry[-1]


def image_healthcheck(image: str) -> list[str]:
    """The HEALTHCHECK command (exec form) of one of the project's images."""
    checks = [i.args for i in read_dockerfile(image_dockerfile(image)) if i.keyword == "HEALTHCHECK"]
    assert checks, f"{image} has no HEALTHCHECK"
    return exec_form(checks[-1].split(" CMD ", 1)[1])


def healthcheck_argv(service: Mapping[str, Any]) -> list[str]:
    """The compose healthcheck's command, or the image's HEALTHCHECK when the service sets none."""
    if "healthcheck" not in service:
        return image_healthcheck(compose_image(service))
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", compose_value(test[1])]
    assert test[0] == "CMD", test
    return [compose_value(t) for t in test[1:]]


# ---------------------------------------------------------------------------------------------
# Kustomize


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` (kustomize built into kubectl), parsed."""
    exe = kubectl()
    assert exe is not None
    proc = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {directory}: {proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_documents() -> list[dict[str, Any]]:
    """The base's resources as written (no kustomize): for the checks that need no build."""
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs = []
    for res in kust["resources"]:
        docs += load_yaml_docs(K8S / "base" / res)
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kust.get("images", [])}
    for d in docs:  # kustomize's `images` transformer
        if d["kind"] in WORKLOAD_KINDS:
            for c in d["spec"]["template"]["spec"]["containers"]:
                c["image"] = images.get(c["image"], c["image"])
    for gen in kust.get("configMapGenerator", []):
        data = dict(lit.split("=", 1) for lit in gen.get("literals", []))
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    """A resource by kind and name; generated ConfigMaps/Secrets match with kustomize's hash suffix."""
    for d in docs:
        if d["kind"] != kind:
            continue
        have = d["metadata"]["name"]
        if have == name or (kind in ("ConfigMap", "Secret") and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", have)):
            return d
    return None


@dataclass
class Workload:
    """One container of a Deployment or Job, with the environment it gets."""

    kind: str
    name: str
    pod: dict[str, Any]
    container: dict[str, Any]
    labels: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    optional_secrets: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        command = self.container.get("command")
        if command is None:
            command = image_entrypoint(self.container["image"])
        return list(command) + list(self.container.get("args") or [])

    def port(self, ref: int | str) -> int:
        if isinstance(ref, int):
            return ref
        for p in self.container.get("ports", []):
            if p.get("name") == ref:
                return int(p["containerPort"])
        raise AssertionError(f"{self.kind}/{self.name}: no container port named {ref!r}")


#: What the project's documented out-of-git Secrets hold (deploy/README.md), by Secret name.
DOCUMENTED_SECRET_KEYS = {"fraud-kafka-credentials": {"FRAUD_KAFKA_SASL_PASSWORD": "not-the-real-password"}}


def workloads(docs: list[dict[str, Any]]) -> Iterator[Workload]:
    for d in docs:
        if d["kind"] not in WORKLOAD_KINDS:
            continue
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        for c in pod["containers"]:
            w = Workload(d["kind"], d["metadata"]["name"], pod, c, labels)
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    cm = find(docs, "ConfigMap", src["configMapRef"]["name"])
                    assert cm is not None, f"{w.name}: ConfigMap {src['configMapRef']['name']} is not in the build"
                    w.env.update(cm.get("data", {}))
                if "secretRef" in src:
                    ref = src["secretRef"]
                    secret = find(docs, "Secret", ref["name"])
                    if secret is None:
                        assert ref.get("optional") or ref["name"] in DOCUMENTED_SECRET_KEYS, \
                            f"{w.name}: Secret {ref['name']} is neither built nor optional"
                        w.optional_secrets.append(ref["name"])
                    else:
                        w.env.update({k: "x" for k in (secret.get("data") or {}) | (secret.get("stringData") or {})})
            for e in c.get("env", []):
                if "value" in e:
                    w.env[e["name"]] = str(e["value"])
                elif "fieldRef" in e.get("valueFrom", {}):
                    w.env[e["name"]] = {"metadata.name": f"{w.name}-0"}.get(e["valueFrom"]["fieldRef"]["fieldPath"], "x")
                else:
                    w.env[e["name"]] = "x"
            # A Secret created outside git (deploy/README.md) exists where the overlay's settings need it.
            if w.env.get("FRAUD_KAFKA_SECURITY_PROTOCOL", "").startswith("SASL"):
                for name in w.optional_secrets:
                    w.env.update(DOCUMENTED_SECRET_KEYS.get(name, {}))
            yield w


# ---------------------------------------------------------------------------------------------
# The services image's packages: an import guard for processes run from the dev venv


#: Run as `python -c GUARD_PROGRAM`, with FRAUD_GUARD_ALLOWED (comma-separated distribution names) and
#: FRAUD_GUARD_ARGV (JSON list) in the environment. Any module found in site-packages that belongs to
#: none of the allowed distributions fails to import, exactly as if it were not installed: the process
#: then behaves as it would in an image that has only those distributions (plus the project).
GUARD_PROGRAM = r'''
import importlib.abc, importlib.machinery, importlib.metadata as md, json, os, re, site, sys
allowed = {re.sub(r"[-_.]+", "-", n).lower() for n in os.environ["FRAUD_GUARD_ALLOWED"].split(",") if n}
files = set()
for dist in md.distributions():
    if re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() in allowed:
        files.update(os.path.realpath(dist.locate_file(f)) for f in (dist.files or ()))
roots = tuple(os.path.realpath(p) + os.sep for p in site.getsitepackages())
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        where = spec.origin if spec.origin not in (None, "namespace") else next(iter(spec.submodule_search_locations or []), None)
        if where is None:
            return None
        real = os.path.realpath(where)
        if real.startswith(roots) and real not in files and not any(f.startswith(real + os.sep) for f in files):
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None
sys.meta_path.insert(0, Guard())
sys.argv = ["fraudctl", *json.loads(os.environ["FRAUD_GUARD_ARGV"])]
from fraudctl.cli import main
sys.exit(main())
'''


def lock_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.split("==")[0])
    return names


def guarded_fraudctl(argv: list[str], allowed: list[str], env: Mapping[str, str] | None = None,
                     **popen: Any) -> subprocess.Popen:
    """Start `fraudctl ARGV` from the dev venv, seeing only the `allowed` distributions (and the project)."""
    full = dict(os.environ if env is None else env)
    full["FRAUD_GUARD_ALLOWED"] = ",".join(allowed)
    full["FRAUD_GUARD_ARGV"] = json.dumps(argv)
    return subprocess.Popen([sys.executable, "-c", GUARD_PROGRAM], env=full, **popen)


# ---------------------------------------------------------------------------------------------
# Reading environments through the project's parsers


class RecordingEnv(dict):
    """An environment mapping that records every name the code looks up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)  # type: ignore[arg-type]
        return super().__contains__(key)


@dataclass
class Parsed:
    """What a container's command line and environment mean to the project's code."""

    service: str  # bridge | preprocess | sink | monitor | topics | export | train | serve
    config: Any
    read: set[str]
    http_host: str | None = None
    http_port: int | None = None
    topics: tuple[str, ...] = ()
    input_topics: tuple[str, ...] = ()


def parse_container(argv: list[str], env: Mapping[str, str]) -> Parsed:
    """Give `argv` (the container's full command) and `env` to the code that runs in it.

    Raises whatever the code raises for a bad flag, variable or value (FraudError, SystemExit).
    """
    from fraud.kafka_config import KafkaClientConfig
    from fraud.paths import load_paths
    from fraudctl.cli import build_parser

    rec = RecordingEnv(env)
    assert argv[0] == "fraudctl", argv
    args = build_parser().parse_args(argv[1:])
    assert getattr(args, "func", None) is not None, f"{argv}: not a runnable fraudctl command"
    paths = load_paths(rec)
    command = tuple(a for a in argv[1:3] if not a.startswith("-"))
    if command == ("bridge", "run"):
        from kafka_bridge.config import BridgeConfig

        c = BridgeConfig.from_env_and_args(args, rec)
        return Parsed("bridge", c, rec.read, c.stream.http_host, c.stream.http_port,
                      (*c.stream.input_topics, c.output_topic, c.stream.dlq_topic), c.stream.input_topics)
    if command == ("preprocess", "run"):
        from preprocessing.job import PreprocessConfig

        c = PreprocessConfig.from_args(args, rec)
        return Parsed("preprocess", c, rec.read, c.stream.http_host, c.stream.http_port,
                      (*c.stream.input_topics, c.output_topic, c.stream.dlq_topic, c.users_topic),
                      c.stream.input_topics)
    if command == ("sink", "run"):
        from warehouse.config import SinkConfig

        c = SinkConfig.from_args(args, rec, paths)
        return Parsed("sink", c, rec.read, c.http_host, c.http_port, (c.scores_topic, c.labels_topic, c.dlq_topic),
                      (c.scores_topic, c.labels_topic))
    if command == ("monitor", "run"):
        from monitoring.config import MonitorConfig

        c = MonitorConfig.from_args(args, rec, paths)
        ins = (c.scores_topic, c.labels_topic, c.transactions_topic)
        return Parsed("monitor", c, rec.read, c.http_host, c.http_port, (*ins, c.alerts_topic, c.dlq_topic), ins)
    if command[:1] == ("serve",):
        from serving.config import config_from_args

        c = config_from_args(args)
        return Parsed("serve", c, rec.read)
    if command[:1] == ("train",):
        return Parsed("train", paths, rec.read)
    if command[:1] in (("topics",), ("export",)):
        c = KafkaClientConfig.from_env_and_args(args, rec)
        topics = (args.topic,) if command[0] == "export" else ()
        return Parsed(command[0], c, rec.read, topics=topics)
    raise AssertionError(f"no parser known for {argv}")


def pipeline_image_default() -> str:
    """The image KubeflowV2DagRunner uses when none is given: the official TFX image of this TFX."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    return kubeflow_v2_dag_runner._KUBEFLOW_TFX_IMAGE


def json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
