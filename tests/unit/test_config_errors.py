"""Rejected documents: each case names the exact path and a key phrase of the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tng_nfq.config import ConfigError, load_config, load_config_file

MAPPING = {"in": {"port": 10001}, "out": {"host": "127.0.0.1", "port": 20001}}
EGRESS_MAPPING = {"in": {"host": "127.0.0.1", "port": 20001}, "out": {"host": "127.0.0.1", "port": 30001}}
VERIFY = {"as_addr": "http://127.0.0.1:8080/", "policy_ids": ["default"]}
ATTEST = {"aa_addr": "unix:///tmp/attestation.sock"}
ENCAP = {"path_rewrites": [{"match_regex": "^/a/(.*)$", "substitution": "/b/\\1"}]}


def ingress(**members: Any) -> dict:
    """An ingress entry: mapping + verify unless overridden (None removes a key)."""
    entry = {"mapping": MAPPING, "verify": VERIFY}
    entry.update(members)
    return {k: v for k, v in entry.items() if v is not None}


def egress(**members: Any) -> dict:
    entry = {"mapping": EGRESS_MAPPING, "attest": ATTEST}
    entry.update(members)
    return {k: v for k, v in entry.items() if v is not None}


def doc(*, ingresses: list | None = None, egresses: list | None = None, **top: Any) -> str:
    """Top-level members in this order: `top` ones, add_ingress, add_egress."""
    d: dict[str, Any] = dict(top)
    if ingresses is not None:
        d["add_ingress"] = ingresses
    if egresses is not None:
        d["add_egress"] = egresses
    return json.dumps(d, indent=2)


def one_ingress(**members: Any) -> str:
    return doc(ingresses=[ingress(**members)])


def one_egress(**members: Any) -> str:
    return doc(egresses=[egress(**members)])


def verify(**fields: Any) -> str:
    return one_ingress(verify={k: v for k, v in {**VERIFY, **fields}.items() if v is not None})


def attest(**fields: Any) -> str:
    return one_egress(attest={k: v for k, v in {**ATTEST, **fields}.items() if v is not None})


def proxy(**fields: Any) -> str:
    return one_ingress(mapping=None, http_proxy={"proxy_listen": {"port": 41000}, **fields})


def nf_ingress(**fields: Any) -> str:
    return one_ingress(mapping=None, netfilter=fields)


def nf_egress(**fields: Any) -> str:
    return one_egress(mapping=None, netfilter=fields)


def mapping_in_port(port: Any) -> str:
    return one_ingress(mapping={"in": {"port": port}, "out": MAPPING["out"]})


def capture_port(port: Any) -> str:
    return nf_egress(capture_dst={"port": port})


I0 = "add_ingress[0]"
E0 = "add_egress[0]"

CASES: list[tuple[str, str, str, str]] = [
    # ---- document level --------------------------------------------------------
    ("empty document", "", "config", "empty"),
    ("whitespace only", "  \n\t\n", "config", "empty"),
    ("comments only", "// nothing\n// here\n", "config", "only comments"),
    ("top level array", "[]", "config", "must be a JSON object, got array"),
    ("top level string", '"add_ingress"', "config", "must be a JSON object, got string"),
    ("top level null", "null", "config", "got null"),
    ("nothing to run", "{}", "config", "nothing to run"),
    ("nothing to run, empty lists", '{"add_ingress": [], "add_egress": []}', "config", "nothing to run"),
    ("nothing to run, admin only", '{"admin_bind": {"port": 9901}}', "config", "nothing to run"),
    # ---- malformed JSON: line and column of the text as written ------------------
    ("missing comma", '{\n  "add_ingress": []\n  "add_egress": []\n}', "config",
     "line 3, column 3: expected ',' or '}'"),
    ("missing comma in array", '{"add_ingress": [\n  {} {}\n]}', "config",
     "line 2, column 6: expected ',' or ']'"),
    ("positions survive comments", '{ // one\n  "add_ingress": [] // two, "x": ]\n  "add_egress": []\n}',
     "config", "line 3, column 3: expected ',' or '}'"),
    ("missing colon", '{"add_ingress" []}', "config", "line 1, column 16: expected ':'"),
    ("unquoted key", "{add_ingress: []}", "config", "line 1, column 2: expected a key in double quotes"),
    ("unterminated string", '{"add_ingress": [{"mapping": "abc}]}', "config", "line 1, column 30: string is not terminated"),
    ("single quotes", "{'add_ingress': []}", "config", "line 1, column 2"),
    ("lone comma in array", '{"add_ingress": [,]}', "config", "line 1, column 18: expected a JSON value"),
    ("double trailing comma", '{"add_ingress": [1,,]}', "config", "line 1, column 20: expected a JSON value"),
    ("block comment is not supported", '{/* no */"add_ingress": []}', "config",
     "line 1, column 2: unexpected '/': only // line comments are supported"),
    ("single slash", '{"add_ingress": [] / }', "config", "line 1, column 20: unexpected '/'"),
    ("trailing garbage", '{"add_ingress": []} x', "config", "line 1, column 21: unexpected text after the end"),
    ("two documents", '{"add_ingress": []}\n{}', "config", "line 2, column 1: unexpected text"),
    ("NaN", '{"add_ingress": [{"x": NaN}]}', "config", "line 1, column 24: NaN is not a JSON value"),
    ("huge integer", '{"add_ingress": [{"x": %s}]}' % ("9" * 5000), "config",
     "line 1, column 24: number with 5000 digits is too long"),
    ("float out of range", '{"add_ingress":\n [1.5e99999]}', "config", "line 2, column 3: number 1.5e99999 is out of range"),
    ("deep nesting", "[" * 100000 + "]" * 100000, "config", "nested too deeply"),
    ("Infinity", '{\n"a":\n  -Infinity}', "config", "line 3, column 3: -Infinity is not a JSON value"),
    # ---- duplicate keys, reported at the repeated key ------------------------------
    ("duplicate top-level key", '{"add_ingress": [], "add_ingress": []}', "add_ingress", "duplicate key"),
    ("duplicate endpoint key",
     '{"add_ingress": [{"mapping": %s, "no_ra": true, "no_ra": false}]}' % json.dumps(MAPPING),
     "add_ingress[0].no_ra", "duplicate key"),
    ("duplicate key inside a value that is itself repeated later",
     '{"add_ingress": [{"mapping": {"in": {"port": 1, "port": 2}}}], "add_ingress": []}',
     "add_ingress[0].mapping.in.port", "duplicate key"),
    # ---- unknown keys, with suggestions ---------------------------------------------
    ("unknown top-level key", '{"add_ingres": []}', "add_ingres", 'unknown key (did you mean "add_ingress"?)'),
    ("unknown endpoint key", one_ingress(verfy=VERIFY), f"{I0}.verfy", 'did you mean "verify"'),
    ("unknown deep key", one_ingress(mapping={"in": {"prot": 1}, "out": MAPPING["out"]}),
     f"{I0}.mapping.in.prot", 'did you mean "port"'),
    ("unknown key, wrong case", one_ingress(mapping={"IN": {"port": 1}, "out": MAPPING["out"]}),
     f"{I0}.mapping.IN", 'did you mean "in"'),
    ("unknown key, nothing close", '{"zzzz": 1}', "zzzz", "unknown key (expected one of: add_ingress"),
    ("upstream ohttp key", one_ingress(ohttp={}), f"{I0}.ohttp", "unknown key"),
    ("unknown key in verify", verify(as_header={}), f"{I0}.verify.as_header", "unknown key"),
    ("key with odd characters", '{"a.b\\nc": 1}', 'config["a.b\\nc"]', "unknown key"),
    ("capture_local_traffic on ingress netfilter",
     nf_ingress(capture_dst={"port": 80}, capture_local_traffic=True),
     f"{I0}.netfilter.capture_local_traffic", "only valid for an egress"),
    ("capture_cgroup on egress netfilter", nf_egress(capture_dst={"port": 80}, capture_cgroup="/a"),
     f"{E0}.netfilter.capture_cgroup", "only valid for an ingress"),
    # ---- wrong types ----------------------------------------------------------------
    ("add_ingress is an object", '{"add_ingress": {}}', "add_ingress", "expected array, got object"),
    ("endpoint is a string", '{"add_egress": ["mapping"]}', E0, "expected object, got string"),
    ("mode is an array", one_ingress(mapping=[]), f"{I0}.mapping", "expected object, got array"),
    ("mode is null", one_ingress(mapping={"in": None, "out": MAPPING["out"]}), f"{I0}.mapping.in", "expected object, got null"),
    ("host is a number", one_ingress(mapping={"in": {"port": 1}, "out": {"host": 127, "port": 2}}),
     f"{I0}.mapping.out.host", "expected string, got integer"),
    ("web_page_inject is a string", one_ingress(web_page_inject="yes", encap_in_http={}),
     f"{I0}.web_page_inject", "expected boolean, got string"),
    ("no_ra is a string", one_ingress(verify=None, no_ra="true"), f"{I0}.no_ra", "expected boolean, got string"),
    ("capture_local_traffic is 1", nf_egress(capture_dst={"port": 80}, capture_local_traffic=1),
     f"{E0}.netfilter.capture_local_traffic", "expected boolean, got integer"),
    ("policy_ids is a string", verify(policy_ids="default"), f"{I0}.verify.policy_ids", "expected array of strings, got string"),
    ("policy_ids item is a number", verify(policy_ids=["a", 1]), f"{I0}.verify.policy_ids[1]", "expected string, got integer"),
    ("policy_ids is empty", verify(policy_ids=[]), f"{I0}.verify.policy_ids", "must not be an empty array"),
    ("policy_ids item is empty", verify(policy_ids=[""]), f"{I0}.verify.policy_ids[0]", "must not be empty"),
    ("trusted_certs_paths is a string", verify(trusted_certs_paths="ca.pem"),
     f"{I0}.verify.trusted_certs_paths", "expected array of strings"),
    ("refresh_interval negative", attest(refresh_interval=-1), f"{E0}.attest.refresh_interval", "must be >= 0, got -1"),
    ("refresh_interval float", attest(refresh_interval=1.5), f"{E0}.attest.refresh_interval", "expected integer, got number"),
    ("refresh_interval string", attest(refresh_interval="600"), f"{E0}.attest.refresh_interval", "expected integer, got string"),
    ("capture_cgroup is a number", nf_ingress(capture_cgroup=5), f"{I0}.netfilter.capture_cgroup",
     "expected string or array of strings, got integer"),
    ("capture_cgroup item is empty", nf_ingress(capture_cgroup=["/a", ""]), f"{I0}.netfilter.capture_cgroup[1]", "must not be empty"),
    ("dst_filter is a string", proxy(dst_filter="*"), f"{I0}.http_proxy.dst_filter", "expected object or array of objects, got string"),
    ("path_rewrites is an object", one_ingress(encap_in_http={"path_rewrites": {}}),
     f"{I0}.encap_in_http.path_rewrites", "expected array, got object"),
    ("encap_in_http is true", one_ingress(encap_in_http=True), f"{I0}.encap_in_http", "expected object, got boolean"),
    ("decap regexes is a string", one_egress(decap_from_http={"allow_non_tng_traffic_regexes": "/a"}),
     f"{E0}.decap_from_http.allow_non_tng_traffic_regexes", "expected array, got string"),
    ("model is unknown", verify(model="cached"), f"{I0}.verify.model", 'must be one of "background_check", "passport"'),
    ("as_type is unknown", verify(as_type="soap"), f"{I0}.verify.as_type", 'must be one of "restful", "grpc", "builtin"'),
    ("attest as_type builtin", attest(model="passport", as_addr="http://a/", policy_ids=["d"], as_type="builtin"),
     f"{E0}.attest.as_type", 'must be one of "restful", "grpc"'),
    # ---- missing fields -----------------------------------------------------------------
    ("mapping without out", one_ingress(mapping={"in": {"port": 1}}), f"{I0}.mapping.out", "missing required field"),
    ("mapping without in", one_egress(mapping={"out": EGRESS_MAPPING["out"]}), f"{E0}.mapping.in", "missing required field"),
    ("out without host", one_ingress(mapping={"in": {"port": 1}, "out": {"port": 2}}), f"{I0}.mapping.out.host", "missing required field"),
    ("in without port", one_ingress(mapping={"in": {"host": "0.0.0.0"}, "out": MAPPING["out"]}),
     f"{I0}.mapping.in.port", "missing required field"),
    ("verify without as_addr", verify(as_addr=None), f"{I0}.verify.as_addr", "missing required field"),
    ("verify without policy_ids", verify(policy_ids=None), f"{I0}.verify.policy_ids", "missing required field"),
    ("attest without aa_addr", one_egress(attest={}), f"{E0}.attest.aa_addr", "missing required field"),
    ("passport attest without as_addr", attest(model="passport", policy_ids=["default"]), f"{E0}.attest.as_addr", "missing required field"),
    ("passport attest without policy_ids", attest(model="passport", as_addr="http://a/"), f"{E0}.attest.policy_ids", "missing required field"),
    ("passport verify without policy_ids", verify(model="passport", as_addr=None, policy_ids=None, trusted_certs_paths=["ca.pem"]),
     f"{I0}.verify.policy_ids", "missing required field"),
    ("http_proxy without proxy_listen", one_ingress(mapping=None, http_proxy={}), f"{I0}.http_proxy.proxy_listen", "missing required field"),
    ("egress netfilter without capture_dst", nf_egress(), f"{E0}.netfilter.capture_dst", "missing required field"),
    ("egress capture_dst without port", nf_egress(capture_dst={"host": "127.0.0.1"}), f"{E0}.netfilter.capture_dst.port", "missing required field"),
    ("path rewrite without substitution", one_ingress(encap_in_http={"path_rewrites": [{"match_regex": "a"}]}),
     f"{I0}.encap_in_http.path_rewrites[0].substitution", "missing required field"),
    ("control_interface without restful", doc(ingresses=[ingress()], control_interface={}), "control_interface.restful", "missing required field"),
    ("admin_bind without port", doc(ingresses=[ingress()], admin_bind={"host": "127.0.0.1"}), "admin_bind.port", "missing required field"),
    # ---- ports and marks ------------------------------------------------------------------
    ("port 0", mapping_in_port(0), f"{I0}.mapping.in.port", "must be 1..65535, got 0"),
    ("port 65536", mapping_in_port(65536), f"{I0}.mapping.in.port", "must be 1..65535, got 65536"),
    ("port negative", mapping_in_port(-80), f"{I0}.mapping.in.port", "must be 1..65535, got -80"),
    ("port as string", mapping_in_port("80"), f"{I0}.mapping.in.port", "expected integer, got string"),
    ("port true", mapping_in_port(True), f"{I0}.mapping.in.port", "expected integer, got boolean"),
    ("port float", mapping_in_port(80.0), f"{I0}.mapping.in.port", "expected integer, got number"),
    ("port null", mapping_in_port(None), f"{I0}.mapping.in.port", "expected integer, got null"),
    ("capture port 0", capture_port(0), f"{E0}.netfilter.capture_dst.port", "must be 1..65535"),
    ("capture port 65536", capture_port(65536), f"{E0}.netfilter.capture_dst.port", "must be 1..65535"),
    ("capture port string", capture_port("80"), f"{E0}.netfilter.capture_dst.port", "expected integer, got string"),
    ("capture port true", capture_port(True), f"{E0}.netfilter.capture_dst.port", "expected integer, got boolean"),
    ("dst_filter port 0", proxy(dst_filter={"port": 0}), f"{I0}.http_proxy.dst_filter.port", "must be 1..65535"),
    ("listen_port 0", nf_egress(capture_dst={"port": 80}, listen_port=0), f"{E0}.netfilter.listen_port", "must be 1..65535"),
    ("listen_port 70000", nf_ingress(capture_dst={"port": 80}, listen_port=70000), f"{I0}.netfilter.listen_port", "must be 1..65535"),
    ("so_mark 0", nf_egress(capture_dst={"port": 80}, so_mark=0), f"{E0}.netfilter.so_mark", "must be 1..4294967295, got 0"),
    ("so_mark 2**32", nf_egress(capture_dst={"port": 80}, so_mark=2**32), f"{E0}.netfilter.so_mark", "must be 1..4294967295"),
    ("so_mark string", nf_ingress(capture_dst={"port": 80}, so_mark="565"), f"{I0}.netfilter.so_mark", "expected integer, got string"),
    ("so_mark true", nf_ingress(capture_dst={"port": 80}, so_mark=True), f"{I0}.netfilter.so_mark", "expected integer, got boolean"),
    # ---- hosts, addresses, URLs, domains ------------------------------------------------------
    ("empty host", one_ingress(mapping={"in": {"host": "", "port": 1}, "out": MAPPING["out"]}),
     f"{I0}.mapping.in.host", "must not be empty"),
    ("host with a space", one_ingress(mapping={"in": {"port": 1}, "out": {"host": "127.0.0.1 ", "port": 2}}),
     f"{I0}.mapping.out.host", "must not contain spaces"),
    ("host with bad characters", one_ingress(mapping={"in": {"port": 1}, "out": {"host": "my_host!", "port": 2}}),
     f"{I0}.mapping.out.host", "not an IP address or host name"),
    ("host with a URL", one_ingress(mapping={"in": {"port": 1}, "out": {"host": "http://h", "port": 2}}),
     f"{I0}.mapping.out.host", "not an IP address or host name"),
    ("capture host is a name", nf_egress(capture_dst={"host": "localhost", "port": 80}),
     f"{E0}.netfilter.capture_dst.host", "expected an IPv4 address or CIDR"),
    ("capture host with host bits", nf_ingress(capture_dst=[{"port": 1}, {"host": "10.0.0.1/8"}]),
     f"{I0}.netfilter.capture_dst[1].host", 'host bits set (did you mean "10.0.0.0/8"?)'),
    ("capture host IPv6", nf_ingress(capture_dst={"host": "::1"}), f"{I0}.netfilter.capture_dst.host", "IPv6 is not supported"),
    ("capture entry empty", nf_ingress(capture_dst=[{"port": 80}, {}]), f"{I0}.netfilter.capture_dst[1]", "needs host, port or both"),
    ("aa_addr two slashes", attest(aa_addr="unix://tmp/aa.sock"), f"{E0}.attest.aa_addr", "unix:///absolute/path"),
    ("aa_addr bare path", attest(aa_addr="/tmp/aa.sock"), f"{E0}.attest.aa_addr", "expected unix:///absolute/path or an http(s):// URL"),
    ("aa_addr tcp", attest(aa_addr="tcp://127.0.0.1:50002"), f"{E0}.attest.aa_addr", "expected unix:///absolute/path"),
    ("as_addr without scheme", verify(as_addr="127.0.0.1:8080"), f"{I0}.verify.as_addr", "expected an http:// or https:// URL"),
    ("as_addr grpc scheme", verify(as_addr="grpc://127.0.0.1:5000", as_is_grpc=True), f"{I0}.verify.as_addr", "http:// or https://"),
    ("as_addr without host", verify(as_addr="http://:8080/"), f"{I0}.verify.as_addr", "URL has no host"),
    ("as_addr bad port", verify(as_addr="http://127.0.0.1:99999/"), f"{I0}.verify.as_addr", "URL has an invalid port"),
    ("domain with inner wildcard", proxy(dst_filter={"domain": "foo.*.com"}), f"{I0}.http_proxy.dst_filter.domain",
     "wildcard '*' is only allowed as the whole domain"),
    ("domain with two wildcards", proxy(dst_filters=[{"domain": "*"}, {"domain": "*.example.*"}]),
     f"{I0}.http_proxy.dst_filters[1].domain", "wildcard"),
    ("domain empty", proxy(dst_filter={"domain": ""}), f"{I0}.http_proxy.dst_filter.domain", "must not be empty"),
    ("domain with a space", proxy(dst_filter={"domain": "a b.com"}), f"{I0}.http_proxy.dst_filter.domain", "must not contain spaces"),
    ("domain with a slash", proxy(dst_filter={"domain": "a.com/x"}), f"{I0}.http_proxy.dst_filter.domain", "invalid character"),
    ("domain only wildcard and dot", proxy(dst_filter={"domain": "*."}), f"{I0}.http_proxy.dst_filter.domain", "no name besides the wildcard"),
    # ---- regular expressions ---------------------------------------------------------------------
    ("bad match_regex names the list index",
     one_ingress(encap_in_http={"path_rewrites": [{"match_regex": "^/ok$", "substitution": "/"},
                                                  {"match_regex": "^/api/(", "substitution": "/"}]}),
     f"{I0}.encap_in_http.path_rewrites[1].match_regex", "invalid regex: missing ), unterminated subpattern"),
    ("bad allow regex names the list index",
     one_egress(decap_from_http={"allow_non_tng_traffic_regexes": ["/a/.*", "*oops"]}),
     f"{E0}.decap_from_http.allow_non_tng_traffic_regexes[1]", "invalid regex: nothing to repeat"),
    ("substitution group beyond the regex",
     one_ingress(encap_in_http={"path_rewrites": [{"match_regex": "^/api/([^/]+)$", "substitution": "/x/\\2"}]}),
     f"{I0}.encap_in_http.path_rewrites[0].substitution", "references group \\2 but match_regex has only 1 group"),
    ("substitution two-digit group",
     one_ingress(encap_in_http={"path_rewrites": [{"match_regex": "(a)(b)", "substitution": "\\12"}]}),
     f"{I0}.encap_in_http.path_rewrites[0].substitution", "references group \\12 but match_regex has only 2 groups"),
    ("substitution group zero",
     one_ingress(encap_in_http={"path_rewrites": [{"match_regex": "(a)", "substitution": "\\0"}]}),
     f"{I0}.encap_in_http.path_rewrites[0].substitution", "group references start at \\1"),
    ("regex is not a string", one_ingress(encap_in_http={"path_rewrites": [{"match_regex": 1, "substitution": ""}]}),
     f"{I0}.encap_in_http.path_rewrites[0].match_regex", "expected string, got integer"),
    # ---- combinations ------------------------------------------------------------------------------
    ("no_ra with attest", one_ingress(no_ra=True, attest=ATTEST), I0, '"no_ra": true cannot be combined with attest and verify'),
    ("no_ra with verify on egress", one_egress(attest=None, no_ra=True, verify=VERIFY), E0,
     '"no_ra": true cannot be combined with verify'),
    ("none of attest, verify, no_ra", one_egress(attest=None), E0, "needs remote attestation settings"),
    ("no_ra false counts as absent", one_ingress(verify=None, no_ra=False), I0, "needs remote attestation settings"),
    ("no mode", one_ingress(mapping=None), I0, "missing mode: give one of mapping, http_proxy, netfilter"),
    ("no mode on egress", one_egress(mapping=None), E0, "missing mode: give one of mapping, netfilter"),
    ("two modes", one_ingress(netfilter={"capture_dst": {"port": 80}}), f"{I0}.netfilter",
     "exactly one mode, and this one already has mapping"),
    ("web_page_inject without encap", one_ingress(web_page_inject=True), f"{I0}.web_page_inject", "requires encap_in_http"),
    ("encap_in_http on egress", one_egress(encap_in_http={}), f"{E0}.encap_in_http", "only valid on add_ingress"),
    ("web_page_inject on egress", one_egress(web_page_inject=False), f"{E0}.web_page_inject", "only valid on add_ingress"),
    ("decap_from_http on ingress", one_ingress(decap_from_http={}), f"{I0}.decap_from_http", "only valid on add_egress"),
    ("http_proxy on egress", one_egress(mapping=None, http_proxy={"proxy_listen": {"port": 1}}), f"{E0}.http_proxy",
     "http_proxy is an ingress mode"),
    ("dst_filter and dst_filters", proxy(dst_filter={"domain": "*"}, dst_filters=[{"domain": "a.com"}]),
     f"{I0}.http_proxy.dst_filters", "cannot be combined with dst_filter"),
    ("dst_filters empty", proxy(dst_filters=[]), f"{I0}.http_proxy.dst_filters", "must not be an empty array"),
    ("admin_bind and control_interface",
     doc(ingresses=[ingress()], admin_bind={"port": 9901}, control_interface={"restful": {"port": 9902}}),
     "control_interface", "cannot be combined with admin_bind"),
    ("netfilter ingress captures nothing in particular", nf_ingress(listen_port=40000), f"{I0}.netfilter",
     "needs capture_dst or capture_cgroup"),
    ("netfilter ingress listens on a captured port", nf_ingress(capture_dst={"port": 80}, listen_port=80),
     f"{I0}.netfilter.listen_port", "capture its own traffic"),
    ("netfilter egress listens on the captured port", nf_egress(capture_dst={"port": 80}, listen_port=80),
     f"{E0}.netfilter.listen_port", "capture its own traffic"),
    ("grpc flag against restful type", verify(as_is_grpc=True, as_type="restful"), f"{I0}.verify.as_type",
     'contradicts "as_is_grpc": true'),
    ("grpc type against false flag", attest(model="passport", as_addr="http://a/", policy_ids=["d"], as_is_grpc=False, as_type="grpc"),
     f"{E0}.attest.as_type", 'contradicts "as_is_grpc": false'),
    ("grpc flag with builtin", verify(as_addr=None, as_is_grpc=True, as_type="builtin"), f"{I0}.verify.as_type",
     "contradicts"),
    ("attestation_policy without builtin", verify(attestation_policy={"type": "trust_all"}),
     f"{I0}.verify.attestation_policy", 'only used with "as_type": "builtin"'),
    ("builtin with as_addr", verify(as_type="builtin"), f"{I0}.verify.as_addr", "not used with"),
    ("passport verify with builtin", verify(model="passport", as_type="builtin", as_addr=None),
     f"{I0}.verify.as_type", "only available with the background_check model"),
    ("passport verify without trust anchors", verify(model="passport", as_addr=None), f"{I0}.verify",
     "passport model needs trusted_certs_paths"),
    ("background-check attest with passport fields", attest(as_addr="http://127.0.0.1:8080/"),
     f"{E0}.attest.as_addr", 'only used by an attester with "model": "passport"'),
    ("background-check attest with as_is_grpc", attest(as_is_grpc=True), f"{E0}.attest.as_is_grpc", "passport"),
    # ---- listeners that collide --------------------------------------------------------------------
    ("same mapping listener twice", doc(ingresses=[ingress(), ingress()]), "add_ingress[1].mapping.in",
     "listen address 0.0.0.0:10001 collides with add_ingress[0].mapping.in (0.0.0.0:10001)"),
    ("wildcard collides with a specific host",
     doc(ingresses=[ingress()], egresses=[egress(mapping={"in": {"host": "127.0.0.1", "port": 10001}, "out": MAPPING["out"]})]),
     "add_egress[0].mapping.in", "collides with add_ingress[0].mapping.in"),
    ("specific host collides with a later wildcard",
     '{"add_egress": [%s], "add_ingress": [%s]}' % (
         json.dumps(egress(mapping={"in": {"host": "127.0.0.1", "port": 10001}, "out": MAPPING["out"]})),
         json.dumps(ingress())),
     "add_ingress[0].mapping.in", "collides with add_egress[0].mapping.in (127.0.0.1:10001)"),
    ("proxy listener collides with the admin interface",
     doc(admin_bind={"port": 41000}, ingresses=[ingress(mapping=None, http_proxy={"proxy_listen": {"port": 41000}})]),
     "add_ingress[0].http_proxy.proxy_listen", "collides with admin_bind (127.0.0.1:41000)"),
    ("control interface collides with a listener",
     '{"add_ingress": [%s], "control_interface": {"restful": {"port": 10001}}}' % json.dumps(ingress()),
     "control_interface.restful", "127.0.0.1:10001 collides with add_ingress[0].mapping.in (0.0.0.0:10001)"),
    ("listener collides with an earlier control interface",
     doc(ingresses=[ingress()], control_interface={"restful": {"host": "0.0.0.0", "port": 10001}}),
     "add_ingress[0].mapping.in", "collides with control_interface.restful (0.0.0.0:10001)"),
    ("explicit listen_port collides with a mapping",
     doc(ingresses=[ingress()], egresses=[egress(mapping=None, netfilter={"capture_dst": {"port": 80}, "listen_port": 10001})]),
     "add_egress[0].netfilter.listen_port", "collides with add_ingress[0].mapping.in"),
    # ---- first error in document order ------------------------------------------------------------
    ("egress written first is reported first",
     '{"add_egress": [{"mapping": {}}], "add_ingress": [{"mapping": {"in": {"port": 0}}}]}',
     "add_egress[0].mapping.in", "missing required field"),
    ("earlier member wins inside an endpoint",
     '{"add_ingress": [{"verify": {"as_addr": 5}, "mapping": {"in": {"port": 0}}}]}',
     "add_ingress[0].verify.as_addr", "expected string, got integer"),
    ("member errors come before missing fields",
     '{"add_ingress": [{"mapping": {"out": {"host": "h", "port": "x"}}}]}',
     "add_ingress[0].mapping.out.port", "expected integer"),
    ("syntax errors come before everything else",
     '{"add_ingress": [{"mapping": 1}], "add_egress": [}', "config", "line 1, column 50"),
    ("duplicate keys come before value errors",
     '{"add_ingress": [{"mapping": 1}], "add_egress": [{"no_ra": true, "no_ra": true}]}',
     "add_egress[0].no_ra", "duplicate key"),
]


@pytest.mark.parametrize(
    "text, path, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejected(text: str, path: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    err = caught.value
    assert err.path == path
    assert phrase in err.problem
    assert str(err) == f"{err.path}: {err.problem}"
    assert len(str(err).splitlines()) == 1
    assert isinstance(err, ValueError)
    # same document, same error
    with pytest.raises(ConfigError) as again:
        load_config(text)
    assert str(again.value) == str(err)


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_values_echoed_in_problems_stay_on_one_line():
    text = one_ingress(mapping={"in": {"port": 1}, "out": {"host": "a\nb", "port": 2}})
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert caught.value.path == f"{I0}.mapping.out.host"
    assert "\n" not in str(caught.value)
    assert '"a\\nb"' in caught.value.problem


# ---- files ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as caught:
        load_config_file(missing)
    assert caught.value.path == "config"
    assert caught.value.problem == f"cannot read {missing}: No such file or directory"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config_file(str(tmp_path))
    assert caught.value.path == "config"
    assert caught.value.problem.startswith(f"cannot read {tmp_path}:")


def test_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"add_ingress": [], "x": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config_file(bad)
    assert caught.value.path == "config"
    assert "not UTF-8" in caught.value.problem and "offset 29" in caught.value.problem


def test_syntax_error_in_a_file_has_line_and_column(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{\n  // comment\n  "add_ingress": [\n    {"mapping" {}}\n  ]\n}\n')
    with pytest.raises(ConfigError) as caught:
        load_config_file(f)
    assert str(caught.value) == "config: line 4, column 16: expected ':' after the key"


def test_load_config_rejects_non_text():
    with pytest.raises(TypeError):
        load_config(None)  # type: ignore[arg-type]
