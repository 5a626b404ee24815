"""Readers for single JSON values: each checks one value at one path and
returns its Python form, or raises ConfigError naming that path.

Nothing here knows about endpoints; `load.py` composes these readers.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, child, item

MISSING = "missing required field"

PORT_RANGE = (1, 65535)
SO_MARK_RANGE = (1, 2**32 - 1)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as used in error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # not reachable from parsed JSON


def wrong_type(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(path, f"expected {expected}, got {json_type(value)}")


def quoted(value: Any) -> str:
    """A value echoed in a message: JSON spelling, one line, not too long."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- objects ---------------------------------------------------------------


def members(
    value: Any,
    path: str,
    known: Iterable[str],
    misplaced: dict[str, str] | None = None,
) -> Iterator[tuple[str, Any, str]]:
    """Yield (key, value, path) of an object's members in document order.

    A key outside `known` stops with an error at its path: the explanation
    from `misplaced` when the key is valid elsewhere, else "unknown key" with
    a spelling suggestion.
    """
    obj = object_(value, path)
    known = tuple(known)
    for key, member in obj.items():
        key_path = child(path, key)
        if key not in known:
            if misplaced and key in misplaced:
                raise ConfigError(key_path, misplaced[key])
            raise ConfigError(key_path, unknown_key_problem(key, known))
        yield key, member, key_path


def unknown_key_problem(key: str, known: Iterable[str]) -> str:
    known = list(known)
    by_case = [k for k in known if k.lower() == key.lower()]
    close = by_case or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return "unknown key (expected one of: " + ", ".join(known) + ")"


def object_(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise wrong_type(path, "object", value)
    return value


def one_or_many(value: Any, path: str) -> list[tuple[Any, str]]:
    """An object or an array of objects, as (element, path) pairs."""
    if isinstance(value, dict):
        return [(value, path)]
    if isinstance(value, list):
        return [(v, item(path, i)) for i, v in enumerate(value)]
    raise wrong_type(path, "object or array of objects", value)


# ---- scalars ---------------------------------------------------------------


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise wrong_type(path, "boolean", value)
    return value


def integer(value: Any, path: str, low: int | None = None, high: int | None = None) -> int:
    # bool is an int subclass in Python but not an integer in JSON
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(path, "integer", value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ConfigError(path, f"must be >= {low}, got {value}")
        raise ConfigError(path, f"must be {low}..{high}, got {value}")
    return value


def port(value: Any, path: str) -> int:
    return integer(value, path, *PORT_RANGE)


def so_mark(value: Any, path: str) -> int:
    return integer(value, path, *SO_MARK_RANGE)


def string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise wrong_type(path, "string", value)
    if not value and not allow_empty:
        raise ConfigError(path, "must not be empty")
    return value


def choice(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    text = string(value, path)
    if text not in allowed:
        options = ", ".join(f'"{a}"' for a in allowed)
        raise ConfigError(path, f"must be one of {options}, got {quoted(text)}")
    return text


def string_list(value: Any, path: str, *, allow_empty_list: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise wrong_type(path, "array of strings", value)
    if not value and not allow_empty_list:
        raise ConfigError(path, "must not be an empty array")
    return tuple(string(v, item(path, i)) for i, v in enumerate(value))


def string_or_list(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (string(value, path),)
    if isinstance(value, list):
        return string_list(value, path)
    raise wrong_type(path, "string or array of strings", value)


def _no_space(text: str, path: str) -> None:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(path, f"must not contain spaces or control characters: {quoted(text)}")


# ---- network values --------------------------------------------------------

_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?\Z")


def host(value: Any, path: str) -> str:
    """An IP address (v4 or v6) or a DNS host name."""
    text = string(value, path)
    _no_space(text, path)
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.match(text):
        raise ConfigError(path, f"not an IP address or host name: {quoted(text)}")
    return text


def ipv4_or_cidr(value: Any, path: str) -> str:
    text = string(value, path)
    _no_space(text, path)
    try:
        ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            fixed = ipaddress.IPv4Network(text, strict=False)
            raise ConfigError(
                path, f"{quoted(text)} has host bits set (did you mean \"{fixed}\"?)"
            ) from None
        if ":" in text:
            raise ConfigError(path, f"IPv6 is not supported here; expected an IPv4 address or CIDR, got {quoted(text)}") from None
        raise ConfigError(path, f"expected an IPv4 address or CIDR, got {quoted(text)}") from None
    return text


def http_url(value: Any, path: str) -> str:
    text = string(value, path)
    _no_space(text, path)
    problem = _http_url_problem(text)
    if problem:
        raise ConfigError(path, f"{problem}: {quoted(text)}")
    return text


def _http_url_problem(text: str) -> str | None:
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if not parts.hostname:
        return "URL has no host"
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        return "URL has an invalid port"
    return None


def aa_addr(value: Any, path: str) -> str:
    """`unix:///absolute/path/to.sock`, or an http(s) URL (REST AA)."""
    text = string(value, path)
    _no_space(text, path)
    if text.startswith("unix:"):
        socket_path = text[len("unix://"):] if text.startswith("unix://") else ""
        if not socket_path.startswith("/") or socket_path == "/":
            raise ConfigError(
                path, f"expected unix:///absolute/path (three slashes), got {quoted(text)}"
            )
        return text
    problem = _http_url_problem(text)
    if problem:
        raise ConfigError(
            path, f"expected unix:///absolute/path or an http(s):// URL, got {quoted(text)}"
        )
    return text


def domain(value: Any, path: str) -> str:
    """A dst_filter domain: a name or IP with Envoy virtual-host wildcards.

    `*` alone matches everything; otherwise one `*` may stand at the very
    start (`*.example.com`, `*-bar.example.com`) or the very end
    (`example.*`, `foo-*`) of the name, never inside it.
    """
    text = string(value, path)
    _no_space(text, path)
    if text == "*":
        return text
    if not re.fullmatch(r"[A-Za-z0-9.\-_:\[\]*]+", text):
        raise ConfigError(path, f"invalid character in domain {quoted(text)}")
    stars = text.count("*")
    if stars > 1 or (stars == 1 and not (text.startswith("*") or text.endswith("*"))):
        raise ConfigError(
            path,
            f"wildcard '*' is only allowed as the whole domain, as a prefix (\"*.example.com\") "
            f"or as a suffix (\"example.*\"), got {quoted(text)}",
        )
    if text.strip("*.-") == "":
        raise ConfigError(path, f"domain has no name besides the wildcard: {quoted(text)}")
    return text


# ---- regular expressions ---------------------------------------------------


def regex(value: Any, path: str) -> re.Pattern[str]:
    text = string(value, path)
    try:
        return re.compile(text)
    except re.error as e:
        raise ConfigError(path, f"invalid regex: {e}") from None
    except (OverflowError, RecursionError, ValueError) as e:
        raise ConfigError(path, f"invalid regex: {e}") from None


_GROUP_REFERENCE = re.compile(r"\\(?:(\\)|([0-9]{1,2}))")


def substitution(value: Any, path: str, groups: int) -> str:
    """A path_rewrites substitution: text with `\\1`..`\\99` group references.

    `\\\\` is a literal backslash. References must name an existing group.
    """
    text = string(value, path, allow_empty=True)
    for m in _GROUP_REFERENCE.finditer(text):
        if m.group(2) is None:
            continue  # escaped backslash
        number = int(m.group(2))
        if number == 0:
            raise ConfigError(path, f"group references start at \\1, got \\{m.group(2)}")
        if number > groups:
            have = f"{groups} group" + ("" if groups == 1 else "s")
            raise ConfigError(
                path, f"references group \\{m.group(2)} but match_regex has only {have}"
            )
    return text


# ---- arbitrary JSON kept as data -------------------------------------------


class FrozenJsonObject(dict):
    """A read-only, hashable JSON object (a dict, so json.dumps still works)."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("configuration values are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]
    __ior__ = _read_only  # type: ignore[assignment]


def frozen_json(value: Any) -> Any:
    """Parsed JSON -> the same data with objects as FrozenJsonObject and arrays as tuples."""
    if isinstance(value, dict):  # JsonObject included
        return FrozenJsonObject((k, frozen_json(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(frozen_json(v) for v in value)
    return value
