"""Secret redaction of structures: ``sanitize_obj`` over a JSON-like value (a payload's output), where a key, a
name/value pair or an argument list can say a value is secret that its text alone does not; and the rule that
renames an object's keys when redaction makes two of them one (``renamed_keys``)."""
from __future__ import annotations

import codecs
import json
from typing import Any, Callable, Iterable, NamedTuple

from orchestrator.redaction import may_hold_secret, sanitize_text
from orchestrator.redaction_rules import aws_secrets_beside_an_id_redacted
from orchestrator.secret_literals import ANY_LITERAL, REDACTED, holds_aws_key_id_start
from orchestrator.secret_patterns import (AUTH_KEY, AWS_KEY_ID, MYSQL_CLIENT, PASS_FLAG_NAME, SECRET_FLAG, SENSITIVE_KEY,
                                         USER_FLAGS, auth_methods, pass_flag_value, secret_under_a_short_key)

__all__ = ["sanitize_obj", "json_source_text", "renamed_keys"]


def _holds_something(value: Any) -> bool:
    """False for a value that cannot carry a secret: ``None``, a bool, or an empty string or container."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def sanitize_obj(obj: Any, written_in: str | None = None) -> Any:
    """Return a copy of a JSON-like structure with every string sanitized, object keys included; ``obj`` itself
    when nothing in it can be a secret.

    Whatever is stored under a secret-looking key is redacted whole: a scalar (``{"password": "x"}``),
    since its text alone looks harmless, and a list or an object (``{"token": {"a": "x"}}``), since
    nothing inside it says it is secret; so is the ``value`` of a name/value pair whose name is such a key
    (``_secret_pair_value``). Under ``auth``, a list of a user and a password has its password redacted, as in text
    (``_a_user_and_a_password``). A key is secret-looking when a key word of ``sanitize_text`` ends it, blanks and
    punctuation after it aside (``SENSITIVE_KEY``). Only a value that holds nothing (``None``, a bool, ``""``,
    ``[]``, ``{}``) is kept as is. A key is itself text a handler chose (``{"note password=x": 1}``):
    it is sanitized too (``_sanitized_keys``), and no value is lost when two keys become one.

    A structure is first looked at whole, as JSON text (C loops): one whose text holds none of the literals
    redaction starts from (``may_hold_secret``) is returned as it is. Walking it string by string costs ~3 us a
    string, ~170 ms for a handler's output of 1 MB of small objects; the look costs ~30 ms there, ~4 us for an
    output of a few fields (where the walk costs ~8). A structure the look cannot clear is walked as well.

    ``written_in``: a text holding every string of ``obj`` (keys too) as ``_json_text`` writes it, such as the JSON
    ``obj`` was parsed from (``json_source_text``): looked at instead of ``obj`` encoded again (~15 ms a MB). It may
    hold more than ``obj`` (a payload's other fields): where it may hold a secret, ``obj`` is looked at itself.
    The forms told by the items beside a value (``_Beside``) are looked for only where that text holds them.
    """
    beside = _EVERY_FORM
    if isinstance(obj, (dict, list, tuple)):
        if written_in is not None and not may_hold_secret(written_in):
            return obj
        text = _json_text(obj)
        if text is not None:
            if not may_hold_secret(text):
                return obj
            beside = _Beside.held_in(text)
    return _sanitized(obj, beside)


class _Beside(NamedTuple):
    """Which of the forms told by the values beside a value (``_sanitized_items``) a structure may hold; each look
    costs the walk ~1 us a list or an object, ~30% of a walk of small objects."""

    flags: bool  # a string beginning with ``-``: an argument list's flag
    aws: bool  # an AWS access key id's start
    pairs: bool  # a list whose first item is a list beginning with a string: a list of pairs

    @classmethod
    def held_in(cls, text: str) -> _Beside:
        """The forms ``text``, a structure as ``_json_text`` writes it, may hold (``_NO_FORM`` itself: none)."""
        held = cls('"-' in text, holds_aws_key_id_start(text), '[["' in text)
        return held if any(held) else _NO_FORM


_EVERY_FORM, _NO_FORM = _Beside(True, True, True), _Beside(False, False, False)


_PAIR_VALUES = ("value", "Value", "VALUE")
_PAIR_NAMES = ("name", "Name", "NAME", "key", "Key", "KEY")


def _secret_under(name: Any, value: Any) -> bool:
    """Whether ``value``, stored under ``name`` (an object's key, the name of a name/value pair), is a secret: under
    a secret-looking key (``SENSITIVE_KEY``) anything that holds something; under ``pass`` or ``pw``
    (``SHORT_KEY``), text that is no count (``{"pass": 12}``, ``{"pass": ["test_a"]}`` are test results); under
    ``auth`` (``AUTH_KEY``), a user and a password (``{"auth": "none"}`` is a setting)."""
    return isinstance(name, str) and (SENSITIVE_KEY.search(name) is not None and _holds_something(value)
                                      or name[-1:] in "sSwWhH" and _secret_under_a_short_key(name, value))


def _secret_under_a_short_key(name: str, value: Any) -> bool:
    return isinstance(value, str) and value != "" and secret_under_a_short_key(name, value)


def _a_user_and_a_password(name: Any, items: list[Any] | tuple[Any, ...]) -> bool:
    """Whether ``items``, stored under ``name``, are a user and a password (``{"auth": ["bob", "x"]}``, ``AUTH``'s list
    in text; aiohttp's ``BasicAuth``, a named tuple, with its encoding after them: ``["bob", "x", "latin1"]``): two
    strings, the second not empty, under ``auth`` (``AUTH_KEY``), not two method names (``auth_methods``:
    ``["basic", "digest"]``)."""
    return (len(items) == 2 or len(items) == 3 and _an_encoding(items[2])) and isinstance(name, str) \
        and name[-1:] in "hH" and isinstance(items[0], str) and isinstance(items[1], str) and items[1] != "" \
        and AUTH_KEY.search(name) is not None and not auth_methods(items[0], items[1])


def _an_encoding(value: Any) -> bool:
    """Whether ``value`` names a text encoding Python knows (``"latin1"``, ``"utf-8"``)."""
    try:
        return isinstance(value, str) and codecs.lookup(value) is not None
    except (LookupError, ValueError):  # ValueError: a name holding a NUL ("embedded null character")
        return False


def _password_hidden(name: Any, value: Any) -> list[Any] | tuple[Any, ...] | None:
    """``value``, stored under ``name``, with its password redacted when it is a list of a user and a password
    (``_a_user_and_a_password``), its other items sanitized; else None."""
    if not isinstance(value, (list, tuple)) or not _a_user_and_a_password(name, value):
        return None
    shown = [sanitize_text(value[0]), REDACTED, *(sanitize_text(item) for item in value[2:])]
    return shown if isinstance(value, list) else tuple(shown)


def _secret_pair_value(obj: dict[Any, Any]) -> tuple[Any, Any] | None:
    """The key of ``obj``'s value and what is shown of it when ``obj`` is a name/value pair whose value is secret
    under its name (``{"name": "DB_PASSWORD", "value": "x"}``, Kubernetes' env; ``{"Key": "api_key", "Value": "x"}``:
    ``[REDACTED]``) or a list of a user and a password (``{"name": "auth", "value": ["bob", "x"]}``: its password
    redacted, ``_password_hidden``), else None."""
    for value_key in _PAIR_VALUES:
        if value_key in obj:
            value = obj[value_key]
            for name_key in _PAIR_NAMES:
                name = obj.get(name_key)
                if _secret_under(name, value):
                    return value_key, REDACTED
                hidden = _password_hidden(name, value)
                if hidden is not None:
                    return value_key, hidden
            return None
    return None


def _sanitized(obj: Any, beside: _Beside = _EVERY_FORM) -> Any:
    """``sanitize_obj``'s walk: a copy with every string sanitized. ``beside``: the forms to look for (all of them
    when the structure was not looked at first: the reference the look must give the same output as)."""
    if isinstance(obj, str):
        return sanitize_text(obj)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        paired = _secret_pair_value(obj)  # (a key ``None`` is no pair's value)
        aws = beside.aws and _beside_an_aws_key_id(obj.values())
        for key, stored in _sanitized_keys(obj).items():
            value = obj[key]
            if paired is not None and key == paired[0]:
                out[stored] = paired[1]
                continue
            secret = isinstance(key, str) and (
                SENSITIVE_KEY.search(key) is not None and _holds_something(value)
                or key[-1:] in "sSwWhH" and _secret_under_a_short_key(key, value))  # ``_secret_under``, inlined
            if secret:
                out[stored] = REDACTED
            elif (hidden := _password_hidden(key, value)) is not None:
                out[stored] = hidden
            elif aws and isinstance(value, str):  # the key, or a note holding it: ``"secret is <key> keep safe"``
                out[stored] = sanitize_text(aws_secrets_beside_an_id_redacted(value))
            else:
                out[stored] = _sanitized(value, beside)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_sanitized(item, beside) for item in obj] if beside is _NO_FORM else _sanitized_items(obj, beside)
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _sanitized_items(items: list[Any] | tuple[Any, ...], beside: _Beside) -> list[Any]:
    """The items of a list sanitized, each with what the items beside it say of it: the value after a flag naming a
    secret in an argument list (``_hidden_arguments``); an AWS secret access key or session token beside its key
    id, whole or in a string of one line (``aws_secrets_beside_an_id_redacted``); in a list of
    pairs (every item a list of two whose first is text: ``[["HOME", "/root"], ["DB_PASSWORD", "x"]]``, an env's
    ``items()``), the value of a pair named as a secret, as in a name/value object. One list of two strings is not
    taken for a pair: ``["password", "reset"]`` is as likely a list of words."""
    flags = aws = False  # whether an item is a flag, holds an AWS key id's start
    pairs = beside.pairs and len(items) > 0
    for item in items:
        if isinstance(item, str):
            flags = flags or beside.flags and item[:1] == "-"
            aws = aws or beside.aws and holds_aws_key_id_start(item)
            pairs = False
        elif pairs and not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            pairs = False
    if not (flags or aws or pairs):  # most lists
        return [_sanitized(item, beside) for item in items]
    shown = _hidden_arguments(items) if flags else {}
    if aws and _beside_an_aws_key_id(items):
        for i, item in enumerate(items):
            if isinstance(item, str) and i not in shown:  # (a flag's hidden argument shows no more of a secret)
                shown[i] = sanitize_text(aws_secrets_beside_an_id_redacted(item))
    out = []
    for i, item in enumerate(items):
        if i in shown:
            out.append(shown[i])
        elif pairs:
            name, value = item
            # most names hold no literal a redaction starts from: ``sanitize_text`` keeps them, and no key word of
            # ``SENSITIVE_KEY`` is in them (``re.IGNORECASE`` folds no ASCII letter to another), which a search with
            # it costs most of the walk to find (a list of 100,000 pairs: -37% instructions)
            if name.isascii() and ANY_LITERAL.search(name.lower()) is None:
                secret, shown_name = name[-1:] in "sSwWhH" and _secret_under_a_short_key(name, value), name
            else:
                secret, shown_name = _secret_under(name, value), sanitize_text(name)
            if secret:
                pair = (shown_name, REDACTED)
            elif (hidden := _password_hidden(name, value)) is not None:
                pair = (shown_name, hidden)  # ``[["auth", ["bob", "x"]]]``: requests' kwargs
            elif _plain_pair(name, value, beside):  # walked here: ``_sanitized`` of the pair would give the same
                pair = (shown_name, _sanitized(value, beside))
            else:
                out.append(_sanitized(item, beside))
                continue
            out.append(list(pair) if isinstance(item, list) else pair)
        else:
            out.append(_sanitized(item, beside))
    return out


def _plain_pair(name: str, value: Any, beside: _Beside) -> bool:
    """Whether the pair ``[name, value]``, as a list of its own, holds no form told by the items beside each other (a
    flag, an AWS key id's start; no list of pairs: its first item is text): its items are then sanitized each
    alone, as ``_sanitized_items`` would, without the walk's two calls and its look at each item (a list of 100,000
    pairs: ~30% of the walk)."""
    text = value if isinstance(value, str) else ""
    return not (beside.flags and (name[:1] == "-" or text[:1] == "-")
                or beside.aws and (holds_aws_key_id_start(name) or holds_aws_key_id_start(text)))


def _hidden_arguments(items: list[Any] | tuple[Any, ...]) -> dict[int, str]:
    """What an argument list shows of the arguments its flags say are secret, by index: the one after a flag naming
    a secret (``SECRET_FLAG``: ``["mysql", "--password", "x"]``), the password of the ``user:password`` after a
    user flag (``USER_FLAGS``: ``["curl", "-u", "bob:x"]``; digits are a group id: ``-u 1000:1000``), the one after
    a ``pass`` flag (``PASS_FLAG_NAME``: ``["redis-cli", "--pass", "x"]``, OpenSSL's ``pass:x``), the one after
    ``-p`` once ``sshpass`` ran, a ``-p`` joined to its value once ``sshpass`` or a MySQL client ran (``-px``).
    A flag's value is a non-empty argument that is no flag (``["--password", "--verbose"]`` prompts for it),
    as an argument parser takes it. The same forms as in a command line's text (``CLI``, ``CLI_USER``, ``SSHPASS``,
    ``MYSQL``), where a value ends at a blank; here it is the argument."""
    shown: dict[int, str] = {}
    sshpass = mysql = False  # whether an argument before ran sshpass, a MySQL client
    for i, arg in enumerate(items):
        if not isinstance(arg, str):
            continue
        if not arg.startswith("-"):
            program = arg.rpartition("/")[2]
            sshpass, mysql = sshpass or program == "sshpass", mysql or MYSQL_CLIENT.fullmatch(program) is not None
            continue
        after = items[i + 1] if i + 1 < len(items) else None
        if not isinstance(after, str) or after == "" or after.startswith("-"):
            after = None
        if after is not None and (arg == "-p" and sshpass or SECRET_FLAG.fullmatch(arg.lower()) is not None):
            shown[i + 1] = REDACTED
        elif after is not None and PASS_FLAG_NAME.fullmatch(arg.lower()) is not None:
            shown[i + 1] = pass_flag_value(after)
        elif after is not None and arg in USER_FLAGS:
            user, colon, password = after.partition(":")
            if colon and password and not password.isdigit():
                shown[i + 1] = f"{sanitize_text(user)}:{REDACTED}"
        elif arg.startswith("-p") and len(arg) > 2 and (sshpass or mysql):
            shown[i] = "-p" + REDACTED
    return shown


def _beside_an_aws_key_id(values: Iterable[Any]) -> bool:
    """Whether ``values`` (an object's, a list's) hold text holding an AWS access key id."""
    for value in values:
        if isinstance(value, str) and holds_aws_key_id_start(value) and AWS_KEY_ID.search(value) is not None:
            return True
    return False


_encode_json = json.JSONEncoder(ensure_ascii=False).encode  # stateless between calls: shared by threads


def _json_text(obj: Any) -> str | None:
    """``obj`` as JSON text, every string of it (keys too) in it as written except for JSON's escapes, which no
    literal of ``may_hold_secret`` holds; None when it is not JSON (an object of another type, a key that is not
    a scalar, a cycle), which is left to the walk."""
    try:
        return _encode_json(obj)
    except (TypeError, ValueError, RecursionError):
        return None


def json_source_text(raw: bytes) -> str | None:
    """The text ``json.loads`` reads from ``raw`` when every string in it is written as ``_json_text`` writes strings
    (``sanitize_obj``'s ``written_in``), else None. A strict parse leaves no control character unescaped in a string,
    and the escapes of a quote, a backslash and ``\\b \\f \\n \\r \\t`` are the encoder's own; only ``\\u`` (any
    character: ``\\u0070assword`` is "password", which the text does not hold) and ``\\/`` (the "/" of "://") write a
    character no other way, so a text holding either is not taken."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as ``json.loads`` decodes bytes
    except (UnicodeDecodeError, LookupError):
        return None
    if "\\" in text and ("\\u" in text or "\\/" in text):
        return None
    return text



def _sanitized_keys(obj: dict[Any, Any]) -> dict[Any, Any]:
    """Each key of ``obj`` and the key it is stored under, sanitized (``renamed_keys`` with ``sanitize_text``)."""
    return renamed_keys(obj, sanitize_text)


def renamed_keys(obj: dict[Any, Any], rename: Callable[[str], str]) -> dict[Any, Any]:
    """Each key of ``obj`` and the key it is stored under, ``rename``d, in the object's order. A key that
    ``rename`` leaves as it is keeps its name; one that it changes gets its new name, or, when that name is taken
    (``{"password=a": 1, "password=b": 2}`` sanitized), ``2-``, ``3-``, ... in front of it, as an artifact does (a
    number after it would be taken into the redacted value). So no two keys become one, and no value is lost (the
    ``llm`` handler renames the keys holding its API key so too). Linear: each name tries from the number it was
    last given."""
    renamed = {key: rename(key) for key in obj if isinstance(key, str)}
    renamed = {key: new for key, new in renamed.items() if new != key}
    if not renamed:
        return {key: key for key in obj}
    taken = {key for key in obj if key not in renamed}
    last_n: dict[str, int] = {}  # the number each name was last given: the next of its keys tries from there
    names = {}
    for key in obj:
        name = renamed.get(key, key)
        if key in renamed:
            n = last_n.get(name, 1)
            base, name = name, name if n == 1 else f"{n}-{name}"
            while name in taken:
                n += 1
                name = f"{n}-{base}"
            taken.add(name)
            last_n[base] = n
        names[key] = name
    return names
