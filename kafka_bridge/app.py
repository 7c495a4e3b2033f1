"""Run the bridge: wire the config, the Predict client, the scorer and fraud.stream's processor together."""

from __future__ import annotations

import logging

from fraud.errors import FraudError
from fraud.logs import configure_logging, log_event
from fraud.stream.metrics import STREAM_METRICS, PrometheusMetrics
from fraud.stream.processor import StreamProcessor, settle_heap
from fraud.stream.records import FatalError
from kafka_bridge.config import BridgeConfig
from kafka_bridge.predict import PredictClient
from kafka_bridge.scoring import BRIDGE_METRICS, Scorer

log = logging.getLogger("kafka_bridge")


def build(config: BridgeConfig) -> tuple[StreamProcessor, PredictClient]:
    metrics = PrometheusMetrics("fraud_bridge", STREAM_METRICS + BRIDGE_METRICS)
    client = PredictClient(config.server, model_name=config.model_name, signature_name=config.signature_name,
                           model_input=config.model_input, version=config.model_version,
                           version_label=config.model_version_label, deadline_s=config.grpc_deadline_ms / 1000.0,
                           tls=config.grpc_tls)
    scorer = Scorer(client.start, output_topic=config.output_topic, metrics=metrics, model_name=config.model_name,
                    explain_top_k=config.explain_top_k, on_invalid_model=client.invalidate,
                    trace_file=config.trace_file)
    return StreamProcessor(config.stream, scorer, metrics=metrics), client


def run(config: BridgeConfig) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, raises FraudError on a fatal failure."""
    configure_logging(config.log_level)
    processor, client = build(config)
    processor.install_signal_handlers()
    log_event(log, logging.INFO, "bridge_starting", server=config.server, model=config.model_name,
              output_topic=config.output_topic, tls=config.grpc_tls is not None)
    settle_heap(config.stream.gc_threshold)
    try:
        processor.run()
    except FatalError as exc:
        raise FraudError(f"bridge stopped: {exc}") from exc
    finally:
        client.close()
    return 0
