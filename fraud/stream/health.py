"""A long-running job's life and its HTTP endpoint: /healthz (liveness), /readyz (readiness), /metrics.

`Lifecycle` is the one place for what the stream jobs, the warehouse sink and the monitor share: the
state their endpoint reports (starting -> running -> stopping -> stopped, or failed), the loop's
heartbeat, the endpoint's opening and closing, and the `<component>_stopped` log line.

The endpoint binds to 127.0.0.1 unless the config says otherwise, runs in a daemon thread and only reads
a snapshot the processing loop publishes, so a slow scrape never blocks the loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from fraud.errors import FraudError
from fraud.logs import log_event

#: (healthy, ready, details) as the processor reports them.
HealthFn = Callable[[], tuple[bool, bool, dict[str, Any]]]


class HealthServer:
    def __init__(self, host: str, port: int, health: HealthFn, metrics: Callable[[], bytes] | None) -> None:
        self._health = health
        self._metrics = metrics
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise FraudError(f"cannot listen on {host}:{port} for /healthz and /metrics: {exc.strerror}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/metrics" and self._metrics is not None:
            body, code, ctype = self._metrics(), 200, "text/plain; version=0.0.4; charset=utf-8"
        elif path in ("/healthz", "/readyz"):
            healthy, ready, details = self._health()
            ok = healthy if path == "/healthz" else (healthy and ready)
            body = orjson.dumps({"status": "ok" if ok else "unavailable", **details})
            code, ctype = (200 if ok else 503), "application/json"
        else:
            body, code, ctype = b'{"error": "not found"}', 404, "application/json"
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


class Lifecycle:
    """A job's state as its endpoint reports it, its loop's heartbeat, and the endpoint itself.

    The job sets `state` to running and stopping itself; `lifetime()` around its run makes the state final
    (failed if the run raised, else stopped), closes the endpoint after the job's own clients and logs
    `<component>_stopped`. Alive: not final and a beat within `stall_timeout_s`; ready: alive and running.
    """

    def __init__(self, component: str, log: logging.Logger, stall_timeout_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self.state = "starting"
        self.stall_timeout_s = stall_timeout_s
        self.http: HealthServer | None = None
        #: the endpoint's bound port, once it listened (kept after it closed)
        self.port: int | None = None
        self._log = log
        self._clock = clock
        self.heartbeat = clock()

    def beat(self) -> float:
        """The loop turned: now, by the lifecycle's clock."""
        self.heartbeat = now = self._clock()
        return now

    def since_beat(self) -> float:
        return self._clock() - self.heartbeat

    def alive(self) -> bool:
        return self.since_beat() <= self.stall_timeout_s and self.state not in ("failed", "stopped")

    def ready(self) -> bool:
        return self.alive() and self.state == "running"

    def serve(self, host: str, port: int | None, health: HealthFn, metrics: Callable[[], bytes] | None) -> None:
        """Open /healthz, /readyz and /metrics when a port is configured (0: any free one)."""
        if port is None or self.http is not None:
            return
        self.http = HealthServer(host, port, health, metrics).start()
        self.port = self.http.port
        log_event(self._log, logging.INFO, "http_listening", host=host, port=self.port)

    @contextlib.contextmanager
    def lifetime(self, details: Callable[[], dict[str, Any]] = dict) -> Iterator[Lifecycle]:
        """Around a job's run: a raise marks it failed (and propagates); on the way out the endpoint closes,
        the state becomes final and `<component>_stopped` is logged with `details()`."""
        try:
            yield self
        except BaseException:
            self.state = "failed"
            raise
        finally:
            try:
                if self.http is not None:
                    self.http.close()
                    self.http = None
            finally:
                if self.state != "failed":
                    self.state = "stopped"
                log_event(self._log, logging.INFO, f"{self.component}_stopped", state=self.state, **details())
