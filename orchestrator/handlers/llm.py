"""The ``llm`` handler: an OpenAI-compatible chat-completions call that must answer with a terminal payload.

Settings come from the environment (``.env`` included): ``LLM_URL`` (the base URL, e.g.
``https://api.example.com/v1``, or the full ``.../chat/completions`` URL; a query, Azure's ``?api-version=``, is
kept after the path: ``endpoint``), ``LLM_API_KEY``, ``LLM_MODEL`` and ``ORCH_LLM_TIMEOUT`` (seconds the whole
request may take, the name lookup, the connection, the reply and a ``Retry-After`` wait included; default 60;
``config.llm_timeout``; ``_Deadline``). Whitespace around the URL, the key and the model is dropped: a Kubernetes
secret read from a file ends in a line break, which no header can carry. The job's input is sent as the user message
(a string as is, anything else as JSON), with the context (answers and the questions they replied to, revisions) and
a system prompt describing the payload. Every failure becomes a ``failed`` payload with a stable ``error_code``:
``LLM_CONFIG``, not retried (no URL; one that is not ``http(s)://host...``, holds a character that is not ASCII, a
space or a control character, has a bad port or holds a user name or password; a key with a character no header can
carry or that is not ASCII; a bad timeout: the message never quotes the URL), ``LLM_NETWORK_ERROR`` (also a reply
cut off or not HTTP), ``LLM_TIMEOUT``, ``LLM_HTTP_ERROR`` (retryable for 408/429/5xx only; a redirect, which is not
followed, too; a 413 answered before the request was all sent is read, over TLS too: ``_Watched``),
``LLM_RETRY_AFTER`` (a 429 or 503 whose ``Retry-After`` asks for a wait past the deadline, retryable, its payload's
``retry_after`` the wait asked for, so the worker's next attempt comes no sooner; a shorter one is waited for and the
request sent again: ``_asked_again``), ``LLM_BAD_RESPONSE`` (not JSON, nested deeper than the decoder goes, not
chat-completions shaped, or compressed or binary, said so and not quoted), ``HANDLER_ERROR`` (anything else raised
in here, a bug: caught here so that no message with the key in it reaches the worker's generic path). A reply whose
content is not a valid payload is passed on as is, so the worker records ``MALFORMED_PAYLOAD``; content that is
empty, not JSON, or JSON with an object that holds a key twice (JSON would keep one of its values: ``{"status":
"failed", ..., "status": "done"}`` was a success; ``json_text.loads_unique``) is ``MALFORMED_PAYLOAD`` here, saying
which.

The API key is only ever put in the ``Authorization`` header, sent to ``LLM_URL`` only: a redirect is not
followed (``LLM_HTTP_ERROR``, not retried, naming where it pointed). urllib's proxy settings are honoured
(``http_proxy``, ``https_proxy``, ``no_proxy`` of the environment): for an ``https://`` URL the proxy sees only a
``CONNECT`` to the host and port; for an ``http://`` URL it is sent the whole request, key included, in clear, as
is everything on the way to such a URL. A key has no shape ``sanitize_text`` could recognise, and an endpoint (a
proxy, a debugging server, a model told to) may echo it, so its value is replaced in everything ``call_llm``
returns, on every path (``handlers.llm_secrets``): each string of the payload, nested ones and object keys included
(two keys that become one are both kept), as sent, as JSON text may write it (``\\/``, ``\\u0041``),
percent-encoded (``%2F``), or its bytes in base64 or hex; the password of a URL too. A key shorter than 8
characters is not looked for (``MIN_SECRET_LENGTH``). Failure texts also go through ``sanitize_text``, before they
are cut (``scrub``).
"""
from __future__ import annotations

import email.utils
import http.client
import json
import re
import socket
import ssl
import threading
import time
import traceback
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrator.config import llm_timeout
from orchestrator.errors import ConfigError
from orchestrator.handler_env import llm_environment
from orchestrator.handlers.llm_secrets import Secrets, scrub, without_secrets
from orchestrator.json_text import DuplicateKeyError, loads_unique
from orchestrator.payload import cut_wait
from orchestrator.security import cut_read_size, shown

MAX_REPLY_BYTES = 4 * 1024 * 1024
RETRY_AFTER_WAITS = 3  # a 429/503's Retry-After is waited for, and the request sent again, at most this often a call
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
    which ends the read in progress (``passed`` then says why it ended). The connection itself is made within it
    too (``connect``): the name lookup and each address tried; a proxy's tunnel is read on the watched socket, and
    a TLS handshake within the socket's timeout, which ``ssl`` counts for the whole handshake, set to the time left."""

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._end = time.monotonic() + seconds
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

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def _lookup(self, host: str, port: int) -> list[Any]:
        """``socket.getaddrinfo`` of ``host`` waited for until the deadline (``TimeoutError`` past it). It runs in
        a thread of its own: the C library's lookup cannot be interrupted, so a resolver that does not answer
        held the run for as long as the lookup took (its own timeouts and attempts, ``/etc/resolv.conf``). A
        lookup given up on is left to end in that thread (a daemon), its answer unused."""
        found: dict[str, Any] = {}

        def lookup() -> None:
            try:
                found["infos"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                found["error"] = exc

        thread = threading.Thread(target=lookup, name="llm-name-lookup", daemon=True)
        thread.start()
        thread.join(max(self.remaining(), 0))
        if thread.is_alive():
            raise TimeoutError("the name lookup of the LLM endpoint's host did not end in time")
        if "error" in found:
            raise found["error"]
        return found["infos"]

    def connect(self, address: tuple[str, int], timeout: float, source_address: Any = None) -> socket.socket:
        """``socket.create_connection`` within the deadline (http.client's ``_create_connection``): that gave each
        address of the host the whole ``timeout``, so a name of three addresses that never answer (a firewall
        dropping the SYN) took three times ``ORCH_LLM_TIMEOUT``. Each address now gets the time left shared
        among those not yet tried (a first address that never answers leaves the next one time to answer);
        the socket is watched from then on (a proxy's tunnel too)."""
        infos = self._lookup(*address)
        error: OSError | None = None
        for untried, (family, kind, proto, _name, where) in zip(range(len(infos), 0, -1), infos):
            left = self.remaining()
            if left <= 0:
                break
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(min(timeout, left / untried))
                if source_address:
                    sock.bind(source_address)
                sock.connect(where)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            # no wait may outlast the deadline: a TLS handshake, which ``ssl`` bounds as a whole by this timeout, is
            # made on a socket the deadline no longer holds (``wrap_socket`` takes its descriptor)
            sock.settimeout(max(min(timeout, self.remaining()), 0.001))
            self.watch(sock)
            return sock
        if self.remaining() <= 0:
            raise TimeoutError("timed out connecting to the LLM endpoint")
        raise error if error is not None else OSError("the LLM endpoint's host has no address")


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # the descriptor's own shutdown: SSLSocket's would drop its TLS state under the reader
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


# How a send ends when the endpoint closed the connection: a broken pipe or a reset, and over TLS ``SSLEOFError`` ("EOF
# occurred in violation of protocol": a close with or without its close_notify, the TLS state unbroken, so an answer
# sent before it is read as over plain HTTP)
CLOSED_WHILE_SENDING = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError)


class _Sending:
    """How the sending of one request ended: ``cut_by``, the error that stopped it before its ``size`` bytes were all
    sent, the endpoint having closed the connection (``_Watched``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cut_by: OSError | None = None


class _Watched:
    """An HTTP(S) handler whose connections are made within ``deadline`` and given to it (``_Deadline.connect``), and
    whose answer is read even when the endpoint closed the connection before the request was all sent
    (``sending``): a server that refuses a request too large answers 413 at once and closes, and the send's broken
    pipe (or reset; over TLS ``SSLEOFError``: ``CLOSED_WHILE_SENDING``) was taken for a network error, retried,
    every retry alike."""

    deadline: _Deadline
    sending: _Sending

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        deadline, sending = self.deadline, self.sending

        def connection(*args: Any, **kw: Any) -> Any:
            conn = http_class(*args, **kw)
            conn._create_connection = deadline.connect
            connect, send = conn.connect, conn.send

            def connect_watched() -> None:
                connect()
                deadline.watch(conn.sock)

            def send_until_cut(data: Any) -> None:
                if sending.cut_by is None:  # the rest is not sent: urllib goes on to read the answer, if one came
                    try:
                        send(data)
                    except CLOSED_WHILE_SENDING as exc:
                        sending.cut_by = exc

            conn.connect, conn.send = connect_watched, send_until_cut
            return conn

        return super().do_open(connection, req, **kwargs)  # type: ignore[misc]


class _HTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


def _opener(deadline: _Deadline, sending: _Sending) -> urllib.request.OpenerDirector:
    """urlopen's handlers, but redirects are not followed, every connection ends at ``deadline``, and an answer
    sent before the request was all sent is read (``sending``)."""
    handlers: list[Any] = [_HTTP(), _HTTPS()]
    for handler in handlers:
        handler.deadline, handler.sending = deadline, sending
    return urllib.request.build_opener(_NoRedirect, *handlers)


@dataclass(frozen=True)
class _AskedToWait:
    """A 429 or 503 whose ``Retry-After`` asks for the request again in ``seconds``; ``failed``: its payload."""

    seconds: float
    failed: dict[str, Any]

    def telling(self, failed: dict[str, Any]) -> dict[str, Any]:
        """``failed`` with the wait asked for as its ``retry_after``, so that the worker's next attempt comes no sooner
        (``payload.cut_wait``: at most the worker's bound; JSON has no infinity)."""
        return {**failed, "retry_after": cut_wait(self.seconds)}


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a ``Retry-After`` value asks for at ``now`` (Unix time): a number of seconds, or an HTTP date (one
    already past: 0). None for anything else (a negative number, ``soon``), which is ignored as before."""
    text = (value or "").strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)  # a number too large for a float is inf: longer than any time left
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with nothing said of the sender's zone (RFC 5322)
        when = when.replace(tzinfo=timezone.utc)
    return max(when.timestamp() - now, 0.0)


def _cut_off(reason: object, sending: _Sending) -> str:
    """Why the endpoint could not be reached; when it closed the connection before the request was all sent and
    sent no answer (a reset may pass, so this is retried), saying so."""
    if sending.cut_by is None:
        return f"cannot reach the LLM endpoint: {reason}"
    return (f"the LLM endpoint closed the connection before the request ({sending.size:,} bytes) was all sent "
            f"({sending.cut_by.strerror or sending.cut_by}) and sent no answer ({reason}); an endpoint that takes "
            "no request this large may do so")


def _failed(code: str, message: str, secrets: Secrets, retryable: bool = True) -> dict[str, Any]:
    return {"status": "failed", "summary": scrub(message, secrets, 2000), "error_code": code, "retryable": retryable}


def _timed_out(timeout: float, secrets: Secrets) -> dict[str, Any]:
    """The payload of a request that took longer than ``timeout``: a socket wait, or the whole reply (``_Deadline``)."""
    return _failed("LLM_TIMEOUT", f"LLM endpoint did not answer within {timeout:g}s", secrets)


def endpoint(url: str) -> str:
    """The chat-completions URL of ``LLM_URL``: ``/chat/completions`` added to its path unless it ends so; a query
    (Azure's ``?api-version=``) stays after the path."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit(parts._replace(path=path if path.endswith("/chat/completions") else path + "/chat/completions"))


def _config_problem(url: str, key: str) -> str | None:
    """Why the request cannot be made at all (``LLM_CONFIG``, not retried), never quoting the URL, which may hold a
    password. urllib would take a ``file:`` or ``ftp:`` URL too, and send ``user:password@host`` as the host."""
    if not url:
        return "LLM_URL is not set"
    if not url.isascii():  # urllib failed on it with a UnicodeEncodeError (HANDLER_ERROR, retried)
        return ("LLM_URL holds a character that is not ASCII: percent-encode it in the path or query (é as %C3%A9), "
                "and write a host in its IDNA form (xn--...)")
    if any(char <= " " or char == "\x7f" for char in url):  # http.client's InvalidURL quoted the path with it
        return "LLM_URL holds a space or a control character: percent-encode it (a space as %20)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError:
        return "LLM_URL is not a URL (a port that is not a number from 0 to 65535, or a '[' host not closed)"
    if parts.scheme not in ("http", "https"):
        return "LLM_URL must start with http:// or https://"
    if "@" in parts.netloc:
        return "LLM_URL must not hold a user name or password (user:password@host): the key goes in LLM_API_KEY"
    if not parts.hostname:
        return "LLM_URL names no host"
    if key and not (key.isprintable() and key.isascii()):
        # http.client sends a header's value as Latin-1, but what an endpoint echoes of it comes back as UTF-8 (or
        # with U+FFFD in its place), a form of the key no search finds: a key is ASCII, as every API's is
        return ("LLM_API_KEY holds a character an HTTP header cannot carry (a control character, or one that is not "
                "ASCII)")
    return None


def _url_password(url: str) -> str:
    """The password ``url`` holds, if any: such a URL is refused before any request, and the password is looked for
    all the same, as the key is (urllib's messages quote "password@host" without the ``://user:`` that
    ``sanitize_text`` knows a URL's credentials by)."""
    with suppress(ValueError):
        return urlsplit(url).password or ""
    return ""


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


def _not_text(data: bytes) -> str:
    """What ``data``, a reply, is when it is no text to quote (``""`` when it is): compressed (a ``Content-Encoding``
    the request never asked for: urllib sends ``Accept-Encoding: identity``), or binary."""
    if data[:2] == b"\x1f\x8b":
        return "gzip-compressed, which the request did not ask for"
    if any(byte < 0x20 and byte not in b"\t\n\r" or byte == 0x7F for byte in data[:4096]):
        return "binary, not text"
    return ""


def _ask(request: urllib.request.Request, timeout: float, deadline: _Deadline,
         secrets: Secrets) -> bytes | dict[str, Any] | _AskedToWait:
    """The endpoint's reply (its first ``MAX_REPLY_BYTES`` + 1 bytes), or the ``failed`` payload saying why not (with
    the wait a 429's or 503's ``Retry-After`` asks for: ``_AskedToWait``)."""
    sending = _Sending(len(request.data or b""))
    try:
        with _opener(deadline, sending).open(request, timeout=timeout) as resp:  # noqa: S310 - the operator's URL
            data = resp.read(MAX_REPLY_BYTES + 1)
            if resp.length and len(data) <= MAX_REPLY_BYTES:  # a read of a set size takes a cut reply as it is
                raise http.client.IncompleteRead(data, resp.length)
            return data
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(cut_read_size(500)) if exc.fp else b""
        except (OSError, http.client.HTTPException):  # an error body cut off: its status is what matters
            body = b""
        finally:
            exc.close()
        detail = scrub(body, secrets, 500)
        if 300 <= exc.code < 400:
            where = scrub(str(exc.headers.get("Location") or "nowhere"), secrets, 500)
            detail = f"a redirect to {where}, not followed (set LLM_URL to the URL that answers) {detail}".rstrip()
        elif exc.code == 413:
            detail = (f"{detail} (the request, {sending.size:,} bytes, is larger than the endpoint takes: shorten "
                      "the job's input)").lstrip()
        retry = exc.code in (408, 429) or exc.code >= 500
        failed = _failed("LLM_HTTP_ERROR", f"LLM endpoint answered HTTP {exc.code}: {detail}", secrets,
                         retryable=retry)
        wait = retry_after_seconds(exc.headers.get("Retry-After"), time.time()) if exc.code in (429, 503) else None
        return failed if wait is None else _AskedToWait(wait, failed)
    except (socket.timeout, TimeoutError):
        return _timed_out(timeout, secrets)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            return _timed_out(timeout, secrets)
        return _failed("LLM_NETWORK_ERROR", _cut_off(exc.reason, sending), secrets)
    except OSError as exc:  # also no answer where one was awaited (RemoteDisconnected)
        return _failed("LLM_NETWORK_ERROR", _cut_off(exc, sending), secrets)
    except (http.client.InvalidURL, UnicodeEncodeError) as exc:  # one _config_problem let through
        # never its message, which quotes the URL (a path may hold a token)
        return _failed("LLM_CONFIG", f"LLM_URL cannot be used: http.client refused it ({type(exc).__name__})",
                       secrets, retryable=False)
    except http.client.HTTPException as exc:  # a reply cut off (IncompleteRead), or not HTTP (BadStatusLine)
        return _failed("LLM_NETWORK_ERROR", f"the LLM endpoint's reply could not be read: {type(exc).__name__}: {exc}",
                       secrets)


def _asked_again(request: urllib.request.Request, timeout: float, deadline: _Deadline, secrets: Secrets,
                 raw: bytes | dict[str, Any] | _AskedToWait) -> bytes | dict[str, Any]:
    """``raw``, or, while it is a 429 or 503 asking for a wait that ends before ``deadline`` does, the reply to the
    request sent again after that wait (at most ``RETRY_AFTER_WAITS`` times, then the last one's ``failed``). A wait
    past the deadline is never begun: the attempt fails at once, ``LLM_RETRY_AFTER``, retried after the worker's
    backoff or the wait asked for, whichever is longer (either payload says it: ``_AskedToWait.telling``)."""
    waits = 0
    while isinstance(raw, _AskedToWait):
        left = deadline.remaining()
        if raw.seconds >= left:
            return raw.telling(_failed("LLM_RETRY_AFTER", f"{raw.failed['summary']} (Retry-After: {raw.seconds:.1f}s, "
                                       f"more than the {max(left, 0):.1f}s left of ORCH_LLM_TIMEOUT's {timeout:g}s: "
                                       "not waited for)", secrets))
        if waits == RETRY_AFTER_WAITS:
            return raw.telling(raw.failed)
        waits += 1
        time.sleep(raw.seconds)
        raw = _ask(request, timeout, deadline, secrets)
    return raw


def call_llm(ctx: Any, environ: dict[str, str] | None = None) -> Any:
    """Ask the model for a terminal payload; return it (or a ``failed`` payload on any error, the key never in it)."""
    env = llm_environment() if environ is None else environ  # its own settings, also in a filtered process
    url, key = env.get("LLM_URL", "").strip(), env.get("LLM_API_KEY", "").strip()
    secrets = Secrets(key, _url_password(url))
    try:
        return _call(ctx, env, url, key, secrets)
    except Exception as exc:  # noqa: BLE001 - the worker's generic path would keep its message, and the key in it
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed("HANDLER_ERROR", f"the llm handler raised {type(exc).__name__} at "
                       f"{Path(where.filename).name}:{where.lineno}: {exc}", secrets)


def _call(ctx: Any, env: dict[str, str], url: str, key: str, secrets: Secrets) -> Any:
    problem = _config_problem(url, key)
    if problem:
        return _failed("LLM_CONFIG", problem, secrets, retryable=False)
    try:  # a worker refuses a bad one when it starts; a handler given one all the same (Python) fails the job
        timeout = llm_timeout(env)
    except ConfigError as exc:
        return _failed("LLM_CONFIG", exc.message, secrets, retryable=False)
    body = {"model": env.get("LLM_MODEL", "").strip() or "default", "messages": _messages(ctx), "temperature": 0}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(endpoint(url), data=json.dumps(body).encode(), headers=headers, method="POST")
    with _Deadline(timeout) as deadline:
        raw = _asked_again(request, timeout, deadline, secrets, _ask(request, timeout, deadline, secrets))
    if deadline.passed:  # whatever the read got, or failed with, the connection was cut at the deadline
        return _timed_out(timeout, secrets)
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_REPLY_BYTES:
        return _failed("LLM_BAD_RESPONSE", "the LLM reply is larger than 4 MiB", secrets)
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:  # nested deeper than json goes
        binary = _not_text(raw)
        if binary:
            return _failed("LLM_BAD_RESPONSE", f"the reply is not a chat completion: it is {binary}, not quoted "
                           f"({len(raw)} bytes)", secrets)
        snippet = scrub(raw, secrets, 200)
        return _failed("LLM_BAD_RESPONSE", f"the reply is not a chat completion ({exc}): {snippet}", secrets)
    text = _strip_fences(content)
    if not text:
        return {"status": "failed", "summary": "the model's reply content is empty", "error_code": "MALFORMED_PAYLOAD",
                "retryable": True, "output": {"reply_not_json": True}}
    try:
        # valid or not, the payload goes to the worker, which stores what it can of it
        return without_secrets(loads_unique(text), secrets)
    except DuplicateKeyError as exc:  # JSON keeps one of the values: {"status": "failed", ..., "status": "done"}
        where = scrub(exc.path, secrets, 200)
        return _failed("MALFORMED_PAYLOAD", f"the model's reply has the key {shown(secrets.drop(exc.key))} twice (at "
                       f"{where}): JSON keeps only one of its values, so the reply is refused rather than taken "
                       "without the other", secrets)
    except ValueError:
        # not JSON: hand the text on so the worker records MALFORMED_PAYLOAD with it
        return {"status": "failed", "summary": scrub(content, secrets, 2000), "error_code": "MALFORMED_PAYLOAD",
                "retryable": True, "output": {"reply_not_json": True}}
    except RecursionError:
        return _failed("LLM_BAD_RESPONSE", "the reply's JSON is nested too deeply", secrets)
