"""What a text must hold for a secret's pattern (``orchestrator/secret_patterns.py``) to match it: the literals each
pattern's match holds, and ``ANY_LITERAL``, the one search that tells most texts they hold none of them.

Kept apart from the patterns so that the look before any redaction (``redaction.sanitize_text``'s search,
``may_hold_secret``, ``sanitize_obj``'s look at a structure's text) costs a command's start what it uses: compiling
the patterns costs ~90 M instructions (~15 ms), this module's one regex 6 M, and a text holding no literal (a
``status`` output, most summaries) never needs them. The patterns are imported by the first text holding one.
"""
from __future__ import annotations

import re

REDACTED = "[REDACTED]"
# A secret looked for by its own value (the llm handler's key, a store URL's password) shorter than this cannot be told
# from text: "x", "EMPTY", "pw" are also parts of words, which replacing it everywhere would cut up.
MIN_SECRET_LENGTH = 8
LINE_END = re.compile(r"\r\n?|\n")  # CRLF, LF, or CR alone (old Mac)
SPACE = re.compile(r"\s")

# What each match of ``secret_patterns._KEYS`` (lowered) holds: a text holding none of them matches no key word's
# pattern. Whole enough that prose seldom holds one ("passed", "rapid" and "session" do not).
KEY_WORDS = ("passw", "passp", "_pass", "pwd", "private", "token", "apikey", "api_key", "api-key", "secret",
             "sessionid", "session_id", "session-id", "credential", "accesskey", "access_key", "access-key",
             "accountkey", "account_key", "account-key")
HEADER_WORDS = ("authorization", "cookie")  # ``_HEADER_KEYS``'s
SECRET_KEY_WORDS = KEY_WORDS + HEADER_WORDS  # what ``SENSITIVE_KEY`` (lowered) holds: ``redaction.may_hold_secret``
# what each match of ``SHORT_KV`` (lowered) holds: the name, then a quote, an ``=`` or a blank and ``=``
SHORT_WORDS = tuple(name + after for name in ("pass", "pw") for after in ("=", " =", '"', "'", "\\"))
AUTH_WORDS = tuple("auth" + after for after in ("=", ":", '"', "'", "\\", " ", "\t"))  # what ``AUTH``'s matches hold
PASS_FLAG_WORDS = ("-pass",)  # what each match of ``PASS_FLAG`` holds
# What each match of ``NETRC`` holds besides "password", of ``CLI_USER`` (lowered), of ``SSHPASS`` and ``MYSQL``
NETRC_WORDS, CLI_USER_WORDS, AS_IS_WORDS = ("machine", "default"), ("-u ", "-user"), ("sshpass", "mysql")
NETRC_NAMED_FIELDS = "login|account|port"  # the fields of a ``.netrc`` entry but its ``password``: an alternation
# What a text holding a YAML pair whose plain name ends in ``pass``, ``pw`` or ``auth`` holds
# (``secret_under_a_short_key``): the name and its line's end. The other names hold a key word.
YAML_SHORT_NAME_ENDS = tuple(name + end for name in ("pass", "pw", "auth") for end in ("\n", "\r"))
# the literals, besides the shapes' starts, that ``redaction.may_hold_secret`` looks for in any case
# (a YAML pair's short name at its line's end too: ``- name: smtp_pw`` then ``value: x``, which holds no other)
LOOKED_FOR = (SECRET_KEY_WORDS + SHORT_WORDS + ("bearer", "basic") + CLI_USER_WORDS + AS_IS_WORDS + PASS_FLAG_WORDS
              + AUTH_WORDS + YAML_SHORT_NAME_ENDS)
# What an argument list's user flag (``["curl", "-u", "bob:pw"]``) holds as JSON text, where ``CLI_USER_WORDS``' blank
# after ``-u`` is a quote: a structure's look (``may_hold_secret``) looks for it too.
ARGV_WORDS = ('-u"',)
# The characters ``re.IGNORECASE`` takes for an ASCII letter ('İ' and 'ı' for i, 'ſ' for s, the Kelvin sign for k):
# ``SENSITIVE_KEY`` finds "paſſword" a secret's key, whose lowered text holds no key word.
CASE_FOLDED_TO_ASCII = "\u0130\u0131\u017f\u212a"
PUTTY = "Private-"  # what each of PuTTY's two lines of a private key (``PRIVATE_KEY``) begins with
AWS_KEY_ID_STARTS = ("AKIA", "ASIA")  # what an AWS access key id (``AWS_KEY_ID``) begins with
_AKIA, _ASIA = AWS_KEY_ID_STARTS


def holds_aws_key_id_start(text: str) -> bool:
    """Whether ``text`` holds what an AWS access key id begins with: only such a text is searched for one."""
    return _AKIA in text or _ASIA in text


# What each of ``SHAPES`` begins with.
SHAPE_STARTS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", *AWS_KEY_ID_STARTS, "xox", "AIza", "eyJ",
                "sk_live_", "sk_test_", "rk_live_", "rk_test_", "glpat-", "npm_", "SG.")
# What every key of a vendor's kind begins with, so no secret: a vendor's documentation prints it. The llm handler
# counts a start of its key as one only past it (``llm_secrets._shortest_start``: ``sk-ant-api03`` is no part of
# anyone's key). The shapes' starts and the longer ones of the vendors an OpenAI-compatible endpoint may be; a
# vendor not named here has none: its key's every start is secret.
PUBLIC_KEY_PREFIXES = (*SHAPE_STARTS, "sk-ant-api03-", "sk-ant-admin01-", "sk-ant-oat01-", "sk-proj-", "sk-svcacct-",
                       "sk-admin-", "sk-None-", "sk-or-v1-", "gsk_", "xai-", "pplx-", "hf_", "r8_", "fw_", "xoxb-",
                       "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-")


def _one_of(literals: set[str]) -> str:
    """A regex matching any of ``literals``, written as a tree of their shared beginnings (``p(?:ass(?:p|w)|wd)``):
    where a literal's first characters are not there, it fails at once, not once for each literal."""
    firsts = sorted({literal[0] for literal in literals if literal})
    branches = [re.escape(first) + _one_of({literal[1:] for literal in literals if literal[:1] == first})
                for first in firsts]
    body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})" if branches else ""
    return f"(?:{body})?" if "" in literals and branches else body


# Every literal a redaction starts from, lowered (``SHAPE_STARTS`` too: a superset): a short text whose lowered copy
# holds none is returned as it is after one search, where looking for each literal in turn costs two to three times
# that.
ANY_LITERAL = re.compile(_one_of({literal.lower() for literal in
                                  LOOKED_FOR + SHAPE_STARTS
                                  + ("-----begin", "-----end", "://")}))
