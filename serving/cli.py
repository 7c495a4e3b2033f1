"""`fraudctl serve` and `python -m serving`: run the model server with tensorflow_model_server's flags.

    fraudctl serve --model_name=fraud --model_base_path=var/serving/models/fraud
    python -m serving --model_config_file=models.config --enable_batching --monitoring_config_file=mon.config

Without --model_base_path or --model_config_file, `fraudctl serve` serves every model directory under
the project's serving model dir (fraud.paths: FRAUD_HOME/serving/models/<name>/<version>).
"""

from __future__ import annotations

import argparse
import os
import sys

from fraud.errors import FraudError


def register(subparsers: argparse._SubParsersAction) -> None:
    from serving.config import add_flags

    parser = subparsers.add_parser("serve", help="run the TF Serving-compatible model server (gRPC 8500, REST 8501)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser)
    parser.set_defaults(func=_serve)


def _default_models(args: argparse.Namespace) -> None:
    """Point a bare `fraudctl serve` at the project's serving model dir (one model per subdirectory)."""
    if args.model_base_path or args.model_config_file:
        return
    from fraud.paths import load_paths

    root = load_paths().serving_model_dir
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        raise FraudError(f"no --model_base_path or --model_config_file, and no model directories under {root}")
    if len(names) == 1 or args.model_name in names:
        name = args.model_name if args.model_name in names else names[0]
        args.model_name, args.model_base_path = name, str(root / name)
        return
    raise FraudError(f"several models under {root} ({', '.join(names)}): pick one with --model_name "
                     "or write a --model_config_file")


def _serve(args: argparse.Namespace) -> int:
    _default_models(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Parse the flags into a ServerConfig, start, serve until SIGTERM/SIGINT."""
    from serving import logs
    from serving.config import config_from_args

    config = config_from_args(args)
    logs.configure(config.log_level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the JSON log
    from serving.errors import ServingError
    from serving.server import ModelServer

    server = ModelServer(config)
    try:
        server.start()
    except ServingError as exc:
        raise FraudError(f"cannot start: {exc.message}") from None
    if not server.serve_forever():
        # A graph call that outlived the grace period cannot be interrupted; don't let it hold the exit.
        sys.stderr.flush()
        os._exit(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m serving`: the same flags as `fraudctl serve`, without the default model lookup."""
    from serving.config import add_flags

    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FraudError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
