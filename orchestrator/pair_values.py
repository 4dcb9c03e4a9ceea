"""What a name/value pair written as JSON (or ``repr``) text redacts of its value (``secret_patterns.PAIR_OBJECT``,
``PAIR_VALUE_FIRST``, ``PAIR_LIST``): a quoted value as its keep judges it; a list or an object, whose match ends
before its opening bracket, to its closing bracket (``PairValues``); an object's value whose name comes after it
(``PairValuesFirst``); and a key word's value that is a list or an object (``KV``'s: ``KeyedValues``), read alike.
Apart from ``secret_patterns`` (the patterns themselves): what runs after a match, reading on past it, in linear time
as they do.
"""
from __future__ import annotations

import functools
import re
from typing import Union

from orchestrator.secret_patterns import (AUTH_KEY, PAIR_LIST_END, PAIR_NAME, QUOTED_CHAR, SENSITIVE_KEY,
                                          auth_methods, not_a_secret_pair, not_a_secret_pair_of_a_list, pair_field,
                                          secret_pair)
from orchestrator.values_below import ValuesBelow

__all__ = ["PairValues", "PairValuesFirst", "ListPairValues", "KeyedValues"]

# A span to redact, and the quote the marker is written in there ("" for none)
Span = Union["tuple[int, int]", "tuple[int, int, str]"]


def _string(quote: str) -> str:
    """A string in ``quote`` (a regex), its escapes skipped; one not closed on its line ends there."""
    return rf"(?:{quote}(?:(?!{quote}){QUOTED_CHAR})*(?:{quote})?)"


# What a list's or an object's text holds between two brackets: strings taken whole (a bracket in one is no bracket),
# in the quotes of the pair (``"`` or ``'``, or JSON-escaped: ``\"``, ``\'``), and anything else but a bracket.
# Each of its pieces begins with a character the others do not (a string's backslash is tried first), and every
# string is taken once it begins: one pass, nothing looked at again. Keyed by (JSON-escaped, the value is a tuple):
# a ``(`` and a ``)`` are brackets only in a value that opens with one (a tuple, a shell array), text elsewhere (a
# list's ``[a), b]`` is read to its ``]``, as before tuples were read).
_PLAIN_STRINGS = _string('"') + "|" + _string("'")
_ESCAPED_STRINGS = _string(r'\\"') + "|" + _string(r"\\'")
_BETWEEN_BRACKETS = {
    (False, False): re.compile(rf"""(?:[^\[\]{{}}"'\\]|{_PLAIN_STRINGS}|\\.)*""", re.DOTALL),
    (True, False): re.compile(rf"""(?:[^\[\]{{}}\\]|{_ESCAPED_STRINGS}|\\.)*""", re.DOTALL),
    (False, True): re.compile(rf"""(?:[^\[\]{{}}()"'\\]|{_PLAIN_STRINGS}|\\.)*""", re.DOTALL),
    (True, True): re.compile(rf"""(?:[^\[\]{{}}()\\]|{_ESCAPED_STRINGS}|\\.)*""", re.DOTALL),
}
_OPENING, _CLOSING = {"]": "[", "}": "{", ")": "("}, {"[": "]", "{": "}", "(": ")"}
# Under ``auth``, a list or a tuple of a user and a password (as ``redaction_objects._a_user_and_a_password`` takes
# it: two strings, the second not empty)
_USER_AND_PASSWORD = re.compile(
    rf"""[\[(]\s*(?P<uq>\\?["'])(?P<user>(?:(?!(?P=uq)){QUOTED_CHAR})*)(?P=uq)\s*,"""
    rf"""\s*(?P<pq>\\?["'])(?P<pw>(?:(?!(?P=pq)){QUOTED_CHAR})+)(?P=pq)\s*[\])]"""
)


def _closing(text: str, at: int, escaped: bool) -> tuple[int, bool]:
    """Where the list, object or tuple opening at ``at`` ends, past its closing bracket, and True; or where the look
    stopped (the text's end, a closing bracket of another kind) and False. ``escaped``: in JSON-escaped text.
    A step a bracket; the text between two brackets is read by one match (``_BETWEEN_BRACKETS``: a ``(`` and a ``)``
    are brackets in a tuple only)."""
    a_tuple = text[at] == "("
    between = _BETWEEN_BRACKETS[escaped, a_tuple]
    openings, closings = ("[{(", "]})") if a_tuple else ("[{", "]}")
    opened: list[str] = []  # the brackets not closed yet, the innermost last
    pos, length = at, len(text)
    while pos < length:
        char = text[pos]
        if char in openings:
            opened.append(char)
        elif char in closings:
            if opened.pop() != _OPENING[char]:
                return pos, False
            if not opened:
                return pos + 1, True
        else:
            after = between.match(text, pos).end()
            pos = after if after > pos else pos + 1  # (a backslash ending the text)
            continue
        pos += 1
    return pos, False


def whole_value(text: str, at: int, quote: str, closing: int | None = None) -> tuple[int, int, str] | None:
    """The list or object opening at ``at`` redacted whole (to its closing bracket, ``closing`` when looked for: a
    structure redacts whatever is under a secret's key), the marker written in ``quote``, its key's quote (in JSON,
    ``"[REDACTED]"``: the text stays JSON, as ``json.dumps(sanitize_obj(...))`` writes it; none after a bare key); None
    for an empty one (``[]``, ``{}``: a structure keeps a value that holds nothing)."""
    closed = True
    if closing is None:
        closing, closed = _closing(text, at, quote[:1] == "\\")
    if closed and text[at + 1:closing - 1].strip() == "":
        return None
    return at, closing, quote


@functools.lru_cache(maxsize=4)
def _name_after(quote: str) -> re.Pattern[str]:
    """The rest of an object after its value, in ``quote``: fields (``pair_field``), then its ``name`` or ``key``
    (any case: it reads the text as it is)."""
    q = re.escape(quote)
    return re.compile(rf"""(?:{pair_field(q)})*\s*,\s*{q}(?:name|key){q}\s*:\s*{PAIR_NAME}""",
                      re.IGNORECASE | re.ASCII)


class PairValues:
    """What ``PAIR_OBJECT`` redacts of a pair's value: a quoted one as it is, unless ``not_a_secret_pair`` keeps it;
    a list or an object (its ``u``, empty before the opening bracket) under a secret's key (``SENSITIVE_KEY``: as a
    structure's ``_secret_under``, anything) whole, from its opening bracket to its closing one (``_closing``), or, not
    closed (a cut text), to where the look stopped; under ``auth``, the password of a list of a user and a password
    (``_USER_AND_PASSWORD``, not two method names). Under any other name it is kept (``pass``'s list is a test's),
    and not looked at. Linear: what a look goes through is redacted, and no match inside it is looked at."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, m: re.Match[str], start: int, end: int) -> Span | None:
        if m.start("u") < 0:
            return None if not_a_secret_pair(self.text, m) else (start, end)
        return self._judged(self.text[m.start("nm"):m.end("nm")], start, m.group("o"))

    def _judged(self, name: str, at: int, quote: str, then: re.Pattern[str] | None = None,
                closing: int | None = None) -> Span | None:
        """The span to redact of the list or object opening at ``at`` under ``name``, in the pair's ``quote``
        (``then``: what must follow a user and a password; ``closing``: where it ends, when looked for)."""
        if SENSITIVE_KEY.search(name) is not None:
            return whole_value(self.text, at, quote, closing)
        if AUTH_KEY.search(name) is None:
            return None
        pair = _USER_AND_PASSWORD.match(self.text, at)
        if pair is None or auth_methods(pair.group("user"), pair.group("pw")) \
                or then is not None and then.match(self.text, pair.end()) is None:
            return None
        return pair.span("pw")


class ListPairValues(PairValues):
    """What ``PAIR_LIST`` redacts of a pair's value: a quoted one as it is, unless ``not_a_secret_pair_of_a_list``
    keeps it; a list or an object as ``PairValues`` takes it (a user and a password where the pair ends after them)."""

    def __call__(self, m: re.Match[str], start: int, end: int) -> Span | None:
        if m.start("u") < 0:
            return None if not_a_secret_pair_of_a_list(self.text, m) else (start, end)
        return self._judged(self.text[m.start("nm"):m.end("nm")], start, m.group("k"), then=PAIR_LIST_END)


class PairValuesFirst(PairValues):
    """What ``PAIR_VALUE_FIRST`` redacts of an object's value whose name comes after it (``{"value": "x", "name":
    "DB_PASSWORD"}``), fields between them or not: the name is read after the value, closed (its quote; a list's or
    an object's closing bracket, when it holds no other: ``_flat_end``), and judged as ``PairValues`` judges it.
    Linear: what is read after a value is fields holding no quote but their own and no pair's key, which no other
    match begins in; what a look at a list went through is not looked at again."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.looked = 0  # how far the looks at lists went

    def __call__(self, m: re.Match[str], start: int, end: int) -> Span | None:
        text, quote = self.text, m.group("o")
        if m.start("u") >= 0:
            value_end = self._flat_end(start, quote[0] == "\\")
        elif text.startswith(m.group("q"), end):
            value_end = end + len(m.group("q"))
        else:
            value_end = None
        after = None if value_end is None else _name_after(quote).match(text, value_end)
        if after is None:
            return None
        if m.start("u") >= 0:
            return self._judged(after.group("nm"), start, quote, closing=value_end)
        return (start, end) if secret_pair(after.group("nm"), text[start:end]) else None

    def _flat_end(self, at: int, escaped: bool) -> int | None:
        """Past the closing bracket of the list or object opening at ``at``, when it holds no other bracket (but in its
        strings); else None, as for a bracket inside text a look went through (in one of its strings)."""
        if at < self.looked:
            return None
        text = self.text
        stop = self.looked = _BETWEEN_BRACKETS[escaped, text[at] == "("].match(text, at + 1).end()
        return stop + 1 if stop < len(text) and text[stop] == _CLOSING[text[at]] else None


# The quote a key ends with, JSON-escaped or not: what a ``KV`` match holds between its key word and separator
_KEY_QUOTE = re.compile(r"""\\?["']""")


class KeyedValues(ValuesBelow):
    """What ``KV`` redacts of a key word's value: a list, an object or a tuple (its ``b``, empty before the opening
    bracket) whole (``whole_value``, as ``PairValues`` takes a pair's: ``{"api_keys": ["k1", "k2"]}`` shows
    ``{"api_keys": "[REDACTED]"}``, ``API_KEYS=("k1" "k2")`` ``API_KEYS=[REDACTED]``), the marker in the key's quote;
    any other value as ``ValuesBelow`` takes it. Linear: what the look went through is redacted, and no match inside it
    is looked at."""

    def __call__(self, m: re.Match[str], start: int, end: int) -> Span | None:
        at = m.start("b")
        if at < 0:
            return super().__call__(m, start, end)
        quote = _KEY_QUOTE.search(self.text, m.start(), at)
        return whole_value(self.text, at, quote.group() if quote else "")
