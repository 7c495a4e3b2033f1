"""`ModelServer`: the model manager, batching, gRPC and REST front ends and metrics, started and stopped
in the right order.

Start: configure TensorFlow's thread pools, load the initial versions (the call blocks until every
model has a version AVAILABLE, like tensorflow_model_server), then open gRPC and REST.
Stop (SIGTERM/SIGINT in `serve_forever`): refuse new calls, let in-flight ones finish (bounded by the
grace period), retire every version, stop the batch threads. Nothing started here survives `stop()`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from fraud.logs import log_event
from serving.api import ServingApi
from serving.batching import BatchScheduler
from serving.config import ConfigError, ModelConfig, ServerConfig, parse_model_server_config
from serving.errors import ServingError
from serving.grpc_service import GrpcServer, PredictionServicer, make_server
from serving.manager import ModelManager
from serving.metrics import PrometheusMetrics, ServingMetrics
from serving.rest import RestApp, RestServer

log = logging.getLogger("serving.server")


def configure_tensorflow(intra_op: int = 0, inter_op: int = 0, disable_thread_spinning: bool = True) -> None:
    """TensorFlow's thread pools, set before its runtime starts (later calls keep what is there).

    Idle pool threads spin by default (low latency for one process owning the machine). A server
    shares the CPUs with the gRPC stack and, here, with its clients: measured with bench/bench_serving.py's
    model, turning spinning off cut the server's CPU per request by about a fifth at equal latency.
    TF2 has no public switch for ConfigProto.experimental.disable_thread_spinning, hence the context's
    private `_config`, used only while the context is not yet initialized.
    """
    import tensorflow as tf
    from tensorflow.python.eager import context

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # TF already initialized in this process (tests): keep its settings
        log.debug("TensorFlow thread pools already configured")
        return
    ctx = context.context()
    if disable_thread_spinning and getattr(ctx, "_context_handle", None) is None and hasattr(ctx, "_config"):
        from tensorflow.core.protobuf import config_pb2

        proto = config_pb2.ConfigProto()
        if ctx._config is not None:
            proto.CopyFrom(ctx._config)
        proto.experimental.disable_thread_spinning = True
        ctx._config = proto


def _configure_tensorflow(config: ServerConfig) -> None:
    configure_tensorflow(config.tensorflow_intra_op_parallelism, config.tensorflow_inter_op_parallelism)


class ModelServer:
    """A TF Serving-compatible server for the models of `config`."""

    def __init__(self, config: ServerConfig, metrics: ServingMetrics | None = None) -> None:
        self.config = config
        self.metrics: Any = metrics if metrics is not None else PrometheusMetrics()
        self.batching: BatchScheduler | None = None
        self.manager: ModelManager | None = None
        self._grpc: GrpcServer | None = None
        self._rest: RestServer | None = None
        self.grpc_port = 0
        self.rest_port: int | None = None
        self._stop_requested = threading.Event()
        self._config_thread: threading.Thread | None = None
        self._stopped = False
        self._drained = True

    def start(self, model_timeout: float | None = None) -> ModelServer:
        """Load the models and open the ports. Raises ServingError (and cleans up) when that fails."""
        config = self.config
        _configure_tensorflow(config)
        try:
            if config.enable_batching:
                self.batching = BatchScheduler(config.batching, self.metrics)
            self.manager = ModelManager(config, self.metrics, self.batching)
            api = ServingApi(self.manager, self.metrics)
            self.manager.start(wait=True, timeout=model_timeout)
            reload = self.reload_models if config.enable_reload_config_request else None
            servicer = PredictionServicer(api, config.enable_serialization_as_tensor_content, reload)
            self._grpc = make_server(servicer, config.host, config.port, config.grpc_max_threads)
            self.grpc_port = self._grpc.port
            if config.rest_api_port is not None:
                render = self.metrics.render if hasattr(self.metrics, "render") else None
                app = RestApp(api, config.rest_api_timeout_in_ms, config.rest_api_enable_cors_support,
                              config.monitoring_path, render, workers=config.rest_api_num_threads or 8,
                              max_body_bytes=config.rest_api_max_body_bytes)
                self._rest = RestServer(app, config.rest_api_host, config.rest_api_port)
                self.rest_port = self._rest.port
            self._grpc.start()
            if self._rest is not None:
                self._rest.start()
        except BaseException:
            self.stop()
            raise
        if config.model_config_file and config.model_config_file_poll_wait_seconds > 0:
            self._config_thread = threading.Thread(target=self._poll_config, name="serving-config-poll", daemon=True)
            self._config_thread.start()
        log_event(log, logging.INFO, "server_started", grpc=f"{config.host}:{self.grpc_port}",
                   rest=f"{config.rest_api_host}:{self.rest_port}" if self.rest_port else None,
                   models=[m.name for m in config.models], batching=config.enable_batching)
        return self

    def reload_models(self, models: tuple[ModelConfig, ...]) -> None:
        """Install a new model list (HandleReloadConfigRequest, or a changed --model_config_file)."""
        assert self.manager is not None
        self.manager.apply_config(models)
        log_event(log, logging.INFO, "config_reloaded", models=[m.name for m in models])

    def _poll_config(self) -> None:
        path = self.config.model_config_file
        assert path is not None
        last: str | None = None
        try:
            with open(path, encoding="utf-8") as f:
                last = f.read()
        except OSError:
            pass
        while not self._stop_requested.wait(self.config.model_config_file_poll_wait_seconds):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                log_event(log, logging.ERROR, "config_unreadable", path=path, error=exc.strerror)
                continue
            if text == last:
                continue
            last = text
            try:
                self.reload_models(parse_model_server_config(text, path))
            except (ConfigError, ServingError) as exc:
                log_event(log, logging.ERROR, "config_reload_failed", path=path,
                           error=getattr(exc, "message", None) or str(exc))

    def stop(self, grace: float = 10.0) -> bool:
        """Stop serving: in-flight calls get `grace` seconds, then everything is released. Idempotent.

        Returns False when some graph call was still running after the grace period: TensorFlow cannot
        interrupt it, so its thread is left to finish (the CLI then exits the process anyway).
        """
        if self._stopped:
            return self._drained
        self._stopped = True
        self._stop_requested.set()
        deadline = time.monotonic() + grace
        drained = True
        if self._grpc is not None:
            drained &= self._grpc.stop(deadline)
        if self._rest is not None:
            drained &= self._rest.stop(deadline)
        if self._config_thread is not None:
            self._config_thread.join()
        if self.manager is not None:
            self.manager.stop(drain_timeout=max(0.0, deadline - time.monotonic()))
        if self.batching is not None:
            self.batching.close(timeout=max(0.1, deadline - time.monotonic()))
        self._drained = drained
        log_event(log, logging.INFO, "server_stopped", drained=drained)
        return drained

    def request_stop(self) -> None:
        self._stop_requested.set()

    def serve_forever(self) -> bool:
        """Block until SIGTERM/SIGINT (or `request_stop`), then stop cleanly; returns `stop()`'s result."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda signum, frame: self._stop_requested.set())
        try:
            while not self._stop_requested.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            drained = self.stop()
        return drained

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
