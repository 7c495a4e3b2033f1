"""Where the project keeps state and caches. The environment is read here once, nowhere else.

- FRAUD_HOME: state that belongs to one installation (dataset, Kafka logs, pipeline root, served
  models, warehouse, reports). Default: `var/` of the source checkout, or ~/.local/share/fraud-tfx.
- FRAUD_CACHE: downloads shared by every checkout (Kafka jars from Maven Central, the dataset wheel).
  Default: ~/.cache/fraud-tfx. Never inside the git tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
SAMPLE_CSV = PACKAGE_DIR / "sample" / "creditcard_sample.csv"


def _in_checkout() -> bool:
    return (SOURCE_ROOT / "setup.py").is_file() and (SOURCE_ROOT / "fraud").is_dir()


@dataclass(frozen=True)
class Paths:
    home: Path
    cache: Path

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def dataset_csv_gz(self) -> Path:
        return self.data_dir / "creditcard.csv.gz"

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def connect_dir(self) -> Path:
        return self.home / "connect"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def pipeline_root(self) -> Path:
        return self.home / "tfx"

    @property
    def metadata_path(self) -> Path:
        return self.home / "tfx" / "metadata.sqlite"

    @property
    def serving_model_dir(self) -> Path:
        return self.home / "serving" / "models"

    @property
    def warehouse_dir(self) -> Path:
        """The embedded warehouse (DuckDB file) the sink writes."""
        return self.home / "warehouse"

    @property
    def monitor_dir(self) -> Path:
        """The monitor's published window metrics, drift results and alerts (what its report reads)."""
        return self.home / "monitor"

    @property
    def monitor_snapshot(self) -> Path:
        """The snapshot the monitor publishes and `fraudctl monitor report` renders."""
        return self.monitor_dir / "snapshot.json"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def logs_dir(self) -> Path:
        """Library output of commands that keep the terminal quiet (`fraudctl train`, the demo's steps)."""
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of the services `fraudctl` starts."""
        return self.home / "run"

    @property
    def jars_dir(self) -> Path:
        return self.cache / "kafka-jars"


def load_paths(environ: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ
    if env.get("FRAUD_HOME"):
        home = Path(env["FRAUD_HOME"]).expanduser()
    elif _in_checkout():
        home = SOURCE_ROOT / "var"
    else:
        home = Path.home() / ".local" / "share" / "fraud-tfx"
    cache = Path(env["FRAUD_CACHE"]).expanduser() if env.get("FRAUD_CACHE") else Path.home() / ".cache" / "fraud-tfx"
    return Paths(home=home.resolve(), cache=cache.resolve())
