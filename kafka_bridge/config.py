"""The bridge's configuration: flags and FRAUD_BRIDGE_* environment variables, parsed once, frozen.

Kafka connection settings (bootstrap, TLS, SASL) are fraud.kafka_config's (--bootstrap ..., FRAUD_KAFKA_*);
the stream settings (delivery mode, group, batching, client library, health port) are fraud.stream's;
the rest (model server, model, gRPC TLS, explanation) are the bridge's own, listed in BRIDGE_OPTIONS.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fraud import topics
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig, parse_bootstrap
from fraud.signature import FEATURES_SIGNATURE_NAME, SIGNATURE_NAME
from fraud.stream.config import StreamConfig, stream_options
from fraud.stream.options import Option, add_options, parse_bool, resolve_options
from kafka_bridge.predict import GrpcTls, ModelInput

ENV_PREFIX = "FRAUD_BRIDGE_"
DEFAULT_GROUP = "fraud-bridge"
DEFAULT_HTTP_PORT = 9464
#: Under load the batch is what accumulated while the previous one was scored; this caps it. Each batch costs
#: a Predict's fixed share (gRPC and the graph call, ~1 ms of CPU across bridge and server) and a poll, so
#: a higher cap is more throughput at saturation: 2,048 against 512 measured a median 1.35x the bridge's rate
#: on 2 cores (kafka_bridge/README.md, "What one turn of the loop does"); below saturation batches stay small.
DEFAULT_BATCH_MAX_SIZE = 2048


def _path(text: str) -> Path:
    return Path(text).expanduser()


BRIDGE_OPTIONS: tuple[Option, ...] = (
    Option("input_topic", str, topics.TRANSACTIONS.name, "topic of transaction events"),
    Option("output_topic", str, topics.SCORES.name, "topic of score events"),
    Option("dlq_topic", str, topics.DLQ_BRIDGE.name, "dead-letter topic"),
    Option("server", str, "127.0.0.1:8500", "model server gRPC address host:port", metavar="HOST:PORT"),
    Option("model_name", str, "fraud", "model name in the Predict request"),
    Option("model_version", int, None, "pin a model version (default: the server's latest)", minimum=0),
    Option("model_version_label", str, None, "pin a version label, e.g. stable (instead of a version)"),
    Option("model_input", str, ModelInput.AUTO.value, f"what to send: {FEATURES_SIGNATURE_NAME} (float32 [N, 30] "
           f"tensor_content), {SIGNATURE_NAME}-style tf.Examples, or auto (the first when the model has it)",
           choices=[m.value for m in ModelInput]),
    Option("signature_name", str, SIGNATURE_NAME, "the tf.Example signature (model input examples, or the fallback)"),
    Option("grpc_deadline_ms", int, 5000, "deadline of one Predict call", minimum=1),
    Option("grpc_tls", parse_bool, False, "use TLS to the model server"),
    Option("grpc_ca_file", _path, None, "PEM roots to verify the server (default: system roots)", metavar="PEM"),
    Option("grpc_cert_file", _path, None, "client certificate (mutual TLS)", metavar="PEM"),
    Option("grpc_key_file", _path, None, "client key (mutual TLS)", metavar="PEM"),
    Option("grpc_server_name", str, None, "name to check in the server certificate"),
    Option("explain_top_k", int, 5, "feature contributions kept in each score's explanation", minimum=0),
    Option("log_level", str, "INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"]),
    Option("trace_file", _path, None, "diagnostics: append one JSON line of stage timestamps per batch (the "
           "latency budget of bench/bench_bridge.py)", metavar="PATH"),
)


def all_options() -> tuple[Option, ...]:
    return BRIDGE_OPTIONS + stream_options(group_id=DEFAULT_GROUP, http_port=DEFAULT_HTTP_PORT,
                                           batch_max_size=DEFAULT_BATCH_MAX_SIZE, batch_max_wait_ms=0)


@dataclass(frozen=True)
class BridgeConfig:
    stream: StreamConfig
    output_topic: str
    server: str
    model_name: str
    signature_name: str = SIGNATURE_NAME
    model_input: ModelInput = ModelInput.AUTO
    model_version: int | None = None
    model_version_label: str | None = None
    grpc_deadline_ms: int = 5000
    grpc_tls: GrpcTls | None = None
    explain_top_k: int = 5
    log_level: str = "INFO"
    trace_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_input", ModelInput(self.model_input))
        parse_bootstrap(self.server, "model server address")
        if self.model_version is not None and self.model_version_label:
            raise FraudError("model version and model version label are exclusive; give one")
        if self.output_topic in self.stream.input_topics or self.output_topic == self.stream.dlq_topic:
            raise FraudError(f"output topic {self.output_topic} is also the input or dead-letter topic")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_options(parser, all_options(), ENV_PREFIX, "bridge")
        KafkaClientConfig.add_arguments(parser)

    @classmethod
    def from_env_and_args(cls, args: argparse.Namespace | None = None,
                          environ: Mapping[str, str] | None = None) -> BridgeConfig:
        env = os.environ if environ is None else environ
        values = resolve_options(all_options(), args, env, ENV_PREFIX)
        kafka = KafkaClientConfig.from_env_and_args(args, env, client_id="fraud-bridge")
        stream = StreamConfig.from_options(values, kafka=kafka, input_topics=(values["input_topic"],),
                                           dlq_topic=values["dlq_topic"], component="kafka_bridge")
        tls_files = (values["grpc_ca_file"], values["grpc_cert_file"], values["grpc_key_file"])
        if any(tls_files) and not values["grpc_tls"]:
            raise FraudError(f"gRPC TLS files given but TLS is off (--grpc-tls 1 or {ENV_PREFIX}GRPC_TLS=1)")
        for f in tls_files:
            if f is not None and not f.is_file():
                raise FraudError(f"gRPC TLS file {f} does not exist")
        tls = GrpcTls(*tls_files, server_name=values["grpc_server_name"]) if values["grpc_tls"] else None
        return cls(stream=stream, output_topic=values["output_topic"], server=values["server"],
                   model_name=values["model_name"], signature_name=values["signature_name"],
                   model_input=ModelInput(values["model_input"]), trace_file=values["trace_file"],
                   model_version=values["model_version"], model_version_label=values["model_version_label"],
                   grpc_deadline_ms=values["grpc_deadline_ms"], grpc_tls=tls, explain_top_k=values["explain_top_k"],
                   log_level=values["log_level"])
