"""The job's HTTP endpoint: /healthz (liveness), /readyz (readiness) and /metrics (Prometheus).

It binds to 127.0.0.1 unless the config says otherwise, runs in a daemon thread and only reads a
snapshot the processing loop publishes, so a slow scrape never blocks the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from fraud.errors import FraudError

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
