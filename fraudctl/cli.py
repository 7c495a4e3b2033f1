"""`fraudctl`: the project's one command line.

Each concern keeps its subcommands in its own `cli` module, which exposes `register(subparsers)`; the
list below is the only place they are wired in. Handlers import heavy packages (TensorFlow, TFX) lazily
so `fraudctl --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

import kafka_bridge.cli
import monitoring.cli
import pipeline.cli
import preprocessing.cli
import serving.cli
import warehouse.cli
from fraud.errors import FraudError
from fraudctl import data, demo, kafka

#: Modules that register subcommands, in the order `fraudctl --help` lists them.
COMMAND_MODULES: tuple[ModuleType, ...] = (
    demo,
    data,
    kafka,
    preprocessing.cli,
    pipeline.cli,
    serving.cli,
    kafka_bridge.cli,
    warehouse.cli,
    monitoring.cli,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudctl", description="Real-time credit-card fraud detection on TFX and Apache Kafka."
    )
    _add_verbose(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_verbose(sub, default=argparse.SUPPRESS)  # `fraudctl train -v` as well as `fraudctl -v train`
    _record_prog(parser)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, default: object = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show library output (TensorFlow, absl, Beam, setuptools) live instead of in a log file")


def _record_prog(parser: argparse.ArgumentParser) -> None:
    """Let each (sub)command know its full name (e.g. "fraudctl data fetch") for one-line errors."""
    parser.set_defaults(prog_name=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _record_prog(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except FraudError as exc:
        print(f"{args.prog_name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{args.prog_name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
