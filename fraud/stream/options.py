"""Declare a service's settings once; read each from a flag, else an environment variable, else a default.

`Option` names a setting; `add_options` puts the flags on an argparse parser; `resolve_options` turns the
parsed flags plus the environment into typed values, raising one-line `FraudError`s that name the flag
and the variable. Services (the bridge, the preprocessing job) build their frozen configs from this, so
every flag is also settable as `<PREFIX><NAME>` (e.g. `--batch-max-size` <-> FRAUD_BRIDGE_BATCH_MAX_SIZE).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.errors import FraudError
from fraud.stream.watchdog import DEFAULT_FETCH_STALL_S

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected one of {'/'.join(_TRUE + _FALSE)}")


def parse_path(text: str) -> Path:
    return Path(text).expanduser()


def parse_csv(text: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise ValueError("expected a comma-separated list")
    return items


@dataclass(frozen=True)
class Option:
    """One setting: `name` is the attribute (snake_case); the flag is --name-with-dashes."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    choices: Sequence[str] | None = None
    minimum: float | None = None
    metavar: str | None = None
    secret: bool = False  # environment only (a flag would show in `ps`)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def env_name(self, prefix: str) -> str:
        return prefix + self.name.upper()


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option], prefix: str, title: str) -> None:
    group = parser.add_argument_group(f"{title} (flags override {prefix}* environment variables)")
    for opt in options:
        if opt.secret:
            continue
        default = "" if opt.default is None else f" (default {_show(opt.default)})"
        group.add_argument(opt.flag, dest=opt.name, default=None, choices=opt.choices, metavar=opt.metavar,
                           help=f"{opt.help}{default}; env {opt.env_name(prefix)}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def resolve_options(options: Iterable[Option], args: argparse.Namespace | None, environ: Mapping[str, str],
                    prefix: str) -> dict[str, Any]:
    """name -> typed value for every option: flag, else environment, else default."""
    out: dict[str, Any] = {}
    for opt in options:
        raw = getattr(args, opt.name, None) if args is not None and not opt.secret else None
        where = opt.flag
        if raw is None:
            env_raw = environ.get(opt.env_name(prefix))
            if env_raw not in (None, ""):
                raw, where = env_raw, opt.env_name(prefix)
        if raw is None:
            out[opt.name] = opt.default
            continue
        if not isinstance(raw, str):  # set programmatically on the namespace
            out[opt.name] = raw
            continue
        if opt.choices is not None and raw not in opt.choices:
            raise FraudError(f"{where}={raw!r}: expected one of {', '.join(opt.choices)}")
        try:
            value = opt.parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if opt.secret else repr(raw)
            raise FraudError(f"{where}={shown}: {exc}") from None
        if opt.minimum is not None and value < opt.minimum:
            raise FraudError(f"{where}={raw!r}: must be >= {opt.minimum:g}")
        out[opt.name] = value
    return out


#: Every long-running Kafka service has it (fraud.stream.watchdog.FetchWatch).
FETCH_STALL_OPTION = Option(
    "fetch_stall_s", float, DEFAULT_FETCH_STALL_S, "exit with status 75 (to be restarted) when assigned partitions hold records "
    "and none was fetched for this long (a wedged consumer); longer than upstream transaction timeouts; 0: off",
    minimum=0)

#: Options every reader service (sink, monitor) has: the fetch watchdog, its exit when idle, /healthz and
#: /metrics, log level.
READER_SERVICE_OPTIONS: tuple[Option, ...] = (
    FETCH_STALL_OPTION,
    Option("stop_when_idle_s", float, 0.0, "exit once every partition is read to its end and no record came for "
           "this many seconds (0: run until stopped)", minimum=0),
    Option("http_host", str, "127.0.0.1", "bind address of /healthz and /metrics"),
    Option("http_port", int, -1, "port of /healthz and /metrics (-1: off, 0: any free port)", minimum=-1),
    Option("log_level", str, "INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"]),
)
