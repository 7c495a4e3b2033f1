"""The privacy check over the whole demo (slow: it trains the TFX pipeline).

`fraudctl demo run` drives every part for real: Connect ingestion, preprocessing, export, TFX training,
the model server, the bridge, the warehouse sink and the monitor, with `fraudctl replay` sending raw
events that carry real (synthetic) card numbers and customer ids. Afterwards `fraudctl preprocess
privacy-check` must find none of the card pool's raw ids in any downstream topic, in the warehouse, or in
any file the installation wrote (exports, pipeline artifacts, reports, service logs). Kafka's own data
directory is left out: it holds the upstream topics (raw events), where raw ids belong.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fraud.paths import load_paths


@pytest.mark.slow
@pytest.mark.integration
def test_no_raw_id_anywhere_after_a_demo_run(tmp_path):
    env = {**os.environ, "FRAUD_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "fraud.cli"]
    try:
        done = subprocess.run([*cmd, "demo", "run", "--port-offset", "22000", "--rate", "400"], env=env,
                              capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        paths = load_paths({"FRAUD_HOME": env["FRAUD_HOME"]})
        warehouses = sorted(paths.home.rglob("*.duckdb"))
        assert warehouses, "the demo wrote a warehouse"
        scan = [str(p) for p in sorted(paths.home.iterdir()) if p.name != paths.kafka_dir.name]
        args = [*cmd, "preprocess", "privacy-check"]
        for path in scan:
            args += ["--path", path]
        for w in warehouses:
            args += ["--warehouse", str(w)]
        check = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
        out = check.stdout + check.stderr
        assert check.returncode == 0, out[-3000:]
        assert "privacy check passed" in out
        # The check looked where the data went: downstream topics with records, and the warehouse.
        assert "topic fraud.transactions: 0 records" not in out and "topic fraud.scores:" in out
        assert "warehouse" in out and "text columns, 0 raw ids" in out

        # The scan does see raw ids where they belong: the raw topic upstream of preprocessing.
        raw = subprocess.run([*cmd, "preprocess", "privacy-check", "--topic", "fraud.transactions.raw"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert raw.returncode == 4 and "privacy check FAILED" in raw.stdout
    finally:
        subprocess.run([*cmd, "demo", "stop"], env=env, capture_output=True, timeout=300)
