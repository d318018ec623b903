"""Real HTTP servers on loopback for the adapter tests.

* :class:`ScriptedHTTPServer` — a small server speaking whatever protocol its scripted
  responses encode (Anthropic Messages, OpenAI Chat Completions): each request is recorded and
  answered with the next scripted status, headers and body, including 429s, 500s and malformed
  bodies. It runs in a thread of the test process.
* :func:`start_llama_server` — llama.cpp's OpenAI-compatible server
  (``python -m llama_cpp.server``) with the bundled SmolLM2 model, in a subprocess; readiness is
  read from its own log line, not guessed with a sleep.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedHTTPServer:
    """Answers POSTs with scripted responses, in order; records every request body."""

    def __init__(self) -> None:
        self.responses: deque[Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                outer.paths.append(self.path)
                outer.requests.append(json.loads(raw) if raw else {})
                reply = (
                    outer.responses.popleft()
                    if outer.responses
                    else Scripted(500, {"error": "unscripted"})
                )
                payload = (
                    reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                )
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, *responses: Scripted) -> None:
        self.responses.extend(responses)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: every socket is held open until all are read,
    so two calls cannot hand out the same port."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_llama_server(model_path: str) -> tuple[subprocess.Popen[str], str]:
    """Start llama.cpp's OpenAI-compatible server; returns the process and its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # blocks until the server reports it is serving
        seen.append(line)
        if "Uvicorn running on" in line:
            threading.Thread(target=_drain, args=(process,), daemon=True).start()
            return process, f"http://127.0.0.1:{port}/v1"
    raise RuntimeError("llama_cpp.server exited before serving:\n" + "".join(seen[-30:]))


def _drain(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for _ in process.stdout:
        pass
