"""`fraudctl bridge run` and `python -m kafka_bridge`: score transactions from Kafka with the model server.

    fraudctl bridge run --server 127.0.0.1:8500 --delivery exactly_once --instance-id bridge-0
    FRAUD_BRIDGE_DELIVERY=exactly_once FRAUD_KAFKA_BOOTSTRAP=kafka:9092 python -m kafka_bridge

Every flag has a FRAUD_BRIDGE_* environment variable (Kafka connection: FRAUD_KAFKA_*); see
kafka_bridge/README.md.
"""

from __future__ import annotations

import argparse
import sys

from fraud.errors import FraudError


def _add_run(parser: argparse.ArgumentParser) -> None:
    from kafka_bridge.config import BridgeConfig

    BridgeConfig.add_arguments(parser)
    parser.set_defaults(func=_run)


def register(subparsers: argparse._SubParsersAction) -> None:
    bridge = subparsers.add_parser("bridge", help="the Kafka -> gRPC Predict -> Kafka scoring bridge",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = bridge.add_subparsers(dest="bridge_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="consume transactions, score them, produce score events",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run(run)


def _run(args: argparse.Namespace) -> int:
    from kafka_bridge.app import run
    from kafka_bridge.config import BridgeConfig

    return run(BridgeConfig.from_env_and_args(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafka_bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except FraudError as exc:
        print(f"kafka_bridge: {exc}", file=sys.stderr)
        return exc.exit_code
