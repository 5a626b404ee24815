"""Every configuration printed in the TNG manual loads, into the values the manual means.

The documents live in tests/data/manual/ exactly as printed (see its README).
Fragments are wrapped into the smallest document that can carry them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tng_nfq.config import (
    Address,
    AttestConfig,
    CaptureDst,
    ConfigError,
    DecapFromHttp,
    DstFilter,
    EncapInHttp,
    HttpProxyIngress,
    MappingEgress,
    MappingIngress,
    NetfilterEgress,
    NetfilterIngress,
    PathRewrite,
    RaConfig,
    VerifyConfig,
    load_config,
    load_config_file,
)

MANUAL = Path(__file__).resolve().parents[1] / "data" / "manual"

AA = "unix:///tmp/attestation.sock"
ATTEST = AttestConfig(aa_addr=AA)  # refresh_interval 600, background_check
VERIFY = VerifyConfig(as_addr="http://127.0.0.1:8080/", policy_ids=("default",))
PREDICT_REWRITE = PathRewrite(
    match_regex="^/api/predict/([^/]+)([/]?.*)$", substitution=r"/api/predict/\1"
)

# The fragments need a home: one ingress (or egress) in mapping mode.
MAPPING = '"mapping": {"in": {"port": 10001}, "out": {"host": "127.0.0.1", "port": 20001}}'

# Every file of tests/data/manual, each read by one of the tests below.
FILES = {
    "ref_ingress_mapping.jsonc",
    "ref_ingress_http_proxy.jsonc",
    "ref_egress_mapping.jsonc",
    "ref_egress_netfilter.jsonc",
    "ref_encap_in_http.json",
    "ref_decap_from_http_allow_regexes.json",
    "fragment_attest.jsonc",
    "fragment_verify.jsonc",
    "fragment_verify_as_is_grpc.jsonc",
    "fragment_no_ra.jsonc",
    "fragment_path_rewrites.jsonc",
    "fragment_decap_from_http.jsonc",
    "fragment_admin_bind.jsonc",
    "web_page_inject.json",
    *(
        f"example_{name}.json"
        for name in (
            "01_verifier_client_attester_server",
            "02_attester_client_verifier_server",
            "03_mutual_attestation",
            "04_egress_netfilter",
            "05_no_ra",
            "06_encap_in_http",
            "07_encap_egress_netfilter",
            "08_allow_non_tng_traffic",
            "09_http_proxy_ingress",
            "10_cachefs",
            "11_admin_bind",
        )
    ),
    "usecase2_client_netfilter_ingress.json",
    "usecase2_server_netfilter_egress.json",
}


def data(name: str) -> str:
    assert name in FILES
    return (MANUAL / name).read_text(encoding="utf-8")


def load(name: str):
    assert name in FILES
    return load_config_file(MANUAL / name)


def endpoint_doc(side: str, *members: str) -> str:
    """A document with one endpoint on `side` whose members are the given texts.

    The members are joined with ",\\n"; a fragment that ends in a comma (as
    some in the manual do) then leaves a trailing comma, which the language
    accepts.
    """
    return '{"%s": [{\n%s\n}]}' % (side, ",\n".join(members))


# ---- parameter reference (参数手册) -------------------------------------------


def test_reference_ingress_mapping_with_comments():
    text = data("ref_ingress_mapping.jsonc")
    assert "// 可选，默认为0.0.0.0" in text  # the manual's comment is kept verbatim
    cfg = load("ref_ingress_mapping.jsonc")
    assert cfg.egress == () and cfg.admin is None
    (ingress,) = cfg.ingress
    assert ingress.index == 0 and ingress.path == "add_ingress[0]"
    assert ingress.mode == MappingIngress(
        listen=Address("0.0.0.0", 10001), upstream=Address("127.0.0.1", 20001)
    )
    assert ingress.mode.kind == "mapping"
    assert ingress.ra == RaConfig(verify=VERIFY)
    assert ingress.ra.verifying and not ingress.ra.attested and not ingress.ra.no_ra
    assert ingress.ra.verify.model == "background_check"
    assert ingress.ra.verify.as_type == "restful" and ingress.ra.verify.as_is_grpc is False
    assert ingress.encap_in_http is None and ingress.web_page_inject is False


def test_reference_ingress_http_proxy_with_comments():
    cfg = load("ref_ingress_http_proxy.jsonc")
    (ingress,) = cfg.ingress
    assert ingress.mode == HttpProxyIngress(
        proxy_listen=Address("0.0.0.0", 41000),
        dst_filters=(DstFilter(domain="*.pai-eas.aliyuncs.com", port=80),),
    )
    assert ingress.mode.kind == "http_proxy"
    assert ingress.ra.verify == VERIFY


def test_reference_egress_mapping_with_comments():
    cfg = load("ref_egress_mapping.jsonc")
    assert cfg.ingress == ()
    (egress,) = cfg.egress
    assert egress.path == "add_egress[0]"
    assert egress.mode == MappingEgress(
        listen=Address("127.0.0.1", 20001), upstream=Address("127.0.0.1", 30001)
    )
    assert egress.ra == RaConfig(attest=ATTEST)
    assert egress.ra.attest.refresh_interval == 600
    assert egress.decap_from_http is None


def test_reference_egress_netfilter_with_comments():
    text = data("ref_egress_netfilter.jsonc")
    assert "// 可选，tng server监听的端口号" in text
    (egress,) = load("ref_egress_netfilter.jsonc").egress
    assert egress.mode == NetfilterEgress(
        capture_dst=CaptureDst(host="127.0.0.1", port=30001),
        capture_local_traffic=False,
        listen_port=40000,
        so_mark=565,
    )
    assert egress.mode.kind == "netfilter"
    assert egress.ra.attest == ATTEST


def test_fragment_attest():
    cfg = load_config(endpoint_doc("add_egress", MAPPING, data("fragment_attest.jsonc")))
    assert cfg.egress[0].ra == RaConfig(attest=AttestConfig(aa_addr=AA))
    assert cfg.egress[0].ra.attest.model == "background_check"
    assert cfg.egress[0].ra.attest.policy_ids == ()


def test_fragment_verify():
    cfg = load_config(endpoint_doc("add_ingress", MAPPING, data("fragment_verify.jsonc")))
    assert cfg.ingress[0].ra == RaConfig(verify=VERIFY)


def test_fragment_verify_as_is_grpc():
    text = endpoint_doc("add_ingress", MAPPING, data("fragment_verify_as_is_grpc.jsonc"))
    verify = load_config(text).ingress[0].ra.verify
    assert verify.as_addr == "http://127.0.0.1:5000/"
    assert verify.as_is_grpc is True
    assert verify.as_type == "grpc"
    assert verify.policy_ids == ("default",)


def test_fragment_no_ra_on_both_sides():
    fragment = data("fragment_no_ra.jsonc")
    for side in ("add_ingress", "add_egress"):
        cfg = load_config(endpoint_doc(side, MAPPING, fragment))
        (endpoint,) = cfg.ingress or cfg.egress
        assert endpoint.ra == RaConfig(no_ra=True)
        assert endpoint.ra.attest is None and endpoint.ra.verify is None


def test_reference_encap_in_http():
    (ingress,) = load("ref_encap_in_http.json").ingress
    assert ingress.encap_in_http == EncapInHttp(path_rewrites=(PREDICT_REWRITE,))
    assert ingress.mode.listen == Address("0.0.0.0", 10001)
    assert ingress.web_page_inject is False


def test_fragment_path_rewrites():
    encap = '"encap_in_http": {\n%s\n}' % data("fragment_path_rewrites.jsonc")
    cfg = load_config(endpoint_doc("add_ingress", MAPPING, '"no_ra": true', encap))
    assert cfg.ingress[0].encap_in_http.path_rewrites == (PREDICT_REWRITE,)
    # JSON "\\1" is the two characters backslash, one
    assert cfg.ingress[0].encap_in_http.path_rewrites[0].substitution.endswith("\\1")


def test_fragment_decap_from_http_with_its_trailing_comma():
    fragment = data("fragment_decap_from_http.jsonc")
    assert fragment.rstrip().endswith(",")
    cfg = load_config(endpoint_doc("add_egress", MAPPING, data("fragment_attest.jsonc"), fragment))
    assert cfg.egress[0].decap_from_http == DecapFromHttp(allow_non_tng_traffic_regexes=())


def test_reference_decap_from_http_allow_regexes():
    (egress,) = load("ref_decap_from_http_allow_regexes.json").egress
    assert egress.decap_from_http == DecapFromHttp(
        allow_non_tng_traffic_regexes=("/api/builtin/.*",)
    )
    assert egress.mode == MappingEgress(
        listen=Address("127.0.0.1", 20001), upstream=Address("127.0.0.1", 30001)
    )


def test_web_page_inject_complete_document():
    (ingress,) = load("web_page_inject.json").ingress
    assert ingress.web_page_inject is True
    assert ingress.encap_in_http == EncapInHttp(path_rewrites=(PREDICT_REWRITE,))


def test_fragment_admin_bind_with_its_trailing_comma():
    fragment = data("fragment_admin_bind.jsonc")
    text = "{\n%s\n%s}" % (fragment, '"add_ingress": [{%s, "no_ra": true}]' % MAPPING)
    cfg = load_config(text)
    assert cfg.admin == Address("0.0.0.0", 9901)


# ---- the "Example" section -----------------------------------------------------


def _mapping_pair(cfg, ingress_upstream_port=20001):
    (ingress,) = cfg.ingress
    assert ingress.mode == MappingIngress(
        listen=Address("0.0.0.0", 10001), upstream=Address("127.0.0.1", ingress_upstream_port)
    )
    return ingress


def test_example_01_verifier_client_attester_server():
    cfg = load("example_01_verifier_client_attester_server.json")
    ingress = _mapping_pair(cfg)
    (egress,) = cfg.egress
    assert egress.mode == MappingEgress(
        listen=Address("127.0.0.1", 20001), upstream=Address("127.0.0.1", 30001)
    )
    assert ingress.ra == RaConfig(verify=VERIFY)
    assert egress.ra == RaConfig(attest=ATTEST)


def test_example_02_attester_client_verifier_server():
    cfg = load("example_02_attester_client_verifier_server.json")
    ingress = _mapping_pair(cfg)
    assert ingress.ra == RaConfig(attest=ATTEST)
    assert cfg.egress[0].ra == RaConfig(verify=VERIFY)


def test_example_03_mutual_attestation():
    cfg = load("example_03_mutual_attestation.json")
    both = RaConfig(attest=ATTEST, verify=VERIFY)
    assert _mapping_pair(cfg).ra == both
    assert cfg.egress[0].ra == both
    assert both.attested and both.verifying


def test_example_04_egress_netfilter():
    cfg = load("example_04_egress_netfilter.json")
    ingress = _mapping_pair(cfg, ingress_upstream_port=30001)
    assert ingress.ra.verify == VERIFY
    (egress,) = cfg.egress
    assert egress.mode == NetfilterEgress(
        capture_dst=CaptureDst(host=None, port=30001), capture_local_traffic=True
    )
    assert egress.mode.listen_port is None  # chosen when planning
    assert egress.mode.so_mark == 565
    assert egress.ra.attest == ATTEST


def test_example_05_no_ra():
    cfg = load("example_05_no_ra.json")
    assert _mapping_pair(cfg).ra == RaConfig(no_ra=True)
    assert cfg.egress[0].ra == RaConfig(no_ra=True)
    assert cfg.egress[0].mode.listen == Address("127.0.0.1", 20001)


def test_example_06_encap_in_http():
    cfg = load("example_06_encap_in_http.json")
    ingress = _mapping_pair(cfg)
    assert ingress.encap_in_http == EncapInHttp(path_rewrites=(PREDICT_REWRITE,))
    (egress,) = cfg.egress
    assert egress.decap_from_http == DecapFromHttp()
    assert egress.mode.kind == "mapping"
    assert egress.ra.attest == ATTEST


def test_example_07_encap_egress_netfilter():
    cfg = load("example_07_encap_egress_netfilter.json")
    ingress = _mapping_pair(cfg, ingress_upstream_port=30001)
    assert ingress.encap_in_http.path_rewrites == (PREDICT_REWRITE,)
    (egress,) = cfg.egress
    assert egress.mode.kind == "netfilter"
    assert egress.mode.capture_dst == CaptureDst(port=30001)
    assert egress.mode.capture_local_traffic is True
    assert egress.decap_from_http == DecapFromHttp(allow_non_tng_traffic_regexes=())


def test_example_08_allow_non_tng_traffic():
    cfg = load("example_08_allow_non_tng_traffic.json")
    _mapping_pair(cfg, ingress_upstream_port=30001)
    (egress,) = cfg.egress
    assert egress.decap_from_http.allow_non_tng_traffic_regexes == ("/api/builtin/.*",)
    assert egress.mode == NetfilterEgress(capture_dst=CaptureDst(port=30001), capture_local_traffic=True)


def test_example_09_http_proxy_ingress():
    cfg = load("example_09_http_proxy_ingress.json")
    (ingress,) = cfg.ingress
    assert ingress.mode == HttpProxyIngress(
        proxy_listen=Address("0.0.0.0", 41000), dst_filters=(DstFilter(domain="*", port=30001),)
    )
    assert ingress.encap_in_http.path_rewrites == (PREDICT_REWRITE,)
    assert ingress.ra.verify == VERIFY
    (egress,) = cfg.egress
    assert egress.mode.capture_dst.port == 30001
    assert egress.decap_from_http == DecapFromHttp()


def test_example_10_cachefs():
    cfg = load("example_10_cachefs.json")
    (ingress,) = cfg.ingress
    assert ingress.mode.dst_filters == (DstFilter(domain="*", port=9991),)
    assert ingress.ra == RaConfig(attest=ATTEST, verify=VERIFY)
    assert ingress.encap_in_http is None
    (egress,) = cfg.egress
    assert egress.mode == NetfilterEgress(capture_dst=CaptureDst(port=9991), capture_local_traffic=True)
    assert egress.ra == RaConfig(attest=ATTEST, verify=VERIFY)


def test_example_11_admin_bind():
    cfg = load("example_11_admin_bind.json")
    assert cfg.admin == Address("0.0.0.0", 9901)
    assert cfg.egress == ()
    (ingress,) = cfg.ingress
    assert ingress.mode.proxy_listen == Address("0.0.0.0", 41000)
    assert ingress.mode.dst_filters == (DstFilter(domain="*", port=8080),)
    assert ingress.encap_in_http.path_rewrites == (PREDICT_REWRITE,)


# ---- use case 2 ------------------------------------------------------------------


def test_usecase2_client_placeholder_is_caught_then_filled_in():
    text = data("usecase2_client_netfilter_ingress.json")
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert caught.value.path == "add_ingress[0].verify.as_addr"
    assert "http://" in caught.value.problem

    cfg = load_config(text.replace("<attestation-service-url>", "http://127.0.0.1:8080/"))
    (ingress,) = cfg.ingress
    assert ingress.mode == NetfilterIngress(capture_dst=(CaptureDst(host=None, port=8080),))
    assert ingress.mode.capture_cgroup == () and ingress.mode.nocapture_cgroup == ()
    assert ingress.mode.so_mark == 565 and ingress.mode.listen_port is None
    assert ingress.ra == RaConfig(verify=VERIFY)


def test_usecase2_server():
    (egress,) = load("usecase2_server_netfilter_egress.json").egress
    assert egress.mode == NetfilterEgress(capture_dst=CaptureDst(port=8080), capture_local_traffic=True)
    assert egress.ra.attest == AttestConfig(
        aa_addr="unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
    )


def test_the_file_list_matches_the_directory():
    on_disk = {p.name for p in MANUAL.iterdir() if p.suffix in (".json", ".jsonc")}
    assert on_disk == FILES
    assert len(FILES) == 27


def test_only_jsonc_files_carry_comments():
    for name in FILES:
        text = (MANUAL / name).read_text(encoding="utf-8")
        has_comment = "//" in text.replace("://", "")
        if name.endswith(".json"):
            assert not has_comment, name
        elif name.startswith("ref_"):
            assert has_comment, name
