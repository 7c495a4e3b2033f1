"""The services image's build stage, executed here without Docker (slow: downloads the pinned wheels).

Each instruction of deploy/docker/services.Dockerfile's build stage is carried out on this machine:
COPY from the repository into a scratch root, WORKDIR and ENV as Docker applies them, and every RUN line
run by the shell with the image's absolute paths moved under that root and `python` being a plain CPython
of the image's minor version. What proves the image: the pinned subset installs with --no-deps and
--only-binary, the project's wheel builds from exactly the copied sources, and the build's own checks
(fraudctl --help, bridge run --help, preprocess check-rules) pass; then the runtime stage's ENTRYPOINT
and CMD run from the built environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import deploy_helpers as h
import pytest

pytestmark = pytest.mark.slow


def test_services_image_build_stage_runs_here(tmp_path: Path) -> None:
    instructions = h.read_dockerfile(h.SERVICES_DOCKERFILE)
    build = [i for i in instructions if i.stage == 0]
    runtime = [i for i in instructions if i.stage == 1]
    root = tmp_path / "rootfs"
    # The image's own paths (those the build stage creates) are moved under `root`.
    own = sorted({c.dest.rstrip("/") for c in h.copies(build) if c.dest.startswith("/")}
                 | {i.args for i in build if i.keyword == "WORKDIR"} | {"/opt/fraud"}, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(p) for p in own) + r")(?=[/\s]|$)")

    def moved(text: str) -> str:
        return pattern.sub(lambda m: str(root) + m.group(1), text)

    python = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}")
    assert python, "no plain CPython of the image's minor version"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(python)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "FRAUD_"))}
    env["PATH"] = f"{bindir}:/usr/bin:/bin"
    workdir = root
    root.mkdir()
    for ins in build:
        if ins.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", ins.args):
                env[key] = value
        elif ins.keyword == "WORKDIR":
            workdir = Path(moved(ins.args))
            workdir.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            (copy,) = [c for c in h.copies([ins])]
            dest = Path(moved(copy.dest)) if copy.dest.startswith("/") else workdir / copy.dest
            for src in copy.sources:
                source = h.ROOT / src
                if source.is_dir():
                    target = dest if len(copy.sources) == 1 and not copy.dest.endswith("/") else dest / source.name
                    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    target = dest / source.name if copy.dest.endswith("/") else dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
        elif ins.keyword == "RUN":
            done = subprocess.run(["sh", "-c", moved(ins.args)], cwd=workdir, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert done.returncode == 0, f"RUN (line {ins.line}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    venv_bin = root / "opt" / "fraud" / "bin"
    frozen = subprocess.run([str(venv_bin / "python"), "-m", "pip", "list", "--format=freeze",
                             "--exclude", "pip", "--exclude", "setuptools"], env=env,
                            capture_output=True, text=True, timeout=120).stdout.split()
    wanted = [ln for ln in h.SERVICES_LOCK.read_text().splitlines() if ln and not ln.startswith("#")]

    def norm(pin: str) -> str:
        name, _, version = pin.partition("==")
        return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"

    # Exactly the subset's pins (and the project) were installed: --no-deps pulled in nothing else.
    assert sorted(norm(f) for f in frozen if not norm(f).startswith("fraud-tfx==")) == sorted(map(norm, wanted))
    # The runtime stage's ENTRYPOINT + CMD, from the built environment.
    entry = [h.exec_form(i.args) for i in runtime if i.keyword == "ENTRYPOINT"][-1]
    cmd = [h.exec_form(i.args) for i in runtime if i.keyword == "CMD"][-1]
    env["PATH"] = f"{venv_bin}:{env['PATH']}"
    done = subprocess.run([*entry, *cmd], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: fraudctl" in done.stdout, done.stderr
