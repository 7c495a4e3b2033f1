"""`fraudctl` commands of the training pipeline: `export`, `train`, `report`.

    fraudctl export [--topic T] [--format json|avro]     one new span from Kafka (pipeline/export.py)
    fraudctl export --seal SPAN_DIR                      seal a span a Kafka Connect sink wrote
    fraudctl train [--beam] [--window-spans N] ...       run the pipeline on the latest span(s)
    fraudctl train --watch [--min-new-events N] ...      continuous training (pipeline/continuous.py)
    fraudctl report                                      HTML page of the latest run (pipeline/report.py)
"""

from __future__ import annotations

import argparse
from typing import Any

from fraud import spans
from fraud.console import quiet_output, timestamped_log
from fraud.errors import FraudError
from fraud.paths import load_paths
from pipeline import export, report
from pipeline.progress import component_lines


def register(subparsers: argparse._SubParsersAction) -> None:
    export.register(subparsers)
    p = subparsers.add_parser("train", help="run the TFX training pipeline on the latest complete export span")
    p.add_argument("--beam", action="store_true",
                   help="orchestrate with BeamDagRunner (DirectRunner, multi-processing) instead of LocalDagRunner")
    p.add_argument("--min-auprc", type=float, default=None, help="AUPRC a model needs on eval to be blessed")
    p.add_argument("--max-auprc-drop", type=float, default=None,
                   help="largest AUPRC drop allowed against the serving model (the latest blessed selection)")
    p.add_argument("--train-steps", type=int, default=None, help="upper bound on gradient steps per seed")
    p.add_argument("--window-spans", type=int, default=1, metavar="N",
                   help="train on the latest N export spans as one dataset (exports are incremental: each span "
                        "holds what arrived since the previous one); default 1")
    p.add_argument("--no-infra-validation", action="store_true", help="push without loading the model in a server")
    p.add_argument("--cache", action="store_true", help="reuse outputs of components whose inputs did not change")
    p.add_argument("--kinds", default=None, help="comma-separated model kinds to train (default: all)")
    p.add_argument("--no-warm-start", action="store_true", help="train every model from scratch")
    w = p.add_argument_group("continuous training (--watch)")
    w.add_argument("--watch", action="store_true",
                   help="keep running: export a span and train whenever enough new events arrived or a period passed")
    w.add_argument("--topic", default=None, help="topic to export (default: fraud.transactions)")
    w.add_argument("--min-new-events", type=int, default=50_000, help="new records that start a cycle")
    w.add_argument("--period", type=float, default=24 * 3600.0, metavar="SECONDS",
                   help="start a cycle after this long if anything new arrived (default: a day)")
    w.add_argument("--poll", type=float, default=30.0, metavar="SECONDS", help="how often to look (default: 30)")
    w.add_argument("--max-cycles", type=int, default=None, help="stop after this many cycles")
    from fraud.kafka_config import KafkaClientConfig

    KafkaClientConfig.add_arguments(p)
    p.set_defaults(func=_train)
    report.register(subparsers)


def _train(args: argparse.Namespace) -> int:
    if args.window_spans < 1:
        raise FraudError(f"--window-spans={args.window_spans}: must be at least 1")
    paths = load_paths()
    if not args.watch and not any(s.complete for s in spans.list_spans(paths.exports_dir)):
        raise FraudError(f"{paths.exports_dir}: no complete export span; run `fraudctl export` first")
    from pipeline import pipeline as pl

    defaults = pl.Gates()
    try:
        training = pl.TrainingSettings(train_steps=args.train_steps, warm_start=not args.no_warm_start,
                                       **({"kinds": tuple(args.kinds.split(","))} if args.kinds else {}))
    except ValueError as exc:
        raise FraudError(f"--kinds: {exc}") from None
    options = {
        "gates": pl.Gates(min_auprc=defaults.min_auprc if args.min_auprc is None else args.min_auprc,
                          max_auprc_drop=defaults.max_auprc_drop if args.max_auprc_drop is None else args.max_auprc_drop),
        "training": training,
        "infra_validation": pl.INFRA_NONE if args.no_infra_validation else pl.INFRA_LOCAL,
        "enable_cache": args.cache,
        "window_spans": args.window_spans,
    }
    if args.topic:
        options["topic"] = args.topic

    def run_once(window_spans: int) -> None:
        with component_lines(console):
            if args.beam:
                from pipeline import beam_runner

                beam_runner.run(paths, **{**options, "window_spans": window_spans})
            else:
                from pipeline import local_runner

                local_runner.run(paths, **{**options, "window_spans": window_spans})

    log = timestamped_log(paths.logs_dir, "train")
    with quiet_output(log, verbose=getattr(args, "verbose", False)) as console:
        if args.watch:
            return _watch(args, paths, run_once, console)
        try:
            run_once(args.window_spans)
        except Exception as exc:  # noqa: BLE001 - a failed component: one line saying which and why
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "" if getattr(args, "verbose", False) else f" (log: {log})"
            raise FraudError(f"pipeline run failed: {type(exc).__name__}: {message}{where}") from None
    print(f"pipeline run finished; `fraudctl report` renders it (models under {paths.serving_model_dir})")
    if not getattr(args, "verbose", False):
        print(f"library output: {log}")
    return 0


def _watch(args: argparse.Namespace, paths: Any, run_once: Any, console: Any) -> int:
    import signal
    import threading

    from fraud.kafka_config import KafkaClientConfig
    from fraud.topics import TRANSACTIONS
    from pipeline.continuous import ContinuousTrainer, WatchPolicy
    from pipeline.export import KafkaExportSource

    policy = WatchPolicy(min_new_events=args.min_new_events, period_s=args.period, poll_s=args.poll,
                         window_spans=args.window_spans, max_cycles=args.max_cycles)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())  # the loop finishes its cycle, then stops
    source = KafkaExportSource(KafkaClientConfig.from_env_and_args(args, client_id="fraudctl-train-watch"))
    topic = args.topic or TRANSACTIONS.name
    console.echo(f"watching {topic}: a cycle every {policy.min_new_events} new events or {policy.period_s:.0f}s "
                 f"(window {policy.window_spans} spans); Ctrl-C stops after the running cycle")
    try:
        ContinuousTrainer(paths, topic, policy, source, run_once, log=console.echo).run(stop)
    finally:
        source.close()
    return 0
