"""The `//`-comment and trailing-comma layer (tng_nfq.config.jsonc)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tng_nfq.config import ConfigError
from tng_nfq.config import jsonc

TRICKY_STRINGS = [
    "//", "http://example.com/a//b", ",]", ",}", "a,]b", '"//"', "\\", "\\\\//", "/*", "*/",
    "[1,]", "{\"a\":1,}", "// not a comment,\n", "\t,\r\n]", "\u2028//\u2029", "é//ü",
]

strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(TRICKY_STRINGS),
    st.tuples(st.text(max_size=4), st.sampled_from(TRICKY_STRINGS), st.text(max_size=4)).map("".join),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=25,
)
# comment text: anything but the line breaks that end a comment
comment_text = st.text(max_size=15).map(lambda t: t.replace("\n", " ").replace("\r", " ")) | st.sampled_from(
    ['"', '"unterminated', "//", ",]", ",}", "]", "}", "http://x", "\\"]
)


def decorate(data, dumped: str) -> str:
    """Insert comments between tokens and trailing commas into JSON text."""
    out: list[str] = []
    draw = data.draw

    def maybe_comment() -> None:
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(["", " ", "\t"])) + "//" + draw(comment_text) + "\n")

    maybe_comment()
    in_string = escaped = False
    previous = ""
    for c in dumped:
        if in_string:
            out.append(c)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                previous = c
            continue
        if c == '"':
            in_string = True
            out.append(c)
            continue
        if c in "]}" and previous not in ("[", "{") and draw(st.booleans()):
            out.append(",")
            maybe_comment()
        out.append(c)
        if c in "[]{},:":
            maybe_comment()
        if not c.isspace():
            previous = c
    maybe_comment()
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(value=json_values, indent=st.sampled_from([None, 0, 2]), ascii=st.booleans(), data=st.data())
def test_decorated_json_parses_back(value, indent, ascii, data):
    dumped = json.dumps(value, indent=indent, ensure_ascii=ascii)
    text = decorate(data, dumped)
    plain = jsonc.strip_extensions(text)
    assert json.loads(plain) == value
    assert jsonc.parse(text) == value
    # positions are kept: same length, same line breaks
    assert len(plain) == len(text)
    assert [i for i, c in enumerate(plain) if c == "\n"] == [i for i, c in enumerate(text) if c == "\n"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_stripping_keeps_length_and_line_breaks_of_any_text(text):
    plain = jsonc.strip_extensions(text)
    assert len(plain) == len(text)
    for a, b in zip(text, plain):
        assert a == b or b == " "
        if a in "\r\n":
            assert b == a


def test_hand_decorated_document():
    text = '{"url": "http://x//y", // a comment with "quotes" and ,]\n "list": [",]", "//",],}'
    assert jsonc.parse(text) == {"url": "http://x//y", "list": [",]", "//"]}


@given(strings)
def test_strings_survive_verbatim(s):
    text = json.dumps({"k": s, "l": [s, s]})
    assert jsonc.strip_extensions(text) == text


def test_line_comment_is_blanked_to_the_line_end():
    text = '{"a": 1, // note, "b": 2 ]\r\n "c": "x//y"}'
    assert jsonc.strip_extensions(text) == '{"a": 1,' + " " * 18 + '\r\n "c": "x//y"}'


def test_trailing_commas_are_blanked_only_before_closers():
    assert jsonc.blank_trailing_commas('[1, 2,\n ]') == "[1, 2 \n ]"
    assert jsonc.blank_trailing_commas('{"a": [],}') == '{"a": [] }'
    assert jsonc.blank_trailing_commas('[",]",]') == '[",]" ]'
    assert jsonc.blank_trailing_commas("[,]") == "[,]"  # not trailing anything: stays an error
    assert jsonc.blank_trailing_commas("[1,,]") == "[1,,]"  # an empty element, not a trailing comma


def test_escaped_quote_does_not_end_a_string():
    text = r'{"a": "say \"//hi\",]", "b": 1,}'
    assert jsonc.parse(text) == {"a": 'say "//hi",]', "b": 1}


def test_objects_remember_duplicate_pairs_in_order():
    obj = jsonc.parse('{"a": 1, "b": {"c": 2}, "a": 3}')
    assert isinstance(obj, jsonc.JsonObject)
    assert obj.pairs == [("a", 1), ("b", {"c": 2}), ("a", 3)]
    assert obj == {"a": 3, "b": {"c": 2}}


@pytest.mark.parametrize(
    "text, line, column",
    [
        ('{"a": 1 "b": 2}', 1, 9),
        ('// c1\n// c2\n{"a": [1, 2,, 3]}', 3, 13),
        ('{\n  "a": "//", // x\n  "b": tru\n}', 3, 8),
    ],
)
def test_syntax_errors_point_at_the_written_text(text, line, column):
    with pytest.raises(ConfigError) as caught:
        jsonc.parse(text)
    assert caught.value.path == "config"
    assert re.match(rf"line {line}, column {column}: ", caught.value.problem)
    assert "\n" not in str(caught.value)
