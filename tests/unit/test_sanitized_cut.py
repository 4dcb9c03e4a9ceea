"""``security.sanitized_cut`` and ``runner.sanitized_tail`` never keep a part of a secret: not where the read or
the margin cuts through one, not when redacting the rest shortens the text (a review found both)."""
from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from orchestrator.run_folder import sanitized_tail
from orchestrator.security import CUT_MARGIN, REDACTED, sanitize_text, sanitized_cut

ALNUM = string.ascii_letters + string.digits
FILLER = ("step", "done", "reading", "file", "ok", "résumé", "漢字", "retry", "😀", "build", "x=1", "ümlaut")
EDGE = CUT_MARGIN // 2  # what the cut of one long line drops


def body(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# each form of private key: the lines before its body (``{n}``: how many body lines) and the line after it
KEY_FORMS = {
    "pem": (["-----BEGIN PRIVATE KEY-----"], "-----END PRIVATE KEY-----"),
    "pgp": (["-----BEGIN PGP PRIVATE KEY BLOCK-----", "Comment: test", ""], "-----END PGP PRIVATE KEY BLOCK-----"),
    "putty": (["PuTTY-User-Key-File-3: ssh-ed25519", "Encryption: none", "Public-Lines: 1",
               "AAAAC3NzaC1lZDI1NTE5AAAAIPublicLine", "Private-Lines: {n}"], "Private-MAC: " + "0a1b" * 16),
}


def private_key(rng: random.Random, lines: int, form: str = "pem", newline: str = "\\n") -> tuple[str, list[str]]:
    """A private key of ``form`` (``KEY_FORMS``) and its body lines; by default as JSON or ``repr`` writes it: one
    line, ``\\n`` escaped."""
    parts = [body(rng, 64, ALNUM + "+/") for _ in range(lines)]
    before, end = KEY_FORMS[form]
    return newline.join([*(line.format(n=lines) for line in before), *parts, end]), parts


def secret(rng: random.Random, kind: int, n: int) -> tuple[str, list[str]]:
    """A secret of a shape ``sanitize_text`` knows, as printed, and its parts that must never show."""
    b = body(rng, n)
    if kind == 0:
        return "sk-proj-" + b, [b]
    if kind == 1:
        return "ghp_" + b, [b]
    if kind == 2:
        key = body(rng, 16, string.ascii_uppercase + string.digits)
        return "AKIA" + key, [key]
    if kind == 3:
        return "xoxb-" + b, [b]
    if kind == 4:
        key = body(rng, 35)
        return "AIza" + key, [key]
    if kind == 5:
        parts = [b, body(rng, n), body(rng, n)]
        return "eyJ" + parts[0] + ".eyJ" + parts[1] + "." + parts[2], parts
    if kind == 6:
        return "password=" + b, [b]
    if kind == 7:
        return '"api_key": "' + body(rng, n, "0123456789abcdef") + '"', []  # filled below
    if kind == 8:
        return "Authorization: Bearer " + b, [b]
    if kind == 9:
        return "postgres://app:" + b + "@db.example/prod", [b]
    if kind == 10:
        return "--db-token " + b, [b]
    form, on_lines = KEY_KINDS[kind]
    return private_key(rng, max(1, n // 40), form, "\n" if on_lines else "\\n")


# kinds 11 to 16: a private key of each form, on one line (``\\n`` escaped) or on lines of its own
KEY_KINDS = {11: ("pem", False), 12: ("pem", True), 13: ("pgp", False), 14: ("pgp", True), 15: ("putty", False),
             16: ("putty", True)}
ONE_LINE_KINDS = [kind for kind in range(17) if kind not in (12, 14, 16)]  # those need a text of lines


def a_secret(rng: random.Random, kind: int | None = None, n: int | None = None,
             one_line: bool = True) -> tuple[str, list[str]]:
    kind = rng.choice(ONE_LINE_KINDS if one_line else range(17)) if kind is None else kind
    text, parts = secret(rng, kind, rng.randint(20, 400) if n is None else n)
    if kind == 7:
        parts = [text[len('"api_key": "'):-1]]
    return text, parts


def grams(parts: list[str], n: int = 8) -> set[str]:
    return {part[i:i + n] for part in parts for i in range(len(part) - n + 1)}


def leaked(kept: str, secret_grams: set[str], n: int = 8) -> list[str]:
    return [kept[i:i + n] for i in range(len(kept) - n + 1) if kept[i:i + n] in secret_grams]


def filler(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while len(words) + sum(map(len, words)) <= length:
        words.append(rng.choice(FILLER))
    return " ".join(words)[:length]


def dense_secrets(rng: random.Random, length: int) -> tuple[str, list[str]]:
    """``length`` characters of one line, nearly all long secrets: redacting them shortens it by ~95%."""
    pieces, parts = [], []
    while sum(len(p) + 1 for p in pieces) < length - 400:
        text, found = a_secret(rng, kind=rng.choice([0, 1, 3, 6, 9, 10]), n=300)
        pieces.append(text)
        parts += found
    line = " ".join(pieces) + " "
    line += filler(rng, length - len(line) - 1) + " "
    assert len(line) == length
    return line, parts


# -- the one-line cut: redaction before the margin no longer moves the cut into a secret ---------------------
# (kind, n): the straddling secret; the part of it left inside the cut is unrecognisable on its own
STRADDLERS = [(0, 60), (1, 60), (3, 60), (2, 0), (4, 0), (5, 40), (6, 60), (7, 64), (8, 60), (9, 30), (10, 60), (11, 200),
              (13, 200), (15, 200)]


@pytest.mark.parametrize("kind, n", STRADDLERS)
def test_a_head_cut_of_one_line_keeps_no_part_of_a_secret_when_redaction_shortens_what_comes_before(
        kind: int, n: int) -> None:
    rng = random.Random(kind)
    limit = 2000
    straddler, parts = a_secret(rng, kind, n)
    split = straddler.index(parts[0]) + 12  # its prefix and 12 characters: too few for its pattern
    before, before_parts = dense_secrets(rng, limit + EDGE - split)  # the old second cut fell at limit + EDGE
    text = before + straddler + " " + filler(rng, CUT_MARGIN)
    assert len(text) > limit + CUT_MARGIN and "\n" not in text
    kept = sanitized_cut(text, limit)
    assert leaked(kept, grams(parts + before_parts)) == [] and kept.endswith("...")


@pytest.mark.parametrize("kind, n", STRADDLERS)
def test_a_tail_cut_of_one_line_keeps_no_part_of_a_secret_when_redaction_shortens_what_comes_after(
        tmp_path: Path, kind: int, n: int) -> None:
    rng = random.Random(100 + kind)
    limit = 2000
    straddler, parts = a_secret(rng, kind, n)
    split = straddler.index(parts[0]) + 4  # the rest of it has no prefix or key
    after, after_parts = dense_secrets(rng, limit + EDGE - (len(straddler) - split) - 1)
    text = filler(rng, CUT_MARGIN) + " " + straddler + " " + after
    assert len(text) > limit + CUT_MARGIN and "\n" not in text
    out = tmp_path / "output.log"
    out.write_text(text, encoding="utf-8")
    for kept in (sanitized_cut(text, limit, tail=True), sanitized_tail(out, limit)):
        assert leaked(kept, grams(parts + after_parts)) == [] and kept.startswith("...")


# -- the property: random texts, random reads, random limits ---------------------------------------------
def random_text(rng: random.Random, one_line: bool) -> tuple[str, list[str]]:
    """Filler and secrets of every known shape, at a random density, 10-60 K characters."""
    density = rng.choice([0.05, 0.3, 0.7, 0.95])
    target = rng.randint(10_000, 60_000)
    pieces, parts = [], []
    while sum(len(p) + 1 for p in pieces) < target:
        if rng.random() < density:
            text, found = a_secret(rng, one_line=one_line)
            pieces.append(text)
            parts += found
        else:
            pieces.append(filler(rng, rng.randint(1, 300)))
    seps = [" " if one_line or rng.random() < 0.8 else "\n" for _ in pieces]
    return "".join(p + s for p, s in zip(pieces, seps)), parts


@pytest.mark.parametrize("one_line", [True, False], ids=["one_line", "lines"])
def test_no_cut_anywhere_keeps_8_characters_of_any_secret(tmp_path: Path, one_line: bool) -> None:
    rng = random.Random(20261201 + one_line)
    out = tmp_path / "output.log"
    kept_chars = 0
    for _ in range(150):
        text, parts = random_text(rng, one_line)
        secret_grams = grams(parts)
        limit = rng.choice([40, 200, 500, 2000, 4000])
        start, end = sorted(rng.randrange(len(text)) for _ in range(2))
        out.write_text(text, encoding="utf-8")
        cuts = [
            sanitized_cut(text, limit), sanitized_cut(text, limit, tail=True),
            sanitized_cut(text[:end], limit, cut=True),  # a read that stopped inside the text
            sanitized_cut(text[start:], limit, tail=True, cut=True),  # one that began inside it
            sanitized_tail(out, limit),
        ]
        for kept in cuts:
            assert leaked(kept, secret_grams) == [], (limit, start, end)
            assert len(kept) <= limit + 3
            kept_chars += len(kept)
    assert kept_chars > 150 * 5 * 100  # not safe by keeping nothing


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("indent", ["    ", "\t"])
def test_a_tail_cut_through_an_indented_private_key_keeps_none_of_its_lines(
        tmp_path: Path, newline: str, indent: str) -> None:
    """A key printed inside YAML (or a here-doc) is indented: a tail that starts in its body, so without its
    BEGIN line, kept every body line but the first, though the whole text had the whole key redacted."""
    rng = random.Random(7)
    body = [indent + "".join(rng.choice(ALNUM + "+/") for _ in range(64)) for _ in range(60)]
    key = newline.join([f"{indent}-----BEGIN PRIVATE KEY-----", *body, f"{indent}-----END PRIVATE KEY-----"])
    text = newline.join(["config:", "  tls_key: |", key, "done"]) + newline
    start = text.index(body[5])  # the tail starts in the key's body
    (tmp_path / "out").write_bytes(("x" * 100_000 + newline).encode() + text.encode())
    cut = text[start:]
    for tail in (sanitized_cut(cut, 200, tail=True, cut=True), sanitized_cut(cut, 4000, tail=True, cut=True)):
        assert not any(line.strip()[8:40] in tail for line in body), tail
        assert tail.rstrip().endswith("done")
    assert "PRIVATE KEY-----" not in sanitized_tail(tmp_path / "out", 4000)  # the whole key, whole: redacted


# -- a private key whose lines end in CR only, or each carry a prefix (a log's), cut through its body ---------
PREFIXES = {  # line number -> the prefix of that line
    "none": lambda i: "",
    "quote": lambda i: "> ",
    "log": lambda i: "2026-12-01 app: ",
    "timestamp": lambda i: f"2026-12-01T10:{i // 60 % 60:02d}:{i % 60:02d}.{i * 7 % 1000}Z app[{4000 + i % 3}]: ",
    "indent_and_pipe": lambda i: "  | ",
}


def prefixed_key_in_a_log(rng: random.Random, newline: str, prefix,
                          form: str = "pem") -> tuple[str, list[str], list[str]]:
    """A log whose lines all carry ``prefix(n)``, a private key of ``form`` (``KEY_FORMS``) printed in it, then over
    ``CUT_MARGIN`` characters more: the text, the key's body lines, and the log lines after the key."""
    body = ["".join(rng.choice(ALNUM + "+/") for _ in range(64)) for _ in range(rng.randint(20, 60))]
    body.append("".join(rng.choice(ALNUM + "+/") for _ in range(rng.randint(4, 60))) + "==")
    before, end = KEY_FORMS[form]
    lines = ["starting", "loading the key", *(line.format(n=len(body)) for line in before), *body, end]
    after = [f"step {i} done" for i in range(CUT_MARGIN // 10)] + ["exit 1"]
    text = newline.join(prefix(n) + line for n, line in enumerate(lines + after)) + newline
    return text, body, [prefix(len(lines) + n) + line for n, line in enumerate(after)]


@pytest.mark.parametrize("form", sorted(KEY_FORMS))
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_a_tail_cut_through_a_private_key_with_cr_line_ends_or_prefixed_lines_keeps_none_of_its_body(
        newline: str, prefix: str, form: str) -> None:
    """A tail that begins in a key's body, so without its BEGIN line: its lines end in ``\\r`` alone (old Mac) or
    each carry a log prefix or a quote, and every body line after the first was kept (a review found it). An OpenPGP
    key or a PuTTY key file's private lines, with neither of their first lines, are cut through the same way."""
    rng = random.Random(f"{prefix}{newline!r}")
    for _ in range(10):
        text, body, after = prefixed_key_in_a_log(rng, newline, PREFIXES[prefix], form)
        secret_grams = grams(body)
        start = rng.randrange(text.index(body[0]), text.index(KEY_FORMS[form][1]))  # the cut begins inside the key
        cut = text[start:]
        kept_by_the_cut = len(cut) - CUT_MARGIN  # sanitized_cut of all the text, to that, looks at ``cut``
        for kept in (sanitize_text(cut), sanitized_cut(cut, 200, tail=True, cut=True),
                     sanitized_cut(cut, 4000, tail=True, cut=True), sanitized_cut(text, kept_by_the_cut, tail=True)):
            assert leaked(kept, secret_grams) == [], (start, kept)
            assert kept.endswith(newline.join(after[-2:]) + newline)  # what follows the key is kept
        assert newline.join(after) in sanitize_text(cut)
        assert leaked(sanitize_text(text), secret_grams) == [] and "loading the key" in sanitize_text(text)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_base64_lines_are_kept_unless_they_run_into_the_end_line_of_a_key_with_the_same_prefix(newline: str) -> None:
    """Only the lines right above an END line whose BEGIN is missing, and only while each is base64 after a
    prefix of the END line's shape (its digits aside), are taken for the key's: a base64 blob, a hash or
    a line of another prefix is kept."""
    rng = random.Random(3)
    blob = ["2026-12-01 app: " + "".join(rng.choice(ALNUM + "+/") for _ in range(64)) for _ in range(20)]
    logged = newline.join(["2026-12-01 app: uploading", *blob, "2026-12-01 app: sha256 " + "ab12" * 16, "done"])
    assert sanitize_text(logged) == logged  # no END line: base64 is ordinary text
    key = [f"2026-12-01 10:00:{i:02d} app: " + "".join(rng.choice(ALNUM) for _ in range(64)) for i in range(10)]
    other = ["2026-12-01 10:00:00 db: " + "QUJD" * 16, "> " + "QUJD" * 16, "2026-12-01 10:00:00 app: sha256 " + "ab12" * 16]
    for line in other:
        text = newline.join([line, *key, "2026-12-01 10:00:11 app: -----END PRIVATE KEY-----", "exit 1"])
        assert sanitize_text(text) == newline.join([line, REDACTED, "exit 1"])


# -- a .netrc entry of several lines, cut below its machine line ---------------------------------------------
NETRC_REMAINS = [  # what a tail may begin with when the cut fell at or below an entry's ``machine`` line
    "login bob\npassword hunter2\n", "chine example.com\nlogin bob\npassword hunter2\n", "gin bob\npassword hunter2\n",
    "login bob\naccount ops\nport 2222\npassword hunter2\n", "login bob\r\npassword hunter2\r\n",
    'login bob\npassword "hunter2"\n', "  login bob\npassword hunter2\n", "login bob\n  password hunter2\n",
    "example.com\nlogin bob password hunter2\n",
]


@pytest.mark.parametrize("remains", NETRC_REMAINS)
def test_a_tail_cut_below_a_netrc_entrys_machine_line_keeps_none_of_its_password(tmp_path: Path, remains: str) -> None:
    """``machine h`` / ``login u`` / ``password p`` on lines of their own: without its ``machine`` line the entry is
    no ``.netrc`` entry ``sanitize_text`` knows ("login failed" then "password mismatch" is prose), and a tail
    that began below that line kept the password when it kept the lines after its first (a short text, or one
    that redaction shortened)."""
    after = "exit 1\n"
    assert "hunter2" not in sanitized_cut(remains + after, 4000, tail=True, cut=True)
    assert sanitized_cut(remains + after, 4000, tail=True, cut=True).endswith(after)
    key = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(["QUJD" * 16] * 300) + "\n-----END PRIVATE KEY-----\n"
    tail = remains + key + after
    tail += "step done\n" * ((4000 + CUT_MARGIN - len(tail)) // 10 + 1)  # the window read begins in ``remains``
    text = "x" * 1000 + "\nmachine example.com\n" + tail[len(tail) - 4000 - CUT_MARGIN:]
    (tmp_path / "output.log").write_text(text, encoding="utf-8")
    for kept in (sanitized_cut(text, 4000, tail=True), sanitized_tail(tmp_path / "output.log", 4000)):
        assert "hunter2" not in kept and kept.endswith("step done\n"), kept[:80]
