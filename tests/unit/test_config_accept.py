"""Accepted documents beyond the manual's examples: every optional form and default."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tng_nfq.config import (
    Address,
    AttestConfig,
    CaptureDst,
    Config,
    DecapFromHttp,
    DstFilter,
    EncapInHttp,
    NetfilterIngress,
    PathRewrite,
    RaConfig,
    VerifyConfig,
    load_config,
    load_config_file,
)
from tng_nfq.config.model import DEFAULT_SO_MARK

MAPPING = {"in": {"port": 10001}, "out": {"host": "127.0.0.1", "port": 20001}}
VERIFY = {"as_addr": "http://127.0.0.1:8080/", "policy_ids": ["default"]}
AA = "unix:///run/aa.sock"


def ingress_doc(**members: Any) -> str:
    entry = {"mapping": MAPPING, "verify": VERIFY, **members}
    return json.dumps({"add_ingress": [{k: v for k, v in entry.items() if v is not None}]})


def only_ingress(**members: Any):
    (ingress,) = load_config(ingress_doc(**members)).ingress
    return ingress


def proxy(**fields: Any):
    return only_ingress(mapping=None, http_proxy={"proxy_listen": {"port": 41000}, **fields}).mode


def verify(**fields: Any) -> VerifyConfig:
    return only_ingress(verify=fields).ra.verify


# ---- http_proxy filters --------------------------------------------------------------


def test_no_filter_matches_every_destination():
    mode = proxy()
    assert mode.dst_filters == (DstFilter(domain="*", port=None),)
    assert mode.proxy_listen == Address("0.0.0.0", 41000)


def test_filter_without_port_means_any_port():
    assert proxy(dst_filter={"domain": "*.example.com"}).dst_filters == (
        DstFilter(domain="*.example.com", port=None),
    )
    assert proxy(dst_filter={}).dst_filters == (DstFilter(domain="*", port=None),)


def test_filters_as_list_under_either_key():
    listed = [{"domain": "a.example.com", "port": 443}, {"port": 80}]
    expected = (DstFilter("a.example.com", 443), DstFilter("*", 80))
    assert proxy(dst_filters=listed).dst_filters == expected
    assert proxy(dst_filter=listed).dst_filters == expected
    assert proxy(dst_filters={"domain": "b.com"}).dst_filters == (DstFilter("b.com", None),)


@pytest.mark.parametrize(
    "domain",
    ["*", "*.example.com", "*-bar.example.com", "example.*", "foo-*", "example.com", "10.0.0.1", "EXAMPLE.com"],
)
def test_envoy_style_domains(domain):
    assert proxy(dst_filter={"domain": domain}).dst_filters[0].domain == domain


# ---- netfilter ingress --------------------------------------------------------------------


def test_netfilter_ingress_all_fields():
    mode = only_ingress(
        mapping=None,
        netfilter={
            "capture_dst": [{"host": "10.0.0.0/8", "port": 443}, {"host": "192.168.1.7"}, {"port": 8080}],
            "capture_cgroup": "/sys/fs/cgroup/app",
            "nocapture_cgroup": ["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"],
            "listen_port": 40001,
            "so_mark": 0x1000,
        },
    ).mode
    assert mode == NetfilterIngress(
        capture_dst=(CaptureDst("10.0.0.0/8", 443), CaptureDst("192.168.1.7", None), CaptureDst(None, 8080)),
        capture_cgroup=("/sys/fs/cgroup/app",),
        nocapture_cgroup=("/sys/fs/cgroup/a", "/sys/fs/cgroup/b"),
        listen_port=40001,
        so_mark=4096,
    )


def test_netfilter_ingress_cgroup_only_and_defaults():
    mode = only_ingress(mapping=None, netfilter={"capture_cgroup": ["/app"]}).mode
    assert mode.capture_dst == () and mode.capture_cgroup == ("/app",)
    assert mode.so_mark == DEFAULT_SO_MARK == 565 and mode.listen_port is None


def test_so_mark_upper_bound():
    mode = only_ingress(mapping=None, netfilter={"capture_dst": {"port": 1}, "so_mark": 2**32 - 1}).mode
    assert mode.so_mark == 4294967295


# ---- attestation variants -------------------------------------------------------------------


def test_as_type_grpc_sets_the_flag():
    v = verify(as_addr="http://127.0.0.1:5000/", as_type="grpc", policy_ids=["p"])
    assert (v.as_is_grpc, v.as_type) == (True, "grpc")
    v = verify(as_addr="http://127.0.0.1:5000/", as_type="grpc", as_is_grpc=True, policy_ids=["p"])
    assert (v.as_is_grpc, v.as_type) == (True, "grpc")
    v = verify(as_addr="https://as.example.com/", as_type="restful", as_is_grpc=False, policy_ids=["p"])
    assert (v.as_is_grpc, v.as_type) == (False, "restful")


def test_builtin_verifier_from_upstream():
    v = verify(as_type="builtin", attestation_policy={"type": "trust_all", "extra": [1, {"a": None}]})
    assert v.as_type == "builtin" and v.as_addr is None and v.as_is_grpc is False
    assert v.policy_ids == ()
    # kept verbatim but read-only: objects stay dicts, arrays become tuples
    assert v.attestation_policy == {"type": "trust_all", "extra": (1, {"a": None})}
    assert json.loads(json.dumps(v.attestation_policy)) == {"type": "trust_all", "extra": [1, {"a": None}]}
    with pytest.raises(TypeError):
        v.attestation_policy["type"] = "deny_all"  # type: ignore[index]
    hash(v)  # the whole model stays hashable


def test_builtin_verifier_with_policy_ids():
    assert verify(as_type="builtin", policy_ids=["default"]).policy_ids == ("default",)


def test_passport_pair_from_upstream():
    v = verify(model="passport", policy_ids=["default"], trusted_certs_paths=["ca.pem"])
    assert v == VerifyConfig(model="passport", policy_ids=("default",), trusted_certs_paths=("ca.pem",))
    v = verify(model="passport", policy_ids=["default"], as_addr="http://127.0.0.1:8080/")
    assert v.as_addr == "http://127.0.0.1:8080/" and v.trusted_certs_paths == ()

    attest = {"model": "passport", "aa_addr": AA, "as_addr": "http://127.0.0.1:5000/",
              "policy_ids": ["default"], "as_type": "grpc", "refresh_interval": 0}
    ra = only_ingress(verify=None, attest=attest).ra
    assert ra.attest == AttestConfig(
        aa_addr=AA, refresh_interval=0, model="passport", as_addr="http://127.0.0.1:5000/",
        as_is_grpc=True, policy_ids=("default",),
    )


def test_attest_over_rest_aa_and_custom_refresh():
    ra = only_ingress(verify=None, attest={"aa_addr": "http://127.0.0.1:8006", "refresh_interval": 30}).ra
    assert ra.attest == AttestConfig(aa_addr="http://127.0.0.1:8006", refresh_interval=30)


def test_explicit_background_check_and_trusted_certs():
    v = verify(model="background_check", trusted_certs_paths=["/etc/as-ca.pem"], **VERIFY)
    assert v.model == "background_check" and v.trusted_certs_paths == ("/etc/as-ca.pem",)


def test_no_ra_false_is_absent():
    ra = only_ingress(no_ra=False).ra
    assert ra == RaConfig(verify=VerifyConfig(as_addr="http://127.0.0.1:8080/", policy_ids=("default",)))


# ---- HTTP layer ----------------------------------------------------------------------------------


def test_empty_encap_and_decap():
    assert only_ingress(encap_in_http={}).encap_in_http == EncapInHttp(path_rewrites=())
    cfg = load_config(json.dumps({"add_egress": [{"mapping": MAPPING, "no_ra": True, "decap_from_http": {}}]}))
    assert cfg.egress[0].decap_from_http == DecapFromHttp(allow_non_tng_traffic_regexes=())


def test_substitutions_that_are_fine():
    rewrites = [
        {"match_regex": "^/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)$", "substitution": "/\\10/\\1"},
        {"match_regex": "^/x$", "substitution": "/lit\\\\2"},  # escaped backslash, then a 2
        {"match_regex": "^/y$", "substitution": ""},
        {"match_regex": "^/(?P<name>[^/]+)$", "substitution": "/n/\\1"},
    ]
    encap = only_ingress(encap_in_http={"path_rewrites": rewrites}).encap_in_http
    assert [r.substitution for r in encap.path_rewrites] == ["/\\10/\\1", "/lit\\\\2", "", "/n/\\1"]
    assert encap.path_rewrites[0] == PathRewrite("^/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)$", "/\\10/\\1")


def test_web_page_inject_false_without_encap():
    assert only_ingress(web_page_inject=False).web_page_inject is False


# ---- admin interface -------------------------------------------------------------------------------


def test_admin_bind_defaults_to_loopback():
    cfg = load_config(json.dumps({"admin_bind": {"port": 9901}, "add_ingress": [{"mapping": MAPPING, "no_ra": True}]}))
    assert cfg.admin == Address("127.0.0.1", 9901)


def test_control_interface_restful():
    cfg = load_config(json.dumps({
        "add_egress": [{"mapping": MAPPING, "no_ra": True}],
        "control_interface": {"restful": {"host": "0.0.0.0", "port": 50000}},
    }))
    assert cfg.admin == Address("0.0.0.0", 50000)
    cfg = load_config(json.dumps({
        "add_egress": [{"mapping": MAPPING, "no_ra": True}],
        "control_interface": {"restful": {"port": 50000}},
    }))
    assert cfg.admin == Address("127.0.0.1", 50000)


# ---- listeners --------------------------------------------------------------------------------------


def test_same_port_on_different_specific_hosts_is_fine():
    doc = {"add_ingress": [
        {"mapping": {"in": {"host": "127.0.0.1", "port": 7000}, "out": {"host": "h", "port": 1}}, "no_ra": True},
        {"mapping": {"in": {"host": "127.0.0.2", "port": 7000}, "out": {"host": "h", "port": 2}}, "no_ra": True},
        {"mapping": {"in": {"host": "127.0.0.1", "port": 7001}, "out": {"host": "h", "port": 3}}, "no_ra": True},
    ]}
    cfg = load_config(json.dumps(doc))
    assert [i.index for i in cfg.ingress] == [0, 1, 2]
    assert [i.path for i in cfg.ingress] == ["add_ingress[0]", "add_ingress[1]", "add_ingress[2]"]
    assert [str(i.mode.listen) for i in cfg.ingress] == ["127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.1:7001"]


def test_upstream_of_one_may_be_listener_of_another():
    # the manual's examples route an ingress into an egress of the same instance
    doc = {
        "add_ingress": [{"mapping": MAPPING, "no_ra": True}],
        "add_egress": [{"mapping": {"in": {"host": "127.0.0.1", "port": 20001},
                                    "out": {"host": "127.0.0.1", "port": 30001}}, "no_ra": True}],
    }
    cfg = load_config(json.dumps(doc))
    assert cfg.ingress[0].mode.upstream == cfg.egress[0].mode.listen


def test_hosts_accepted():
    for host in ("localhost", "example.com.", "my-svc.ns.svc.cluster.local", "::1", "fe80::1", "10.1.2.3"):
        cfg = load_config(ingress_doc(mapping={"in": {"port": 1}, "out": {"host": host, "port": 2}}))
        assert cfg.ingress[0].mode.upstream.host == host


# ---- syntax extensions and entry points -------------------------------------------------------------


def test_comments_trailing_commas_and_urls_in_one_document():
    text = """
    // leading comment, with "quotes" and a trailing comma,]
    {
      "add_ingress": [
        {
          "mapping": {"in": {"port": 10001,}, "out": {"host": "127.0.0.1", "port": 20001},},
          "verify": {
            "as_addr": "http://127.0.0.1:8080/", // the URL's // is not a comment
            "policy_ids": ["a//b", "c,]",],  // nor are these
          },
        }, // trailing comma after the last endpoint
      ],
    }
    // trailing comment"""
    verify_config = load_config(text).ingress[0].ra.verify
    assert verify_config.as_addr == "http://127.0.0.1:8080/"
    assert verify_config.policy_ids == ("a//b", "c,]")


def test_bytes_and_files_with_bom(tmp_path):
    text = ingress_doc()
    assert load_config(text.encode()) == load_config(text)
    f = tmp_path / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config_file(f) == load_config(text)
    assert load_config_file(str(f)) == load_config(text)


def test_model_is_frozen_and_hashable():
    cfg = load_config(ingress_doc(encap_in_http={"path_rewrites": [{"match_regex": "a", "substitution": "b"}]}))
    assert isinstance(cfg, Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.admin = Address("h", 1)  # type: ignore[misc]
    assert hash(cfg) == hash(load_config(ingress_doc(
        encap_in_http={"path_rewrites": [{"match_regex": "a", "substitution": "b"}]})))
    assert isinstance(cfg.ingress, tuple) and isinstance(cfg.ingress[0].ra.verify.policy_ids, tuple)
