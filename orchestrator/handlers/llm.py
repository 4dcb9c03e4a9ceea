"""The ``llm`` handler: an OpenAI-compatible chat-completions call that must answer with a terminal payload.

Settings come from the environment (``.env`` included): ``LLM_URL`` (the base URL, e.g.
``https://api.example.com/v1``, or the full ``.../chat/completions`` URL; a query, Azure's ``?api-version=``, is
kept after the path: ``endpoint``), ``LLM_API_KEY``, ``LLM_MODEL`` and ``ORCH_LLM_TIMEOUT`` (seconds the whole
request may take, the name lookup, the connection and the reply included; default 60; ``config.llm_timeout``;
``_Deadline``). Whitespace around the URL, the key and the model is dropped: a Kubernetes secret read from a file
ends in a line break, which no header can carry. The job's input is sent as the user message (a string as is,
anything else as JSON), with the context (answers and the questions they replied to, revisions) and a system
prompt describing the payload. Every failure becomes a ``failed`` payload with a stable ``error_code``:
``LLM_CONFIG``, not retried (no URL; one that is not ``http(s)://host...``, holds a character that is not ASCII, a
space or a control character, has a bad port or holds a user name or password; a key with a character no header
can carry or that is not ASCII; a bad timeout: the message never quotes the URL), ``LLM_NETWORK_ERROR`` (also a
reply cut off or not HTTP), ``LLM_TIMEOUT``, ``LLM_HTTP_ERROR`` (retryable for 408/429/5xx only; a redirect, which
is not followed, too), ``LLM_BAD_RESPONSE`` (not JSON, nested deeper than the decoder goes, not chat-completions
shaped, or compressed or binary, said so and not quoted), ``HANDLER_ERROR`` (anything else raised in here, a bug:
caught here so that no message with the key in it reaches the worker's generic path). A reply whose content is not
a valid payload is passed on as is, so the worker records ``MALFORMED_PAYLOAD``; content that is empty, not JSON,
or JSON with an object that holds a key twice (JSON would keep one of its values: ``{"status": "failed", ...,
"status": "done"}`` was a success; ``json_text.loads_unique``) is ``MALFORMED_PAYLOAD`` here, saying which.

The API key is only ever put in the ``Authorization`` header, sent to ``LLM_URL`` only: a redirect is not
followed (``LLM_HTTP_ERROR``, not retried, naming where it pointed). urllib's proxy settings are honoured
(``http_proxy``, ``https_proxy``, ``no_proxy`` of the environment): for an ``https://`` URL the proxy sees only a
``CONNECT`` to the host and port; for an ``http://`` URL it is sent the whole request, key included, in clear, as
is everything on the way to such a URL. A key has no shape ``sanitize_text`` could recognise, and an endpoint (a
proxy, a debugging server, a model told to) may echo it, so its value is replaced in everything ``call_llm``
returns, on every path: each string of the payload, nested ones and object keys included (``_without_secrets``;
two keys that become one are both kept, ``_renamed``), as sent, as JSON text may write it (``\\/``, ``\\u0041``)
or percent-encoded (``%2F``: ``_json_forms``); the password of a URL too (``_Secrets``). Other encodings (base64,
...) are not looked for. A key shorter than ``MIN_SECRET_LENGTH`` (8) characters is not looked for:
such a value (``x``, ``EMPTY``, a local server's dummy) cannot be told from text, and replacing it turned
"explain" into "[REDACTED]plain" and a ``done`` into a malformed payload. Failure texts also go through
``sanitize_text``, before they are cut (``_scrub``).
"""
from __future__ import annotations

import functools
import http.client
import json
import re
import socket
import threading
import time
import traceback
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrator.config import llm_timeout
from orchestrator.errors import ConfigError
from orchestrator.handler_env import llm_environment
from orchestrator.json_text import DuplicateKeyError, loads_unique
from orchestrator.security import REDACTED, cut_read_size, renamed_keys, sanitized_cut, shown

MAX_REPLY_BYTES = 4 * 1024 * 1024
MIN_SECRET_LENGTH = 8  # a key (or URL password) shorter than this is not looked for: it cannot be told from text
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


class _Watched:
    """An HTTP(S) handler whose connections are made within ``deadline`` and given to it (``_Deadline.connect``)."""

    deadline: _Deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        deadline = self.deadline

        def connection(*args: Any, **kw: Any) -> Any:
            conn = http_class(*args, **kw)
            conn._create_connection = deadline.connect
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


def _hex(unit: int, digits: int = 4) -> str:
    """A pattern of ``unit`` in hex of ``digits`` digits, each letter of either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{unit:0{digits}x}")


def _json_forms(secret: str) -> str:
    """A pattern of ``secret`` as sent or as JSON text may write it, at any depth of JSON quoted in JSON: each
    character as itself, also after backslashes (PHP writes ``/`` as ``\\/``, quoted again ``\\\\\\/``), or as
    ``\\u`` and its code in hex of either case (a surrogate pair beyond U+FFFF); or percent-encoded, as a URL
    quotes it (``/`` as ``%2F`` or ``%2f``: a key is ASCII, ``_config_problem``, one byte a character). It starts only
    where no backslash precedes: tried at each backslash of a long run, it would scan the rest of the run each
    time."""
    forms = []
    for char in secret:
        code = ord(char)
        units = [code] if code <= 0xFFFF else [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
        percent = f"|%{_hex(code, 2)}" if code < 0x80 else ""
        forms.append(rf"(?:\\*{re.escape(char)}|" + "".join(rf"\\+u{_hex(unit)}" for unit in units) + percent + ")")
    return r"(?<!\\)" + "".join(forms)


@functools.lru_cache(maxsize=4)  # a worker asks with the same key each time: the pattern is made once
def _forms_of(secrets: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(_json_forms, secrets)))


class _Secrets:
    """What ``call_llm`` must never return: the API key and the password of ``LLM_URL``, those of at least
    ``MIN_SECRET_LENGTH`` characters, in any of their JSON forms (``_json_forms``)."""

    def __init__(self, *values: str) -> None:
        self.values = sorted({value for value in values if len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._forms = _forms_of(tuple(self.values)) if self.values else None

    def drop(self, text: str) -> str:
        """``text`` with each secret replaced by ``REDACTED``."""
        if self._forms is None:
            return text
        if "\\" in text or "%" in text:
            return self._forms.sub(REDACTED, text)
        for value in self.values:  # with neither, as sent is the only form (and a replace is many times faster)
            text = text.replace(value, REDACTED)
        return text


def _renamed(obj: dict[str, Any], secrets: _Secrets) -> dict[str, Any]:
    """``obj`` with the secrets replaced in its keys, no value lost when two keys become one: a key that changes
    gets ``2-``, ``3-``, ... in front of its new name when that is taken (``security.renamed_keys``, the rule
    ``sanitize_obj`` renames keys by: ``{"<key>": 1, "[REDACTED]": 2}`` is ``{"2-[REDACTED]": 1, "[REDACTED]":
    2}``)."""
    names = renamed_keys(obj, secrets.drop)
    return obj if all(new == name for name, new in names.items()) else {names[k]: v for k, v in obj.items()}


def _without_secrets(value: Any, secrets: _Secrets) -> Any:
    """``value`` (a decoded JSON reply, changed in place) with the secrets replaced in every string and object key
    (``_renamed``). A loop, not a recursion: a reply nested deeper than the walk could go was ``LLM_BAD_RESPONSE``
    with a key set and passed on (``MALFORMED_PAYLOAD``) without one."""
    if not secrets.values:
        return value
    top = [value]
    todo: list[list[Any] | dict[str, Any]] = [top]
    while todo:
        items = todo.pop()
        for at, item in enumerate(items) if isinstance(items, list) else items.items():
            if isinstance(item, str):
                items[at] = secrets.drop(item)  # type: ignore[index]
            elif isinstance(item, dict):
                items[at] = item = _renamed(item, secrets)  # type: ignore[index]
                todo.append(item)
            elif isinstance(item, list):
                todo.append(item)
    return top[0]


def _scrub(data: str | bytes, secrets: _Secrets, limit: int) -> str:
    """The start of ``data`` (a message, a reply or its first ``cut_read_size(limit)`` bytes) without the secrets,
    sanitized and only then cut to ``limit`` (``security.sanitized_cut``): a cut through a secret or the key
    leaves a part that no pattern, and no replace, recognises."""
    return sanitized_cut(data, limit, redact_first=secrets.drop)


def _failed(code: str, message: str, secrets: _Secrets, retryable: bool = True) -> dict[str, Any]:
    return {"status": "failed", "summary": _scrub(message, secrets, 2000), "error_code": code, "retryable": retryable}


def _timed_out(timeout: float, secrets: _Secrets) -> dict[str, Any]:
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
         secrets: _Secrets) -> bytes | dict[str, Any]:
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
        detail = _scrub(body, secrets, 500)
        if 300 <= exc.code < 400:
            where = _scrub(str(exc.headers.get("Location") or "nowhere"), secrets, 500)
            detail = f"a redirect to {where}, not followed (set LLM_URL to the URL that answers) {detail}".rstrip()
        retry = exc.code in (408, 429) or exc.code >= 500
        return _failed("LLM_HTTP_ERROR", f"LLM endpoint answered HTTP {exc.code}: {detail}", secrets,
                       retryable=retry)
    except (socket.timeout, TimeoutError):
        return _timed_out(timeout, secrets)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            return _timed_out(timeout, secrets)
        return _failed("LLM_NETWORK_ERROR", f"cannot reach the LLM endpoint: {exc.reason}", secrets)
    except OSError as exc:
        return _failed("LLM_NETWORK_ERROR", f"cannot reach the LLM endpoint: {exc}", secrets)
    except (http.client.InvalidURL, UnicodeEncodeError) as exc:  # one _config_problem let through
        # never its message, which quotes the URL (a path may hold a token)
        return _failed("LLM_CONFIG", f"LLM_URL cannot be used: http.client refused it ({type(exc).__name__})",
                       secrets, retryable=False)
    except http.client.HTTPException as exc:  # a reply cut off (IncompleteRead), or not HTTP (BadStatusLine)
        return _failed("LLM_NETWORK_ERROR", f"the LLM endpoint's reply could not be read: {type(exc).__name__}: {exc}",
                       secrets)


def call_llm(ctx: Any, environ: dict[str, str] | None = None) -> Any:
    """Ask the model for a terminal payload; return it (or a ``failed`` payload on any error, the key never in it)."""
    env = llm_environment() if environ is None else environ  # its own settings, also in a filtered process
    url, key = env.get("LLM_URL", "").strip(), env.get("LLM_API_KEY", "").strip()
    secrets = _Secrets(key, _url_password(url))
    try:
        return _call(ctx, env, url, key, secrets)
    except Exception as exc:  # noqa: BLE001 - the worker's generic path would keep its message, and the key in it
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed("HANDLER_ERROR", f"the llm handler raised {type(exc).__name__} at "
                       f"{Path(where.filename).name}:{where.lineno}: {exc}", secrets)


def _call(ctx: Any, env: dict[str, str], url: str, key: str, secrets: _Secrets) -> Any:
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
        raw = _ask(request, timeout, deadline, secrets)
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
        snippet = _scrub(raw, secrets, 200)
        return _failed("LLM_BAD_RESPONSE", f"the reply is not a chat completion ({exc}): {snippet}", secrets)
    text = _strip_fences(content)
    if not text:
        return {"status": "failed", "summary": "the model's reply content is empty", "error_code": "MALFORMED_PAYLOAD",
                "retryable": True, "output": {"reply_not_json": True}}
    try:
        # valid or not, the payload goes to the worker, which stores what it can of it
        return _without_secrets(loads_unique(text), secrets)
    except DuplicateKeyError as exc:  # JSON keeps one of the values: {"status": "failed", ..., "status": "done"}
        where = _scrub(exc.path, secrets, 200)
        return _failed("MALFORMED_PAYLOAD", f"the model's reply has the key {shown(secrets.drop(exc.key))} twice (at "
                       f"{where}): JSON keeps only one of its values, so the reply is refused rather than taken "
                       "without the other", secrets)
    except ValueError:
        # not JSON: hand the text on so the worker records MALFORMED_PAYLOAD with it
        return {"status": "failed", "summary": _scrub(content, secrets, 2000), "error_code": "MALFORMED_PAYLOAD",
                "retryable": True, "output": {"reply_not_json": True}}
    except RecursionError:
        return _failed("LLM_BAD_RESPONSE", "the reply's JSON is nested too deeply", secrets)
