"""`fraudctl serve` and `python -m serving`: run the model server with tensorflow_model_server's flags.

    fraudctl serve --model_name=fraud --model_base_path=var/serving/models/fraud
    python -m serving --model_config_file=models.config --enable_batching --monitoring_config_file=mon.config

Without --model_base_path or --model_config_file, `fraudctl serve` serves every model directory under
the project's serving model dir (fraud.paths: FRAUD_HOME/serving/models/<name>/<version>), each under
its directory's name.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from fraud.errors import FraudError
from fraud.logs import configure_logging
from fraud.paths import load_paths

if TYPE_CHECKING:
    from serving.config import ModelConfig, ServerConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    from serving.config import add_flags

    parser = subparsers.add_parser("serve", help="run the TF Serving-compatible model server (gRPC 8500, REST 8501)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser)
    parser.set_defaults(func=_serve)


def _project_models() -> tuple[ModelConfig, ...]:
    """Every model directory under the project's serving model dir (FRAUD_HOME/serving/models/<name>)."""
    from serving.config import ModelConfig

    root = load_paths().serving_model_dir
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if not names:
        raise FraudError(f"no --model_base_path or --model_config_file, and no model directories under {root}")
    return tuple(ModelConfig(name=name, base_path=str(root / name)) for name in names)


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from serving.config import config_from_args

    models = None
    if not args.model_base_path and not args.model_config_file:
        models = _project_models()
        args.model_name, args.model_base_path = models[0].name, models[0].base_path
    config = config_from_args(args)
    if models is not None:
        config = replace(config, models=models)
    return run(config)


def run(config: ServerConfig) -> int:
    """Start the server for `config` and serve until SIGTERM/SIGINT."""

    configure_logging(config.log_level)
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
        from serving.config import config_from_args

        return run(config_from_args(args))
    except FraudError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
