"""A local HTTP server speaking the OpenAI chat-completions or Anthropic messages wire format."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast

Kind = Literal["openai", "anthropic"]

OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class ScriptedResponse:
    """One scripted answer: a completion (or an error when status != 200), or a raw body."""

    text: str
    prompt_tokens: int | None = None  # None: ceil(chars / 4) of the request's prompt texts
    completion_tokens: int | None = None  # None: ceil(chars / 4) of text
    status: int = 200
    delay_s: float = 0.0
    omit_usage: bool = False
    raw_body: str | None = None  # sent verbatim instead of a well-formed body


def _tokens(text: str) -> int:
    """The fake's token count for text: ceil(chars / 4)."""
    return math.ceil(len(text) / 4)


def _prompt_text(kind: Kind, body: dict[str, Any]) -> str:
    """All prompt texts of a request body, concatenated, for token counting."""
    parts: list[str] = []
    if kind == "anthropic" and isinstance(body.get("system"), str):
        parts.append(body["system"])
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


class _Server(ThreadingHTTPServer):
    """The stdlib server, knowing the fake it serves."""

    daemon_threads = True

    def __init__(self, fake: FakeLLMServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    """Answers one HTTP request by asking the fake what to say."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        """Handle a POST: record it, check it, answer it."""
        fake = cast(_Server, self.server).fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, payload, extra_headers, delay_s = fake._answer(self.path, headers, body)
        if delay_s > 0 and fake._stopping.wait(delay_s):
            self.close_connection = True  # stopping: hang up without answering
            return
        self._send(status, payload, extra_headers)

    def do_GET(self) -> None:
        """Handle a GET: only POST routes exist, so answer 404 in the provider's format."""
        fake = cast(_Server, self.server).fake
        status, payload = fake._error(404, f"Unknown request URL: GET {self.path}")
        self._send(status, payload, {})

    def _send(self, status: int, payload: bytes, extra_headers: dict[str, str]) -> None:
        """Write the response, ignoring a client that already hung up (e.g. after its timeout)."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


class FakeLLMServer:
    """A scriptable fake of an LLM provider's HTTP API on 127.0.0.1, for tests and e2e runs."""

    def __init__(
        self,
        kind: Kind,
        *,
        expect_key: str | None = None,
        default_text: str = "OK",
    ) -> None:
        self.kind: Kind = kind
        self.expect_key = expect_key
        self.default_text = default_text
        self._lock = threading.Condition()
        self._queue: deque[ScriptedResponse] = deque()
        self._requests: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._server else "stopped"
        return f"FakeLLMServer(kind={self.kind!r}, {where})"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("FakeLLMServer already started")
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-llm-{self.kind}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release the port and wake any handler waiting on a scripted delay."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._server is None:
            raise RuntimeError("FakeLLMServer is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The base URL a client is configured with (OpenAI style ends in /v1)."""
        root = f"http://127.0.0.1:{self.port}"
        return f"{root}/v1" if self.kind == "openai" else root

    # -- scripting ---------------------------------------------------------------------------

    def enqueue(
        self,
        text: str,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        status: int = 200,
        delay_s: float = 0.0,
        omit_usage: bool = False,
    ) -> None:
        """Script the next answer: a completion of text, or (status != 200) an error whose message is text."""
        self._push(
            ScriptedResponse(
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                status=status,
                delay_s=delay_s,
                omit_usage=omit_usage,
            )
        )

    def enqueue_raw(self, body: str, *, status: int = 200, delay_s: float = 0.0) -> None:
        """Script the next answer as a verbatim body (for malformed responses)."""
        self._push(ScriptedResponse(text="", status=status, delay_s=delay_s, raw_body=body))

    def _push(self, item: ScriptedResponse) -> None:
        with self._lock:
            self._queue.append(item)

    @property
    def pending(self) -> int:
        """How many scripted answers are not yet consumed."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request received: {"method", "path", "headers", "body"}."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least count requests arrived; the snapshot, or TimeoutError."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout=timeout_s):
                raise TimeoutError(f"{len(self._requests)} of {count} requests after {timeout_s}s")
            return list(self._requests)

    # -- answering ------------------------------------------------------------------------------

    def _answer(
        self, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, bytes, dict[str, str], float]:
        """Status, body, extra headers and delay for one request; records the request."""
        with self._lock:
            self._requests.append(
                {"method": "POST", "path": path, "headers": headers, "body": body}
            )
            self._lock.notify_all()

        expected_path = "/v1/chat/completions" if self.kind == "openai" else "/v1/messages"
        if path.split("?", 1)[0] != expected_path:
            return (*self._error(404, f"Unknown request URL: POST {path}"), {}, 0.0)
        denied = self._check_auth(headers)
        if denied is not None:
            return (*denied, {}, 0.0)
        invalid = self._check_body(headers, body)
        if invalid is not None:
            return (*self._error(400, invalid), {}, 0.0)

        with self._lock:
            item = self._queue.popleft() if self._queue else ScriptedResponse(self.default_text)
        extra = {"retry-after": "1"} if item.status == 429 else {}
        if item.raw_body is not None:
            return item.status, item.raw_body.encode(), extra, item.delay_s
        if item.status != 200:
            return (*self._error(item.status, item.text), extra, item.delay_s)
        return 200, self._completion(item, body), extra, item.delay_s

    def _check_auth(self, headers: dict[str, str]) -> tuple[int, bytes] | None:
        """A 401 in the provider's format when the expected key is not presented."""
        if self.expect_key is None:
            return None
        if self.kind == "openai":
            if headers.get("authorization") == f"Bearer {self.expect_key}":
                return None
            return self._error(401, "Incorrect API key provided.")
        if headers.get("x-api-key") == self.expect_key:
            return None
        return self._error(401, "invalid x-api-key")

    def _check_body(self, headers: dict[str, str], body: Any) -> str | None:
        """What the real API would reject in this request, or None."""
        if not isinstance(body, dict):
            return "The request body is not valid JSON."
        if self.kind == "anthropic" and "anthropic-version" not in headers:
            return "anthropic-version: header is required"
        if not isinstance(body.get("model"), str):
            return "model: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: Field required"
        if self.kind == "anthropic":
            if not isinstance(body.get("max_tokens"), int):
                return "max_tokens: Field required"
            if any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
                return 'messages: Unexpected role "system". Use the top-level system parameter.'
        return None

    def _error(self, status: int, message: str) -> tuple[int, bytes]:
        """An error body in the provider's shape."""
        payload: dict[str, Any]
        if self.kind == "openai":
            kind, code = OPENAI_ERROR_TYPES.get(status, ("server_error", None))
            payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        else:
            payload = {
                "type": "error",
                "error": {
                    "type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
                    "message": message,
                },
            }
        return status, json.dumps(payload).encode()

    def _completion(self, item: ScriptedResponse, body: dict[str, Any]) -> bytes:
        """A successful completion in the provider's shape."""
        prompt = (
            item.prompt_tokens
            if item.prompt_tokens is not None
            else _tokens(_prompt_text(self.kind, body))
        )
        completion = (
            item.completion_tokens if item.completion_tokens is not None else _tokens(item.text)
        )
        payload: dict[str, Any]
        if self.kind == "openai":
            payload = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": item.text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
                "system_fingerprint": "fp_fake",
            }
        else:
            payload = {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": item.text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": prompt,
                    "output_tokens": completion,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
        if item.omit_usage:
            del payload["usage"]
        return json.dumps(payload).encode()
