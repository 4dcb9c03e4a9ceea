"""What ``redaction.sanitize_text`` runs on a text holding a literal a redaction starts from: when each pattern runs and
what it replaces. What a secret looks like (the patterns) is in ``orchestrator/secret_patterns.py``.

Imported by the first such text (``redaction._rules_imported``), not at a command's start: with the patterns it costs ~90 M
instructions, and most texts (a ``status`` output, a summary) hold no literal. Every regex runs in linear time (see
``secret_patterns``), and so does every loop here: a 5 MB line costs one pass.
"""
from __future__ import annotations

import re
import string
from typing import Callable, Sequence

from orchestrator.pair_values import KeyedValues, ListPairValues, PairValues, PairValuesFirst, Span
from orchestrator.redaction import _any_in, _ascii_lowered
from orchestrator.secret_literals import (AS_IS_WORDS, AUTH_WORDS, AWS_KEY_ID_STARTS, CLI_USER_WORDS, HEADER_WORDS,
                                          KEY_WORDS, LINE_END, NETRC_WORDS, PASS_FLAG_WORDS, PUTTY, REDACTED,
                                          SHAPE_STARTS, SHORT_WORDS, YAML_SHORT_NAME_ENDS)
from orchestrator.secret_patterns import (AUTH, AWS_KEY_ID, AWS_SECRET, AWS_SECRET_TOKEN_REST, BASIC, BEARER, CLI,
                                          CLI_USER, HEADER, KV, MYSQL, NETRC, PAIR_LIST, PAIR_OBJECT, PAIR_VALUE_FIRST,
                                          PAIR_VALUE_KEY, PAIR_YAML, PASS_FLAG, PRIVATE_KEY, PRIVATE_KEY_END, SHAPES,
                                          SHORT_KV, SSHPASS, TABLE_ROW, URL_CREDS, a_count, a_number, a_pass_source,
                                          aws_secret, not_a_secret_yaml_pair, not_auth_credentials,
                                          not_user_and_password, os_error, value_span)
from orchestrator.values_below import YamlPairBlocks

__all__ = ["redacted", "aws_secrets_beside_an_id_redacted"]

_OTHER_SHAPE_STARTS = tuple(start for start in SHAPE_STARTS if start not in AWS_KEY_ID_STARTS)
_REDACTED_LOWERED = _ascii_lowered(REDACTED)
# what a pattern's values may need read past its match (``ValuesBelow``, ``PairValues``...), made for a text: the span
# to redact for a match's value, or None
_Blocks = Callable[[str], Callable[[re.Match[str], int, int], "Span | None"]]


def _redact_values(rx: re.Pattern[str], text: str) -> str:
    """``text`` with each match's value replaced (``_value_spans``), matched on ``text`` as it is, not on a lowered
    copy (``-p`` and ``-P`` are other flags); ``text`` itself when nothing was."""
    spans = _value_spans(rx, text, text, None, None)
    return _spliced(text, spans, REDACTED) if spans else text


def _redact_both(rx: re.Pattern[str], text: str, lowered: str, keep: Callable[[str, re.Match[str]], bool] | None,
                 blocks: _Blocks | None) -> tuple[str, str]:
    """``_redact_values`` of ``text`` and of its ASCII-lowered copy alike: the copy is made once for a text, not
    again after each pattern that redacted something (a 1 MB text costs ~1 ms a copy)."""
    return _spliced_both(text, lowered, _value_spans(rx, text, lowered, keep, blocks))


def _spliced_both(text: str, lowered: str, spans: Sequence[Span]) -> tuple[str, str]:
    """``text`` and its ASCII-lowered copy with each of ``spans`` redacted; both as they are when there is none."""
    if not spans:
        return text, lowered
    return _spliced(text, spans, REDACTED), _spliced(lowered, spans, _REDACTED_LOWERED)


def _value_spans(rx: re.Pattern[str], text: str, lowered: str, keep: Callable[[str, re.Match[str]], bool] | None,
                 blocks: _Blocks | None) -> list[Span]:
    """Where each match's value is, in order, none overlapping: its key, separator, quote and scheme are kept (the
    whole match, where ``keep(text, match)`` says so). ``blocks``: what reads on past a match for the span of its
    value (``ValuesBelow``: a YAML block indicator's block; ``PairValues``: a list or an object), or None to keep it
    (a match inside a span redacted is then passed over). A quoted value such a reader keeps is looked into, once:
    the JSON of a pair quoted in another's value (``{"name": "msg", "value": "{\\"name\\": \\"token\\", ...}"}``);
    one kept inside it is not (its text is read twice at most).

    Matching runs on ``lowered``, an ASCII-lowered copy (same length, same offsets), so key names are
    case-insensitive; ``keep`` looks at the original. A span may name the quote its marker is written in
    (``pair_values.whole_value``)."""
    spans: list[Span] = []
    pos = 0
    inside = -1  # the end of the kept value looked into, which no value kept inside it is (one level: linear)
    block = blocks(text) if blocks is not None else None
    m = rx.search(lowered)
    while m is not None:
        at = m.end()
        if m.start() >= pos and (keep is None or not keep(text, m)):
            start, end = value_span(m)
            span: Span | None = (start, end)
            if block is not None:
                span = block(m, start, end)
                if span is None and m.start("v") >= 0 and start >= inside:  # a pair in it: '"value": "{\"name\": ...'
                    at, inside = start, end
            if span is not None:
                spans.append(span)
                pos = span[1]
        m = rx.search(lowered, at)
    return spans


def _spliced(text: str, spans: Sequence[Span], marker: str) -> str:
    """``text`` with each of ``spans`` replaced by ``marker``, in the quotes a span names (``"[REDACTED]"``)."""
    out: list[str] = []
    pos = 0
    for span in spans:
        quote = span[2] if len(span) > 2 else ""  # type: ignore[misc]
        out += (text[pos:span[0]], f"{quote}{marker}{quote}" if quote else marker)
        pos = span[1]
    out.append(text[pos:])
    return "".join(out)


_BASE64 = string.ascii_letters + string.digits + "+/="
_DIGIT_RUN = re.compile(r"[0-9]+")


def _redact_headless_keys(text: str) -> str:
    """Redact a private key's END line with the body lines before it, when its BEGIN line is not there
    (``PRIVATE_KEY`` has already taken every whole key): what is left of a key in a cut text. A body line is base64
    after a prefix of the END line's shape (``_prefix_shape``: an indent, a quote, a log's timestamp), or, as the
    text's first line (a cut may begin in it), after the end of such a prefix; lines may end in LF, CRLF or CR.
    Walking back from the END line stops at the first line that is not one.
    Linear: the text between two END lines is split into lines once, and each line is looked at once."""
    out: list[str] = []
    pos = 0
    for m in PRIVATE_KEY_END.finditer(text):
        breaks = [(brk.start(), brk.end()) for brk in LINE_END.finditer(text, pos, m.start())]
        line_starts = [pos] + [end for _start, end in breaks]
        prefix = text[line_starts[-1]:m.start()]
        shape = _prefix_shape(prefix)
        start = line_starts[-1] + len(prefix.rstrip(" \t"))  # no body line above: what precedes the END is kept
        for (line_end, _), line_start in zip(reversed(breaks), reversed(line_starts[:-1])):
            above = _prefix_shape(text[line_start:line_end].rstrip(" \t").rstrip(_BASE64))
            if not (above == shape or line_start == 0 and shape.endswith(above)):  # the text may begin in a line
                break
            start = line_start
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _prefix_shape(prefix: str) -> str:
    """What two lines' prefixes must share to be lines of one key: the prefix without blanks around it, each run
    of digits as one ``0`` (a timestamp, a pid, a line number, changing from line to line)."""
    return _DIGIT_RUN.sub("0", prefix.strip(" \t"))


def redacted(text: str, lowered: str, held: frozenset[str] | None) -> str:
    """``sanitize_text`` of ``text``, which its look found a literal in (``lowered``: its ASCII-lowered copy; ``held``:
    in a long text, the literals whose every character it holds, else None): each pattern that may match run."""
    given = text
    putty = (held is None or PUTTY in held) and PUTTY in text
    if putty or "-----BEGIN" in text:
        text = PRIVATE_KEY.sub(REDACTED, text)
    if putty or "-----END" in text:
        text = _redact_headless_keys(text)
    # the lowered copy, made again only after a private key's redaction changed the text (the others redact it
    # alike, ``_redact_both``); a redaction adds no literal ("[REDACTED]"), so what the first copy holds stays a
    # superset of what the text holds
    if text is not given:
        lowered = _ascii_lowered(text)
    # AWS secret keys before any key's value is redacted: the key id that tells one may be such a value
    # (``auth=('u', 'AKIA…') <secret key>``, ``password=AKIA… <secret key>``)
    aws_key_ids = _holds(text, AWS_KEY_ID_STARTS, held)
    if aws_key_ids:
        text, lowered = _spliced_both(text, lowered, _aws_secret_spans(text))
    if "://" in text and "@" in text:
        text, lowered = _redact_both(URL_CREDS, text, lowered, None, None)
    keyed, headers = _holds(lowered, KEY_WORDS, held), _holds(lowered, HEADER_WORDS, held)
    short = _scanned(lowered, SHORT_WORDS, held)
    auth = _scanned(lowered, AUTH_WORDS if held is None else ("auth",), held)
    # a name/value pair's name may be a secret's: looked for (``_scanned`` only says a long text may hold a word, and
    # ``PAIR_LIST``'s scan, with no literal to begin with, costs ~0.1 ms a kB)
    named = keyed or headers or (short or auth) and _holds_a_quoted_short_name(lowered)
    # a YAML pair's plain name ending in ``pass``, ``pw`` or ``auth`` holds neither a key word nor such a quote (a
    # quoted one holds ``pass"``, ``pw'``, ``auth\\``...: a literal of ``short`` or ``auth``, so ``named`` looked already)
    named_in_yaml = "value:" in lowered and (named or _any_in(lowered, YAML_SHORT_NAME_ENDS))
    named_object = named and "value" in lowered and PAIR_VALUE_KEY.search(lowered) is not None
    for rx, wanted, keep, blocks in (
            (HEADER, headers, None, None),
            (BEARER, _holds(lowered, ("bearer",), held), None, None),  # before a key's value: ``token: Bearer x``
            (BASIC, _scanned(lowered, ("basic",), held), not_user_and_password, None),
            (CLI, keyed, None, None),
            (KV, keyed, os_error, KeyedValues),
            (TABLE_ROW, keyed and "|" in lowered, None, None),
            (SHORT_KV, short, a_count, None),
            (NETRC, keyed and _holds(lowered, NETRC_WORDS, held), None, None),
            (CLI_USER, _holds(lowered, CLI_USER_WORDS, held), a_number, None),
            (PASS_FLAG, _holds(lowered, PASS_FLAG_WORDS, held), a_pass_source, None),
            (AUTH, auth, not_auth_credentials, None),
            (PAIR_OBJECT, named_object, None, PairValues),
            (PAIR_VALUE_FIRST, named_object, None, PairValuesFirst),
            (PAIR_LIST, named, None, ListPairValues),
            (PAIR_YAML, named_in_yaml, not_a_secret_yaml_pair, YamlPairBlocks)):
        if wanted:
            text, lowered = _redact_both(rx, text, lowered, keep, blocks)
    words = AS_IS_WORDS if held is None else [word for word in AS_IS_WORDS if word in held]
    if words and "-p" in text:
        for rx, word in ((SSHPASS, "sshpass"), (MYSQL, "mysql")):
            if word in words and word in text:
                text = _redact_values(rx, text)
    if aws_key_ids or _holds(text, _OTHER_SHAPE_STARTS, held):  # (each start searched for once: ~0.7 ms a MB)
        text = SHAPES.sub(REDACTED, text)
    return text


# The end of a quoted name ending in ``pass``, ``pw`` or ``auth`` (``secret_under_a_short_key``), JSON-escaped too: each
# begins with its quote, which sre scans for as fast as ``in`` searches (~3 us in the 4 KB log tail, where one search
# for each word ``_any_in`` would make costs ~15). At each quote, one look back at the character before it (``s``,
# ``w``, ``h`` or a backslash) passes over most (prose's apostrophes: ``it's``, ``don't``) before any name's look: six
# looks at each quote made 1 MB of prose with an apostrophe every 13 characters cost 91 M instructions (now 36 M).
_QUOTED_SHORT_NAME_ENDS = tuple(
    (quote, re.compile(
        rf"{quote}(?<=[swh\\]{quote})(?:(?<=s{quote})(?<=pass{quote})|(?<=w{quote})(?<=pw{quote})"
        rf"|(?<=h{quote})(?<=auth{quote})|(?<=\\{quote})(?:(?<=pass\\{quote})|(?<=pw\\{quote})|(?<=auth\\{quote})))"))
    for quote in "\"'")


def _holds_a_quoted_short_name(lowered: str) -> bool:
    """Whether ``lowered`` may hold a name/value pair whose quoted name ends in ``pass``, ``pw`` or ``auth``: it holds
    what every pair is written with (what a list or a tuple opens with, ``PAIR_LIST``'s ``[`` or ``(``, the ``value``
    of an object or of YAML), each looked for as one character is (``memchr``) but ``value``, and such a name's end
    (``_QUOTED_SHORT_NAME_ENDS``)."""
    if "[" not in lowered and "(" not in lowered and "value" not in lowered:
        return False
    return any(quote in lowered and rx.search(lowered) is not None for quote, rx in _QUOTED_SHORT_NAME_ENDS)


def _aws_secret_spans(text: str) -> list[tuple[int, int]]:
    """Where each AWS secret access key and session token (``AWS_SECRET``, both cases: ``aws_secret``) is on a line
    holding an AWS access key id (``AWS_KEY_ID``, which ``SHAPES`` redacts last): neither has a shape of its own, but
    beside its id (the console's ``credentials.csv``, ``aws sts ... --output text``, a log line printing them) 40 such
    characters are a key, 100 or more a token; with the rest of its token (``AWS_SECRET_TOKEN_REST``: a keyed rule
    meeting ``[REDACTED]`` ends the value there). Linear: each line is looked at once, however many ids it holds."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for key_id in AWS_KEY_ID.finditer(text):
        if key_id.start() < pos:  # on a line looked at
            continue
        line_start = max(pos, text.rfind("\n", pos, key_id.start()) + 1, text.rfind("\r", pos, key_id.start()) + 1)
        brk = LINE_END.search(text, key_id.end())
        pos = brk.start() if brk else len(text)
        spans += _aws_secrets_between(text, line_start, pos)
    return spans


def _aws_secrets_between(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Where each AWS secret (``_aws_secret_spans``) is in ``text[start:end]``, the rest of its token with it; one is
    looked for again past that rest."""
    spans = []
    secret = AWS_SECRET.search(text, start, end)
    while secret is not None:
        at = secret.end()
        if aws_secret(secret.group()):
            rest = AWS_SECRET_TOKEN_REST.match(text, at, end)
            at = rest.end() if rest else at
            spans.append((secret.start(), at))
        secret = AWS_SECRET.search(text, at, end)
    return spans


def aws_secrets_beside_an_id_redacted(text: str) -> str:
    """``text``, a structure's string beside an AWS access key id (in its object or list), with each AWS secret access
    key and session token in it redacted, as on the id's own line of text (``_aws_secret_spans``), when it is one
    line (``"note": "secret is <key> keep safe"``); ``text`` itself when it holds a line break (a whole log, whose
    lines are looked at for their own ids) or no secret."""
    if "\n" in text or "\r" in text:
        return text
    spans = _aws_secrets_between(text, 0, len(text))
    return _spliced(text, spans, REDACTED) if spans else text


def _holds(text: str, literals: tuple[str, ...], held: frozenset[str] | None) -> bool:
    """Whether ``text`` holds any of ``literals``, each searched for where the stem it shares with others is there
    (``_any_in``). ``held``: those of them that may be there (the text is long)."""
    if held is None:
        return _any_in(text, literals)
    return _any_in(text, [literal for literal in literals if literal in held])


def _scanned(text: str, literals: tuple[str, ...], held: frozenset[str] | None) -> bool:
    """Whether to run a pattern that begins with a literal (``BASIC``, ``SHORT_KV``, ``AUTH``), one of ``literals`` in
    each of its matches: in a short text, whether the text holds one; in a long one, whether it may (``held``), the
    pattern's own scan for its first literal costing what one search would (~0.4 ms a MB) where searching for each
    of ``literals`` costs one each."""
    if held is None:
        return _any_in(text, literals)
    return any(literal in held for literal in literals)
