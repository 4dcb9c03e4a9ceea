"""The output tail kept in a failure event: sanitized before it is cut, so no cut hides a secret."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.run_folder import sanitized_tail
from orchestrator.security import CUT_MARGIN, REDACTED

TAIL_MARGIN = CUT_MARGIN  # characters read before the tail

KEY_BODY = [("MIIJQgIBADANBgkqhkiG9w0BAQEFAASCCSwwggkoAgEAAoICAQ" + f"{i:014d}")[:64] for i in range(100)]  # ~6.5 KB: an RSA-4096 key
PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(KEY_BODY) + "\n-----END PRIVATE KEY-----\n"


def test_a_private_key_printed_before_a_few_lines_leaves_none_of_its_body_in_the_tail(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    out.write_text("starting\n" + PEM + "".join(f"step {i} done\n" for i in range(30)) + "exit 1\n")
    cut_at = out.stat().st_size - 4000
    assert out.read_text().index("BEGIN") < cut_at < out.read_text().index("END")  # a 4000-byte cut is inside the key
    tail = sanitized_tail(out, 4000)
    assert not any(line in tail for line in KEY_BODY) and "END PRIVATE KEY" not in tail
    assert tail.endswith("step 29 done\nexit 1\n") and REDACTED in tail


def test_a_secret_the_read_starts_inside_of_is_dropped_with_its_line(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    value = "s3cr3t" * ((TAIL_MARGIN + 8000) // 6)  # longer than the margin and the tail together
    out.write_text(f"password={value}\nlast line\n")
    for limit in (4000, 100):
        tail = sanitized_tail(out, limit)
        assert "s3cr3t" not in tail  # the read began inside the value: the whole line is dropped
        assert tail == "...last line\n"


def test_a_short_output_is_kept_whole_and_sanitized(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    out.write_text("token=abc123\nbye\n")
    assert sanitized_tail(out, 4000) == f"token={REDACTED}\nbye\n"
    assert sanitized_tail(tmp_path / "missing.log", 4000) == ""


def test_a_secret_cut_by_the_read_on_one_long_line_stays_out_when_redaction_shortens_the_rest(tmp_path: Path) -> None:
    """One line, no line break in all that is read: a key name cut by the read (``db_pass|word``) leaves
    its value unrecognised, and redacting a long value after it brings that start into the tail."""
    before, cut = "x" * 100 + '{"db_pass', 'word": "hunter2-SECRET", "session_token": "'
    value = "A" * (4000 + TAIL_MARGIN - len(cut) - 2)  # so that the read begins exactly at "word"
    out = tmp_path / "output.log"
    out.write_text(before + cut + value + '"}')
    assert out.stat().st_size - 4000 - TAIL_MARGIN == len(before)
    assert "hunter2" not in sanitized_tail(out, 4000)


# -- the start of a text (an exception, a reply), cut the same way (``security.sanitized_cut``) -------------
def test_the_start_of_a_text_cut_inside_a_url_password_keeps_none_of_the_password() -> None:
    from orchestrator.security import sanitized_cut

    text = "x" * (100 - len("postgres://app:S3cre")) + "postgres://app:S3cretDbPassw0rd@db/prod and more"
    assert text[:100].endswith("S3cre")
    kept = sanitized_cut(text, 100)
    assert "S3cre" not in kept and kept == text[:80] + "postgres://app:[REDA..."


def test_a_secret_on_the_line_the_margin_cuts_is_dropped_with_its_line() -> None:
    from orchestrator.security import CUT_MARGIN, sanitized_cut

    first = "first line\n"
    secret_line = "x" * (100 + CUT_MARGIN - len(first) - len("postgres://app:S3cre")) + "postgres://app:S3cretDbPassw0rd@db/x"
    kept = sanitized_cut(first + secret_line + "\n" + "y" * 100, 100)
    assert kept == first + "..."  # the line the first cut went through is dropped, not half kept


def test_a_short_text_is_kept_whole_and_sanitized() -> None:
    from orchestrator.security import sanitized_cut

    assert sanitized_cut("token=abc123 ok", 100) == f"token={REDACTED} ok"
    assert sanitized_cut("token=abc123 ok", 100, tail=True) == f"token={REDACTED} ok"


# -- one long line, multi-byte characters: the last ``limit`` characters, counted as characters -------------
def one_line(unit: str, size: int) -> str:
    """``size`` bytes (about) of one line of output made of ``unit``, with no secret in it."""
    return unit * (size // len(unit.encode()))


LINES = {  # one line of output, 20 KiB and 100 KiB, of 1-, 2-, 3- and 4-byte characters
    f"{name}-{size // 1024}KB": one_line(unit, size)
    for name, unit in [("ascii", "step 42 ok; "), ("no-space", "x"), ("e-acute", "é"), ("kanji", "漢"), ("emoji", "😀"), ("mixed", "é漢😀 a ")]
    for size in (20 * 1024, 100 * 1024)
}


@pytest.mark.parametrize("end", ["\n", ""], ids=["newline", "no_newline"])
@pytest.mark.parametrize("name", sorted(LINES))
def test_one_long_line_keeps_its_last_limit_characters(tmp_path: Path, name: str, end: str) -> None:
    text = LINES[name] + end
    out = tmp_path / "output.log"
    out.write_text(text, encoding="utf-8")
    assert sanitized_tail(out, 4000) == "..." + text[-4000:]


@pytest.mark.parametrize("unit", ["a", "é", "漢", "😀"])
def test_an_output_of_exactly_limit_characters_is_kept_whole_and_one_more_is_cut(tmp_path: Path, unit: str) -> None:
    out = tmp_path / "output.log"
    for length, expected in [(4000, unit * 4000), (4001, "..." + unit * 4000),
                             (4000 + CUT_MARGIN, "..." + unit * 4000), (4001 + CUT_MARGIN, "..." + unit * 4000)]:
        out.write_text(unit * length, encoding="utf-8")
        assert sanitized_tail(out, 4000) == expected, length


def test_an_empty_output_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    out.write_bytes(b"")
    assert sanitized_tail(out, 4000) == ""


def test_a_read_starting_inside_a_multi_byte_character_keeps_no_replacement_character(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    out.write_text("漢" * 40_001 + "\n", encoding="utf-8")  # the read begins 1 or 2 bytes into a character
    tail = sanitized_tail(out, 4000)
    assert tail == "..." + "漢" * 3999 + "\n" and "\ufffd" not in tail


# -- bytes of a longer source: what a reader passes (``security.cut_read_size``) ------------------------------
@pytest.mark.parametrize("tail", [False, True], ids=["head", "tail"])
def test_bytes_are_cut_as_their_text_and_a_read_of_cut_read_size_counts_as_a_cut(tail: bool) -> None:
    from orchestrator.security import cut_read_size, sanitized_cut

    text = "漢字 token=abc123 " * 20_000
    data = text.encode()
    read = data[-cut_read_size(100):] if tail else data[:cut_read_size(100)]  # what a reader of the source gets
    assert sanitized_cut(data, 100, tail=tail) == sanitized_cut(text, 100, tail=tail) == sanitized_cut(read, 100, tail=tail)
    short = "token=abc123 ok".encode()
    assert sanitized_cut(short, 100, tail=tail) == f"token={REDACTED} ok"


# -- a value under its key (``password:`` then its lines), the key on the line the read cut ------------------
def read_starting_in(key: str, below: str, into: int) -> str:
    """An output whose tail read (``limit`` 4000) begins ``into`` characters into ``key``'s line (negative: from
    its end), with ``below`` under it and then a long secret, whose redaction brings the read's start into the
    tail."""
    end = "\nexit 1\n"
    n = 4000 + CUT_MARGIN + (into if into >= 0 else len(key) + into) - len(key) - len(below) - len("secret=")
    return "x" * 1000 + "\n" + key + below + "secret=" + "A" * (n - len(end)) + end


@pytest.mark.parametrize(("key", "below"), [
    ("  db_password:\n", "    hunter2\n    more\n"),  # YAML: the value's lines indented under it
    ("password: |\n", "  hunter2\n\n  more\n"),  # a YAML block
    ("[db]\npassword =\n", "\thunter2\n"),  # an INI value's continuation line
    ("Password:\n", "hunter2\n"),  # a prompt and what was typed
    ("Password:  \r\n", "hunter2\r\n"),
])
def test_a_value_under_a_key_on_the_line_the_read_cuts_is_dropped_with_that_line(tmp_path: Path, key: str,
                                                                                   below: str) -> None:
    out = tmp_path / "output.log"
    text = read_starting_in(key, below, -5)
    assert text[-(4000 + CUT_MARGIN):].startswith(key[-5:])  # the read begins in the key's line: no key, no value
    out.write_text(text, encoding="utf-8", newline="")
    tail = sanitized_tail(out, 4000)
    assert "hunter2" not in tail and "more" not in tail and tail.endswith(f"secret={REDACTED}\nexit 1\n")


def test_lines_after_the_cut_line_that_cannot_be_a_value_under_it_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    out.write_text(read_starting_in("step 3: done\n", "step 4\n  detail\n", -5))
    assert sanitized_tail(out, 4000).startswith("...step 4\n  detail\nsecret=")  # a one-word line not after a ':'
    out.write_text(read_starting_in("Password:\n", "two words\n  x\n", -5))
    assert sanitized_tail(out, 4000).startswith("...two words\n  x\nsecret=")


def test_an_indented_tail_longer_than_the_margin_keeps_its_last_lines(tmp_path: Path) -> None:
    """A run of indented lines (a traceback, pretty JSON) longer than a value is assumed to be: not dropped."""
    out = tmp_path / "output.log"
    lines = "".join(f'    "item {i}": {i},\n' for i in range(3000))
    out.write_text("{\n" + lines + "}\n")
    assert sanitized_tail(out, 4000) == "..." + (lines + "}\n")[-4000:]
