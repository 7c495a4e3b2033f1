"""Pinned subsets of requirements.lock for the container images, and the wheels of their source-only pins.

The project's lock pins the whole TFX stack (281 packages). The images need less:

- the services image (bridge, preprocessing, sink, topic init) needs only the streaming path: its lock,
  deploy/requirements-services.lock, is the closure of a few root packages, taken from the `# via`
  annotations of requirements.lock (so every pin is exactly the project's pin);
- the pipeline image needs the TFX stack without the test and lint tools: deploy/requirements-pipeline.lock;
- the images' wheel stage needs the build tools: deploy/requirements-build.lock.

A subset lock names its roots in its header line `# roots: a, b, c`; regenerate it with

    python deploy/docker/pins.py subset deploy/requirements-services.lock          (rewrite in place)
    python deploy/docker/pins.py subset --check deploy/requirements-services.lock  (exit 1 if stale)

A few pins of the TFX stack are published as source only (dill 0.3.1.1, pyfarmhash, kfp, ...). The images
install every pin from a wheel (`--only-binary=:all:`, nothing compiled in the final image); a build stage
with a compiler first makes wheels of exactly those pins:

    python deploy/docker/pins.py build-sdists deploy/requirements-pipeline.lock --wheel-dir /wheels

(pip resolves the pins without installing anything, `--report` says which would come from a source
distribution, and `pip wheel --no-deps --no-build-isolation` builds those with the build tools already
installed). Only the standard library is used: this runs inside a bare image's build stage too.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
ROOTS_PREFIX = "# roots:"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*(?:#\s*via\s+(.*))?$")


def canonical(name: str) -> str:
    """PEP 503 normalized name: 'PyYAML' -> 'pyyaml', 'tf_keras' -> 'tf-keras'."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    via: tuple[str, ...]  # canonical names of the packages that require it ('-r ...' sources dropped)

    @property
    def line(self) -> str:
        return f"{self.name}=={self.version}"


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """name -> Pin for every `name==version  # via ...` line of a uv-compiled lock (line annotations)."""
    pins: dict[str, Pin] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if m is None:
            raise ValueError(f"{path}:{n}: not a 'name==version  # via ...' pin: {line!r}")
        via = tuple(canonical(v.strip()) for v in (m.group(3) or "").split(",")
                    if v.strip() and not v.strip().startswith("-r"))
        pin = Pin(canonical(m.group(1)), m.group(2), via)
        pins[pin.name] = pin
    return pins


def closure(pins: dict[str, Pin], roots: list[str]) -> list[Pin]:
    """The roots and everything they need, transitively, sorted by name.

    A lock line 'x==1  # via a, b' says a and b require x; so the requirements of p are the pins whose
    `via` names p.
    """
    requires: dict[str, set[str]] = {name: set() for name in pins}
    for pin in pins.values():
        for parent in pin.via:
            if parent in requires:
                requires[parent].add(pin.name)
    missing = [r for r in roots if canonical(r) not in pins]
    if missing:
        raise ValueError(f"roots not pinned in {LOCK.name}: {', '.join(missing)}")
    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(requires[name] - seen)
    return sorted((pins[n] for n in seen), key=lambda p: p.name)


def read_roots(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith(ROOTS_PREFIX):
            return [r.strip() for r in line[len(ROOTS_PREFIX):].split(",") if r.strip()]
    raise ValueError(f"{path}: no '{ROOTS_PREFIX} ...' header line")


def render_subset(path: Path, lock: Path = LOCK) -> str:
    """The subset lock's full text for the roots named in `path`'s header (its other header lines kept)."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    body = [p.line for p in closure(read_lock(lock), read_roots(path))]
    return "\n".join(header + body) + "\n"


def read_pins(path: Path) -> list[Pin]:
    """The pins of a subset lock (no `via` annotations there)."""
    pins = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins.append(Pin(canonical(name), version, ()))
    return pins


def source_only_pins(path: Path, *, pip: list[str] | None = None) -> list[Pin]:
    """Pins of `path` that pip would install from a source distribution (no wheel for this interpreter).

    Asks pip itself (`install --dry-run --report`, which fetches metadata, not packages), so the answer is
    the one the install would meet: this Python, this platform, this index.
    """
    pip = pip or [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [*pip, "install", "--quiet", "--dry-run", "--ignore-installed", "--no-deps", "--ignore-requires-python",
               "--prefer-binary", "--report", str(report), "-r", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not resolve {path}: {done.stderr.strip()[-2000:]}")
        installs = json.loads(report.read_text())["install"]
    pins = {p.name: p for p in read_pins(path)}
    out = []
    for item in installs:
        if not item["download_info"]["url"].endswith(".whl"):
            out.append(pins[canonical(item["metadata"]["name"])])
    return sorted(out, key=lambda p: p.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset", help="regenerate a subset lock from requirements.lock")
    s.add_argument("file", type=Path)
    s.add_argument("--check", action="store_true", help="only check that the file is up to date")
    s.add_argument("--lock", type=Path, default=LOCK)
    b = sub.add_parser("build-sdists", help="build wheels of the pins that have no wheel for this interpreter")
    b.add_argument("file", type=Path)
    b.add_argument("--wheel-dir", type=Path, required=True)
    b.add_argument("--dry-run", action="store_true", help="print them, build nothing")
    args = parser.parse_args(argv)

    if args.cmd == "subset":
        text = render_subset(args.file, args.lock)
        if args.check:
            if args.file.read_text() != text:
                print(f"{args.file} is stale: run python deploy/docker/pins.py subset {args.file}", file=sys.stderr)
                return 1
            return 0
        args.file.write_text(text)
        print(f"{args.file}: {sum(1 for ln in text.splitlines() if '==' in ln)} pins")
        return 0

    todo = source_only_pins(args.file)
    for pin in todo:
        print(pin.line)
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    if todo and not args.dry_run:
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
               "--ignore-requires-python", "--wheel-dir", str(args.wheel_dir), *[p.line for p in todo]]
        return subprocess.call(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
