"""The ``llm`` handler against a small OpenAI-compatible server on 127.0.0.1, including its failure modes."""
from __future__ import annotations

import base64
import contextlib
import email.utils
import gzip
import html
import ipaddress
import json
import logging
import socket
import ssl
import struct
import urllib.parse
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from backends import BACKENDS, orchestrator_on
from orchestrator.handlers import llm
from orchestrator.handlers.llm import call_llm
from orchestrator.handlers.llm_secrets import MIN_SECRET_LENGTH
from orchestrator.worker import Worker, WorkerSettings

KEY = "sk-test-0123456789abcdefghijklmnopqrstuv"
# a key sanitize_text cannot recognise without a key name; its "/" may be escaped in JSON text
PLAIN_KEY = "plain.Key/0123-no-known-shape"


class FakeLLM(BaseHTTPRequestHandler):
    """Answers like a chat-completions endpoint; ``server.mode`` picks the behaviour."""

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        if self.server.mode in ("too_large", "reset_unread"):  # at once, reading none of the body, then closes
            self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": None})
            if self.server.mode == "too_large":  # as a server with a body limit does, telling why
                self._send(413, b'{"error": {"message": "request entity too large"}}')
            else:  # a reset (SO_LINGER 0), no answer at all
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        body = json.loads(self.rfile.read(length)) if length else None  # a GET has none
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        mode = self.server.mode
        if mode == "busy" and len(self.server.requests) <= self.server.busy:  # then "done"
            self._send(self.server.status, b'{"error": "slow down"}', {"Retry-After": self.server.retry_after})
            return
        mode = "done" if mode == "busy" else mode
        if mode == "slow":
            time.sleep(1.5)
            mode = "done"
        if mode.startswith("trickle"):  # a whole reply, a byte every 0.1 s (trickle_error: an HTTP 500's body)
            content = json.dumps({"status": "done", "summary": "late"})
            reply = json.dumps({"choices": [{"message": {"content": content}}]})
            self.send_response(500 if mode == "trickle_error" else 200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            try:
                for byte in reply.encode():
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the handler gave up on it
                pass
            return
        if mode.startswith("http"):
            status = int(mode[4:])
            self._send(status, f"error; you sent Authorization: {self.headers.get('Authorization')}".encode())
            return
        if mode == "not_json":
            self._send(200, b"<html>gateway says hi</html>")
            return
        if mode == "body":  # whatever the test put in server.status and server.body
            self._send(self.server.status, self.server.body)
            return
        if mode == "cut":  # a chunked reply whose connection closes before its last chunk
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b'd\r\n{"choices": [\r\n')
            self.close_connection = True
            return
        if mode == "cut_length":  # a reply whose connection closes before the Content-Length it announced
            self.send_response(200)
            self.send_header("Content-Length", "400")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.close_connection = True
            return
        if mode.startswith("redirect"):  # redirect302 ...: elsewhere, to server.location
            self.send_response(int(mode[8:]))
            self.send_header("Location", self.server.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "not_http":  # no status line: whatever listens there does not speak HTTP
            self.wfile.write(b"220 mail.example.com ESMTP ready\r\n")
            self.close_connection = True
            return
        if mode.startswith("echo"):  # a proxy or a model that repeats the key it was sent, everywhere it can
            self._send(200, json.dumps(self._echo(mode)).encode())
            return
        contents = {
            "done": json.dumps({"status": "done", "summary": "wrote the haiku", "output": {"text": "..."}}),
            "needs_human": json.dumps({"status": "needs_human", "summary": "unclear", "question": "Which tone?"}),
            "fenced": "```json\n" + json.dumps({"status": "done", "summary": "fenced"}) + "\n```",
            "content_not_json": "Sure! Here is your haiku.",
            "missing_fields": json.dumps({"status": "done"}),
        }
        reply = {"id": "x", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": contents[mode]}}]}
        self._send(200, json.dumps(reply).encode())

    do_GET = do_POST  # noqa: N815 - what a followed redirect sends

    def do_CONNECT(self) -> None:  # noqa: N802 - what a client asks of a proxy for an https:// URL: a tunnel
        self.server.requests.append({"method": "CONNECT", "path": self.path, "headers": dict(self.headers.items())})
        self._send(403, b"no tunnels here")

    def _echo(self, mode: str) -> dict[str, Any]:
        seen = (self.headers.get("Authorization") or "").split(" ", 1)[-1]
        echoed = {"status": "done", "summary": f"the proxy saw {seen}", "artifacts": [f"{seen}.txt"],
                  "output": {"seen": seen, seen: [{"deep": f"x{seen}x"}], "n": 1}}
        content = {
            "echo_done": json.dumps(echoed),
            "echo_needs_human": json.dumps({**echoed, "status": "needs_human", "question": f"is {seen} right?"}),
            "echo_invalid": json.dumps({**echoed, "status": "weird", seen: True}),  # refused by the worker
            "echo_not_json": f"Sure! Your key is {seen}.",
        }[mode]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the handler reads only the start of a long reply
            pass


def serve(tls: ssl.SSLContext | None = None) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    if tls is not None:  # each connection's handshake made as it is accepted
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.scheme = "http" if tls is None else "https"
    srv.mode = "done"
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


server = pytest.fixture(serve)
other_server = pytest.fixture(serve)  # another origin, for redirects


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, and that key, as PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    """``server`` over TLS, its certificate the one the handler trusts (``SSL_CERT_FILE``)."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    yield from serve(context)


def llm_env(srv: ThreadingHTTPServer, **extra: str) -> dict[str, str]:
    return {"LLM_URL": f"{srv.scheme}://127.0.0.1:{srv.server_address[1]}/v1", "LLM_API_KEY": KEY, "LLM_MODEL": "tiny",
            **extra}


CTX = {"job_id": "J1", "run_id": "r1", "attempt": 1, "input": "write a haiku", "answers": ["calm"], "revisions": []}


def test_a_reply_with_a_payload_is_returned_and_the_request_is_openai_shaped(server) -> None:
    assert call_llm(CTX, llm_env(server))["summary"] == "wrote the haiku"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "tiny" and req["body"]["messages"][0]["role"] == "system"
    assert "write a haiku" in req["body"]["messages"][1]["content"] and "calm" in req["body"]["messages"][1]["content"]


def test_a_job_re_run_after_a_resume_sends_the_question_with_its_answer(orch, server, monkeypatch) -> None:
    """Until 2026-12-06 the model got the answers alone: "calm", never "Which tone?", which it had asked."""
    for name, value in llm_env(server).items():
        monkeypatch.setenv(name, value)
    server.mode = "needs_human"
    job = orch.submit("llm", "write a haiku", max_attempts=1)
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    orch.resume(job, "calm")
    server.mode = "done"
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    assert orch.status(job).state == "succeeded"
    context = json.loads(server.requests[-1]["body"]["messages"][1]["content"].split("Context: ", 1)[1])
    assert context["answers"] == ["calm"] and context["questions"] == ["Which tone?"]


def test_a_fenced_json_reply_is_accepted(server) -> None:
    server.mode = "fenced"
    assert call_llm(CTX, llm_env(server))["summary"] == "fenced"


@pytest.mark.parametrize("mode, code, retryable", [
    ("http500", "LLM_HTTP_ERROR", True), ("http429", "LLM_HTTP_ERROR", True), ("http401", "LLM_HTTP_ERROR", False),
    ("not_json", "LLM_BAD_RESPONSE", True), ("content_not_json", "MALFORMED_PAYLOAD", True),
])
def test_each_failure_mode_becomes_a_failed_payload_with_its_code(server, mode: str, code: str, retryable: bool) -> None:
    server.mode = mode
    payload = call_llm(CTX, llm_env(server))
    assert (payload["status"], payload["error_code"], payload["retryable"]) == ("failed", code, retryable)
    assert KEY not in json.dumps(payload)


@pytest.mark.parametrize("mode", ["echo_done", "echo_needs_human", "echo_invalid", "echo_not_json"])
def test_a_key_the_endpoint_echoes_is_replaced_everywhere_in_the_payload(server, mode: str) -> None:
    server.mode = mode
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=PLAIN_KEY))
    assert server.requests[0]["auth"] == f"Bearer {PLAIN_KEY}"
    text = json.dumps(payload, ensure_ascii=False)
    assert PLAIN_KEY not in text and PLAIN_KEY.replace("/", "\\/") not in text and "[REDACTED]" in text
    if mode == "echo_done":
        assert payload["output"] == {"seen": "[REDACTED]", "[REDACTED]": [{"deep": "x[REDACTED]x"}], "n": 1}
        assert payload["artifacts"] == ["[REDACTED].txt"]


# the key as an endpoint may echo it in JSON text: PHP's "\/", "\u" escapes (either case), quoted in JSON again
ESCAPED_KEYS = {
    "php-slash": PLAIN_KEY.replace("/", "\\/"),
    "u-upper": "".join(f"\\u{ord(c):04X}" for c in PLAIN_KEY),
    "u-lower-some": "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(PLAIN_KEY)),
    "quoted-twice": PLAIN_KEY.replace("/", "\\\\\\/"),
    "percent-encoded": urllib.parse.quote(PLAIN_KEY, safe=""),  # a proxy or a server quoting it in a URL
    "percent-encoded-lower": urllib.parse.quote(PLAIN_KEY, safe="").replace("%2F", "%2f"),
}


def chat_reply(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"content": content}}]}).encode()


@pytest.mark.parametrize("where", ["http-error-body", "not-a-chat-completion", "payload-string"])
@pytest.mark.parametrize("form", sorted(ESCAPED_KEYS))
def test_a_key_echoed_in_any_json_escaped_form_is_replaced(server, where: str, form: str) -> None:
    """Only the key as sent and as Python's json.dumps writes it were looked for: "plain.Key\\/0123..." went through."""
    echoed = ESCAPED_KEYS[form]
    server.mode, server.status = "body", 401 if where == "http-error-body" else 200
    server.body = ('{"error": {"message": "Incorrect API key provided: ' + echoed + '"}}').encode()
    if where == "payload-string":  # a string of the payload holding JSON text
        server.body = chat_reply(json.dumps({"status": "done", "summary": "s", "output": '{"seen": "' + echoed + '"}'}))
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=PLAIN_KEY))
    text = payload["output"] if where == "payload-string" else payload["summary"]
    assert "[REDACTED]" in text and echoed not in text and "0123-no-known" not in text, text


# a key whose base64 holds "+" and "/" at each of the 3 byte offsets an encoding may start it at
ODD_KEY = "sk~???~>0123-no-known-shape"
ENCODED_KEYS = {
    "base64": base64.b64encode(ODD_KEY.encode()).decode(),
    "base64-offset-1": base64.b64encode(b"<" + ODD_KEY.encode() + b">").decode(),
    "base64-basic-auth": base64.b64encode(b"user:" + ODD_KEY.encode()).decode(),  # offset 2, as a Basic header has it
    "base64-urlsafe-unpadded": base64.urlsafe_b64encode(ODD_KEY.encode()).decode().rstrip("="),
    "base64-php-slash": base64.b64encode(b"user:" + ODD_KEY.encode()).decode().replace("/", "\\/"),
    "base64-percent-encoded": urllib.parse.quote(base64.b64encode(ODD_KEY.encode()).decode(), safe=""),
    "hex": ODD_KEY.encode().hex(),
    "hex-upper": ODD_KEY.encode().hex().upper(),
    # MIME's base64 of a longer text, its lines of 76 (a mail or a multipart body echoed): the key's characters
    # are cut by a line break, LF or CRLF, or its JSON escape
    "base64-mime-lf": base64.encodebytes(b"x" * 50 + ODD_KEY.encode()).decode(),
    "base64-mime-crlf": base64.encodebytes(b"x" * 50 + ODD_KEY.encode()).decode().replace("\n", "\r\n"),
    "base64-mime-escaped": base64.encodebytes(b"x" * 50 + ODD_KEY.encode()).decode().replace("\n", "\\r\\n"),
    # an HTML page echoing it: escaped (``html.escape``: ">" is "&gt;"), or each character a numeric entity
    "html-escaped": html.escape(ODD_KEY),
    "html-hex-entities": "".join(f"&#x{ord(c):X};" for c in ODD_KEY),
    "html-decimal-entities-some": "".join(f"&#{ord(c)};" if i % 2 else c for i, c in enumerate(ODD_KEY)),
}
# what the key alone decides of the MIME forms: its base64 at that offset, line breaks aside
MIME_CORE = base64.b64encode(b"x" * 50 + ODD_KEY.encode()).decode()[68:100]


@pytest.mark.parametrize("where", ["http-error-body", "not-a-chat-completion", "payload-string"])
@pytest.mark.parametrize("form", sorted(ENCODED_KEYS))
def test_a_key_echoed_in_base64_or_hex_is_replaced(server, where: str, form: str) -> None:
    """Only the key as sent, JSON-escaped or percent-encoded was looked for: an endpoint echoing the Authorization
    header it got as base64 (a Basic header's "user:key") or a debugging page showing the key's bytes in hex kept it."""
    echoed = ENCODED_KEYS[form]
    server.mode, server.status = "body", 401 if where == "http-error-body" else 200
    server.body = ('{"error": {"message": "Incorrect API key provided: ' + echoed + '"}}').encode()
    if where == "payload-string":
        server.body = chat_reply(json.dumps({"status": "done", "summary": "s", "output": "seen " + echoed + "."}))
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=ODD_KEY))
    text = payload["output"] if where == "payload-string" else payload["summary"]
    assert "[REDACTED]" in text and echoed not in text and echoed[6:-6] not in text, text
    unwrapped = "".join(text.replace("\\r", "").replace("\\n", "").split())
    assert MIME_CORE not in unwrapped and ODD_KEY not in html.unescape(text), text


@pytest.mark.parametrize("width", [60, 64, 76])
def test_a_long_key_s_base64_cut_into_lines_at_any_offset_is_replaced(width: int) -> None:
    """A key longer than a line of base64 (``sk-proj-`` keys are 164 characters) is cut by several line breaks."""
    from orchestrator.handlers.llm_secrets import Secrets

    key = "sk-proj-" + "".join(chr(33 + (i * 7) % 90) for i in range(156))
    secrets = Secrets(key)
    for before in range(0, 80, 7):
        b64 = base64.b64encode(b"x" * before + key.encode()).decode()
        text = "\n".join(b64[i:i + width] for i in range(0, len(b64), width))
        kept = "".join(secrets.drop(text).split())
        start = -(-8 * before // 6) + 1
        assert b64[start:start + 20] not in kept and b64[-24:-4] not in kept, (before, kept)


@pytest.mark.parametrize("width", [1, 4, 16, 20, 32, 40, 59])
@pytest.mark.parametrize("key", [ODD_KEY, "sk-proj-" + "".join(chr(33 + (i * 7) % 90) for i in range(156))],
                         ids=["short-key", "long-key"])
def test_a_key_s_base64_cut_into_lines_shorter_than_60_characters_is_replaced(key: str, width: int) -> None:
    """Lines of 60 or more were the only ones looked for (MIME's 76, PEM's 64): a tool wrapping at 40, or a
    terminal's narrow column, kept the key's base64."""
    from orchestrator.handlers.llm_secrets import Secrets

    secrets = Secrets(key)
    for before in range(0, 9):
        b64 = base64.b64encode(b"x" * before + key.encode()).decode()
        for newline in ("\n", "\r\n"):
            text = newline.join(b64[i:i + width] for i in range(0, len(b64), width))
            kept = "".join(secrets.drop(text).split())
            start = -(-8 * before // 6) + 1
            assert b64[start:start + 12] not in kept and b64[-16:-4] not in kept, (before, kept)


# the key as a model or an endpoint may echo it changed: cut short at its start or its end, upper-cased, reversed
CHANGED_KEYS = {"start-12": PLAIN_KEY[:12], "start-20": PLAIN_KEY[:20], "end-12": PLAIN_KEY[-12:],
                "end-25": PLAIN_KEY[-25:], "upper": PLAIN_KEY.upper(), "reversed": PLAIN_KEY[::-1]}


@pytest.mark.parametrize("where", ["http-error-body", "payload-string"])
@pytest.mark.parametrize("form", sorted(CHANGED_KEYS))
def test_a_key_echoed_cut_short_upper_cased_or_reversed_is_replaced(server, where: str, form: str) -> None:
    """Only the whole key, in its encodings, was looked for: "your key begins plain.Key/01..." or the key in
    capitals went through."""
    echoed = CHANGED_KEYS[form]
    server.mode, server.status = "body", 401 if where == "http-error-body" else 200
    server.body = json.dumps({"error": {"message": f"Incorrect API key provided: {echoed}. Check it."}}).encode()
    if where == "payload-string":
        server.body = chat_reply(json.dumps({"status": "done", "summary": "s", "output": f"the key {echoed}, ok"}))
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=PLAIN_KEY))
    text = payload["output"] if where == "payload-string" else payload["summary"]
    assert "[REDACTED]" in text and echoed not in text and echoed[:12] not in text and echoed[-12:] not in text, text


def test_fewer_than_12_characters_of_the_key_are_ordinary_text_and_kept() -> None:
    """A short piece of the key cannot be told from text ("plain.Key" is a name, "known-shape" words)."""
    from orchestrator.handlers.llm_secrets import Secrets

    text = f"{PLAIN_KEY[:11]} and {PLAIN_KEY[-11:]}: plain.Key, a known shape"
    assert Secrets(PLAIN_KEY).drop(text) == text


@pytest.mark.slow
@pytest.mark.parametrize("key, text", [
    ("a" * 40, "a" * 5_000_000), ("ab" * 20, "ab" * 2_500_000), (PLAIN_KEY, PLAIN_KEY[:12] * 420_000),
    (PLAIN_KEY, PLAIN_KEY[-12:] * 420_000), (PLAIN_KEY, (PLAIN_KEY[:-1] + "\\n") * 70_000),
], ids=["one-letter-key", "two-letter-key", "starts", "ends", "all-but-one"])
def test_the_parts_of_a_key_are_looked_for_in_linear_time(key: str, text: str) -> None:
    from helpers import cpu_timed
    from orchestrator.handlers.llm_secrets import Secrets

    took, kept = cpu_timed(lambda: Secrets(key).drop(text))
    assert took < 5.0 and key[:12] not in kept and key[-12:] not in kept


def test_an_encoding_of_the_key_is_looked_for_only_as_the_key_s_own_so_other_base64_and_hex_stay(server) -> None:
    """The key's encodings are searched for, not text shaped like them: a digest or an id in base64 or hex stays."""
    other = {"status": "done", "summary": "sha256 " + "ab12" * 16,
             "output": {"id": base64.b64encode(b"x" * 40).decode(), "key": base64.b64encode(b"sk~???").decode()}}
    server.mode, server.status, server.body = "body", 200, chat_reply(json.dumps(other))
    assert call_llm(CTX, llm_env(server, LLM_API_KEY=ODD_KEY)) == other


@pytest.mark.parametrize("key", ["e", "x", "EMPTY", "sk-1234"])
def test_a_key_shorter_than_8_characters_is_not_looked_for_so_replies_stay_whole(server, key: str) -> None:
    """A local server's dummy key cannot be told from text: with "e", "explain the example" came back as
    "[REDACTED]xplain ...", and "done" as "don[REDACTED]" (MALFORMED_PAYLOAD)."""
    content = {"status": "done", "summary": "explain the example", "output": {"EMPTY": "x sk-1234"}}
    server.mode, server.status, server.body = "body", 200, chat_reply(json.dumps(content))
    assert call_llm(CTX, llm_env(server, LLM_API_KEY=key)) == content
    assert server.requests[0]["auth"] == f"Bearer {key}"
    server.mode = "echo_done"  # one of MIN_SECRET_LENGTH is replaced
    assert "abcd1234" not in json.dumps(call_llm(CTX, llm_env(server, LLM_API_KEY="abcd1234"[:MIN_SECRET_LENGTH])))


def test_a_reply_nested_500_deep_is_passed_on_alike_with_a_key_or_without(server) -> None:
    """The walk that replaces the key recursed, so with a key set such a reply was LLM_BAD_RESPONSE, and without
    one passed on to the worker, which records MALFORMED_PAYLOAD (deeper than 64 levels)."""
    content = '{"status": "done", "summary": "deep", "output": ' + "[" * 500 + "]" * 500 + "}"
    server.mode, server.status, server.body = "body", 200, chat_reply(content)
    with_key = call_llm(CTX, llm_env(server))
    assert with_key["summary"] == "deep" and with_key == call_llm(CTX, llm_env(server, LLM_API_KEY=""))


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/chat/completions"])
def test_a_query_in_llm_url_stays_after_the_path(server, path: str) -> None:
    """Azure's ``?api-version=``: "/chat/completions" was added after the query, to its value."""
    url = f"http://127.0.0.1:{server.server_address[1]}{path}?api-version=2024-02-01"
    assert call_llm(CTX, llm_env(server, LLM_URL=url))["summary"] == "wrote the haiku"
    assert server.requests[0]["path"] == "/v1/chat/completions?api-version=2024-02-01"


@pytest.mark.parametrize("url", [
    "https://llmuser:UrlPassw0rdPlanted@llm.example.invalid/v1", "https://llmuser@llm.example.invalid/v1",
    "llm.example.invalid/v1", "ftp://llm.example.invalid/v1", "file:///etc/passwd", "http:///v1",
    "http://llm.example.invalid:abc/v1", "http://llm.example.invalid:70000/v1", "http://[::1/v1",
    "http://llm.example.invalid/v 1", "http://llm\u200b.example.invalid/v1", "http://llm.example.invalid/v\u00e9",
    "http://llm.example.invalid/v1?q=\u00e9", "http://b\u00fccher.example.invalid/v1",
])
def test_an_llm_url_that_cannot_be_used_is_llm_config_not_retried_never_quoting_a_password(url: str) -> None:
    """urllib sends "user:password@host" as the host: its InvalidURL message quoted "password@host", which no
    pattern recognises, as a retried LLM_NETWORK_ERROR; no scheme was a HANDLER_ERROR, ftp and file were fetched."""
    payload = call_llm(CTX, {"LLM_URL": url, "LLM_API_KEY": KEY})
    assert (payload["status"], payload["error_code"], payload["retryable"]) == ("failed", "LLM_CONFIG", False), payload
    assert "Passw0rd" not in json.dumps(payload) and payload["summary"].startswith("LLM_URL ")


@pytest.mark.parametrize("key", [PLAIN_KEY[:9] + "\n" + PLAIN_KEY[9:], PLAIN_KEY + "\x00", PLAIN_KEY + "€",
                                 PLAIN_KEY + "\u00e9"])
def test_a_key_no_http_header_can_carry_is_llm_config_naming_the_setting_not_the_key(server, key: str) -> None:
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=key))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_CONFIG", False) and server.requests == []
    assert payload["summary"].startswith("LLM_API_KEY ") and PLAIN_KEY[:9] not in json.dumps(payload)


def test_anything_else_raised_in_the_handler_is_handler_error_without_the_key(server, monkeypatch) -> None:
    """Caught in call_llm: the worker's generic path keeps the message (and the traceback, in the output tail)."""
    def broken(*args: Any) -> None:
        raise ValueError(f"Invalid header value b'Bearer {PLAIN_KEY}\\r\\n'")

    monkeypatch.setattr(llm, "_ask", broken)
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=PLAIN_KEY))
    assert (payload["status"], payload["error_code"], payload["retryable"]) == ("failed", "HANDLER_ERROR", True)
    assert "ValueError" in payload["summary"] and PLAIN_KEY not in json.dumps(payload), payload


@pytest.mark.parametrize("mode, body, code", [
    ("body", b"[" * 100_000 + b"]" * 100_000, "LLM_BAD_RESPONSE"),  # deeper than the JSON decoder goes
    ("cut", b"", "LLM_NETWORK_ERROR"),  # the connection closed before the reply was whole
    ("cut_length", b"", "LLM_NETWORK_ERROR"),  # ... before the Content-Length it announced
    ("not_http", b"", "LLM_NETWORK_ERROR"),  # no HTTP status line
])
def test_a_reply_the_handler_cannot_read_is_one_of_its_documented_codes_not_a_handler_error(
        server, mode: str, body: bytes, code: str) -> None:
    server.mode, server.status, server.body = mode, 200, body
    payload = call_llm(CTX, llm_env(server))
    assert (payload["status"], payload["error_code"], payload["retryable"]) == ("failed", code, True)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_so_the_key_never_goes_to_another_server(server, other_server,
                                                                          status: int) -> None:
    """urllib follows a 301/302/303 as a GET to wherever it points, the Authorization header (the key) included."""
    server.mode = f"redirect{status}"
    server.location = f"http://127.0.0.1:{other_server.server_address[1]}/v1/chat/completions?token=abc123"
    payload = call_llm(CTX, llm_env(server))
    assert other_server.requests == [] and len(server.requests) == 1
    assert (payload["status"], payload["error_code"], payload["retryable"]) == ("failed", "LLM_HTTP_ERROR", False)
    assert f"HTTP {status}" in payload["summary"] and "not followed" in payload["summary"]
    assert "token=[REDACTED]" in payload["summary"] and "abc123" not in payload["summary"]


def test_a_413_answered_before_the_request_was_all_sent_is_read_and_not_retried(server) -> None:
    """A server with a body limit answers 413 at once and closes the connection while the body is still being sent:
    the send's broken pipe was a retried LLM_NETWORK_ERROR, and every retry of the job the same."""
    server.mode = "too_large"
    payload = call_llm({**CTX, "input": "x" * 8_000_000}, llm_env(server))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_HTTP_ERROR", False), payload
    assert "HTTP 413" in payload["summary"] and "request entity too large" in payload["summary"]
    assert "larger than the endpoint takes" in payload["summary"] and len(server.requests) == 1


def test_a_413_answered_over_https_before_the_request_was_all_sent_is_read_and_not_retried(tls_server) -> None:
    """Over TLS the endpoint's close while the body is being sent is ``ssl.SSLEOFError`` ("EOF occurred in violation
    of protocol"), not a broken pipe: it was a retried LLM_NETWORK_ERROR, every retry of the job alike."""
    tls_server.mode = "too_large"
    payload = call_llm({**CTX, "input": "x" * 8_000_000}, llm_env(tls_server))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_HTTP_ERROR", False), payload
    assert "HTTP 413" in payload["summary"] and "larger than the endpoint takes" in payload["summary"]


def test_a_reply_over_https_is_read_as_over_http(tls_server) -> None:
    """The fake endpoint over TLS answers as over plain HTTP (a guard of the test's own server)."""
    assert call_llm(CTX, llm_env(tls_server))["summary"] == "wrote the haiku"


def test_a_connection_reset_before_the_request_was_all_sent_without_an_answer_says_so(server) -> None:
    """No answer to read: a network error, retried (a reset may be a passing fault), that says the request was cut."""
    server.mode = "reset_unread"
    payload = call_llm({**CTX, "input": "x" * 8_000_000}, llm_env(server))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_NETWORK_ERROR", True), payload
    assert "before the request (8,00" in payload["summary"] and "no answer" in payload["summary"], payload


def busy(srv: ThreadingHTTPServer, status: int, retry_after: str, times: int = 1) -> None:
    """``srv`` answers ``status`` with ``Retry-After: retry_after`` to the first ``times`` requests, then a payload."""
    srv.mode, srv.status, srv.retry_after, srv.busy = "busy", status, retry_after, times


@pytest.mark.parametrize("status", [429, 503])
def test_a_429_or_503_with_retry_after_is_asked_again_after_that_wait_within_the_call(server, status: int) -> None:
    """Retry-After was ignored: the attempt failed at once, and the worker's backoff, not the server, said when."""
    busy(server, status, "1")
    started = time.monotonic()
    payload = call_llm(CTX, llm_env(server, ORCH_LLM_TIMEOUT="10"))
    assert payload["summary"] == "wrote the haiku" and len(server.requests) == 2
    assert 1.0 <= time.monotonic() - started < 5


@pytest.mark.parametrize("when", [-3600, 0], ids=["an-hour-ago", "now"])
def test_a_retry_after_date_already_past_is_asked_again_at_once(server, when: int) -> None:
    busy(server, 429, email.utils.formatdate(time.time() + when, usegmt=True))
    started = time.monotonic()
    assert call_llm(CTX, llm_env(server))["summary"] == "wrote the haiku" and len(server.requests) == 2
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("retry_after", ["120", "86400", "99999999999999999999999", "in-an-hour"])
def test_a_retry_after_past_orch_llm_timeout_fails_at_once_llm_retry_after_never_waiting(
        server, retry_after: str) -> None:
    """Waiting would outlast ORCH_LLM_TIMEOUT, which bounds the whole call: the attempt ends now, retried later."""
    if retry_after == "in-an-hour":
        retry_after = email.utils.formatdate(time.time() + 3600, usegmt=True)
    busy(server, 503, retry_after)
    started = time.monotonic()
    payload = call_llm(CTX, llm_env(server, ORCH_LLM_TIMEOUT="5"))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_RETRY_AFTER", True), payload
    assert "HTTP 503" in payload["summary"] and "ORCH_LLM_TIMEOUT" in payload["summary"] and "slow down" in payload[
        "summary"]
    assert time.monotonic() - started < 1.0 and len(server.requests) == 1


@pytest.mark.parametrize("retry_after, seconds", [("120", 120.0), ("1.5", 1.5), ("9" * 400, 3600.0)])
def test_llm_retry_after_says_in_its_payload_how_long_the_endpoint_asked_to_wait(server, retry_after: str,
                                                                                 seconds: float) -> None:
    """So that the worker's retry comes no earlier (a wait past the bound, ``MAX_RETRY_AFTER_SECONDS``, is the
    bound: JSON has no infinity)."""
    busy(server, 429, retry_after)
    payload = call_llm(CTX, llm_env(server, ORCH_LLM_TIMEOUT="1"))
    assert (payload["error_code"], payload["retry_after"]) == ("LLM_RETRY_AFTER", seconds), payload


@pytest.fixture(params=BACKENDS)
def stored(request: pytest.FixtureRequest, base: Path, keyring):
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


def test_after_llm_retry_after_the_next_attempt_runs_no_earlier_than_the_endpoint_asked(stored, server,
                                                                                       monkeypatch) -> None:
    """Retry-After longer than ORCH_LLM_TIMEOUT failed the attempt at once (``LLM_RETRY_AFTER``), and the worker's
    backoff alone said when to try again: a second or two, long before the endpoint would take the request."""
    for name, value in llm_env(server, ORCH_LLM_TIMEOUT="2").items():
        monkeypatch.setenv(name, value)
    busy(server, 503, "600")
    job = stored.submit("llm", "write a haiku", max_attempts=3)
    before = stored.clock()
    with Worker(stored, WorkerSettings(worker_id="w", retry_base_seconds=1.0)) as worker:
        assert worker.run_once().error_code == "LLM_RETRY_AFTER"
        retry_at = stored.load(job).state.retry_at
        assert before + 600 <= retry_at <= stored.clock() + 600
        assert worker.run_once(now=retry_at - 1) is None and len(server.requests) == 1
        assert worker.run_once(now=retry_at + 0.01).outcome == "succeeded"


def test_an_endpoint_that_keeps_asking_to_wait_is_asked_a_few_times_then_the_attempt_fails_retried(server) -> None:
    busy(server, 429, "0", times=100)
    payload = call_llm(CTX, llm_env(server))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_HTTP_ERROR", True), payload
    assert len(server.requests) == 1 + llm.RETRY_AFTER_WAITS


@pytest.mark.parametrize("retry_after", ["soon", "-5", "1e3", ""])
def test_a_retry_after_that_is_no_delay_nor_date_is_ignored_as_before(server, retry_after: str) -> None:
    busy(server, 429, retry_after)
    payload = call_llm(CTX, llm_env(server))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_HTTP_ERROR", True) and len(server.requests) == 1


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("9" * 400, float("inf")),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0), ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),  # an HTTP date; one past: 0
    ("Wednesday, 21-Oct-15 07:28:00 GMT", 60.0), ("Wed Oct 21 07:28:00 2015", 60.0),  # RFC 850's, asctime's
    ("Wed, 21 Oct 2015 09:28:00 +0200", 60.0),
    ("soon", None), ("-5", None), ("1e3", None), ("", None), (None, None), ("Wed, 32 Oct 2015 07:28:00 GMT", None),
])
def test_retry_after_is_a_number_of_seconds_or_an_http_date_else_nothing(value: str | None,
                                                                          seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, tzinfo=timezone.utc).timestamp()
    assert llm.retry_after_seconds(value, now) == seconds


def test_retry_after_on_another_status_is_not_waited_for(server) -> None:
    busy(server, 500, "0")
    assert call_llm(CTX, llm_env(server))["error_code"] == "LLM_HTTP_ERROR" and len(server.requests) == 1


def test_a_timeout_is_llm_timeout(server) -> None:
    server.mode = "slow"
    payload = call_llm(CTX, llm_env(server, ORCH_LLM_TIMEOUT="0.2"))
    assert payload["error_code"] == "LLM_TIMEOUT"


@pytest.mark.parametrize("mode", ["trickle", "trickle_error"])
def test_a_reply_that_keeps_coming_past_the_timeout_is_llm_timeout_at_the_timeout(server,
                                                                                  mode: str) -> None:
    """ORCH_LLM_TIMEOUT bounds the whole reply, not each wait for a byte: a reply of ~80 bytes at 10 a second
    (a proxy's keep-alive, a stream) took 8 s with a timeout of 0.5 s, and was taken as the answer."""
    server.mode = mode
    started = time.monotonic()
    payload = call_llm(CTX, llm_env(server, ORCH_LLM_TIMEOUT="0.5"))
    assert (payload["error_code"], payload["retryable"]) == ("LLM_TIMEOUT", True)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e300", "soon"])
def test_a_timeout_no_socket_takes_fails_the_job_with_llm_config_naming_the_setting(server, value: str) -> None:
    """A worker refuses to start with it (CONFIG_ERROR, exit 3); given to the handler all the same, it fails the job,
    not retried, as a missing LLM_URL does (until 2026-12-03 it counted as unset)."""
    payload = call_llm(CTX, llm_env(server, ORCH_LLM_TIMEOUT=value))
    assert payload["status"] == "failed" and payload["retryable"] is False, payload
    assert payload["error_code"] == "LLM_CONFIG" and payload["summary"].startswith("ORCH_LLM_TIMEOUT must be ")


def test_a_refused_connection_is_a_network_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    payload = call_llm(CTX, {"LLM_URL": f"http://127.0.0.1:{port}", "LLM_API_KEY": KEY})
    assert payload["error_code"] == "LLM_NETWORK_ERROR" and KEY not in json.dumps(payload)


def test_no_url_is_a_config_failure_without_retry() -> None:
    assert call_llm(CTX, {})["error_code"] == "LLM_CONFIG"


# one line of reply, 20 KB and 100 KB, of 1-, 2-, 3- and 4-byte characters; one after an empty first line
LONG_REPLIES = {
    f"{name}-{size // 1024}KB": unit * (size // len(unit.encode()))
    for name, unit in [("ascii", "upstream busy; "), ("e-acute", "é"), ("kanji", "漢"), ("emoji", "😀")]
    for size in (20 * 1024, 100 * 1024)
}
LONG_REPLIES["newline-first"] = "\n" + "upstream busy; " * 2000


@pytest.mark.parametrize("status, code, limit", [(502, "LLM_HTTP_ERROR", 500), (200, "LLM_BAD_RESPONSE", 200)],
                         ids=["http-error-body", "not-a-chat-completion"])
@pytest.mark.parametrize("name", sorted(LONG_REPLIES))
def test_a_long_one_line_reply_is_quoted_by_its_first_characters(server, name: str, status: int, code: str,
                                                                 limit: int) -> None:
    """Read and cut in characters, not bytes: a margin counted in bytes left no '漢' of the reply."""
    text = LONG_REPLIES[name]
    server.mode, server.status, server.body = "body", status, text.encode()
    payload = call_llm(CTX, llm_env(server))
    assert payload["error_code"] == code and text[:limit] + "..." in payload["summary"]


def all_bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode, state, code", [
    ("done", "succeeded", None), ("needs_human", "waiting_human", None), ("http400", "failed", "LLM_HTTP_ERROR"),
    ("missing_fields", "failed", "MALFORMED_PAYLOAD"), ("content_not_json", "failed", "MALFORMED_PAYLOAD"),
])
def test_llm_jobs_through_the_worker_never_write_the_key_anywhere(orch, server, monkeypatch, caplog, capfd,
                                                                    mode: str, state: str, code: str | None) -> None:
    for name, value in llm_env(server).items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    server.mode = mode
    job = orch.submit("llm", "write a haiku", max_attempts=1)
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    st = orch.status(job)
    assert st.state == state and (st.last_error or {}).get("code") == code
    if mode == "needs_human":
        assert st.question == "Which tone?"
    assert KEY.encode() not in all_bytes_under(orch.settings.state_dir)
    out, err = capfd.readouterr()
    assert KEY not in out + err + caplog.text


@pytest.mark.parametrize("mode, state", [
    ("echo_done", "succeeded"), ("echo_needs_human", "waiting_human"), ("echo_invalid", "failed"),
    ("echo_not_json", "failed"),
])
def test_a_key_without_a_known_shape_echoed_by_the_endpoint_never_reaches_a_file(orch, server, monkeypatch,
                                                                                  mode: str, state: str) -> None:
    for name, value in llm_env(server, LLM_API_KEY=PLAIN_KEY).items():
        monkeypatch.setenv(name, value)
    server.mode = mode
    job = orch.submit("llm", "write a haiku", max_attempts=1)
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    assert orch.status(job).state == state
    stored = all_bytes_under(orch.settings.state_dir)
    assert PLAIN_KEY.encode() not in stored and PLAIN_KEY.replace("/", "\\/").encode() not in stored


@pytest.mark.parametrize("around", ["\n", "\r\n", " "])
def test_a_key_read_from_a_file_with_its_line_break_is_sent_without_it(orch, server, monkeypatch,
                                                                         around: str) -> None:
    """A Kubernetes secret mounted as a file ends in a line break: urllib refused the header with a ValueError
    quoting the key, which the worker's generic path stored (HANDLER_ERROR, the traceback in the output tail)."""
    for name, value in llm_env(server, LLM_API_KEY=PLAIN_KEY + around).items():
        monkeypatch.setenv(name, value)
    job = orch.submit("llm", "write a haiku", max_attempts=1)
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    assert orch.status(job).state == "succeeded" and server.requests[0]["auth"] == f"Bearer {PLAIN_KEY}"
    assert PLAIN_KEY.encode() not in all_bytes_under(orch.settings.state_dir)


def test_a_password_in_llm_url_fails_the_job_at_once_and_never_reaches_a_file(orch, monkeypatch) -> None:
    monkeypatch.setenv("LLM_URL", "https://llmuser:UrlPassw0rdPlanted@llm.example.invalid/v1")
    monkeypatch.setenv("LLM_API_KEY", KEY)
    job = orch.submit("llm", "write a haiku", max_attempts=3)
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    st = orch.status(job)
    assert (st.state, st.last_error["code"]) == ("failed", "LLM_CONFIG")
    assert b"Passw0rd" not in all_bytes_under(orch.settings.state_dir)


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_the_llm_handler_still_gets_its_key_and_timeout_in_a_handler_process_that_hides_them_from_handlers(
        orch, server, monkeypatch, mode: str) -> None:
    for name, value in llm_env(server, ORCH_LLM_TIMEOUT="0.3").items():
        monkeypatch.setenv(name, value)
    worker = Worker(orch, WorkerSettings(worker_id="w", handler_process=mode))
    done = orch.submit("llm", "write a haiku", max_attempts=1)
    worker.run_once()
    server.mode = "slow"  # answers after 1.5 s: past ORCH_LLM_TIMEOUT, which the handler process still honours
    slow = orch.submit("llm", "write a haiku", max_attempts=1)
    worker.run_once()
    worker.close()
    assert orch.status(done).state == "succeeded" and server.requests[0]["auth"] == f"Bearer {KEY}"
    assert orch.status(slow).last_error["code"] == "LLM_TIMEOUT"


@pytest.mark.parametrize("content, key", [
    ('{"status": "failed", "summary": "no", "status": "done"}', "'status'"),
    ('```json\n{"status": "done", "summary": "s", "output": {"n": 1, "n": 2}}\n```', "'n'"),
    ('{"status": "done", "summary": "s", "output": {"' + PLAIN_KEY + '": 1, "' + PLAIN_KEY.replace("/", "\\/")
     + '": 2}}', "'[REDACTED]'"),
])
def test_a_reply_whose_payload_holds_a_key_twice_is_malformed_payload_naming_the_key(server, content: str,
                                                                                      key: str) -> None:
    """json.loads kept the last value: {"status": "failed", ..., "status": "done"} was a job succeeded."""
    server.mode, server.status, server.body = "body", 200, chat_reply(content)
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=PLAIN_KEY))
    assert (payload["status"], payload["error_code"], payload["retryable"]) == ("failed", "MALFORMED_PAYLOAD", True)
    assert f"the key {key} twice" in payload["summary"] and PLAIN_KEY not in json.dumps(payload), payload


def test_a_job_whose_model_replies_with_status_twice_fails_not_succeeds(orch, server, monkeypatch) -> None:
    for name, value in llm_env(server).items():
        monkeypatch.setenv(name, value)
    server.mode, server.status = "body", 200
    server.body = chat_reply('{"status": "failed", "summary": "no", "status": "done"}')
    job = orch.submit("llm", "write a haiku", max_attempts=1)
    Worker(orch, WorkerSettings(worker_id="w")).run_once()
    st = orch.status(job)
    assert (st.state, st.last_error["code"]) == ("failed", "MALFORMED_PAYLOAD")


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener's queue is full: a connect there never completes (as behind a firewall
    that drops the SYN), until its own timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filling = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        filling.append(sock)
    probe = socket.socket()
    probe.settimeout(0.2)
    with pytest.raises(OSError):  # the queue is full indeed
        probe.connect(("127.0.0.1", port))
    probe.close()
    yield port
    for sock in [*filling, listener]:
        sock.close()


def resolving(monkeypatch, host: str, *ports: int, wait: threading.Event | None = None) -> None:
    """``host`` resolves to 127.0.0.1 once per port in ``ports``, in that order (after ``wait``, if given)."""
    real = socket.getaddrinfo

    def fake(name: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if name != host:
            return real(name, port, *args, **kwargs)
        if wait is not None:
            wait.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_orch_llm_timeout_bounds_connecting_to_a_host_whose_addresses_never_answer(monkeypatch,
                                                                                   unanswering_port) -> None:
    """Each address had the whole timeout: three that never answered took 3 x 1 s, "did not answer within 1s"."""
    resolving(monkeypatch, "llm.multi.test", unanswering_port, unanswering_port, unanswering_port)
    started = time.monotonic()
    payload = call_llm(CTX, {"LLM_URL": f"http://llm.multi.test:{unanswering_port}/v1", "LLM_API_KEY": KEY,
                             "ORCH_LLM_TIMEOUT": "1"})
    assert (payload["error_code"], payload["retryable"]) == ("LLM_TIMEOUT", True), payload
    assert time.monotonic() - started < 1.5 and "within 1s" in payload["summary"]


def test_a_host_whose_first_address_never_answers_is_reached_at_the_next_within_the_timeout(
        server, monkeypatch, unanswering_port) -> None:
    resolving(monkeypatch, "llm.multi.test", unanswering_port, server.server_address[1])
    started = time.monotonic()
    payload = call_llm(CTX, llm_env(server, LLM_URL="http://llm.multi.test/v1", ORCH_LLM_TIMEOUT="2"))
    assert payload["summary"] == "wrote the haiku" and time.monotonic() - started < 2.0


def test_orch_llm_timeout_bounds_the_name_lookup(monkeypatch) -> None:
    """A resolver that does not answer held the run for as long as it took: the lookup had no bound at all."""
    release = threading.Event()
    resolving(monkeypatch, "llm.slow.test", 9, wait=release)
    started = time.monotonic()
    try:
        payload = call_llm(CTX, {"LLM_URL": "http://llm.slow.test/v1", "LLM_API_KEY": KEY, "ORCH_LLM_TIMEOUT": "0.5"})
    finally:
        release.set()
    assert (payload["error_code"], payload["retryable"]) == ("LLM_TIMEOUT", True), payload
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("url", [
    "http://llm.example.invalid/v1/tok-SECRETPATH x", "http://llm.example.invalid/v1/tok-SECRETPATH\x7f",
    "http://llm.example.invalid/v1/tok-SECRETPATH\u00e9", "http://llm.example.invalid/v1?tok=SECRETPATH\tx",
    "http://llm-SECRETPATH\u200b.example.invalid/v1",
])
def test_an_llm_config_message_never_quotes_the_url(url: str) -> None:
    """http.client's InvalidURL quoted the path ("URL can't contain control characters. '/v1/tok-...'")."""
    payload = call_llm(CTX, {"LLM_URL": url, "LLM_API_KEY": KEY})
    assert (payload["error_code"], payload["retryable"]) == ("LLM_CONFIG", False), payload
    assert "SECRETPATH" not in payload["summary"] and payload["summary"].startswith("LLM_URL ")


@pytest.fixture
def no_proxy_settings(monkeypatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                 "ALL_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)


def test_an_http_url_goes_through_the_http_proxy_of_the_environment_key_included(server, other_server, monkeypatch,
                                                                                  no_proxy_settings) -> None:
    """As the README says: a plain http:// LLM_URL hands the whole request to the proxy, the key in clear."""
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{other_server.server_address[1]}")
    payload = call_llm(CTX, llm_env(server, LLM_URL="http://llm.example.invalid/v1"))
    assert payload["summary"] == "wrote the haiku" and server.requests == []
    assert other_server.requests[0]["path"] == "http://llm.example.invalid/v1/chat/completions"
    assert other_server.requests[0]["auth"] == f"Bearer {KEY}"


def test_an_https_url_through_a_proxy_shows_it_only_the_host_of_a_tunnel_never_the_key(other_server, monkeypatch,
                                                                                        no_proxy_settings) -> None:
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{other_server.server_address[1]}")
    payload = call_llm(CTX, {"LLM_URL": "https://llm.example.invalid/v1", "LLM_API_KEY": KEY})
    assert (payload["error_code"], payload["retryable"]) == ("LLM_NETWORK_ERROR", True), payload
    (connect,) = other_server.requests
    assert connect["method"] == "CONNECT" and connect["path"] == "llm.example.invalid:443"
    assert KEY not in json.dumps(connect)


def test_no_proxy_sends_the_request_straight_to_llm_url(server, other_server, monkeypatch, no_proxy_settings) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{other_server.server_address[1]}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert call_llm(CTX, llm_env(server))["summary"] == "wrote the haiku"
    assert other_server.requests == [] and len(server.requests) == 1


def test_two_object_keys_that_become_one_when_the_key_is_replaced_keep_both_values(server) -> None:
    """A plain dict of the replaced names: {"<key>": "first", "[REDACTED]": "second"} kept "second" alone."""
    output = {PLAIN_KEY: "first", "[REDACTED]": "second", f"x{PLAIN_KEY}": 3, "x[REDACTED]": 4, f"y{PLAIN_KEY}": 5}
    content = json.dumps({"status": "done", "summary": "s", "output": output})
    server.mode, server.status, server.body = "body", 200, chat_reply(content)
    payload = call_llm(CTX, llm_env(server, LLM_API_KEY=PLAIN_KEY))
    assert payload["output"] == {"2-[REDACTED]": "first", "[REDACTED]": "second", "2-x[REDACTED]": 3,
                                 "x[REDACTED]": 4, "y[REDACTED]": 5}


@pytest.mark.parametrize("content", ["", "  \n", "```json\n```"])
def test_an_empty_reply_content_is_malformed_payload_saying_so(server, content: str) -> None:
    server.mode, server.status, server.body = "body", 200, chat_reply(content)
    payload = call_llm(CTX, llm_env(server))
    assert (payload["error_code"], payload["summary"]) == ("MALFORMED_PAYLOAD", "the model's reply content is empty")


def test_whitespace_around_llm_model_is_dropped(server) -> None:
    call_llm(CTX, llm_env(server, LLM_MODEL=" tiny\n"))
    assert server.requests[0]["body"]["model"] == "tiny"


@pytest.mark.parametrize("body, says", [
    (gzip.compress(chat_reply('{"status": "done", "summary": "s"}')), "gzip-compressed"),
    (bytes(range(256)) * 4, "binary, not text"),
], ids=["gzip", "binary"])
def test_a_reply_that_is_not_text_is_llm_bad_response_saying_so_without_quoting_its_bytes(server, body: bytes,
                                                                                          says: str) -> None:
    server.mode, server.status, server.body = "body", 200, body
    payload = call_llm(CTX, llm_env(server))
    assert payload["error_code"] == "LLM_BAD_RESPONSE" and says in payload["summary"], payload
    assert "\ufffd" not in payload["summary"] and "\x1f" not in payload["summary"]


def test_orch_llm_timeout_bounds_a_tls_handshake_the_endpoint_draws_out() -> None:
    """An https endpoint that sends its handshake a byte at a time (ssl bounds the handshake as a whole by the
    socket's timeout: a guard)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"\x16\x03\x03\x3e\x80")  # a handshake record of 16,000 bytes, sent one by one
            while not stop.wait(0.05):
                conn.sendall(b"\x00")

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        payload = call_llm(CTX, {"LLM_URL": f"https://127.0.0.1:{listener.getsockname()[1]}/v1", "LLM_API_KEY": KEY,
                                 "ORCH_LLM_TIMEOUT": "0.5"})
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert (payload["error_code"], payload["retryable"]) == ("LLM_TIMEOUT", True), payload
    assert time.monotonic() - started < 1.5
