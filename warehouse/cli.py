"""`fraudctl sink run`: the warehouse sink as a service."""

from __future__ import annotations

import argparse
import os
from typing import Any

from fraud.logs import configure_logging
from fraud.paths import load_paths
from warehouse.config import SinkConfig


def register(subparsers: Any) -> None:
    sink = subparsers.add_parser("sink", help="the warehouse sink (scores and labels into DuckDB or BigQuery)")
    sink_sub = sink.add_subparsers(dest="sink_command", metavar="ACTION", required=True)
    run = sink_sub.add_parser("run", help="write score and label events to the warehouse, exactly once")
    SinkConfig.add_arguments(run)
    run.set_defaults(func=_sink_run)


def _sink_run(args: argparse.Namespace) -> int:
    from warehouse.sink import SinkJob, make_warehouse

    config = SinkConfig.from_args(args, os.environ, load_paths())
    configure_logging(config.log_level)
    job = SinkJob(config, make_warehouse(config))
    job.install_signal_handlers()
    stats = job.run()
    print(f"sink: {stats.summary()}")
    return 0
