"""The server's configuration: `tensorflow_model_server` flags and TF Serving's text-format config files,
parsed once at start-up into frozen dataclasses.

Flags have tensorflow_model_server's names, defaults and `--flag=value` syntax, so the same command line
works against either server (see serving/README.md for the few differences, e.g. the bind address).
Config files are TF Serving's: `--model_config_file` (ModelServerConfig), `--batching_parameters_file`
(BatchingParameters), `--monitoring_config_file` (MonitoringConfig), read with protobuf's text format.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fraud.errors import FraudError
from serving.batching import BatchingParameters


class ConfigError(FraudError):
    """A flag or config file the server cannot start with."""


@dataclass(frozen=True)
class VersionPolicy:
    """ServableVersionPolicy: serve the latest N versions, all versions, or specific ones."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, validated. Build it with `parse_args` or directly in tests."""

    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    port: int = 8500  # 0 here (not on the command line) binds an ephemeral port, for tests
    rest_api_host: str = "127.0.0.1"
    rest_api_port: int | None = 8501  # None: no REST (the CLI's --rest_api_port=0); 0: ephemeral port
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    rest_api_num_threads: int = 0  # graph-call workers for REST (0: 8)
    #: Largest REST request body accepted; larger ones answer 413 unread (0: no limit, TF Serving's behaviour).
    rest_api_max_body_bytes: int = 64 * 1024 * 1024
    #: Serve ModelService/HandleReloadConfigRequest (replaces the model list); off: UNIMPLEMENTED.
    enable_reload_config_request: bool = False
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching: BatchingParameters = field(default_factory=BatchingParameters)
    monitoring_path: str | None = None  # Prometheus exposition path on the REST port; None = disabled
    allow_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    saved_model_tags: tuple[str, ...] = ("serve",)
    grpc_max_threads: int = 32
    enable_signature_method_name_check: bool = False
    enable_serialization_as_tensor_content: bool = False
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    log_level: str = "INFO"


# ---------------------------------------------------------------------------------------------
# TF Serving's text-format config files


def parse_model_server_config(text: str, source: str = "model_config_file") -> tuple[ModelConfig, ...]:
    """Parse a ModelServerConfig (model_config_list) in protobuf text format, with TF Serving's checks."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a ModelServerConfig: {exc}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{source}: only model_config_list is supported")
    models = []
    names: set[str] = set()
    for entry in proto.model_config_list.config:
        if entry.name in names:
            raise ConfigError(f"{source}: Illegal to list model {entry.name} multiple times in config list")
        names.add(entry.name)
        if not entry.name:
            raise ConfigError(f"{source}: a model config has no name")
        platform = entry.model_platform
        if entry.model_type:  # deprecated ModelType enum; 1 = TENSORFLOW
            if platform:
                raise ConfigError(f"{source}: Illegal setting both ModelServerConfig::model_type (deprecated) and "
                                  f"ModelServerConfig::model_platform, model name is {entry.name}")
            platform = "tensorflow" if entry.model_type == 1 else ""
        if not platform:
            raise ConfigError(f"{source}: Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                              f"ModelServerConfig::model_platform, model name is {entry.name}")
        if platform != "tensorflow":
            raise ConfigError(f"{source}: Model {entry.name} requests unsupported platform {platform}")
        if not os.path.isabs(entry.base_path) and "://" not in entry.base_path:
            raise ConfigError(f"{source}: Expected model {entry.name} to have an absolute path or URI; "
                              f"got base_path()={entry.base_path}")
        if "://" in entry.base_path:
            raise ConfigError(f"{source}: model {entry.name}: only local base paths are supported, got {entry.base_path}")
        models.append(ModelConfig(
            name=entry.name,
            base_path=entry.base_path,
            policy=_policy(entry.model_version_policy),
            labels=MappingProxyType(dict(entry.version_labels)),
        ))
    return tuple(models)


def _policy(proto: Any) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(int(v) for v in proto.specific.versions))
    num = proto.latest.num_versions if kind == "latest" else 1
    return VersionPolicy("latest", num_versions=max(int(num), 1))


_DYNAMIC: dict[str, Any] = {}


def _config_messages() -> dict[str, Any]:
    """BatchingParameters and MonitoringConfig message classes.

    `tensorflow-serving-api` ships neither proto, so they are declared here with TF Serving's field
    names and numbers (session_bundle_config.proto, monitoring_config.proto) so files written for
    TF Serving parse identically.
    """
    if _DYNAMIC:
        return _DYNAMIC
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    fd = descriptor_pb2.FileDescriptorProto(name="fraud/serving/tf_serving_config.proto", package="tensorflow.serving",
                                            syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto

    def add(msg: Any, name: str, number: int, type_: int, type_name: str = "", repeated: bool = False) -> None:
        f = msg.field.add(name=name, number=number, type=type_,
                          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
        if type_name:
            f.type_name = type_name

    batching = fd.message_type.add(name="BatchingParameters")
    for name, number, wrapper in [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue"),
                                  ("enable_large_batch_splitting", 8, "BoolValue"),
                                  ("max_execution_batch_size", 9, "Int64Value")]:
        add(batching, name, number, F.TYPE_MESSAGE, f".google.protobuf.{wrapper}")
    add(batching, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated=True)
    add(batching, "pad_variable_length_inputs", 7, F.TYPE_BOOL)
    prometheus = fd.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, F.TYPE_BOOL)
    add(prometheus, "path", 2, F.TYPE_STRING)
    monitoring = fd.message_type.add(name="MonitoringConfig")
    add(monitoring, "prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    pool.Add(fd)
    factory = message_factory.MessageFactory(pool)
    for name in ("BatchingParameters", "MonitoringConfig"):
        _DYNAMIC[name] = factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
    return _DYNAMIC


def parse_batching_parameters(text: str, source: str = "batching_parameters_file") -> BatchingParameters:
    from google.protobuf import text_format

    proto = _config_messages()["BatchingParameters"]()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a BatchingParameters: {exc}") from None
    defaults = BatchingParameters()

    def get(name: str, default: Any) -> Any:
        return getattr(proto, name).value if proto.HasField(name) else default

    params = BatchingParameters(
        max_batch_size=int(get("max_batch_size", defaults.max_batch_size)),
        batch_timeout_micros=int(get("batch_timeout_micros", defaults.batch_timeout_micros)),
        max_enqueued_batches=int(get("max_enqueued_batches", defaults.max_enqueued_batches)),
        num_batch_threads=int(get("num_batch_threads", defaults.num_batch_threads)),
        thread_pool_name=str(get("thread_pool_name", defaults.thread_pool_name)),
        enable_large_batch_splitting=bool(get("enable_large_batch_splitting", False)),
        max_execution_batch_size=int(get("max_execution_batch_size", 0)) or None,
        allowed_batch_sizes=tuple(int(v) for v in proto.allowed_batch_sizes),
        pad_variable_length_inputs=bool(proto.pad_variable_length_inputs),
    )
    try:
        params.validate()
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return params


PROMETHEUS_DEFAULT_PATH = "/monitoring/prometheus/metrics"


def parse_monitoring_config(text: str, source: str = "monitoring_config_file") -> str | None:
    """The Prometheus path to serve, or None when Prometheus is not enabled."""
    from google.protobuf import text_format

    proto = _config_messages()["MonitoringConfig"]()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a MonitoringConfig: {exc}") from None
    if not proto.prometheus_config.enable:
        return None
    return proto.prometheus_config.path or PROMETHEUS_DEFAULT_PATH


# ---------------------------------------------------------------------------------------------
# Flags


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "t", "y"):
        return True
    if value in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """tensorflow_model_server's flags (the subset this server implements), plus --host/--rest_api_host."""
    a = parser.add_argument
    flag = {"nargs": "?", "const": True, "type": _bool}
    a("--port", type=int, default=8500, help="gRPC port (default 8500)")
    a("--host", default="127.0.0.1", help="address the gRPC server binds (default 127.0.0.1; TF Serving: 0.0.0.0)")
    a("--rest_api_port", type=int, default=8501, help="REST port (default 8501); 0 disables REST")
    a("--rest_api_host", default=None, help="address the REST server binds (default: --host)")
    a("--rest_api_timeout_in_ms", type=int, default=30000, help="deadline of REST calls (default 30000)")
    a("--rest_api_num_threads", type=int, default=0, help="REST graph-call workers (default 8); connections get a thread each")
    a("--rest_api_enable_cors_support", default=False, **flag, help="add CORS headers to REST responses")
    a("--rest_api_max_body_bytes", type=int, default=64 * 1024 * 1024,
      help="largest REST request body; larger ones answer 413 (default 64 MiB; 0: no limit, as TF Serving)")
    a("--enable_reload_config_request", default=False, **flag,
      help="serve ModelService/HandleReloadConfigRequest, which replaces the served model list for anyone who "
           "reaches the gRPC port (default off: UNIMPLEMENTED; TF Serving always serves it)")
    a("--model_name", default="default", help="model name when no --model_config_file is given")
    a("--model_base_path", default=None, help="TF Serving base path (integer version directories)")
    a("--model_config_file", default=None, help="ModelServerConfig in text format (several models, labels)")
    a("--model_config_file_poll_wait_seconds", type=int, default=0, help="re-read the config file every N s (0: never)")
    a("--file_system_poll_wait_seconds", type=int, default=1, help="poll base paths for versions every N s (0: once)")
    a("--enable_batching", default=False, **flag, help="merge concurrent requests into one graph call")
    a("--batching_parameters_file", default=None, help="BatchingParameters in text format")
    a("--monitoring_config_file", default=None, help="MonitoringConfig in text format (Prometheus on the REST port)")
    a("--allow_version_labels_for_unavailable_models", default=False, **flag,
      help="allow labels to point at versions that are not loaded yet")
    a("--max_num_load_retries", type=int, default=5, help="retries of a failed version load (default 5)")
    a("--load_retry_interval_micros", type=int, default=60_000_000, help="pause between load retries")
    a("--enable_model_warmup", default=True, **flag, help="replay assets.extra/tf_serving_warmup_requests before serving")
    a("--num_request_iterations_for_warmup", type=int, default=1, help="times each warm-up record is replayed")
    a("--saved_model_tags", default="serve", help="comma-separated MetaGraphDef tags to load")
    a("--grpc_max_threads", type=int, default=32, help="gRPC worker threads")
    a("--enable_signature_method_name_check", default=False, **flag, help="check SignatureDef method names")
    a("--enable_serialization_as_tensor_content", default=False, **flag,
      help="send Predict outputs in tensor_content instead of typed fields")
    a("--tensorflow_intra_op_parallelism", type=int, default=0, help="TF intra-op threads (0: auto)")
    a("--tensorflow_inter_op_parallelism", type=int, default=0, help="TF inter-op threads (0: auto)")
    a("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (JSON lines on stderr)")


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"--{flag}={path}: cannot read ({exc.strerror})") from None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Validate parsed flags and read the config files they name."""
    for flag in ("port", "rest_api_port"):
        value = getattr(args, flag)
        if not 0 <= value <= 65535:
            raise ConfigError(f"--{flag}={value}: not a TCP port")
    if args.port == 0:
        raise ConfigError("--port=0: this server always serves gRPC; give it a port")
    if args.rest_api_port and args.rest_api_port == args.port:
        raise ConfigError("--rest_api_port must be different from --port")
    if args.model_config_file:
        models = parse_model_server_config(_read(args.model_config_file, "model_config_file"),
                                           f"--model_config_file={args.model_config_file}")
    elif args.model_base_path:
        models = (ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path)),)
    else:
        raise ConfigError("give --model_base_path (with --model_name) or --model_config_file")
    if args.batching_parameters_file and not args.enable_batching:
        raise ConfigError("--batching_parameters_file is set without setting --enable_batching to true")
    batching = BatchingParameters()
    if args.batching_parameters_file:
        batching = parse_batching_parameters(_read(args.batching_parameters_file, "batching_parameters_file"),
                                             f"--batching_parameters_file={args.batching_parameters_file}")
    monitoring = None
    if args.monitoring_config_file:
        monitoring = parse_monitoring_config(_read(args.monitoring_config_file, "monitoring_config_file"),
                                             f"--monitoring_config_file={args.monitoring_config_file}")
    if args.file_system_poll_wait_seconds < 0:
        raise ConfigError("--file_system_poll_wait_seconds must be >= 0")
    if args.grpc_max_threads < 1:
        raise ConfigError("--grpc_max_threads must be >= 1")
    if args.rest_api_max_body_bytes < 0:
        raise ConfigError(f"--rest_api_max_body_bytes={args.rest_api_max_body_bytes}: must be >= 0 (0: no limit)")
    tags = tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    return ServerConfig(
        models=models,
        host=args.host,
        port=args.port,
        rest_api_host=args.rest_api_host or args.host,
        rest_api_port=args.rest_api_port or None,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        rest_api_enable_cors_support=args.rest_api_enable_cors_support,
        rest_api_num_threads=max(0, args.rest_api_num_threads),
        rest_api_max_body_bytes=args.rest_api_max_body_bytes,
        enable_reload_config_request=args.enable_reload_config_request,
        model_config_file=os.path.abspath(args.model_config_file) if args.model_config_file else None,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching,
        batching=batching,
        monitoring_path=monitoring,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        max_num_load_retries=max(0, args.max_num_load_retries),
        load_retry_interval_micros=args.load_retry_interval_micros,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=max(1, args.num_request_iterations_for_warmup),
        saved_model_tags=tags or ("serve",),
        grpc_max_threads=args.grpc_max_threads,
        enable_signature_method_name_check=args.enable_signature_method_name_check,
        enable_serialization_as_tensor_content=args.enable_serialization_as_tensor_content,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        log_level=args.log_level,
    )


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m serving") -> ServerConfig:
    parser = argparse.ArgumentParser(prog=prog, description="TF Serving-compatible model server (gRPC + REST).")
    add_flags(parser)
    return config_from_args(parser.parse_args(argv))
