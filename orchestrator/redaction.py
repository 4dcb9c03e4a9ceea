"""Secret redaction of text: ``sanitize_text``, run over everything a job prints or an operator types before it is
persisted or shown, and the look that tells a text it cannot hold a secret (``may_hold_secret``).

Here, the look at a text for the literals a redaction starts from (``orchestrator/secret_literals.py``), which most
texts (a summary, a path, a ``status`` output) hold none of; past it, when each pattern runs and what it replaces is in
``orchestrator/redaction_rules.py``, and what a secret looks like in ``orchestrator/secret_patterns.py``. Both are
imported by the first text holding a literal (``_rules_imported``): their patterns cost a command's start ~90 M
instructions (~15 ms) it seldom needs. Every regex runs in linear time, and so does every loop here: a 5 MB line costs
one pass.
"""
from __future__ import annotations

import string
from typing import Callable, Sequence

from orchestrator.secret_literals import (ANY_LITERAL, ARGV_WORDS, AS_IS_WORDS, AUTH_WORDS, CASE_FOLDED_TO_ASCII,
                                          CLI_USER_WORDS, LOOKED_FOR, NETRC_WORDS, PASS_FLAG_WORDS, PUTTY,
                                          SECRET_KEY_WORDS, SHAPE_STARTS, SHORT_WORDS)

__all__ = ["sanitize_text", "may_hold_secret"]

# Looking for a literal of several characters costs ~0.7 ms a MB (CPython's search), for one character ~0.05 ms
# (``memchr``): in a text this long or longer a literal is looked for only where each of its characters is there
# (``_literals_held``), its rarest first. Data (JSON records, numbers, hex, base64) lacks most literals' rarer
# characters; in a shorter text the plain search costs less than the look at the characters.
_LONG_TEXT = 1024
_BY_FREQUENCY = "etaoinshrdlcumwfgypbvkjxqz"  # English letters, the most frequent first: others (a '-') are rarer
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _rarest_first(literal: str) -> str:
    """The distinct characters of ``literal``, those a text is least likely to hold first."""
    return "".join(sorted(set(literal), key=lambda char: -_BY_FREQUENCY.find(char) if char in _BY_FREQUENCY else -99))


# what ``sanitize_text`` looks for in a long text as it is, and lowered
_AS_IS_LITERALS = SHAPE_STARTS + AS_IS_WORDS + (PUTTY,)
# (``AUTH``'s words by their stem: in a long text its own scan is the search, ``_scanned``; one look for the stem's
# characters costs less than one for each word's)
_LOWERED_LITERALS = (SECRET_KEY_WORDS + SHORT_WORDS + ("bearer", "basic") + NETRC_WORDS + CLI_USER_WORDS
                     + PASS_FLAG_WORDS + ("auth",))
_CHARS_OF = {literal: _rarest_first(literal)
             for literal in LOOKED_FOR + ARGV_WORDS + SHAPE_STARTS + NETRC_WORDS + (PUTTY, "auth")}


def _literals_held(text: str, literals: tuple[str, ...], *, any_case: bool = False) -> tuple[str, ...]:
    """The literals of ``literals`` whose every character ``text`` holds (with ``any_case``, in either case: those
    ASCII-lowering ``text`` may give; ``str.lower`` too, but for ``CASE_FOLDED_TO_ASCII``'s 'İ' and the Kelvin sign,
    which lower to 'i' and 'k'). Only these can be in it: the others need no search. For a long text (``_LONG_TEXT``)."""
    held: dict[str, bool] = {}
    found = []
    for literal in literals:
        for char in _CHARS_OF[literal]:
            there = held.get(char)
            if there is None:
                there = held[char] = char in text or (any_case and char != char.upper() and char.upper() in text)
            if not there:
                break
        else:
            found.append(literal)
    return tuple(found)


def _ascii_lowered(text: str) -> str:
    """``text`` with A-Z lowered and nothing else changed (same length, same offsets). ``str.lower`` does that for
    ASCII text in C; ``translate`` (a dictionary look-up per character, ~0.1 us each) only for the rest, where
    ``lower`` would also change other letters, some into two ('İ')."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def sanitize_text(text: str) -> str:
    """Return ``text`` with secret values replaced by ``[REDACTED]``, key names kept.

    Idempotent, linear-time, and ordinary prose ("the password policy", "token count 5")
    is left alone: a key word only triggers redaction when a value follows it after a separator (``=``, ``:``,
    ``=>``, ``:=``, ``==``), a command's flag, or ``.netrc``'s ``login x password``.
    """
    if not isinstance(text, str):
        text = str(text)
    # Each pattern runs only on a text holding the literal it cannot match without (``KEY_WORDS``, ``SHAPE_STARTS``
    # and the literals below): most texts (a summary, a path) hold none, and a regex scan costs ~0.1 ms per kB where
    # ``in`` costs ~1 us.
    lowered = _ascii_lowered(text)
    held: frozenset[str] | None = None  # in a long text, the literals whose every character it holds
    if len(text) >= _LONG_TEXT:  # looked at for their characters first, all at once (a call costs ~2 us)
        held = frozenset(_literals_held(text, _AS_IS_LITERALS) + _literals_held(lowered, _LOWERED_LITERALS))
    elif ANY_LITERAL.search(lowered) is None:
        return text
    return (_redacted or _rules_imported())(text, lowered, held)


# ``redaction_rules.redacted``, set by the first text holding a literal (``_rules_imported``): a global's look costs
# ``sanitize_text`` nothing to speak of, where an ``import`` statement in it cost ~2.3 us a call
_redacted: Callable[[str, str, frozenset[str] | None], str] | None = None


def _rules_imported() -> Callable[[str, str, frozenset[str] | None], str]:
    """``redaction_rules.redacted``, its module imported (once: then ``_redacted``)."""
    global _redacted
    from orchestrator.redaction_rules import redacted

    _redacted = redacted
    return redacted


# A literal's stem, which several literals share: in a long text, each literal whose characters are all there (in
# prose, most) costs a search (~0.7 ms a MB); one search for their stem passes over all of them where it is not.
_STEMS = {**{word: "pw" if word.startswith("pw") else "pass" for word in SHORT_WORDS},
          "passw": "pass", "passp": "pass", "_pass": "pass", "apikey": "key", "api_key": "key", "api-key": "key",
          "accesskey": "key", "access_key": "key", "access-key": "key", "accountkey": "key", "account_key": "key",
          "account-key": "key", "sessionid": "session", "session_id": "session", "session-id": "session",
          **{word: "auth" for word in AUTH_WORDS}}  # ("-pass" is as rare as its stem, searched as it is)


def _any_in(text: str, literals: Sequence[str]) -> bool:
    """Whether ``text`` holds any of ``literals``, each searched for only where its stem (``_STEMS``) is there."""
    stems: dict[str, bool] = {}
    for literal in literals:
        stem = _STEMS.get(literal)
        if stem is not None:
            there = stems.get(stem)
            if there is None:
                there = stems[stem] = stem in text
            if not there:
                continue
        if literal in text:
            return True
    return False


_KEY_WORDS = LOOKED_FOR + ARGV_WORDS  # what ``may_hold_secret`` looks for in any case, besides the shapes' starts


def may_hold_secret(text: str) -> bool:
    """Whether ``text`` holds any literal a redaction starts from: ``sanitize_text``'s guards (``LOOKED_FOR``, in
    any case), and the key words of ``SENSITIVE_KEY`` (under ``re.IGNORECASE``). False: ``sanitize_text`` leaves
    every string in ``text`` as it is, and no key in it is a secret's. On the text of a whole structure a literal
    made of two of its strings side by side is only a false alarm (the walk then runs). ``str.lower`` where
    ``sanitize_text`` lowers ASCII letters only: it lowers them the same, so it finds every key word that holds,
    and may find more."""
    if "://" in text and "@" in text:  # (a private key's BEGIN or END line, or PuTTY's, holds "private": a key word)
        return True
    long = len(text) >= _LONG_TEXT  # looked at for each literal's characters first
    if any(start in text for start in (_literals_held(text, SHAPE_STARTS) if long else SHAPE_STARTS)):
        return True
    if not text.isascii() and any(char in text for char in CASE_FOLDED_TO_ASCII):
        return True
    words = _literals_held(text, _KEY_WORDS, any_case=True) if long else _KEY_WORDS
    if not words:  # a long text is lowered only if one of them may be in it
        return False
    return _any_in(text.lower(), words)
