"""Path rewriting (encap_in_http.path_rewrites) and the clear-text allow list
(decap_from_http.allow_non_tng_traffic_regexes), as tables."""

import pytest
from hypothesis import given, strategies as st

from tng_nfq.config.model import PathRewrite
from tng_nfq.http.paths import DirectForwardRules, PathRewriter, path_only

MANUAL = PathRewrite(r"^/api/predict/([^/]+)([/]?.*)$", r"/api/predict/\1")


@pytest.mark.parametrize("rules, inner, outer", [
    ([MANUAL], "/api/predict/model-a/v1/run?token=secret", "/api/predict/model-a"),
    ([MANUAL], "/api/predict/model-a", "/api/predict/model-a"),
    ([MANUAL], "/api/other", "/"),
    ([], "/anything", "/"),
    # the regex must match the whole path, not a part of it
    ([PathRewrite(r"/bar/([^/]+)([/]?.*)", r"/bar/\1")], "/foo/bar/user/x", "/"),
    ([PathRewrite(r"/bar/([^/]+)([/]?.*)", r"/bar/\1")], "/bar/user/x", "/bar/user"),
    # first rule that matches wins
    ([PathRewrite(r"/a/(.*)", r"/first/\1"), PathRewrite(r"/a/(b)", r"/second/\1")], "/a/b", "/first/b"),
    ([PathRewrite(r"/x/(.*)", r"/x"), PathRewrite(r"/a/(b)", r"/second/\1")], "/a/b", "/second/b"),
    # upstream 2.x's $N / ${N}, literal backslash and dollar, absent groups
    ([PathRewrite(r"/u/(\w+)/(\w+)", r"/$2/${1}")], "/u/alice/docs", "/docs/alice"),
    ([PathRewrite(r"/u/(\w+)", r"/lit\\1/$$1")], "/u/x", r"/lit\1/$1"),
    ([PathRewrite(r"/u/(a)?(.*)", r"/\1-\2")], "/u/zz", "/-zz"),
    ([PathRewrite(r"/u/(a)", r"/\9")], "/u/a", "/"),
])
def test_rewrite_table(rules, inner, outer):
    assert PathRewriter(rules).outer_path(inner) == outer


@given(st.text(alphabet="/abc?=&%", max_size=30))
def test_no_rules_always_slash(path):
    assert PathRewriter([]).outer_path("/" + path) == "/"


# The manual's four curl examples against ["/api/builtin/.*"]
@pytest.mark.parametrize("target, allowed", [
    ("/api/builtin", False),
    ("/api/builtin/", True),
    ("/api/builtin/abc", True),
    ("/api/builtin/abc?x=1", True),
    ("/", False),
    ("/x/api/builtin/abc", False),  # a full match, not a search
    ("/api/builtinX/", False),
])
def test_allow_list_is_a_full_match_on_the_path(target, allowed):
    assert DirectForwardRules(["/api/builtin/.*"]).allows(target) is allowed


def test_empty_allow_list_allows_nothing():
    assert not DirectForwardRules([]).allows("/")


def test_path_only():
    assert path_only("/a?b#c") == "/a" and path_only("") == "/" and path_only("/a#x") == "/a"
