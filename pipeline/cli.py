"""`fraudctl` commands of the training pipeline: `export`, `train`, `report`.

    fraudctl export [--topic T] [--format json|avro]     one new span from Kafka (pipeline/export.py)
    fraudctl export --seal SPAN_DIR                      seal a span a Kafka Connect sink wrote
    fraudctl train [--beam] [--window-spans N] ...       run the pipeline on the latest span(s)
    fraudctl report                                      HTML page of the latest run (pipeline/report.py)
"""

from __future__ import annotations

import argparse

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
                   help="largest AUPRC drop allowed against the latest blessed model of the same kind")
    p.add_argument("--train-steps", type=int, default=None, help="upper bound on gradient steps per seed")
    p.add_argument("--window-spans", type=int, default=1, metavar="N",
                   help="train on the latest N export spans as one dataset (exports are incremental: each span "
                        "holds what arrived since the previous one); default 1")
    p.add_argument("--no-infra-validation", action="store_true", help="push without loading the model in a server")
    p.add_argument("--cache", action="store_true", help="reuse outputs of components whose inputs did not change")
    p.set_defaults(func=_train)
    report.register(subparsers)


def _train(args: argparse.Namespace) -> int:
    if args.window_spans < 1:
        raise FraudError(f"--window-spans={args.window_spans}: must be at least 1")
    paths = load_paths()
    if not any(s.complete for s in spans.list_spans(paths.exports_dir)):
        raise FraudError(f"{paths.exports_dir}: no complete export span; run `fraudctl export` first")
    from pipeline import pipeline as pl

    defaults = pl.Gates()
    options = {
        "gates": pl.Gates(min_auprc=defaults.min_auprc if args.min_auprc is None else args.min_auprc,
                          max_auprc_drop=defaults.max_auprc_drop if args.max_auprc_drop is None else args.max_auprc_drop),
        "training": pl.TrainingSettings(train_steps=args.train_steps),
        "infra_validation": pl.INFRA_NONE if args.no_infra_validation else pl.INFRA_LOCAL,
        "enable_cache": args.cache,
        "window_spans": args.window_spans,
    }
    log = timestamped_log(paths.logs_dir, "train")
    with quiet_output(log, verbose=getattr(args, "verbose", False)) as console:
        try:
            with component_lines(console):
                if args.beam:
                    from pipeline import beam_runner

                    beam_runner.run(paths, **options)
                else:
                    from pipeline import local_runner

                    local_runner.run(paths, **options)
        except Exception as exc:  # noqa: BLE001 - a failed component: one line saying which and why
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "" if getattr(args, "verbose", False) else f" (log: {log})"
            raise FraudError(f"pipeline run failed: {type(exc).__name__}: {message}{where}") from None
    print(f"pipeline run finished; `fraudctl report` renders it (models under {paths.serving_model_dir})")
    if not getattr(args, "verbose", False):
        print(f"library output: {log}")
    return 0
