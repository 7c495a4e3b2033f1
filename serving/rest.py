"""The REST front end (TF Serving's HTTP/REST API, g3doc/api_rest.md), on the standard library's
threaded HTTP server with HTTP/1.1 keep-alive.

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    instances / inputs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:classify   examples (+ context)
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:regress
    GET  <monitoring path>                                         Prometheus text (when configured)

Paths are matched with TF Serving's regular expressions (http_rest_api_util.cc); errors are
`{"error": "<message>"}` with the HTTP status TF Serving maps each code to.

Request bodies are limited (`--rest_api_max_body_bytes`, default 64 MiB; TF Serving has no limit): a
larger Content-Length, or a chunked body that grows past it, answers 413 without reading the rest, and
the connection is closed (what is left of the body cannot be told from a next request). A
Content-Length that is not a number answers 400, likewise closing the connection.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from serving import rest_json
from serving.api import ServingApi
from serving.errors import Code, ServingError
from serving.grpc_service import join_threads
from serving.manager import Handle
from serving.requests import DEFAULT_SIGNATURE, ExamplesCall, ModelSpec, PredictCall, spec_from_path

log = logging.getLogger("serving.rest")

_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICTION = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                         re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                     re.IGNORECASE)
_JSON = "application/json"


class RestApp:
    """Routes one HTTP request to the API; returns (HTTP status, content type, body)."""

    def __init__(self, api: ServingApi, timeout_ms: int, cors: bool = False, monitoring_path: str | None = None,
                 render_metrics: Callable[[], str] | None = None, workers: int = 8,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self._api = api
        self.max_body_bytes = max_body_bytes  # 0: no limit
        self._timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        # Graph calls run here so a call that overruns --rest_api_timeout_in_ms answers 504 on time.
        self._pool = futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="rest-exec")
        self.cors = cors
        self._monitoring_path = monitoring_path
        self._render_metrics = render_metrics

    def handle(self, method: str, path: str, body: bytes, origin: str | None = None) -> tuple[int, str, bytes]:
        if self._monitoring_path and path == self._monitoring_path and self._render_metrics is not None:
            return 200, "text/plain; version=0.0.4", self._render_metrics().encode("utf-8")
        if not _V1.fullmatch(path):
            return 404, "text/plain", b"Not Found"
        if method == "OPTIONS":
            if origin and re.search(r"https?://", origin):
                return 200, _JSON, b""
            error = ServingError(Code.FAILED_PRECONDITION, "Origin header is missing in CORS preflight")
            return error.http_status, _JSON, rest_json.error_body(error.message)
        try:
            return 200, _JSON, self._process(method, path, body)
        except ServingError as exc:
            return exc.http_status, _JSON, rest_json.error_body(exc.message)
        except Exception as exc:  # a bug must answer 500, not drop the connection
            log.exception("REST request failed")
            return 500, _JSON, rest_json.error_body(f"{type(exc).__name__}: {exc}")

    # -----------------------------------------------------------------------------------------

    def _process(self, method: str, path: str, body: bytes) -> bytes:
        malformed = ServingError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        if method == "POST":
            m = _PREDICTION.fullmatch(path)
            if m is None:
                raise malformed
            spec = self._spec(m.group(1), m.group(2), m.group(3))
            verb = m.group(4)
            if verb == "predict":
                return self._predict(spec, body)
            if verb in ("classify", "regress"):
                return self._examples(spec, body, verb)
            raise malformed
        if method == "GET":
            m = _STATUS.fullmatch(path)
            if m is None:
                raise malformed
            name = m.group(1) or ""
            if not name:
                raise ServingError(Code.INVALID_ARGUMENT, "Missing model name in request.")
            spec = self._spec(name, m.group(2), m.group(3))
            if m.group(4) == "metadata":
                return self._metadata(spec)
            return self._status(spec)
        raise malformed

    @staticmethod
    def _spec(name: str, version: str | None, label: str | None) -> ModelSpec:
        return spec_from_path(unquote(name), version, unquote(label) if label is not None else None)

    def _deadline(self) -> float | None:
        return None if self._timeout_s is None else time.monotonic() + self._timeout_s

    def _run(self, handle: Handle, fn: Callable[[Handle, float | None], Any]) -> Any:
        """Run fn(handle, deadline); past the deadline answer DEADLINE_EXCEEDED, leaving the call to
        finish in the background on its own reference to the version."""
        deadline = self._deadline()
        if deadline is None:
            return fn(handle, None)
        own = handle.retain()

        def task() -> Any:
            with own:
                return fn(own, deadline)

        future = self._pool.submit(task)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except futures.TimeoutError:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    def close(self, deadline: float) -> bool:
        self._pool.shutdown(wait=False, cancel_futures=True)
        return join_threads(list(getattr(self._pool, "_threads", ())), deadline)

    def _predict(self, spec: ModelSpec, body: bytes) -> bytes:
        record = self._api.begin("predict", "REST")
        record.model = spec.name
        error: BaseException | None = None
        try:
            doc = rest_json.loads(body)
            rest_json.signature_name(doc)
            may_contain_bools = b"true" in body or b"false" in body
            with self._api.acquire(spec, record) as handle:
                servable = handle.servable

                def inputs_of(sig_name: str):
                    sig = servable.signatures.get(sig_name or DEFAULT_SIGNATURE)
                    if sig is None:
                        raise ServingError(Code.INVALID_ARGUMENT, f'Serving signature name: "{sig_name or DEFAULT_SIGNATURE}" '
                                                                  "not found in signature def")
                    return sig.inputs

                sig_name, inputs, fmt = rest_json.parse_predict(doc, inputs_of, may_contain_bools)
                call = PredictCall(ModelSpec(spec.name, spec.version, spec.version_label, sig_name), inputs)
                result = self._run(handle, lambda h, deadline: self._api.predict(h, call, record, deadline))
            return rest_json.predict_response(result.outputs, result.output_dtypes, fmt)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._api.end(record, error)

    def _examples(self, spec: ModelSpec, body: bytes, verb: str) -> bytes:
        record = self._api.begin(verb, "REST")
        record.model = spec.name
        error: BaseException | None = None
        try:
            sig_name, examples = rest_json.parse_examples(rest_json.loads(body))
            call = ExamplesCall(ModelSpec(spec.name, spec.version, spec.version_label, sig_name), tuple(examples))
            with self._api.acquire(spec, record) as handle:
                if verb == "classify":
                    result = self._run(handle, lambda h, deadline: self._api.classify(h, call, record, deadline))
                    return rest_json.classify_response(result.labels, result.scores)
                regression = self._run(handle, lambda h, deadline: self._api.regress(h, call, record, deadline))
                return rest_json.regress_response(regression.values)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._api.end(record, error)

    def _status(self, spec: ModelSpec) -> bytes:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        from serving.grpc_service import status_response

        response = status_response(self._api.status(spec), get_model_status_pb2)
        return json_format.MessageToJson(response, including_default_value_fields=True).encode("utf-8")

    def _metadata(self, spec: ModelSpec) -> bytes:
        with self._api.acquire(spec) as handle:
            doc = {
                "model_spec": {"name": handle.model_name, "signature_name": "", "version": str(handle.version)},
                "metadata": {"signature_def": handle.servable.metadata_json()},
            }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


class _TooLarge(Exception):
    """A request body larger than the server accepts (its size, or "more than <limit>", as the message)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TensorFlowServing-compatible"
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)

    def _body(self, limit: int) -> bytes:
        """The request body; _TooLarge past `limit` bytes (0: no limit), ValueError when malformed."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size < 0:
                    raise ValueError(f"negative chunk size {size}")
                if size == 0:
                    while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if limit and total > limit:
                    raise _TooLarge(f"more than {limit}")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip():
            return b""
        length = int(raw.strip())
        if length < 0:
            raise ValueError(f"negative Content-Length {length}")
        if limit and length > limit:
            raise _TooLarge(str(length))
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        self.server.mark_busy(self.connection, True)
        try:
            self._respond()
        finally:
            self.server.mark_busy(self.connection, False)

    def _respond(self) -> None:
        limit = self.server.app.max_body_bytes
        try:
            body = self._body(limit)
        except _TooLarge as exc:
            self.close_connection = True  # the unread rest of the body must not be taken for a request
            message = (f"Request body of {exc} bytes exceeds the server's limit of {limit} bytes "
                       "(--rest_api_max_body_bytes)")
            self._reply(413, _JSON, rest_json.error_body(message), close=True)
            self._discard_rest()
            return
        except (ValueError, OSError):
            self.send_error(400, "bad request body")
            return
        path = urlsplit(self.path).path
        status, content_type, payload = self.server.app.handle(self.command, path, body, self.headers.get("Origin"))
        self._reply(status, content_type, payload)

    def _discard_rest(self, max_bytes: int = 64 * 1024 * 1024, max_s: float = 5.0) -> None:
        """Read and drop what the client still sends of a refused body (bounded), so that closing the
        socket does not reset the connection before the client has read the 413 (a close with unread
        data sends RST, and a client still writing its body then sees a broken pipe, not the answer)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + max_s
            dropped = 0
            while dropped < max_bytes and time.monotonic() < deadline:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:
            pass

    def _reply(self, status: int, content_type: str, payload: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
        if self.server.app.cors:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Methods", "POST, GET")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the connection threads: none outlives stop()
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: RestApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def mark_busy(self, conn: socket.socket, busy: bool) -> None:
        with self._connections_lock:
            if busy:
                self._busy.add(conn)
            else:
                self._busy.discard(conn)

    def close_idle_connections(self) -> int:
        """Shut down keep-alive connections waiting for a next request; returns how many are still open."""
        with self._connections_lock:
            for conn in list(self._connections - self._busy):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return len(self._connections)


class RestServer:
    def __init__(self, app: RestApp, host: str, port: int) -> None:
        try:
            self._server = _Server((host, port), app)
        except OSError as exc:
            raise ServingError(Code.UNAVAILABLE, f"cannot listen for REST on {host}:{port} ({exc.strerror})") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rest-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float) -> bool:
        """Stop accepting, let running requests answer until `deadline`, close idle keep-alive
        connections, join the threads. False when some request was still running at the deadline."""
        self._server.shutdown()
        self._thread.join()
        while self._server.close_idle_connections() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._server.socket.close()
        tracked = getattr(self._server, "_threads", None)  # socketserver's _Threads (a list) once a request came
        threads = list(tracked) if isinstance(tracked, list) else []
        drained = join_threads(threads, deadline)
        return self._server.app.close(deadline) and drained
