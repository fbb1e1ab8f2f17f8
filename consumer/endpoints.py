"""The supervisor's HTTP port: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` (Kubernetes
probes). ``/healthz`` answers while the supervisor runs; ``/readyz`` answers 200 only when every
worker is warmed up, has joined the group (with partitions, or idle) and is not stuck in a batch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from consumer import metrics

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class Endpoints:
    """Serves the three paths from a daemon thread of the supervisor."""

    def __init__(self, port: int, readiness: Readiness, host: str = "0.0.0.0") -> None:
        handler = _handler(readiness)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="endpoints", daemon=True)

    def start(self) -> Endpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = metrics.render()
                self._answer(200, body, content_type)
            elif path == "/healthz":
                self._answer(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                ready, detail = readiness()
                self._answer(200 if ready else 503, json.dumps(detail).encode(), "application/json")
            else:
                self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
