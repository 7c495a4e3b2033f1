"""The model the benchmarks serve: what the project's own pipeline pushes, trained once on the shipped
sample and cached.

    from shipped_model import shipped_model_base
    base = shipped_model_base()          # <FRAUD_CACHE>/shipped-model/<key>/serving/models/fraud

The cache key is a hash of everything that shapes the pushed model (the pipeline, the components, the
schema, the feature and signature modules, the sample, the pinned environment), so a change to any of
them trains a new one; the first call takes a few minutes (one `fraudctl train` on 9,000 rows), later
calls return at once. The pipeline's library output goes to a log file beside the model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from fraud.console import quiet_output
from fraud.errors import FraudError
from fraud.paths import SAMPLE_CSV, Paths, load_paths
from fraud.signature import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
#: What shapes the pushed model: a change to any of these trains a new one.
MODEL_INPUTS = ("pipeline", "components", "schema", "fraud/features.py", "fraud/signature.py", "fraud/sample",
                "requirements.lock")


def model_key() -> str:
    digest = hashlib.sha256()
    for entry in MODEL_INPUTS:
        path = ROOT / entry
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def shipped_model_base() -> Path:
    """The model base path (holding numbered versions) of the pipeline's model trained on the sample.

    Several benchmarks (or checkouts) may ask at once: one trains under a lock, in a directory of its own
    that becomes the cache entry only when complete; the others wait and use it.
    """
    import fcntl

    root = load_paths().cache / "shipped-model"
    root.mkdir(parents=True, exist_ok=True)
    key = model_key()
    home = root / key
    base = home / "serving" / "models" / DEFAULT_MODEL_NAME
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _has_version(base):
            _train(root, home)
    return base


def _has_version(base: Path) -> bool:
    return base.is_dir() and any(p.name.isdigit() for p in base.iterdir())


def _train(root: Path, home: Path) -> None:
    work = root / f"{home.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = Paths(home=work, cache=load_paths().cache)
    with quiet_output(work / "train.log") as console:
        # imported here: TensorFlow's start-up lines go to the log, not to the caller's terminal
        from pipeline import local_runner
        from pipeline.export import write_csv_span
        from pipeline.progress import component_lines

        console.say("shipped model", f"training the pipeline on the sample once (cached in {home})")
        write_csv_span(SAMPLE_CSV, paths.exports_dir)
        with component_lines(console):
            local_runner.run(paths)
    if not _has_version(paths.serving_model_dir / DEFAULT_MODEL_NAME):
        raise FraudError(f"the pipeline pushed no model from the sample (see {work / 'train.log'})")
    shutil.rmtree(home, ignore_errors=True)  # an entry without a version: left by an older interrupted run
    work.rename(home)  # the SavedModels are self-contained; MLMD's paths inside are not used from here
