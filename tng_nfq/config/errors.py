"""The one error type of configuration loading, and how JSON paths are spelt."""

from __future__ import annotations

import json
import re

ROOT = "config"
"""Path used for problems of the document as a whole (syntax, emptiness)."""

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ConfigError(ValueError):
    """A configuration document was rejected.

    `path` locates the offending value (`add_egress[0].netfilter.capture_dst.port`,
    or `config` for the document as a whole); `problem` says what is wrong.
    `str(err)` is always the single line `"{path}: {problem}"`.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = one_line(path)
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


def one_line(text: str) -> str:
    # Error text ends up in logs and a CLI's single error line; a value echoed
    # from the document must not be able to break it into several lines.
    return text.translate(_LINE_BREAKS)


# every character str.splitlines() breaks on, spelt as an escape instead
_LINE_BREAKS = {
    ord(c): json.dumps(c)[1:-1]
    for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}


def child(path: str, key: str) -> str:
    """Path of member `key` of the object at `path`."""
    name = key if _PLAIN_KEY.match(key) else None
    if path == ROOT:
        return name if name is not None else f"{ROOT}[{json.dumps(key)}]"
    return f"{path}.{name}" if name is not None else f"{path}[{json.dumps(key)}]"


def item(path: str, index: int) -> str:
    """Path of element `index` of the array at `path`."""
    return f"{path}[{index}]"
