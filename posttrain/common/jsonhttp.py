"""A small JSON-over-HTTP server on 127.0.0.1 for the OpenAI-compatible routes: the rollout
worker's endpoint (:mod:`posttrain.rl.rollout.openai_endpoint`) and the bridge that OpenAI-API
agent code talks to (:mod:`posttrain.agents.openai_agent`).

A server is one function ``route(method, path, body) -> (status, payload)``; a
:class:`RequestError` it raises answers 400 with OpenAI's error object naming the field, any
other exception 500, and the server lives on.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[str, str, dict[str, Any]], tuple[int, dict[str, Any]]]


class RequestError(ValueError):
    """A request refused with HTTP 400 (or ``status``), naming the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class JsonServer:
    """Serves ``route`` on ``127.0.0.1:port`` (0: any free port) from a daemon thread; ``url`` is
    ``http://127.0.0.1:<port>``. OSError when the port is taken."""

    def __init__(self, route: Route, port: int = 0, name: str = "posttrain-http"):
        class Handler(BaseHTTPRequestHandler):
            timeout = 60  # seconds a client may take to send its request (a silent one frees its thread)

            def do_GET(self):
                self._answer("GET", {})

            def do_POST(self):
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    body = json.loads(self.rfile.read(length) or b"{}")
                except (ValueError, json.JSONDecodeError) as exc:
                    self._reply(400, error_body(f"the body is not JSON: {exc}"))
                    return
                if not isinstance(body, dict):
                    self._reply(400, error_body(f"the body must be a JSON object, not {type(body).__name__}"))
                    return
                self._answer("POST", body)

            def _answer(self, method: str, body: dict[str, Any]) -> None:
                try:
                    status, payload = route(method, self.path.rstrip("/"), body)
                except RequestError as exc:
                    status, payload = exc.status, error_body(str(exc), exc.param)
                except Exception as exc:  # noqa: BLE001 - the client gets an answer, the server lives on
                    status, payload = 500, error_body(f"{type(exc).__name__}: {exc}", kind="server_error")
                self._reply(status, payload)

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client went away (its own timeout); nothing to tell it
                    pass

            def log_message(self, *args):  # quiet: one line per request would flood the stage log
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
