#!/usr/bin/env python3
"""Health checks of the project's containers: the images' HEALTHCHECK, compose healthchecks, k8s exec probes.

    fraud-healthcheck                           GET /readyz on the container's FRAUD_*_HTTP_PORT (none: healthy)
    fraud-healthcheck http URL [--expect TEXT]  healthy when URL answers 200 (and its body holds TEXT)
    fraud-healthcheck kafka HOST:PORT           healthy when a Kafka broker answers an ApiVersions request

Exit status 0 when healthy, 1 when not, with one line on stderr saying why. Standard library only: it runs
with whatever python3 the image has (the services' venv, the pipeline's venv, the Kafka image's system
Python), and costs about 0.2 s of CPU per probe here, where a Kafka CLI tool would start a JVM each time.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0
_PORT_VAR = re.compile(r"^FRAUD_[A-Z]+_HTTP_PORT$")


def check_http(url: str, expect: str | None = None) -> str | None:
    """None when `url` answers 200 (with `expect` in the body), else why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            body = resp.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"
    if expect is not None and expect not in body:
        return f"{url}: answered without {expect!r}"
    return None


def check_kafka(address: str) -> str | None:
    """None when the broker at HOST:PORT answers ApiVersions (v0) with error code 0, else why not.

    A listener accepts TCP connections before the broker processes requests; an answered request means
    it serves clients.
    """
    host, _, port = address.rpartition(":")
    correlation_id = 0x46524144
    client_id = b"fraud-healthcheck"
    header = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=TIMEOUT_S) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            size = struct.unpack(">i", _read(sock, 4))[0]
            answer = _read(sock, min(size, 1 << 16))
    except (OSError, ValueError, struct.error) as exc:
        return f"kafka {address}: {exc}"
    got_id, error_code = struct.unpack(">ih", answer[:6])
    if got_id != correlation_id:
        return f"kafka {address}: answer to another request ({got_id})"
    if error_code != 0:
        return f"kafka {address}: ApiVersions error code {error_code}"
    return None


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
    return data


def check_own_service(environ: dict[str, str]) -> str | None:
    """/readyz of the service this container runs (its FRAUD_*_HTTP_PORT); healthy if it runs none."""
    ports = sorted(v for k, v in environ.items() if _PORT_VAR.match(k) and v.strip() not in ("", "-1"))
    if not ports:
        return None
    return check_http(f"http://127.0.0.1:{ports[0].strip()}/readyz")


def main(argv: list[str]) -> int:
    if not argv:
        problem = check_own_service(dict(os.environ))
    elif argv[0] == "http" and len(argv) in (2, 4) and (len(argv) == 2 or argv[2] == "--expect"):
        problem = check_http(argv[1], argv[3] if len(argv) == 4 else None)
    elif argv[0] == "kafka" and len(argv) == 2:
        problem = check_kafka(argv[1])
    else:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
