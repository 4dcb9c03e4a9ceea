"""The value of a key written on the lines under its key's line, as ``KV`` and ``PAIR_YAML`` redact it: a YAML block
(``password: |``) and its indented lines, a JSON-escaped block (``\\n`` as deep as its string), a word typed at a
prompt under ``Password:`` (``ValuesBelow``, ``YamlPairBlocks``). Apart from ``secret_patterns`` (the patterns
themselves): what runs after a match, walking the lines under it, in linear time as they do.
"""
from __future__ import annotations

import functools
import re

from orchestrator.secret_literals import LINE_END, REDACTED, SPACE


_BLOCK_INDICATOR = re.compile(r"[|>](?:[-+]?[1-9]?|[1-9][-+])")  # YAML's literal or folded block: |, >-, |2+, ...
_TO_LINE_END = re.compile(r"[ \t]*(?:#|\r|\n|\Z)")  # blanks, then a comment or the line's end
_INDENT = re.compile(r"(?:[ \t]*-(?=[ \t]))*[ \t]*")  # blanks, a list item's ``- `` among them
_BLANKS = re.compile(r"[ \t]*")
_BLANK_LINES_THEN_INDENT = re.compile(r"(?:[ \t]*(?:\r\n?|\n))*([ \t]*)")


# What may stand before a key whose value is on the lines under it, on the key's line: blanks, list items' ``- ``, a
# quote, the start of the key's name (``db_`` of ``db_password``). Code or prose there (``if not password:``,
# ``class Password:``, "Enter your password:") says the line is no key's.
_KEY_LINE_START = re.compile(r"""[ \t]*(?:-[ \t]+)*(?:\\?["'])?[\w.-]*""")


class ValuesBelow:
    """What ``KV`` redacts of a value written on the lines under its key's line.

    After a YAML block indicator (``password: |``, ``>-``, ``|2``) with nothing but blanks or a comment after it on
    its line: the block's text, from the first line under it indented more than the key's line (a list item's ``- ``
    counts as indentation) to the last such line before a line that is not (blank lines are passed over). The ``|``
    and the indentation are kept, so YAML stays YAML. Without such a line nothing is redacted (the indicator is no
    secret, and the lines after it are not the key's); a block that begins with ``[REDACTED]`` was redacted before
    and ends there, as a bare value does (``_unquoted``).

    After a separator that ends its line (``KV``'s ``n``: ``password:``, ``password =``), where the key begins its
    line (``_KEY_LINE_START``): the same block (YAML's value on the next line, an INI value's continuation lines);
    else, after a ``:``, the next line when it is one word not ending in ``:`` nor holding ``[REDACTED]``
    (``Password:`` and what was typed at the prompt). An ``=`` ending its line is an empty assignment, and the line after it another (``PASSWORD=`` then
    ``USER=bob`` in an ``.env``); a ``:`` before words or a key (``user: bob``) is YAML's empty value.

    In JSON-escaped or ``repr``'d text, where a line break is ``\\n``, the same rules: ``_escaped_below``.

    Linear: matches come in order; a line's end is searched for, and the block under it looked at, once however
    many matches the line holds (twice at most: an indicator, and a separator ending the line); the line breaks
    before the key, for its indentation, once in all (``_line_start``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.scanned = self.line_start = 0  # line breaks are found up to ``scanned``; its line starts at line_start
        self.looked = -1  # the end of the last line whose block was looked at (past the text: it has no end)
        self.block = (-1, -1)  # that block, or (-1, -1)

    def __call__(self, m: re.Match[str], start: int, end: int) -> tuple[int, int] | None:
        """The span to redact for the value ``text[start:end]`` of ``m`` (-1, -1: a separator ending its line);
        None: nothing."""
        text = self.text
        if start < 0:
            return self._below(m)
        first = text[start]
        if first not in "|>\\":  # most values
            return start, end
        if (first == "\\" or "\\" in text[start + 1:start + 5]) and m.start("u") >= 0:  # JSON's, ``repr``'s ``\n``
            escaped = _escaped_below(text, m, start)
            if escaped is not None:
                return escaped if escaped[0] >= 0 else None
        if first == "\\" or end - start > 3 or m.start("u") < 0 or _BLOCK_INDICATOR.fullmatch(text, start, end) is None:
            return start, end
        if end >= self.looked:  # a line not looked at yet
            after = _TO_LINE_END.match(text, end)
            if after is None:
                return start, end
            brk = LINE_END.search(text, after.end() - 1)  # from the line break, or the comment's ``#``
            self.looked = brk.end() if brk else len(text) + 1
            self.block = self._block(m.start(), brk) if brk else (-1, -1)
        return self.block if self.block[0] >= 0 else None

    def _below(self, m: re.Match[str]) -> tuple[int, int] | None:
        """The value under a key whose separator ends its line (``m.end()`` is at the line break)."""
        text, key = self.text, m.start()
        if _KEY_LINE_START.fullmatch(text, self._line_start(key), key) is None:
            return None
        brk = LINE_END.match(text, m.end())
        block = self._block(key, brk)
        if block[0] >= 0:
            return block
        separator = text[key:m.end()]
        if ":" not in separator or "=" in separator:
            return None
        after = LINE_END.search(text, brk.end())
        line = text[brk.end():after.start() if after else len(text)]
        word = line.strip(" \t")
        if not _one_word(word):
            return None
        first = brk.end() + len(line) - len(line.lstrip(" \t"))
        return first, first + len(word)

    def _line_start(self, at: int) -> int:
        for brk in LINE_END.finditer(self.text, self.scanned, at):
            self.line_start = brk.end()
        self.scanned = at
        return self.line_start

    def _block(self, key: int, line_end: re.Match[str]) -> tuple[int, int]:
        text = self.text
        first = last = -1
        under = _BLANK_LINES_THEN_INDENT.match(text, line_end.end())
        if under.end(1) == under.start(1):  # the first line under it is not indented: no block (most texts)
            return first, last
        line_start = self._line_start(key)
        indent = _INDENT.match(text, line_start, line_end.start()).end() - line_start
        pos = under.start(1)
        while pos < len(text):
            brk = LINE_END.search(text, pos)
            stop = brk.start() if brk else len(text)
            lead = _BLANKS.match(text, pos, stop).end()
            if lead < stop:  # not blank
                if lead - pos <= indent:
                    break
                if first < 0 and text.startswith(REDACTED, lead):  # redacted before: it ends there, as a value does
                    return lead, lead + len(REDACTED)
                first = lead if first < 0 else first
                last = stop
            if brk is None:
                break
            pos = brk.end()
        return first, last


class YamlPairBlocks(ValuesBelow):
    """What ``PAIR_YAML`` redacts of a value: after a block indicator (``value: |``), the block under it as
    ``ValuesBelow`` takes it (the lines indented more than ``name:``'s line); any other value as it is (YAML's, so no
    JSON-escaped line breaks)."""

    def __call__(self, m: re.Match[str], start: int, end: int) -> tuple[int, int] | None:
        if m.start("u") < 0 or _BLOCK_INDICATOR.fullmatch(self.text, start, end) is None:
            return start, end
        return super().__call__(m, start, end)


def _one_word(word: str) -> bool:
    """Whether ``word``, the line under a key whose ``:`` ends its line, is what was typed at a prompt: one word, no
    key of its own (ending in ``:``), not redacted in part before (``Password:x`` was ``Password:[REDACTED]``: a
    secret of its own, which taking whole now would change again when sanitized again)."""
    return word != "" and not word.endswith(":") and REDACTED not in word and SPACE.search(word) is None


# In JSON or ``repr`` text a line break is ``\n`` (``\r\n``, ``\r``), after as many backslashes as the string is deep
# (``\\n`` in JSON quoted in JSON): ``_escaped_below``'s lines. Such a string ends at a quote after one backslash less
# (none at the first depth), followed by what may follow a string (a blank, ``,``, ``:``, ``;``, a closing bracket),
# so an apostrophe or a quote inside a line (``it's``, ``"x"`` in ``repr``'s quotes) does not end it.
_ESCAPED_BREAK = re.compile(r"""[|>]?[-+]?[1-9]?[-+]?(?<!\\)(\\+)[rn]""")
_KEY_LINE_LOOK_BACK = 128  # characters looked back at for the start of a key's escaped line
_DEEPEST = 16  # the most backslashes before an escaped break: JSON quoted in JSON 5 times (each doubles them)


@functools.lru_cache(maxsize=_DEEPEST)
def _escaped_line_end(depth: int) -> re.Pattern[str]:
    """The end of an escaped line of a string ``depth`` backslashes deep: its line break (``brk``), the string's
    end, or a raw line break (which no string holds)."""
    quote = r"\\" * (depth - 1) + r"""["'](?=[\s,:;)\]}]|\Z)"""
    return re.compile(rf"""(?<!\\)(?:(?P<brk>\\{{{depth}}}(?:r(?:\\{{{depth}}}n)?|n))|{quote})|[\r\n]""")


def _escaped_below(text: str, m: re.Match[str], start: int) -> tuple[int, int] | None:
    """``ValuesBelow`` in escaped text, for a ``KV`` match ``m`` whose bare value (at ``start``) begins with an escaped
    line break, after a YAML block indicator or not: the span of the value under the key, (-1, -1) when there is
    none, None when the value does not begin with an escaped break (``ValuesBelow``'s own rules then apply).

    The same rules as in text: the lines indented more than the key's line, where the key begins its line (after
    the escaped break before it, else the string's quote, as ``_KEY_LINE_START`` says); else, after a ``:``, the next
    line when it is one word. A next line of one word is otherwise taken as the bare value it was
    (``password=\new`` may be a value beginning with a backslash), and a line holding a blank is no value
    (``password:\nuser: bob``). Looks back ``_KEY_LINE_LOOK_BACK`` characters at most for the key's line, and
    forward over the lines it redacts and one more: linear."""
    brk = _ESCAPED_BREAK.match(text, start)
    if brk is None:
        return None
    depth, indicator = len(brk.group(1)), brk.start(1) > start
    if depth > _DEEPEST or indicator and _BLOCK_INDICATOR.fullmatch(text, start, brk.start(1)) is None:
        return None
    ends = _escaped_line_end(depth)
    key = m.start()
    window = max(0, key - _KEY_LINE_LOOK_BACK)
    before = text.rfind("\\" * depth + "n", window, key)
    line_start = max(before + depth + 1 if before >= 0 else max(text.rfind('"', window, key) + 1,
                                                               text.rfind("'", window, key) + 1, window),
                     text.rfind("\n", window, key) + 1, text.rfind("\r", window, key) + 1)
    at_line_start = _KEY_LINE_START.fullmatch(text, line_start, key) is not None
    indent = _INDENT.match(text, line_start, key).end() - line_start
    pos, first, last = brk.end(), -1, -1
    end = next_line_end = ends.search(text, pos)
    while at_line_start:
        stop = end.start() if end else len(text)
        lead = _BLANKS.match(text, pos, stop).end()
        if lead < stop:  # not blank
            if lead - pos <= indent:
                break
            if first < 0 and text.startswith(REDACTED, lead):  # redacted before: it ends there
                return lead, lead + len(REDACTED)
            first = lead if first < 0 else first
            last = stop
        if end is None or end.start("brk") < 0:  # the string's end
            break
        pos = end.end()
        end = ends.search(text, pos)
    if first >= 0:
        return first, last
    word = text[brk.end():next_line_end.start() if next_line_end else len(text)]
    if indicator or not _one_word(word):
        return -1, -1
    separator = text[key:start]
    if at_line_start and ":" in separator and "=" not in separator:  # a prompt's answer
        return brk.end(), brk.end() + len(word)
    return start, m.end("u")
