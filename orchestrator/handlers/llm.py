"""The ``llm`` handler: an OpenAI-compatible chat-completions call that must answer with a terminal payload.

Settings come from the environment (``.env`` included): ``LLM_URL`` (the base URL, e.g.
``https://api.example.com/v1``, or the full ``.../chat/completions`` URL), ``LLM_API_KEY``,
``LLM_MODEL`` and ``ORCH_LLM_TIMEOUT`` (seconds the whole request may take, reply included;
default 60; ``config.llm_timeout``). The job's input is sent as the user message (a string as is, anything else as
JSON), with the context (answers and the questions they replied to, revisions) and a system prompt describing the payload. Every
failure becomes a ``failed`` payload with a stable ``error_code``: ``LLM_CONFIG`` (no URL, a bad timeout),
``LLM_NETWORK_ERROR`` (also a reply cut off or not HTTP), ``LLM_TIMEOUT``, ``LLM_HTTP_ERROR``
(retryable for 408/429/5xx only; a redirect, which is not followed, too), ``LLM_BAD_RESPONSE``
(not JSON, nested deeper than the decoder goes, or not chat-completions shaped). A reply whose
content is not a valid payload is passed on as is, so the worker records ``MALFORMED_PAYLOAD``.

The API key is only ever put in the ``Authorization`` header, sent to ``LLM_URL`` only: a redirect is not
followed (``LLM_HTTP_ERROR``, not retried, naming where it pointed). A key has no shape
``sanitize_text`` could recognise, and an endpoint (a proxy, a debugging server, a model
told to) may echo it, so its exact value is replaced in everything ``call_llm`` returns, on
every path: each string of the payload, nested ones and object keys included
(``_without_key``). Failure texts also go through ``sanitize_text``, before they are cut
(``_scrub``).
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from contextlib import suppress
from typing import Any

from orchestrator.config import llm_timeout
from orchestrator.errors import ConfigError
from orchestrator.handler_env import llm_environment
from orchestrator.security import REDACTED, cut_read_size, sanitized_cut

MAX_REPLY_BYTES = 4 * 1024 * 1024
SYSTEM_PROMPT = (
    "You are a job handler. Do the task in the user message. Reply with ONLY a JSON object: "
    '{"status": "done" | "needs_human" | "needs_audit" | "failed", "summary": "<one paragraph>", '
    '"question": "<required when status is needs_human>", "output": <any JSON result>, '
    '"artifacts": [], "retryable": true}. No prose outside the JSON.'
)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed: urllib would send a 301/302/303 on as a GET without the body, to
    wherever ``Location`` points, with the ``Authorization`` header, so the key, to another server."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an ``HTTPError``


class _Deadline:
    """The time limit of a whole request, reply included. urllib's ``timeout`` bounds each wait on the socket (the
    connection, each read), not the reply: an endpoint that sends a byte now and then (a proxy's keep-alive, a
    stream) held the run for as long as it went on. At the deadline a timer thread shuts the connection down,
    which ends the read in progress (``passed`` then says why it ended)."""

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.passed:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._socks:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # the descriptor's own shutdown: SSLSocket's would drop its TLS state under the reader
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """An HTTP(S) handler whose connections are given to ``deadline`` once connected."""

    deadline: _Deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        deadline = self.deadline

        def connection(*args: Any, **kw: Any) -> Any:
            conn = http_class(*args, **kw)
            connect = conn.connect

            def connect_watched() -> None:
                connect()
                deadline.watch(conn.sock)

            conn.connect = connect_watched
            return conn

        return super().do_open(connection, req, **kwargs)  # type: ignore[misc]


class _HTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urlopen's handlers, but redirects are not followed and every connection ends at ``deadline``."""
    handlers: list[Any] = [_HTTP(), _HTTPS()]
    for handler in handlers:
        handler.deadline = deadline
    return urllib.request.build_opener(_NoRedirect, *handlers)


def _key_forms(key: str) -> tuple[str, ...]:
    """The key as sent, and as it reads inside JSON text (escaped), longest first."""
    forms = {key, json.dumps(key)[1:-1], json.dumps(key, ensure_ascii=False)[1:-1]} if key else set()
    return tuple(sorted(forms, key=len, reverse=True))


def _drop_key(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        text = text.replace(form, REDACTED)
    return text


def _without_key(value: Any, key: str) -> Any:
    """``value`` (a decoded JSON reply) with the key's value replaced in every string and object key."""
    forms = _key_forms(key)
    if not forms:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _drop_key(item, forms)
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)


def _scrub(data: str | bytes, key: str, limit: int) -> str:
    """The start of ``data`` (a message, a reply or its first ``cut_read_size(limit)`` bytes) without the key,
    sanitized and only then cut to ``limit`` (``security.sanitized_cut``): a cut through a secret or the key
    leaves a part that no pattern, and no replace, recognises."""
    forms = _key_forms(key)
    return sanitized_cut(data, limit, redact_first=lambda text: _drop_key(text, forms))


def _failed(code: str, message: str, key: str, retryable: bool = True) -> dict[str, Any]:
    return {"status": "failed", "summary": _scrub(message, key, 2000), "error_code": code, "retryable": retryable}


def _timed_out(timeout: float, key: str) -> dict[str, Any]:
    """The payload of a request that took longer than ``timeout``: a socket wait, or the whole reply (``_Deadline``)."""
    return _failed("LLM_TIMEOUT", f"LLM endpoint did not answer within {timeout:g}s", key)


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _messages(ctx: Any) -> list[dict[str, str]]:
    data = ctx.to_dict() if hasattr(ctx, "to_dict") else dict(ctx)
    task = data.get("input")
    task_text = task if isinstance(task, str) else json.dumps(task, ensure_ascii=False)
    extra = {k: data.get(k) for k in ("answers", "questions", "revisions", "attempt") if data.get(k)}
    user = task_text + ("\n\nContext: " + json.dumps(extra, ensure_ascii=False) if extra else "")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _strip_fences(content: str) -> str:
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


def _ask(request: urllib.request.Request, timeout: float, deadline: _Deadline, key: str) -> bytes | dict[str, Any]:
    """The endpoint's reply (its first ``MAX_REPLY_BYTES`` + 1 bytes), or the ``failed`` payload saying why not."""
    try:
        with _opener(deadline).open(request, timeout=timeout) as resp:  # noqa: S310 - the operator's own URL
            data = resp.read(MAX_REPLY_BYTES + 1)
            if resp.length and len(data) <= MAX_REPLY_BYTES:  # a read of a set size takes a cut reply as it is
                raise http.client.IncompleteRead(data, resp.length)
            return data
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(cut_read_size(500)) if exc.fp else b""
        except (OSError, http.client.HTTPException):  # an error body cut off: its status is what matters
            body = b""
        detail = _scrub(body, key, 500)
        if 300 <= exc.code < 400:
            where = _scrub(str(exc.headers.get("Location") or "nowhere"), key, 500)
            detail = f"a redirect to {where}, not followed (set LLM_URL to the URL that answers) {detail}".rstrip()
        retry = exc.code in (408, 429) or exc.code >= 500
        return _failed("LLM_HTTP_ERROR", f"LLM endpoint answered HTTP {exc.code}: {detail}", key, retryable=retry)
    except (socket.timeout, TimeoutError):
        return _timed_out(timeout, key)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            return _timed_out(timeout, key)
        return _failed("LLM_NETWORK_ERROR", f"cannot reach the LLM endpoint: {exc.reason}", key)
    except OSError as exc:
        return _failed("LLM_NETWORK_ERROR", f"cannot reach the LLM endpoint: {exc}", key)
    except http.client.HTTPException as exc:  # a reply cut off (IncompleteRead), or not HTTP (BadStatusLine)
        return _failed("LLM_NETWORK_ERROR", f"the LLM endpoint's reply could not be read: {type(exc).__name__}: {exc}",
                       key)


def call_llm(ctx: Any, environ: dict[str, str] | None = None) -> Any:
    """Ask the model for a terminal payload; return it (or a ``failed`` payload on any error)."""
    env = llm_environment() if environ is None else environ  # its own settings, also in a filtered process
    key = env.get("LLM_API_KEY", "")
    url = env.get("LLM_URL", "")
    if not url:
        return _failed("LLM_CONFIG", "LLM_URL is not set", key, retryable=False)
    try:  # a worker refuses a bad one when it starts; a handler given one all the same (Python) fails the job
        timeout = llm_timeout(env)
    except ConfigError as exc:
        return _failed("LLM_CONFIG", exc.message, key, retryable=False)
    body = {"model": env.get("LLM_MODEL") or "default", "messages": _messages(ctx), "temperature": 0}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(endpoint(url), data=json.dumps(body).encode(), headers=headers, method="POST")
    with _Deadline(timeout) as deadline:
        raw = _ask(request, timeout, deadline, key)
    if deadline.passed:  # whatever the read got, or failed with, the connection was cut at the deadline
        return _timed_out(timeout, key)
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_REPLY_BYTES:
        return _failed("LLM_BAD_RESPONSE", "the LLM reply is larger than 4 MiB", key)
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:  # nested deeper than json goes
        snippet = _scrub(raw, key, 200)
        return _failed("LLM_BAD_RESPONSE", f"the reply is not a chat completion ({exc}): {snippet}", key)
    try:
        # valid or not, the payload goes to the worker, which stores what it can of it
        return _without_key(json.loads(_strip_fences(content)), key)
    except ValueError:
        # not JSON: hand the text on so the worker records MALFORMED_PAYLOAD with it
        return {"status": "failed", "summary": _scrub(content, key, 2000), "error_code": "MALFORMED_PAYLOAD",
                "retryable": True, "output": {"reply_not_json": True}}
    except RecursionError:
        return _failed("LLM_BAD_RESPONSE", "the reply's JSON is nested too deeply", key)
