"""The Kafka jars: fetched from Maven Central once into FRAUD_CACHE, and the JVM command that runs them.

`ensure_jars()` runs `mvn dependency:copy-dependencies` on the pom shipped beside this module, into
`load_paths().jars_dir`, and writes a marker holding the pom's SHA-256. While the marker matches, the
folder is used as it is (no Maven, no network). A file lock keeps two processes (two test sessions, a
test and `fraudctl kafka start`) from fetching into the same folder at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from fraud.errors import FraudError

EMBEDDED_DIR = Path(__file__).resolve().parent
POM_PATH = EMBEDDED_DIR / "pom.xml"
LOG4J2_CONFIG = EMBEDDED_DIR / "log4j2.yaml"
MARKER_NAME = ".pom-sha256"
_LOCK_NAME = ".fetch.lock"
_FETCH_TIMEOUT_S = 900


def pom_digest(pom: Path = POM_PATH) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jars_ready(jars_dir: Path, pom: Path = POM_PATH) -> bool:
    """True when `jars_dir` holds the jars of exactly this pom (the marker matches)."""
    marker = jars_dir / MARKER_NAME
    return marker.is_file() and marker.read_text().strip() == pom_digest(pom)


def find_executable(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FraudError(f"`{name}` not found on PATH; it is needed to {purpose} (install a JDK 17+ and Maven)")
    return path


def _first_maven_error(output: str) -> str:
    for line in output.splitlines():
        if "[ERROR]" in line and line.strip() != "[ERROR]":
            return line.split("[ERROR]", 1)[1].strip()
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def ensure_jars(jars_dir: Path, pom: Path = POM_PATH, *, maven_repo: Path | None = None) -> Path:
    """Make sure `jars_dir` holds the jars `pom` names; fetch them with Maven if not. Returns `jars_dir`.

    `maven_repo` is Maven's local repository (default: Maven's own, ~/.m2/repository).
    """
    if jars_ready(jars_dir, pom):
        return jars_dir
    jars_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = jars_dir.parent / f"{jars_dir.name}{_LOCK_NAME}"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_ready(jars_dir, pom):  # another process fetched them while we waited
            return jars_dir
        mvn = find_executable("mvn", "fetch the Kafka jars from Maven Central")
        staging = jars_dir.parent / f"{jars_dir.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        if maven_repo is not None:
            cmd.append(f"-Dmaven.repo.local={maven_repo}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise FraudError(f"Maven did not finish fetching the Kafka jars within {_FETCH_TIMEOUT_S} s") from exc
        if proc.returncode != 0 or not any(staging.glob("*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            detail = _first_maven_error(proc.stdout + "\n" + proc.stderr)
            raise FraudError(f"Maven failed to fetch the Kafka jars for {pom}: {detail}")
        (staging / MARKER_NAME).write_text(pom_digest(pom) + "\n")
        shutil.rmtree(jars_dir, ignore_errors=True)
        staging.rename(jars_dir)
    return jars_dir


def classpath(jars_dir: Path) -> str:
    jars = sorted(jars_dir.glob("*.jar"))
    if not jars:
        raise FraudError(f"no jars in {jars_dir}")
    return ":".join(str(j) for j in jars)


def java_command(
    jars_dir: Path,
    main_class: str,
    args: list[str],
    *,
    heap: str | None = None,
    logs_dir: Path | None = None,
    log_name: str | None = None,
    jvm_opts: tuple[str, ...] = (),
) -> list[str]:
    """The `java ... <main_class> <args>` command line, as Kafka's bin/ scripts build it."""
    java = find_executable("java", "run Apache Kafka")
    cmd = [java]
    if heap:
        cmd += [f"-Xmx{heap}", f"-Xms{heap}"]
    cmd += ["-XX:+UseG1GC", "-Djava.awt.headless=true", *jvm_opts]
    if logs_dir is not None:
        cmd += [
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={logs_dir}",
            f"-Dfraud.log.name={log_name or 'kafka'}",
        ]
    cmd += ["-cp", classpath(jars_dir), main_class, *args]
    return cmd


def run_tool(jars_dir: Path, main_class: str, args: list[str], *, timeout_s: float = 120) -> str:
    """Run a one-shot Kafka tool (e.g. StorageTool) and return its stdout; FraudError on failure."""
    cmd = java_command(jars_dir, main_class, args, heap="256m", jvm_opts=("-XX:TieredStopAtLevel=1",))
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise FraudError(f"{main_class} did not finish within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        detail = _java_error_line(proc.stderr + "\n" + proc.stdout) or f"exit code {proc.returncode}"
        raise FraudError(
            f"{main_class.rsplit('.', 1)[-1]} {' '.join(args[:1])} failed after {time.monotonic() - start:.1f} s: {detail}"
        )
    return proc.stdout


def _java_error_line(output: str) -> str:
    """The exception message of a Java tool's output, without its stack frames."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in lines:
        if not line.startswith(("at ", "...")) and ("Exception" in line or "Error" in line):
            return line.removeprefix('Exception in thread "main" ')
    return lines[-1] if lines else ""
