"""Real HTTP servers on loopback for the adapter tests.

* :class:`ScriptedHTTPServer` — a small server speaking whatever protocol its scripted
  responses encode (Anthropic Messages, OpenAI Chat Completions): each request is recorded and
  answered with the next scripted status, headers and body, including 429s, 500s and malformed
  bodies, or with a scripted stream of server-sent events (:func:`chat_stream`,
  :func:`messages_stream` make one from a whole reply), sent event by event with chunked
  transfer encoding and cut off mid-way when scripted so. It runs in a thread of the test
  process.
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
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    """A scripted answer: ``body`` (JSON, or bytes as they are), or with ``events`` a stream
    of server-sent events (each ``(event name or None, data)``), ``pace`` seconds apart, of
    which only the first ``cut_after`` are sent before the connection is dropped mid-body when
    it is given."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str | None, Any]] | None = None
    cut_after: int | None = None
    pace: float = 0.0  # seconds between two events (a model writing: bench/models.py's TTFT)


def sse(name: str | None, data: Any) -> bytes:
    """One server-sent event (its data as JSON unless it is already text)."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {payload}\n\n".encode()


def pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def chat_stream(
    completion: dict[str, Any],
    size: int = 5,
    cut_after: int | None = None,
    names: str = "first",
    usage: bool = True,
) -> Scripted:
    """A Chat Completions reply (the body a non-streamed request gets) as the stream a request
    with ``stream: true`` and ``include_usage`` gets: the role, the text in pieces of ``size``
    characters, each tool call's name and then its arguments in pieces, the finish reason, a
    last chunk with the usage and no choices (none when not ``usage``: a server that ignores
    ``include_usage``), and ``[DONE]``.

    ``names`` says how a tool call's id and name come, as servers differ: ``"first"`` both in
    its first chunk (OpenAI); ``"later"`` the id first and the name in the next chunk;
    ``"pieces"`` the name in pieces of 3 characters; ``"every"`` id and whole name again in
    every chunk of the call."""
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, Any]:
        head = {key: completion[key] for key in ("id", "created", "model")}
        body = {"index": 0, "delta": delta, "finish_reason": finish}
        return None, {**head, "object": "chat.completion.chunk", "choices": [body]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces(message.get("content") or "", size)]
    for index, call in enumerate(message.get("tool_calls") or []):
        events += [
            chunk({"tool_calls": [{"index": index, **part}]})
            for part in _call_parts(call, size, names)
        ]
    events.append(chunk({}, choice["finish_reason"]))
    if usage:
        last = {key: completion[key] for key in ("id", "created", "model")}
        last.update(object="chat.completion.chunk", choices=[], usage=completion.get("usage"))
        events.append((None, last))
    events.append((None, "[DONE]"))
    return Scripted(200, events=events, cut_after=cut_after)


def _call_parts(call: dict[str, Any], size: int, names: str) -> list[dict[str, Any]]:
    """The pieces of one streamed tool call (without their index), see :func:`chat_stream`."""
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    head = {"id": call["id"], "type": "function"}
    if names == "later":
        parts = [{**head, "function": {"arguments": ""}}, {"function": {"name": name}}]
    elif names == "pieces":
        parts = [{**head, "function": {"name": name[:3], "arguments": ""}}]
        parts += [{"function": {"name": piece}} for piece in pieces(name[3:], 3)]
    else:
        parts = [{**head, "function": {"name": name, "arguments": ""}}]
    again = {**head, "function": {"name": name}} if names == "every" else {"function": {}}
    return parts + [
        {**again, "function": {**again["function"], "arguments": piece}}
        for piece in pieces(arguments, size)
    ]


def messages_stream(
    message: dict[str, Any], size: int = 5, cut_after: int | None = None
) -> Scripted:
    """An Anthropic Messages reply as the stream ``messages.stream`` gets: ``message_start``
    (with the input tokens), each block's start, deltas (text, or a tool's input JSON in
    pieces of ``size`` characters) and stop, ``message_delta`` (stop reason, output tokens),
    ``message_stop``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening, kind, key, text = (
                {"type": "text", "text": ""},
                "text_delta",
                "text",
                block["text"],
            )
        else:
            opening = {**block, "input": {}}
            kind, key, text = "input_json_delta", "partial_json", json.dumps(block["input"])
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        events += [
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": kind, key: piece},
                },
            )
            for piece in pieces(text, size)
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return Scripted(200, events=events, cut_after=cut_after)


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
                if reply.events is not None:
                    self._stream(reply)
                    return
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

            def _stream(self, reply: Scripted) -> None:
                """The events, one HTTP chunk each, flushed as sent; cut off (the connection
                closed before the last chunk) after ``cut_after`` events when scripted."""
                self.protocol_version = "HTTP/1.1"  # chunked transfer: a cut is seen as one
                self.close_connection = True
                self.send_response(reply.status)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                # said, as HTTP/1.1 asks of a server that closes: a client that pooled the
                # connection would send its next request on it as it is closed
                self.send_header("connection", "close")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                events = reply.events or []
                for sent, (name, data) in enumerate(events):
                    if reply.cut_after is not None and sent >= reply.cut_after:
                        self.wfile.flush()
                        return
                    if sent and reply.pace:
                        time.sleep(reply.pace)  # this server's own thread
                    payload = sse(name, data)
                    self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

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
