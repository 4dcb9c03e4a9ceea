"""What a secret looks like to ``redaction.sanitize_text`` and ``redaction_objects.sanitize_obj``: the key names
whose value is secret, the separators and values after them, the forms and shapes recognised without a key. The
literals each pattern's match holds (what ``sanitize_text`` looks for before it runs a pattern) are in
``orchestrator/secret_literals.py``: this module is imported by the first text holding one (a command's start pays for
its patterns only then).

Every regex here is written to run in linear time: each repeated piece has disjoint alternatives, and patterns that
must scan a run of characters before failing only start at the beginning of such a run (a negative lookbehind), so a
5 MB line costs one pass. Key names are matched on an ASCII-lowered copy instead of with re.IGNORECASE (but for
``SENSITIVE_KEY``, of an object's keys): same result, but sre keeps its fast scan for the first character (about 4x
faster).
"""
from __future__ import annotations

import base64
import binascii
import errno
import os
import re

from orchestrator.secret_literals import AWS_KEY_ID_STARTS, LINE_END, NETRC_NAMED_FIELDS, REDACTED

# Key names whose value is secret, in lower case. They also match as the END of a longer
# name (``db_password``, ``GITHUB_TOKEN``, ``x-api-key``): such names are secret too. ``pass`` only after a ``_``
# (``DB_PASS``, ``smtp_pass``): alone or ending a word it is a test's result (``PASS: name``, ``pass=12``) or
# another word (``bypass``, ``compass``).
_KEY_STEMS = (
    r"p(?:ass(?:word|wd|phrase)|(?<=_p)ass|wd|rivate[_-]?key)|api[_-]?key|credential|(?:access|account)[_-]?key"
    r"|se(?:cret(?:[_-]?access)?(?:[_-]?key)?|ssion[_-]?id)"
)
# A key word may be followed by a plural ``s`` (not ``token``'s: ``prompt_tokens``, ``max_tokens`` count an LLM's
# tokens), a number (``password2``, ``api_key_1``) and a word saying the value is the secret in another form
# (``password_hash``, ``secret_value``, ``passwordConfirmation``); by nothing else (``password_policy``,
# ``token_count``, ``secret_santa`` hold no secret).
_KEYS = rf"(?:(?:{_KEY_STEMS})s?|token)(?:[_.-]?[0-9]+)?(?:[_.-]?(?:value|hash|digest|confirm(?:ation)?))?"
_HEADER_KEYS = r"authorization|cookie"  # also proxy-authorization, set-cookie
# Separator between a key and its value: ``k=v``, ``k: v``, ``"k": "v"``, ``\"k\": \"v\"``; and other languages'
# ``k => v`` (Ruby's hashes, PHP, Perl), ``k := v`` (Go), ``k == v`` (a comparison with the secret).
_SEP = r"""(?:\\?["'])?[ \t]*(?:=[>=]?|:=?)[ \t]*"""
# ``KV``'s, telling a quoted key (``kq``) from a bare one and an ``=`` (``eq``: ``=``, ``=>``, ``==``, ``:=``) from a
# ``:``: what a value opening with ``(`` needs to be read as a tuple or an array (``b``)
_KV_SEP = r"""(?P<kq>\\?["'])?[ \t]*(?:(?P<eq>=[>=]?|:=)|:)[ \t]*"""
# A character of a quoted value, an escape (``\"``, ``\\``) taken whole; in JSON-escaped text (a value in ``\"``) an
# escape inside the value is written ``\\`` and the character it escapes, itself escaped when it is a quote or a
# backslash: ``\\\"`` is a quote in the value, not ``\\`` then the value's end (``{\"password\": \"a\\\"x\"}``
# kept ``x``). One way to read any run of backslashes (each piece's first two characters tell it): no backtracking.
QUOTED_CHAR = r"""(?:\\\\(?:\\[^\r\n]|[^\\"'\r\n]|(?=["'\r\n]|\\?\Z|\\[\r\n]))|\\[^\\\r\n]|[^\\\r\n])"""
# A quoted value (the quote may be JSON-escaped); escapes are skipped so ``\"`` stays inside.
_QUOTED = rf"""(?P<q>\\?["'])(?P<v>(?:(?!(?P=q)){QUOTED_CHAR})+)"""


def _unquoted(stop: str, marker: str = REDACTED.lower()) -> str:
    """Regex for a bare value: 1+ chars not in ``stop``, backslash escapes kept whole; or ``[REDACTED]`` (lowered:
    matching runs on a lowered copy; ``marker`` for a pattern that reads the text as it is), which ends there: a
    value redacted before, followed by other text (the ``, `` of a list of names each sanitized on its own) that
    sanitizing again must keep, or it is not idempotent.

    Written as an unrolled loop (no alternation inside the repeat) so it stays fast.
    """
    plain = rf"[^{stop}\\]"
    return rf"(?:{re.escape(marker)}|(?:{plain}|\\.){plain}*(?:\\.{plain}*)*)"


_TO_EOL, _TO_SPACE, _TO_AMP = _unquoted(r"\r\n\"'"), _unquoted(r"\s\"'"), _unquoted(r"\s\"'&")
_TO_SPACE_AS_IS = _unquoted(r"\s\"'", REDACTED)
_NOT_REDACTED = rf"(?!{re.escape(REDACTED.lower())})"  # (lowered) a bracket that opens no list: the marker


# A private key: PEM (``-----BEGIN RSA PRIVATE KEY-----``), OpenPGP's armor (``-----BEGIN PGP PRIVATE KEY
# BLOCK-----``), or the private part of a PuTTY key file (``.ppk``: ``Private-Lines: N``, N lines of base64,
# ``Private-MAC: <hex>``; its public lines, above, are kept). Unterminated: to the end (a head cut through it).
_PEM_LABEL = r"[A-Z0-9 ]{0,64}PRIVATE KEY(?: BLOCK)?-----"
_PUTTY_MAC = r"Private-MAC:[ \t]*[0-9A-Fa-f]+"
PRIVATE_KEY = re.compile(
    rf"-----BEGIN{_PEM_LABEL}(?:[\s\S]*?-----END{_PEM_LABEL}|[\s\S]*)"
    rf"|Private-Lines:[ \t]*[0-9]+(?:[\s\S]*?{_PUTTY_MAC}|[\s\S]*)"
)
# The END line of a key whose BEGIN line is not in the text (a tail cut through it: PuTTY's MAC line for its
# ``Private-Lines``), and the body lines of the key left before it (``_redact_headless_keys``).
PRIVATE_KEY_END = re.compile(rf"-----END{_PEM_LABEL}|{_PUTTY_MAC}")
# ``scheme://user:pass@host``; the password runs to the last ``@`` of the authority. A user without a password is
# redacted when it looks like a token (``https://<token>@github.com``): 20 or more of ``[a-z0-9_-]``, a digit among
# them (``git@``, ``deploy-user@`` are user names).
URL_CREDS = re.compile(r"""://(?:[^\s:/?#@"'<>]*:(?P<v>[^\s/?#"'<>]+)|(?P<u>(?=[a-z_-]*[0-9])[a-z0-9_-]{20,}))@""")
HEADER = re.compile(
    rf"(?:{_HEADER_KEYS}){_SEP}(?P<q>\\?[\"'])?(?:(?:bearer|basic|digest|token|negotiate|ntlm)[ \t]+)?"
    rf"""(?P<v>(?(q)(?:(?!(?P=q)){QUOTED_CHAR})+|{_TO_EOL}))"""
)
# ``--password x``, ``--db-token 'x'``: the flag must start a word. ``--password = x`` is ``KV``'s: an ``=`` or
# ``:`` taken for the value left the value after it.
CLI = re.compile(
    rf"""-(?<![\w-]-)-?(?:[a-z0-9]+[-_])*(?:{_KEYS})[ \t]+(?![:=])(?:{_QUOTED}|(?P<u>{_TO_SPACE}))"""
)
# ``n``: nothing after the separator on the key's line, whose value may be on the lines under it (``ValuesBelow``);
# ``b``: empty, before a list's or an object's opening bracket (``pair_values.KeyedValues`` reads it to its closing
# one), but for ``[REDACTED]``, a value redacted before (a bare value, ``u``); or before a ``(`` after an ``=`` or a
# quoted key's separator: a tuple (``{'api_key': ('k1', 'k2')}``, ``api_key=('k1', 'k2')``) or a shell array
# (``API_KEYS=("k1" "k2")``). After a bare key's ``:`` a ``(`` is prose's (``password: (see below)``, a label's
# aside): the bare value it begins, as before (a look to its ``)`` could take a line of prose, or with no ``)``, the
# text's rest).
KV = re.compile(
    rf"""(?:{_KEYS}){_KV_SEP}(?:{_QUOTED}|(?P<b>(?=[\[{{]){_NOT_REDACTED}|(?=\()(?(kq)|(?(eq)|(?!))))"""
    rf"""|(?P<u>{_TO_AMP})|(?P<n>(?=[\r\n])))"""
)
# A table's row whose first cell ends in a key word, the value in the cell after it: ``aws sts get-session-token
# --output table`` (``assume-role``, ``iam create-access-key``) where a token is wider than the terminal (a log's 80
# columns) turns its sections vertical, a row a field: ``||  SecretAccessKey|  <key>  ||``, ``||  SessionToken   |
# <token>  ||``, its access key id on another row (``AWS_SECRET`` looks only on the id's line); a Markdown table's
# ``| db_password | x |``. The value is the cell's text, the blanks around it kept. The row begins its line with its
# ``|`` (awscli's nested sections with more). Linear: a match begins only at a line's first ``|``, and reads its two
# cells once (the first for a key word at each of its characters: a look of a few characters).
TABLE_ROW = re.compile(
    rf"""(?<![^\r\n])\|+[ \t]*[^|\r\n]*?(?:{_KEYS})[ \t]*\|[ \t]*(?P<v>[^|\s](?:[^|\r\n]*[^|\s])?)"""
)
# ``pass`` and ``pw`` alone (not ending a longer word: ``bypass``, ``npw``; after a ``_`` or ``-``: ``smtp_pw``) are a
# secret's key only in an assignment (``pass=x``, ``pw => 'x'``, a query's ``&pass=x``) or as a quoted key
# (``"pass": "x"``): after a bare ``:`` they are a label (``PASS: test_x``, ``--- PASS: TestX``). A value that is a
# number or true/false is a test result kept by ``a_count`` (``pass=12 fail=0``, ``"pass": 3,``). Written to begin
# with a literal (the word's start checked after the name), which sre scans for about as fast as ``in`` searches: in
# a long text the pattern is its own search for ``SHORT_WORDS`` (``redaction_rules._scanned``), which would cost five.
SHORT_KV = re.compile(
    rf"""p(?:ass(?<![a-z0-9]pass)|w(?<![a-z0-9]pw))(?:\\?["'][ \t]*(?:=[>=]?|:=?)|[ ]?=[>=]?)[ \t]*"""
    rf"""(?:{_QUOTED}|(?P<u>{_TO_AMP}))"""
)
# an object's key ``pass`` or ``pw``, ending it (``"smtp_pw"``): its value is secret when it is text and no count
SHORT_KEY = re.compile(r"(?<![a-z0-9])(?:pass|pw)\Z", re.I)
_COUNT = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?%?|true|false)[,;)\]}]*")  # and the JSON or code punctuation after it
# ``Bearer <token>`` with no header name before it (a curl ``-H`` argument, a header given as a pair, a message):
# a token of 8 or more of RFC 6750's characters with a digit among them, or of 32 or more ("Bearer tokens are",
# ``Bearer realm="x"`` are kept).
_BEARER_CHAR = r"[a-z0-9_.~+/%=-]"
BEARER = re.compile(
    rf"(?<![a-z0-9_-])bearer[ \t]+(?P<v>(?=[a-z_.~+/%=-]*[0-9]){_BEARER_CHAR}{{8,}}|{_BEARER_CHAR}{{32,}})"
)
# A ``.netrc`` entry's password (``machine h login bob password x``, on one line or several; ``default`` and a login for
# ``machine h``): the value after ``password`` that follows the entry's ``machine`` and name, and any ``login``,
# ``account`` or ``port`` and value. Prose has none before it ("login failed: password mismatch", "the default
# password is"). Linear: an entry starts only at a word's start (after a blank or a quote, which no value before
# ``password`` holds), and such a value is never ``machine`` or ``default``, so no look starts inside another's.
_NETRC_VALUE = r"""(?!(?:machine|default)(?![^\s"']))[^\s"']+"""
_NETRC_FIELD = rf"\s+(?:{NETRC_NAMED_FIELDS})\s+{_NETRC_VALUE}"
NETRC = re.compile(
    rf"""(?<![^\s"'])(?:machine\s+{_NETRC_VALUE}(?:{_NETRC_FIELD})*|default(?:{_NETRC_FIELD})+)"""
    rf"""\s+password\s+(?:{_QUOTED}|(?P<u>{_TO_SPACE}))"""
)
# ``curl -u user:password`` (``--user``, and ``-U``/``--proxy-user`` for a proxy): the password after the user's
# ``:``; one that is a number is kept (``a_number``: ``docker run -u 1000:1000`` names a user and a group id).
CLI_USER = re.compile(
    r"""(?<![\w-])(?:-u +|--(?:proxy-)?user(?: +|=))"""
    rf"""(?:(?P<q>["'])[^\s:"']*:(?P<v>(?:(?!(?P=q))[^\r\n])+)|[^\s:"']*:(?P<u>{_TO_SPACE}))"""
)
# ``--pass x`` (redis-cli; ``-pass``, ``--smtp-pass``: ``pass`` ending a flag's name after a ``-`` or ``_``) and
# OpenSSL's ``-passin`` and ``-passout``, whose ``pass:x`` keeps its ``pass:``. A number is kept (``ffmpeg -pass 1``:
# the first of two passes), and so is an OpenSSL source naming where the password is (``env:X``, ``file:p``,
# ``fd:3``, ``stdin``): ``a_pass_source``. ``--pass=x`` is ``SHORT_KV``'s.
_PASS_FLAG_NAME = r"-(?<![\w-]-)-?(?:[a-z0-9]+[-_])*pass(?:in|out)?"
PASS_FLAG = re.compile(rf"""{_PASS_FLAG_NAME}[ \t]+(?![:=])(?:pass:)?(?:{_QUOTED}|(?P<u>{_TO_SPACE}))""")
_PASS_SOURCE = re.compile(r"(?:env|file|fd):\S+|stdin|[0-9]+", re.I)
# ``auth`` (alone or ending a name after a ``_``, ``-`` or ``.``: npm's ``_auth``, ``proxy_auth``; and httpie's
# ``--auth`` flag) before a user and a password: ``user:password``, or its base64 (Docker's ``config.json``, npm's
# ``.npmrc``: ``is_user_and_password``), or Python's tuple of the two, the password a string written there
# (requests' ``auth=('bob', 'x')``, ``auth=HTTPBasicAuth(USER, "x")``: ``t``, the tuple's start), or a list of the two
# (JSON's ``"auth": ["bob", "x"]``, on one line or several; a list of two method names is none: ``auth_methods``). Any
# other value is a setting (``auth=none``, ``auth: ldap``, ``auth=host:389``, ``auth=(user, password)``): kept
# (``not_auth_credentials``). Begins with its literal, as ``SHORT_KV``.
_AUTH_USER = r"""(?:\\?["'][^"'\r\n]*["']|[a-z_][a-z0-9_.]*)"""  # a quoted user (JSON-escaped too), or a name
# the same in a list, the user's text kept (``lq`` in its quotes, ``ln`` a name): ``not_auth_credentials`` reads it
_AUTH_LIST_USER = r"""(?:\\?["'](?P<lq>[^"'\r\n]*?)\\?["']|(?P<ln>[a-z_][a-z0-9_.]*))"""
_AUTH_TUPLE = rf"""(?P<t>(?:[a-z0-9_.]*auth)?\([ \t]*{_AUTH_USER}[ \t]*,[ \t]*|\[\s*{_AUTH_LIST_USER}\s*,\s*)"""
_AUTH_LIST_END = re.compile(r"\s*\]")
# Two of these in a list under ``auth`` are a list of methods (``["basic", "digest"]``, SSH's ``["password",
# "publickey"]``), not a user and a password
AUTH_METHODS = frozenset({
    "anonymous", "apikey", "api_key", "aws", "basic", "bearer", "cert", "certificate", "cookie", "digest", "gssapi",
    "hmac", "jwt", "kerberos", "keyboard-interactive", "ldap", "login", "md5", "mtls", "negotiate", "none", "ntlm",
    "oauth", "oauth2", "oidc", "otp", "password", "peer", "plain", "publickey", "saml", "scram-sha-1",
    "scram-sha-256", "session", "sigv4", "sso", "token", "totp", "trust"})
AUTH = re.compile(
    rf"""auth(?<![a-z0-9]auth)(?:{_SEP}|(?<=-auth)(?<!\w-auth)[ \t]+){_AUTH_TUPLE}?(?:{_QUOTED}|(?P<u>{_TO_AMP}))"""
)
AUTH_KEY = re.compile(r"(?<![a-z0-9])auth\Z", re.I)  # an object's key ``auth``: its value, a user and password
# A name/value pair written as JSON (or ``repr``) text, on one line or indented over several, whose value is secret
# under its name as in a structure (``pair_values.PairValues`` judges it): an object whose ``name`` or ``key`` comes
# before its ``value`` (``{"name": "DB_PASSWORD", "value": "x"}``, Kubernetes' env; ``{"Key": "api_key", "Value":
# "x"}``, sorted keys), with other fields between them or not (``pair_field``: SSM's ``"Type": "SecureString"``), or
# after it (``PAIR_VALUE_FIRST``: its name is read after the value, ``pair_values.PairValuesFirst``); and a pair of a
# list of pairs (``[["DB_PASSWORD", "x"]]``, ``dict_items([('api_key', 'x')])``): a list of two items after a list's
# ``[`` or after another pair's ``],`` (``["password", "reset"]`` alone is words; its keep looks for the pair's end: a
# lookahead here would walk back over a value with none). The name is quoted text without a quote or a backslash in
# it; the value a quoted string, or a list, an object or a tuple (``u``, empty, before its opening bracket:
# ``PairValues`` finds its end, and a pair inside it is looked for as any other). Linear: a match begins only at a
# quote (a bracket), each name and value runs to the next quote, a field holds no quote but its own and no key of the
# pair's, and no two looks share a value's quote.
PAIR_NAME = r"""(?P<k>\\?["'])(?P<nm>[^"'\\\r\n]+)(?P=k)"""
_PAIR_VALUE = rf"""(?:{_QUOTED}|(?P<u>(?=[\[{{(]){_NOT_REDACTED}))"""


def pair_field(quote: str) -> str:
    """A field between a pair's name and its value, after a ``,``, in the pair's ``quote`` (a regex): a key that is
    none of the pair's (``name``, ``key``, ``value``), and a scalar: a string without a quote or a backslash, a
    number, ``true``, ``false``, ``null`` (lowered)."""
    return (rf"""\s*,\s*{quote}(?!(?:name|key|value){quote})[^"'\\\r\n]+{quote}\s*:\s*"""
            rf"""(?:{quote}[^"'\\\r\n]*{quote}|[a-z0-9.+-]+)""")


PAIR_OBJECT = re.compile(
    rf"""(?P<o>\\?["'])(?:name|key)(?P=o)\s*:\s*{PAIR_NAME}(?:{pair_field("(?P=o)")})*"""
    rf"""\s*,\s*(?P=o)value(?P=o)\s*:\s*{_PAIR_VALUE}"""
)
PAIR_VALUE_FIRST = re.compile(rf"""(?P<o>\\?["'])value(?P=o)\s*:\s*{_PAIR_VALUE}""")
# what each match of ``PAIR_OBJECT`` and ``PAIR_VALUE_FIRST`` holds, lowered: its ``value`` key and the quote after it
# (their scans, with no literal to begin with, cost ~0.05 ms a kB each; "value" in prose is no key)
PAIR_VALUE_KEY = re.compile(r"""value["'\\]""")
PAIR_LIST = re.compile(rf"""(?:\[|[\])]\s*,)\s*[\[(]\s*{PAIR_NAME}\s*,\s*{_PAIR_VALUE}""")
PAIR_LIST_END = re.compile(r"\s*[\])]")  # after the value: the pair's end
# The same pair as YAML (``kubectl get pod -o yaml``'s env): ``- name: DB_PASSWORD`` and, on the next line at the same
# indentation as ``name:`` (``not_a_secret_yaml_pair`` looks back for it), ``value: x``, ``value: "x"`` or
# ``value: 'x'``. The name is plain or quoted, without a blank, quote or backslash in it; a quoted value runs to the
# last such quote ending its line (YAML's ``''``, ``\"`` inside), a plain one or one whose quote is not closed there
# to the line's last non-blank; after a block indicator (``value: |``), the block under it (``YamlPairBlocks``).
# Linear: a match begins at ``name:``, only the last one of its line can match (its line must end after the name),
# and the value's line is read once more at most (back to its closing quote).
PAIR_YAML = re.compile(
    r"""name:[ \t]+(?P<k>["']?)(?P<nm>[^\s"'\\]+)(?P=k)[ \t]*(?:\r\n?|\n)(?P<i>[ ]*)value:[ \t]+"""
    r"""(?:(?P<q>["'])(?P<v>[^\r\n]*)(?P=q)[ \t]*(?=[\r\n]|\Z)|(?P<u>\S(?:[^\r\n]*\S)?))"""
)
_YAML_KEY_LINE_START = re.compile(r"[ ]*(?:-[ ]+)?")  # before a key at the start of a YAML line: its indentation
# In an argument list (``["curl", "-u", "bob:pw"]``): a flag naming a secret, as ``CLI``'s (lowered, whole), the
# flags of ``PASS_FLAG``, and the flags of ``CLI_USER`` (as they are: ``-U`` is curl's proxy user, ``-u`` its user)
SECRET_FLAG = re.compile(rf"--?(?:[a-z0-9]+[-_])*(?:{_KEYS})")
PASS_FLAG_NAME = re.compile(_PASS_FLAG_NAME)
USER_FLAGS = frozenset({"-u", "-U", "--user", "--proxy-user"})
# These two read the text as it is (``-P`` is MySQL's port): ``sshpass -p x`` (``-px``), and a MySQL client's
# password joined to its ``-p`` (``mysql -u root -px``; ``-p`` alone asks for it, and ``-p x`` names a database).
# The arguments before ``-p`` stop at one holding "mysql", where the next look starts: each is read once.
MYSQL_CLIENT = re.compile(r"mysql[a-z]*")  # a program's name (``mysql``, ``mysqldump``) whose ``-p`` is joined
SSHPASS = re.compile(rf"""(?<![\w.-])sshpass[ \t]+-p[ \t]*(?:{_QUOTED}|(?P<u>{_TO_SPACE_AS_IS}))""")
MYSQL = re.compile(
    rf"""(?<![\w.-])mysql[a-z]*(?:[ \t]+(?!-p|\S*mysql)\S+)*[ \t]+-p(?:{_QUOTED}|(?P<u>{_TO_SPACE_AS_IS}))"""
)
# ``Basic <base64>`` with no header name before it (a curl ``-H`` argument, a header given as a pair): the value is
# redacted when it decodes to a user and a password (RFC 7617's ``user:password``, printable UTF-8), which no word
# after "Basic" does ("Basic setup", ``Basic realm="x"``; ``not_user_and_password`` keeps the others). Begins with its
# literal, as ``SHORT_KV``.
BASIC = re.compile(r"basic(?<![a-z0-9_-]basic)[ \t]+(?P<v>[a-z0-9+/]{4,}={0,2})(?![a-z0-9+/=_.-])")
# An AWS access key id (one of ``SHAPES``) and the secrets that go with it: the secret access key, 40 of base64's
# characters but ``=``, and a session token (STS's ``SessionToken``, ``IQoJb3JpZ2luX2Vj...``: several hundred of them,
# ``=`` padding after), 100 or more; both cases among them (``aws_secret``; a hex hash has one). Without a name they
# are told from other data only beside their id: on the id's line of text (``redaction``), in the id's object or list
# (``redaction_objects``).
_AKIA, _ASIA = AWS_KEY_ID_STARTS
_AWS_KEY_ID = rf"(?:{_AKIA}|{_ASIA})[0-9A-Z]{{16}}"
# A shape starts and ends at the edge of a run of token characters, so a match never splits a run (this keeps
# redaction idempotent).
_RUN_START, _RUN_END = r"(?<![A-Za-z0-9_-])", r"(?![A-Za-z0-9_-])"
AWS_KEY_ID = re.compile(_RUN_START + _AWS_KEY_ID + _RUN_END)
AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])(?:[A-Za-z0-9/+]{40}|[A-Za-z0-9/+]{100,}={0,2})(?![A-Za-z0-9/+=])")
# What may go on after a secret key in the same token, redacted with it (``password=<key>-tail``, ``<key>%2F...``): a
# ``-``, ``_``, ``.``, ``~`` or ``%``, then more of a token's characters; a blank, a quote, a ``,`` or a backslash
# (JSON's ``\n``) ends it
AWS_SECRET_TOKEN_REST = re.compile(r"[-_.~%][A-Za-z0-9/+=_.~%-]*")


# Well-known credential shapes, recognised without any key name.
SHAPES = re.compile(
    rf"{_RUN_START}(?:"
    r"sk-[A-Za-z0-9_-]{20,}"  # OpenAI sk-/sk-proj-, Anthropic sk-ant-
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    rf"|{_AWS_KEY_ID}"  # AWS access key id
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # JWT
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe's secret and restricted keys (``pk_``: publishable, kept)
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab personal access token
    r"|npm_[A-Za-z0-9]{36,}"  # npm
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"  # SendGrid
    rf"){_RUN_END}"
)
# A key of an object whose value is secret: a key word (``_KEYS``, its suffixes included, or a header's name) that
# ends the name, but for blanks and punctuation after it (``"password "``, ``"Password:"``, ``"db_password\n"``).
SENSITIVE_KEY = re.compile(rf"(?:{_KEYS}|{_HEADER_KEYS})[\W_]*\Z", re.I)


# The C library's error messages (``strerror``). A program's diagnostic ``<name>: <message>`` whose name ends in a
# key word (``passwd: File exists``, ``cat: /run/secrets/api_token: No such file or directory``) is no secret
# when everything after the ``:`` to the end of its line is exactly one of them: that value is kept. Nothing
# else is: a quoted value, a value after ``=``, one followed by anything more on its line (see os_error).
_OS_ERRORS = frozenset(m for m in map(os.strerror, errno.errorcode) if not m.startswith("Unknown error"))
_OS_ERROR_LONGEST = max(map(len, _OS_ERRORS))


def os_error(text: str, m: re.Match[str]) -> bool:
    """Whether the bare value of ``KV``'s match ``m`` in ``text`` begins, after a ``:``, an OS error message that
    ends its line (or the text). Looks at most ``_OS_ERROR_LONGEST`` + 2 characters past the value's start, so a
    line of many matches still costs one pass."""
    start = m.start("u")
    if start < 0:
        return False
    sep = text[m.start():start]  # the key and its separator: ``:``, not ``:=``
    if ":" not in sep or "=" in sep:
        return False
    window = text[start:start + _OS_ERROR_LONGEST + 2]
    brk = LINE_END.search(window)
    if brk is None and start + len(window) < len(text):  # the line goes on past any message
        return False
    return window[:brk.start() if brk else len(window)].rstrip(" \t") in _OS_ERRORS


def value_span(m: re.Match[str]) -> tuple[int, int]:
    """Where the value of a pattern's match ``m`` is: its quoted value (``v``), else its bare one (``u``); (-1, -1)
    when it has neither (``KV``'s ``n``: a separator ending its line)."""
    return m.span("v") if m.start("v") >= 0 else m.span("u")


def _value(text: str, m: re.Match[str]) -> str:
    start, end = value_span(m)
    return text[start:end]


def a_count(text: str, m: re.Match[str]) -> bool:
    """Whether the value of ``SHORT_KV``'s match ``m`` is a number or true/false (``pass=12``): a test result."""
    return is_count(_value(text, m))


def is_count(value: str) -> bool:
    """Whether ``value`` is a number or true/false, with the punctuation that may follow one in JSON or code."""
    return _COUNT.fullmatch(value.lower()) is not None


def _encoded_user_and_password(value: str) -> bool:
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # not base64, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return False
    return ":" in decoded and decoded.isprintable()


def is_user_and_password(value: str) -> bool:
    """Whether ``value`` (``AUTH``'s, an ``auth`` key's) is a user and a password: ``user:password``, the password
    no number (``host:389`` is a host and its port), or its base64 (``_encoded_user_and_password``)."""
    _user, colon, password = value.partition(":")
    if colon:
        return password != "" and not password.isdigit()
    return _encoded_user_and_password(value)


def auth_methods(first: str, second: str) -> bool:
    """Whether a list of two under ``auth`` names two methods (``AUTH_METHODS``), not a user and a password."""
    return first.lower() in AUTH_METHODS and second.lower() in AUTH_METHODS


def not_auth_credentials(text: str, m: re.Match[str]) -> bool:
    """``AUTH``'s keep: its value is a setting (``auth=none``), not a user and a password; after a tuple's user,
    no string written there (``auth=(user, password)`` names a variable); after a list's, a string that does not end
    the list (``["bob", "x", "y"]``) or that names a method after a method's name (``["basic", "digest"]``)."""
    start = m.start("t")
    if start < 0:
        return not is_user_and_password(_value(text, m))
    if m.start("v") < 0:
        return True
    if text[start] != "[":
        return False
    after = m.end("v") + len(m.group("q"))
    if not text.startswith(m.group("q"), m.end("v")) or _AUTH_LIST_END.match(text, after) is None:
        return True
    user = m.span("lq") if m.start("lq") >= 0 else m.span("ln")
    return auth_methods(text[user[0]:user[1]], _value(text, m))


def secret_under_a_short_key(name: str, value: str) -> bool:
    """Whether the text ``value``, not empty, stored under ``name`` is secret under ``pass`` or ``pw`` (``SHORT_KEY``):
    no count (``{"pass": "12"}`` is a test result); under ``auth`` (``AUTH_KEY``): a user and a password."""
    if name[-1:] in "hH":
        return AUTH_KEY.search(name) is not None and is_user_and_password(value)
    return SHORT_KEY.search(name) is not None and not is_count(value)


def secret_pair(name: str, value: str) -> bool:
    """Whether the text ``value`` of a name/value pair is secret under its ``name``, as a structure's
    (``redaction_objects._secret_under``: a secret's key ending the name, ``pass`` and ``auth`` by their rules)."""
    return SENSITIVE_KEY.search(name) is not None or name[-1:] in "sSwWhH" and secret_under_a_short_key(name, value)


def not_a_secret_pair(text: str, m: re.Match[str]) -> bool:
    """``PAIR_OBJECT``'s and ``PAIR_YAML``'s keep: the pair's value is no secret under its name (``secret_pair``)."""
    return not secret_pair(text[m.start("nm"):m.end("nm")], _value(text, m))


def not_a_secret_pair_of_a_list(text: str, m: re.Match[str]) -> bool:
    """``PAIR_LIST``'s keep of a quoted value: the list goes on past its two strings (or its value's quote is not
    closed), or ``not_a_secret_pair``."""
    end, quote = m.end("v"), m.group("q")
    return not text.startswith(quote, end) or PAIR_LIST_END.match(text, end + len(quote)) is None \
        or not_a_secret_pair(text, m)


def not_a_secret_yaml_pair(text: str, m: re.Match[str]) -> bool:
    """``PAIR_YAML``'s keep: ``name:`` does not begin its line after an indentation as long as ``value:``'s (a list
    item's ``- `` counting as such), the value is empty (``value: ""``), or ``not_a_secret_pair``."""
    indent = m.end("i") - m.start("i")
    line_start = m.start() - indent
    start, end = value_span(m)
    return line_start < 0 or line_start > 0 and text[line_start - 1] not in "\r\n" \
        or _YAML_KEY_LINE_START.fullmatch(text, line_start, m.start()) is None or start == end \
        or not_a_secret_pair(text, m)


def a_pass_source(text: str, m: re.Match[str]) -> bool:
    """``PASS_FLAG``'s keep: its value, not after ``pass:``, is a number or names where the password is."""
    start = m.start("u")
    return start >= 0 and text[start - 5:start].lower() != "pass:" \
        and _PASS_SOURCE.fullmatch(text, start, m.end("u")) is not None


def pass_flag_value(value: str) -> str:
    """What an argument list shows of the argument after a ``PASS_FLAG_NAME`` flag (``a_pass_source``'s rule)."""
    if value[:5].lower() == "pass:":
        return value[:5] + REDACTED
    return value if _PASS_SOURCE.fullmatch(value) is not None else REDACTED


def not_user_and_password(text: str, m: re.Match[str]) -> bool:
    """``BASIC``'s keep: its value (in ``text`` as it is: base64 is case-sensitive) is a word, not an encoded
    ``user:password`` (printable UTF-8 holding a ``:``)."""
    return not _encoded_user_and_password(text[m.start("v"):m.end("v")])


def aws_secret(value: str) -> bool:
    """Whether a match of ``AWS_SECRET`` holds both cases, as 40 random characters of base64 do (all but about one in
    a billion): a hex hash or a word of one case is no secret key."""
    return not value.islower() and not value.isupper()


def a_number(text: str, m: re.Match[str]) -> bool:
    """Whether the value of ``CLI_USER``'s match ``m`` is digits only: ``-u 1000:1000`` names a user and group id."""
    return _value(text, m).isdigit()
