"""JSON with `//` line comments and trailing commas, as written in the TNG manual.

The extensions are removed by *blanking*: every character of a comment and
every trailing comma becomes a space (line breaks stay), so the text keeps its
length and every remaining character its line and column. The standard `json`
parser then reads the result and its error positions are the positions in the
text the user wrote.

Objects are parsed into `JsonObject`, a dict that also remembers every
(key, value) pair in document order, duplicates included, so that the loader
can reject a repeated key by its path instead of silently keeping the last one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import ROOT, ConfigError

_WHITESPACE = " \t\r\n"
_LINE_END = "\r\n"


class JsonObject(dict):
    """A parsed JSON object; `pairs` holds all members in document order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def blank_comments(text: str) -> str:
    """Replace each `//` comment outside strings by spaces, up to the line end."""
    out = list(text)
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "/" and text.startswith("//", i):
            while i < n and text[i] not in _LINE_END:
                out[i] = " "
                i += 1
            continue
        i += 1
    return "".join(out)


def blank_trailing_commas(text: str) -> str:
    """Replace each comma that directly precedes `}` or `]` by a space.

    Expects comment-free text. A comma that follows `[`, `{` or another comma
    is left alone (`[,]` stays an error rather than becoming `[]`).
    """
    out = list(text)
    i, n = 0, len(text)
    in_string = False
    previous = ""  # last significant character outside strings
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
                previous = '"'
        elif c == '"':
            in_string = True
        elif c not in _WHITESPACE:
            if c == "," and previous not in ("[", "{", ","):
                j = i + 1
                while j < n and text[j] in _WHITESPACE:
                    j += 1
                if j < n and text[j] in "}]":
                    out[i] = " "
                    c = ""  # the comma is gone; `previous` stays as it was
            if c:
                previous = c
        i += 1
    return "".join(out)


def strip_extensions(text: str) -> str:
    """JSONC text -> plain JSON text of the same length and line layout."""
    return blank_trailing_commas(blank_comments(text))


def parse(text: str) -> Any:
    """Parse JSONC text. Objects come back as `JsonObject`.

    Raises ConfigError with path `config` and a problem naming line and column.
    """
    if not text.strip(_WHITESPACE + "\ufeff"):
        raise ConfigError(ROOT, "document is empty (expected a JSON object)")
    plain = strip_extensions(text)
    if not plain.strip(_WHITESPACE):
        raise ConfigError(ROOT, "document holds only comments (expected a JSON object)")
    try:
        return json.loads(
            plain,
            object_pairs_hook=JsonObject,
            parse_constant=_reject_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except json.JSONDecodeError as e:
        raise ConfigError(ROOT, f"line {e.lineno}, column {e.colno}: {_describe(e)}") from None
    except _BadToken as e:
        line, column = _position_outside_strings(plain, e.token)
        raise ConfigError(ROOT, f"line {line}, column {column}: {e.problem}") from None


class _BadToken(Exception):
    def __init__(self, token: str, problem: str) -> None:
        super().__init__(problem)
        self.token = token
        self.problem = problem


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and upstream TNG) does not.
    raise _BadToken(name, f"{name} is not a JSON value")


_MAX_DIGITS = 64  # far beyond any meaningful value; keeps int() conversion cheap


def _int(token: str) -> int:
    if len(token.lstrip("-")) > _MAX_DIGITS:
        raise _BadToken(token, f"number with {len(token.lstrip('-'))} digits is too long")
    return int(token)


def _float(token: str) -> float:
    value = float(token)
    if value in (float("inf"), float("-inf")):
        raise _BadToken(token, f"number {token[:20]}{'...' if len(token) > 20 else ''} is out of range")
    return value


def _position_outside_strings(plain: str, name: str) -> tuple[int, int]:
    """(line, column) of the first occurrence of token `name` outside strings."""
    in_string = False
    i = 0
    while i < len(plain):
        c = plain[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif plain.startswith(name, i):
            line = plain.count("\n", 0, i) + 1
            return line, i - (plain.rfind("\n", 0, i) + 1) + 1
        i += 1
    return 1, 1  # not reached: json found it, so the scan does too


_MESSAGES = [
    (re.compile(r"Expecting value"), "expected a JSON value"),
    (re.compile(r"Expecting ',' delimiter"), "expected ',' or a closing bracket"),
    (re.compile(r"Expecting ':' delimiter"), "expected ':' after the key"),
    (
        re.compile(r"Expecting property name enclosed in double quotes"),
        "expected a key in double quotes (or '}')",
    ),
    (re.compile(r"Extra data"), "unexpected text after the end of the document"),
    (re.compile(r"Unterminated string"), "string is not terminated"),
    (re.compile(r"Invalid control character"), "control character inside a string (escape it)"),
    (re.compile(r"Invalid \\escape"), "invalid escape sequence in a string"),
    (re.compile(r"Invalid \\uXXXX escape"), "invalid \\uXXXX escape in a string"),
]


def _describe(e: json.JSONDecodeError) -> str:
    if e.doc.startswith("/", e.pos):
        return "unexpected '/': only // line comments are supported"
    for pattern, wording in _MESSAGES:
        if pattern.match(e.msg):
            if wording.startswith("expected ',' or"):
                return _delimiter_wording(e)
            return wording
    return e.msg[:1].lower() + e.msg[1:]


def _delimiter_wording(e: json.JSONDecodeError) -> str:
    # Say which bracket would have been acceptable: find the innermost open one.
    depth: list[str] = []
    in_string = False
    text = e.doc
    i = 0
    while i < e.pos:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth.append(c)
        elif c in "]}" and depth:
            depth.pop()
        i += 1
    closing = {"{": "'}'", "[": "']'"}.get(depth[-1] if depth else "", "a closing bracket")
    return f"expected ',' or {closing}"
