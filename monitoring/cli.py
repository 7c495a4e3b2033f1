"""`fraudctl monitor run` and `fraudctl monitor report`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fraud.logs import configure_logging
from fraud.paths import load_paths


def register(subparsers: Any) -> None:
    from monitoring.config import MonitorConfig

    mon = subparsers.add_parser("monitor", help="live model monitoring: windowed metrics, drift, alerts, report")
    mon_sub = mon.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    mrun = mon_sub.add_parser("run", help="windowed metrics, precision/recall as labels arrive, drift and skew, "
                              "alerts and Prometheus metrics")
    MonitorConfig.add_arguments(mrun)
    mrun.set_defaults(func=_monitor_run)
    rep = mon_sub.add_parser("report", help="render the monitor's data as an HTML page with plots")
    rep.add_argument("--snapshot", type=Path, help="the monitor's snapshot.json (default <FRAUD_HOME>/monitor/"
                     "snapshot.json)")
    rep.add_argument("--out", type=Path, help="HTML file to write (default <FRAUD_HOME>/reports/monitor.html)")
    rep.set_defaults(func=_monitor_report)


def _monitor_run(args: argparse.Namespace) -> int:
    from monitoring.config import MonitorConfig
    from monitoring.monitor import MonitorJob

    config = MonitorConfig.from_args(args, os.environ, load_paths())
    configure_logging(config.log_level)
    job = MonitorJob.from_config(config)
    job.install_signal_handlers()
    stats = job.run()
    print(f"monitor: {stats.summary()}")
    return 0


def _monitor_report(args: argparse.Namespace) -> int:
    from monitoring.report import write_report

    paths = load_paths()
    snapshot = args.snapshot or paths.monitor_snapshot
    out = args.out or paths.reports_dir / "monitor.html"
    write_report(snapshot, out)
    print(f"monitor report: {out}")
    return 0
