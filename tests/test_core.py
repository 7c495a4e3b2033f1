"""Unit tests of the shared core: the feature module, topics, paths and the fraudctl shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fraud import features, topics
from fraud.paths import load_paths
from fraudctl import cli


def test_feature_module_matches_the_dataset_columns():
    assert features.FEATURE_NAMES[0] == "Time"
    assert features.FEATURE_NAMES[-1] == "Amount"
    assert features.FEATURE_NAMES[1:29] == tuple(f"V{i}" for i in range(1, 29))
    assert len(features.FEATURE_NAMES) == 30
    assert features.CSV_COLUMNS == features.FEATURE_NAMES + ("Class",)
    assert features.transformed_name("Amount") == "Amount_xf"
    assert features.FEATURES["Amount"].kind is features.Kind.LOG_ZSCORE
    assert features.FEATURES["Time"].kind is features.Kind.TIME_OF_DAY


def test_topic_names_are_unique_and_partitioned():
    names = [t.name for t in topics.ALL_TOPICS]
    assert len(names) == len(set(names))
    assert all(t.partitions >= 1 for t in topics.ALL_TOPICS)
    assert topics.USERS.config["cleanup.policy"] == "compact"


def test_paths_follow_the_environment(tmp_path: Path):
    paths = load_paths({"FRAUD_HOME": str(tmp_path / "h"), "FRAUD_CACHE": str(tmp_path / "c")})
    assert paths.home == tmp_path / "h"
    assert paths.kafka_dir == tmp_path / "h" / "kafka"
    assert paths.jars_dir == tmp_path / "c" / "kafka-jars"
    default = load_paths({})
    assert default.cache == Path.home() / ".cache" / "fraud-tfx"


def test_fraudctl_help_lists_every_registered_command():
    out = subprocess.run([sys.executable, "-m", "fraudctl.cli", "--help"], capture_output=True, text=True, check=True)
    parser = cli.build_parser()
    subactions = [a for a in parser._actions if a.dest == "command"]
    assert subactions
    for name in subactions[0].choices:
        assert name in out.stdout


def test_fraudctl_errors_are_one_line_naming_the_subcommand(tmp_path: Path):
    missing = tmp_path / "missing.csv"
    out = subprocess.run([sys.executable, "-m", "fraudctl.cli", "data", "info", "--file", str(missing)],
                         capture_output=True, text=True)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("fraudctl data info: ")
    assert str(missing) in lines[0]


def test_fraudctl_train_refuses_an_empty_training_window(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "fraudctl.cli", "train", "--window-spans", "0"], capture_output=True,
                         text=True, env={**os.environ, "FRAUD_HOME": str(tmp_path)})
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["fraudctl train: --window-spans=0: must be at least 1"], out.stderr
