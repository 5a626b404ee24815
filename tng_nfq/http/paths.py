"""Path rules of HTTP encapsulation, both sans-io:

- `PathRewriter` (ingress `encap_in_http.path_rewrites`): the outer request's
  path is made from the inner one. Rules are tried in order; a rule applies
  when its regex matches the WHOLE inner path (as if wrapped in `^(?:…)$`),
  and the outer path is then the substitution with group references
  expanded; the first rule that applies wins; with none, the outer path is
  `/`. References: `\\N` (the manual's form, `\\\\` is a backslash), and
  upstream 2.x's `$N` / `${N}` (`$$` is a dollar); a group that did not
  take part in the match expands to nothing.
- `DirectForwardRules` (egress `decap_from_http.allow_non_tng_traffic_regexes`):
  a plain (non-tunnel) HTTP request passes to the backend in clear only when
  its path fully matches one of the regexes.

Paths are matched without the query string: L7 routing in front of the
egress sees the outer path only, and the query of the inner request is part
of what the tunnel hides.
"""

from __future__ import annotations

import re
from typing import Iterable

from tng_nfq.config.model import PathRewrite

_REFERENCE = re.compile(r"\\(\\)|\\(\d+)|\$(\$)|\$\{(\d+)\}|\$(\d+)")


def path_only(target: str) -> str:
    """The path part of an origin-form target (no query, no fragment)."""
    for sep in ("?", "#"):
        target = target.split(sep, 1)[0]
    return target or "/"


def expand(substitution: str, match: re.Match) -> str:
    def one(m: re.Match) -> str:
        if m.group(1) is not None:
            return "\\"
        if m.group(3) is not None:
            return "$"
        number = int(next(g for g in (m.group(2), m.group(4), m.group(5)) if g is not None))
        if number > (match.re.groups or 0):
            return ""
        return match.group(number) or ""

    return _REFERENCE.sub(one, substitution)


class PathRewriter:
    def __init__(self, rules: Iterable[PathRewrite]):
        self.rules = [(re.compile(f"(?:{r.match_regex})"), r.substitution) for r in rules]

    def outer_path(self, inner_target: str) -> str:
        path = path_only(inner_target)
        for regex, substitution in self.rules:
            m = regex.fullmatch(path)
            if m is not None:
                return expand(substitution, m)
        return "/"


class DirectForwardRules:
    def __init__(self, regexes: Iterable[str]):
        self.regexes = [re.compile(r) for r in regexes]

    def allows(self, target: str) -> bool:
        path = path_only(target)
        return any(r.fullmatch(path) for r in self.regexes)
