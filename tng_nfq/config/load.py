"""Configuration document -> validated `Config`.

Reading order is document order: the members of every object are checked in
the order they were written, and the checks that need a whole object (missing
fields, combinations) run when its closing brace is reached. So the error
reported is always the first one a reader of the text would meet, and the
same document always gives the same error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from . import jsonc
from . import values as v
from .errors import ROOT, ConfigError, child, item
from .model import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_SO_MARK,
    Address,
    AttestConfig,
    CaptureDst,
    Config,
    DecapFromHttp,
    DstFilter,
    Egress,
    EncapInHttp,
    HttpProxyIngress,
    Ingress,
    MappingEgress,
    MappingIngress,
    NetfilterEgress,
    NetfilterIngress,
    PathRewrite,
    RaConfig,
    VerifyConfig,
)

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
MODELS = ("background_check", "passport")

INGRESS_MODES = ("mapping", "http_proxy", "netfilter")
EGRESS_MODES = ("mapping", "netfilter")
RA_KEYS = ("attest", "verify", "no_ra")
INGRESS_KEYS = (*INGRESS_MODES, *RA_KEYS, "encap_in_http", "web_page_inject")
EGRESS_KEYS = (*EGRESS_MODES, *RA_KEYS, "decap_from_http")
TOP_KEYS = ("add_ingress", "add_egress", "admin_bind", "control_interface")

INGRESS_MISPLACED = {
    "decap_from_http": "only valid on add_egress entries (an ingress uses encap_in_http)",
}
EGRESS_MISPLACED = {
    "encap_in_http": "only valid on add_ingress entries (an egress uses decap_from_http)",
    "web_page_inject": "only valid on add_ingress entries",
    "http_proxy": "http_proxy is an ingress mode; egress modes are mapping and netfilter",
}


def load_config(text: str | bytes) -> Config:
    """Parse and validate a configuration document; raise ConfigError if it is not valid."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), "document")
    if not isinstance(text, str):
        raise TypeError(f"load_config expects str, got {type(text).__name__}")
    try:
        tree = jsonc.parse(text)
        _reject_duplicate_keys(tree, ROOT)
        return _Document().read(tree)
    except RecursionError:
        raise ConfigError(ROOT, "document is nested too deeply") from None


def load_config_file(path: str | os.PathLike[str]) -> Config:
    """Read a configuration file (UTF-8, optional BOM) and load it."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(ROOT, f"cannot read {name}: {e.strerror or e}") from None
    return load_config(_decode(data, name))


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(ROOT, f"{what} is not UTF-8 text (bad byte at offset {e.start})") from None


def _reject_duplicate_keys(value: Any, path: str) -> None:
    if isinstance(value, jsonc.JsonObject):
        seen: set[str] = set()
        for key, member in value.pairs:
            key_path = child(path, key)
            if key in seen:
                raise ConfigError(key_path, "duplicate key (a key may appear only once per object)")
            seen.add(key)
            _reject_duplicate_keys(member, key_path)
    elif isinstance(value, list):
        for i, member in enumerate(value):
            _reject_duplicate_keys(member, item(path, i))


def _required(found: dict[str, Any], key: str, path: str) -> Any:
    if key not in found:
        raise ConfigError(child(path, key), v.MISSING)
    return found[key]


# ---- the document and its listeners ---------------------------------------


@dataclass
class _Document:
    ingress: list[Ingress] = field(default_factory=list)
    egress: list[Egress] = field(default_factory=list)
    admin: Address | None = None
    admin_key: str | None = None
    # (path, address) of every socket the instance will listen on, in document order
    listeners: list[tuple[str, Address]] = field(default_factory=list)

    def read(self, tree: Any) -> Config:
        if not isinstance(tree, dict):
            raise ConfigError(
                ROOT, f"top level must be a JSON object, got {v.json_type(tree)}"
            )
        for key, value, path in v.members(tree, ROOT, TOP_KEYS):
            if key == "add_ingress":
                for i, (entry, entry_path) in enumerate(_array(value, path)):
                    ingress = _ingress(entry, entry_path, i)
                    self._listen(_ingress_listeners(ingress))
                    self.ingress.append(ingress)
            elif key == "add_egress":
                for i, (entry, entry_path) in enumerate(_array(value, path)):
                    egress = _egress(entry, entry_path, i)
                    self._listen(_egress_listeners(egress))
                    self.egress.append(egress)
            else:
                if self.admin_key is not None:
                    raise ConfigError(
                        path,
                        f"cannot be combined with {self.admin_key}; both configure the admin "
                        "interface, give only one",
                    )
                self.admin_key = key
                if key == "admin_bind":
                    self.admin = _address(value, path, default_host="127.0.0.1")
                    self._listen([(path, self.admin)])
                else:
                    restful_path = child(path, "restful")
                    found = {
                        k: _address(val, p, default_host="127.0.0.1")
                        for k, val, p in v.members(value, path, ("restful",))
                    }
                    self.admin = _required(found, "restful", path)
                    self._listen([(restful_path, self.admin)])
        if not self.ingress and not self.egress:
            raise ConfigError(
                ROOT, "nothing to run: add_ingress and add_egress are both missing or empty"
            )
        return Config(ingress=tuple(self.ingress), egress=tuple(self.egress), admin=self.admin)

    def _listen(self, new: list[tuple[str, Address]]) -> None:
        for path, address in new:
            for earlier_path, earlier in self.listeners:
                if _collide(address, earlier):
                    raise ConfigError(
                        path,
                        f"listen address {address} collides with {earlier_path} ({earlier})",
                    )
            self.listeners.append((path, address))


def _collide(a: Address, b: Address) -> bool:
    return a.port == b.port and (
        a.host == b.host or a.host in WILDCARD_HOSTS or b.host in WILDCARD_HOSTS
    )


def _array(value: Any, path: str) -> list[tuple[Any, str]]:
    if not isinstance(value, list):
        raise v.wrong_type(path, "array", value)
    return [(entry, item(path, i)) for i, entry in enumerate(value)]


def _ingress_listeners(ingress: Ingress) -> list[tuple[str, Address]]:
    mode, path = ingress.mode, child(ingress.path, ingress.mode.kind)
    if isinstance(mode, MappingIngress):
        return [(child(path, "in"), mode.listen)]
    if isinstance(mode, HttpProxyIngress):
        return [(child(path, "proxy_listen"), mode.proxy_listen)]
    if mode.listen_port is not None:
        return [(child(path, "listen_port"), Address("0.0.0.0", mode.listen_port))]
    return []


def _egress_listeners(egress: Egress) -> list[tuple[str, Address]]:
    mode, path = egress.mode, child(egress.path, egress.mode.kind)
    if isinstance(mode, MappingEgress):
        return [(child(path, "in"), mode.listen)]
    if mode.listen_port is not None:
        return [(child(path, "listen_port"), Address("0.0.0.0", mode.listen_port))]
    return []


# ---- endpoints ---------------------------------------------------------------


def _ingress(value: Any, path: str, index: int) -> Ingress:
    mode = None
    mode_key: str | None = None
    ra = _RaParts(path)
    encap: EncapInHttp | None = None
    inject = False
    for key, member, member_path in v.members(value, path, INGRESS_KEYS, INGRESS_MISPLACED):
        if key in INGRESS_MODES:
            _one_mode(mode_key, member_path)
            mode_key = key
            mode = _INGRESS_MODE_READERS[key](member, member_path)
        elif key in RA_KEYS:
            ra.read(key, member, member_path)
        elif key == "encap_in_http":
            encap = _encap_in_http(member, member_path)
        else:  # web_page_inject
            inject = v.boolean(member, member_path)
    if mode is None:
        raise ConfigError(path, "missing mode: give one of " + ", ".join(INGRESS_MODES))
    ra_config = ra.finish()
    if inject and encap is None:
        raise ConfigError(
            child(path, "web_page_inject"), "requires encap_in_http on the same ingress"
        )
    return Ingress(
        index=index, mode=mode, ra=ra_config, encap_in_http=encap, web_page_inject=inject
    )


def _egress(value: Any, path: str, index: int) -> Egress:
    mode = None
    mode_key: str | None = None
    ra = _RaParts(path)
    decap: DecapFromHttp | None = None
    for key, member, member_path in v.members(value, path, EGRESS_KEYS, EGRESS_MISPLACED):
        if key in EGRESS_MODES:
            _one_mode(mode_key, member_path)
            mode_key = key
            mode = _EGRESS_MODE_READERS[key](member, member_path)
        elif key in RA_KEYS:
            ra.read(key, member, member_path)
        else:  # decap_from_http
            decap = _decap_from_http(member, member_path)
    if mode is None:
        raise ConfigError(path, "missing mode: give one of " + ", ".join(EGRESS_MODES))
    return Egress(index=index, mode=mode, ra=ra.finish(), decap_from_http=decap)


def _one_mode(previous: str | None, path: str) -> None:
    if previous is not None:
        raise ConfigError(
            path, f"an endpoint has exactly one mode, and this one already has {previous}"
        )


# ---- modes -------------------------------------------------------------------


def _address(value: Any, path: str, default_host: str | None = None) -> Address:
    found: dict[str, Any] = {}
    for key, member, member_path in v.members(value, path, ("host", "port")):
        found[key] = v.host(member, member_path) if key == "host" else v.port(member, member_path)
    if default_host is not None:
        found.setdefault("host", default_host)
    host = _required(found, "host", path)
    return Address(host=host, port=_required(found, "port", path))


def _mapping(value: Any, path: str) -> tuple[Address, Address]:
    found: dict[str, Address] = {}
    for key, member, member_path in v.members(value, path, ("in", "out")):
        if key == "in":
            found[key] = _address(member, member_path, default_host="0.0.0.0")
        else:
            found[key] = _address(member, member_path)
    return _required(found, "in", path), _required(found, "out", path)


def _mapping_ingress(value: Any, path: str) -> MappingIngress:
    listen, upstream = _mapping(value, path)
    return MappingIngress(listen=listen, upstream=upstream)


def _mapping_egress(value: Any, path: str) -> MappingEgress:
    listen, upstream = _mapping(value, path)
    return MappingEgress(listen=listen, upstream=upstream)


def _http_proxy(value: Any, path: str) -> HttpProxyIngress:
    listen: Address | None = None
    filters: tuple[DstFilter, ...] | None = None
    filters_key: str | None = None
    for key, member, member_path in v.members(
        value, path, ("proxy_listen", "dst_filter", "dst_filters")
    ):
        if key == "proxy_listen":
            listen = _address(member, member_path, default_host="0.0.0.0")
            continue
        if filters_key is not None:
            raise ConfigError(
                member_path, f"cannot be combined with {filters_key}; give only one of them"
            )
        filters_key = key
        entries = v.one_or_many(member, member_path)
        if not entries:
            raise ConfigError(
                member_path, "must not be an empty array (omit it to match every destination)"
            )
        filters = tuple(_dst_filter(entry, entry_path) for entry, entry_path in entries)
    if listen is None:
        raise ConfigError(child(path, "proxy_listen"), v.MISSING)
    if filters is None:
        return HttpProxyIngress(proxy_listen=listen)
    return HttpProxyIngress(proxy_listen=listen, dst_filters=filters)


def _dst_filter(value: Any, path: str) -> DstFilter:
    found: dict[str, Any] = {}
    for key, member, member_path in v.members(value, path, ("domain", "port")):
        if key == "domain":
            found[key] = v.domain(member, member_path)
        else:
            found[key] = v.port(member, member_path)
    return DstFilter(domain=found.get("domain", "*"), port=found.get("port"))


def _capture_dst(value: Any, path: str, *, port_required: bool) -> CaptureDst:
    found: dict[str, Any] = {}
    for key, member, member_path in v.members(value, path, ("host", "port")):
        if key == "host":
            found[key] = v.ipv4_or_cidr(member, member_path)
        else:
            found[key] = v.port(member, member_path)
    if port_required:
        _required(found, "port", path)
    elif not found:
        raise ConfigError(path, "needs host, port or both (an empty entry would capture everything)")
    return CaptureDst(host=found.get("host"), port=found.get("port"))


def _netfilter_ingress(value: Any, path: str) -> NetfilterIngress:
    found: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, member, member_path in v.members(
        value,
        path,
        ("capture_dst", "capture_cgroup", "nocapture_cgroup", "listen_port", "so_mark"),
        {"capture_local_traffic": "only valid for an egress in netfilter mode"},
    ):
        paths[key] = member_path
        if key == "capture_dst":
            found[key] = tuple(
                _capture_dst(entry, entry_path, port_required=False)
                for entry, entry_path in v.one_or_many(member, member_path)
            )
        elif key in ("capture_cgroup", "nocapture_cgroup"):
            found[key] = v.string_or_list(member, member_path)
            for i, name in enumerate(found[key]):
                _cgroup(name, member_path if isinstance(member, str) else item(member_path, i))
        elif key == "listen_port":
            found[key] = v.port(member, member_path)
        else:
            found[key] = v.so_mark(member, member_path)
    capture_dst = found.get("capture_dst", ())
    capture_cgroup = found.get("capture_cgroup", ())
    if not capture_dst and not capture_cgroup:
        raise ConfigError(
            path,
            "needs capture_dst or capture_cgroup (without either, all TCP traffic of the "
            "host would be captured)",
        )
    listen_port = found.get("listen_port")
    for entry in capture_dst:
        if listen_port is not None and entry.port == listen_port:
            raise ConfigError(
                paths["listen_port"], f"equals a capture_dst port ({listen_port}): the "
                "listener would capture its own traffic",
            )
    return NetfilterIngress(
        capture_dst=capture_dst,
        capture_cgroup=capture_cgroup,
        nocapture_cgroup=found.get("nocapture_cgroup", ()),
        listen_port=listen_port,
        so_mark=found.get("so_mark", DEFAULT_SO_MARK),
    )


def _cgroup(name: str, path: str) -> None:
    if any(not c.isprintable() for c in name) or name != name.strip():
        raise ConfigError(path, f"not a usable cgroup path: {v.quoted(name)}")


def _netfilter_egress(value: Any, path: str) -> NetfilterEgress:
    found: dict[str, Any] = {}
    paths: dict[str, str] = {}
    misplaced = {
        key: "only valid for an ingress in netfilter mode"
        for key in ("capture_cgroup", "nocapture_cgroup")
    }
    for key, member, member_path in v.members(
        value, path, ("capture_dst", "capture_local_traffic", "listen_port", "so_mark"), misplaced
    ):
        paths[key] = member_path
        if key == "capture_dst":
            found[key] = _capture_dst(member, member_path, port_required=True)
        elif key == "capture_local_traffic":
            found[key] = v.boolean(member, member_path)
        elif key == "listen_port":
            found[key] = v.port(member, member_path)
        else:
            found[key] = v.so_mark(member, member_path)
    capture_dst: CaptureDst = _required(found, "capture_dst", path)
    listen_port = found.get("listen_port")
    if listen_port is not None and listen_port == capture_dst.port:
        raise ConfigError(
            paths["listen_port"], f"equals capture_dst.port ({listen_port}): the listener "
            "would capture its own traffic",
        )
    return NetfilterEgress(
        capture_dst=capture_dst,
        capture_local_traffic=found.get("capture_local_traffic", False),
        listen_port=listen_port,
        so_mark=found.get("so_mark", DEFAULT_SO_MARK),
    )


_INGRESS_MODE_READERS = {
    "mapping": _mapping_ingress,
    "http_proxy": _http_proxy,
    "netfilter": _netfilter_ingress,
}
_EGRESS_MODE_READERS = {
    "mapping": _mapping_egress,
    "netfilter": _netfilter_egress,
}


# ---- HTTP layer --------------------------------------------------------------


def _encap_in_http(value: Any, path: str) -> EncapInHttp:
    rewrites: tuple[PathRewrite, ...] = ()
    for _key, member, member_path in v.members(value, path, ("path_rewrites",)):
        rewrites = tuple(
            _path_rewrite(entry, entry_path) for entry, entry_path in _array(member, member_path)
        )
    return EncapInHttp(path_rewrites=rewrites)


def _path_rewrite(value: Any, path: str) -> PathRewrite:
    found: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, member, member_path in v.members(value, path, ("match_regex", "substitution")):
        paths[key] = member_path
        found[key] = (
            v.regex(member, member_path)
            if key == "match_regex"
            else v.string(member, member_path, allow_empty=True)
        )
    pattern = _required(found, "match_regex", path)
    substitution = _required(found, "substitution", path)
    v.substitution(substitution, paths["substitution"], pattern.groups)
    return PathRewrite(match_regex=pattern.pattern, substitution=substitution)


def _decap_from_http(value: Any, path: str) -> DecapFromHttp:
    allowed: tuple[str, ...] = ()
    for _key, member, member_path in v.members(
        value, path, ("allow_non_tng_traffic_regexes",)
    ):
        allowed = tuple(
            v.regex(entry, entry_path).pattern
            for entry, entry_path in _array(member, member_path)
        )
    return DecapFromHttp(allow_non_tng_traffic_regexes=allowed)


# ---- remote attestation ------------------------------------------------------


class _RaParts:
    """Collects attest / verify / no_ra of one endpoint and checks how they combine."""

    def __init__(self, endpoint_path: str) -> None:
        self.endpoint_path = endpoint_path
        self.attest: AttestConfig | None = None
        self.verify: VerifyConfig | None = None
        self.no_ra = False

    def read(self, key: str, value: Any, path: str) -> None:
        if key == "attest":
            self.attest = _attest(value, path)
        elif key == "verify":
            self.verify = _verify(value, path)
        else:
            self.no_ra = v.boolean(value, path)

    def finish(self) -> RaConfig:
        if self.no_ra:
            given = [k for k, got in (("attest", self.attest), ("verify", self.verify)) if got]
            if given:
                raise ConfigError(
                    self.endpoint_path,
                    f'"no_ra": true cannot be combined with {" and ".join(given)}',
                )
            return RaConfig(no_ra=True)
        if self.attest is None and self.verify is None:
            raise ConfigError(
                self.endpoint_path,
                'needs remote attestation settings: attest, verify (or both), or "no_ra": true',
            )
        return RaConfig(attest=self.attest, verify=self.verify)


_ATTEST_KEYS = (
    "aa_addr", "refresh_interval", "model", "as_addr", "policy_ids", "as_is_grpc", "as_type"
)
_PASSPORT_ATTEST_ONLY = ("as_addr", "policy_ids", "as_is_grpc", "as_type")
_VERIFY_KEYS = (
    "model", "as_addr", "as_is_grpc", "as_type", "policy_ids", "trusted_certs_paths",
    "attestation_policy",
)


def _policy_ids(value: Any, path: str) -> tuple[str, ...]:
    return v.string_list(value, path, allow_empty_list=False)


def _attest(value: Any, path: str) -> AttestConfig:
    found: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, member, member_path in v.members(value, path, _ATTEST_KEYS):
        paths[key] = member_path
        if key == "aa_addr":
            found[key] = v.aa_addr(member, member_path)
        elif key == "refresh_interval":
            found[key] = v.integer(member, member_path, low=0)
        elif key == "model":
            found[key] = v.choice(member, member_path, MODELS)
        elif key == "as_addr":
            found[key] = v.http_url(member, member_path)
        elif key == "policy_ids":
            found[key] = _policy_ids(member, member_path)
        elif key == "as_is_grpc":
            found[key] = v.boolean(member, member_path)
        else:
            found[key] = v.choice(member, member_path, ("restful", "grpc"))
    aa = _required(found, "aa_addr", path)
    model = found.get("model", "background_check")
    if model == "background_check":
        for key in _PASSPORT_ATTEST_ONLY:
            if key in found:
                raise ConfigError(paths[key], 'only used by an attester with "model": "passport"')
        return AttestConfig(
            aa_addr=aa, refresh_interval=found.get("refresh_interval", DEFAULT_REFRESH_INTERVAL)
        )
    as_addr = _required(found, "as_addr", path)
    policy_ids = _required(found, "policy_ids", path)
    grpc, _ = _grpc(found, paths)
    return AttestConfig(
        aa_addr=aa,
        refresh_interval=found.get("refresh_interval", DEFAULT_REFRESH_INTERVAL),
        model="passport",
        as_addr=as_addr,
        as_is_grpc=grpc,
        policy_ids=policy_ids,
    )


def _grpc(found: dict[str, Any], paths: dict[str, str]) -> tuple[bool, str]:
    """Reconcile `as_is_grpc` (manual) and `as_type` (upstream 2.x) -> (is_grpc, as_type)."""
    flag = found.get("as_is_grpc")
    as_type = found.get("as_type")
    if flag is True and as_type not in (None, "grpc"):
        raise ConfigError(paths["as_type"], f'"{as_type}" contradicts "as_is_grpc": true')
    if flag is False and as_type == "grpc":
        raise ConfigError(paths["as_type"], '"grpc" contradicts "as_is_grpc": false')
    if flag or as_type == "grpc":
        return True, "grpc"
    return False, as_type or "restful"


def _verify(value: Any, path: str) -> VerifyConfig:
    found: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, member, member_path in v.members(value, path, _VERIFY_KEYS):
        paths[key] = member_path
        if key == "model":
            found[key] = v.choice(member, member_path, MODELS)
        elif key == "as_addr":
            found[key] = v.http_url(member, member_path)
        elif key == "as_is_grpc":
            found[key] = v.boolean(member, member_path)
        elif key == "as_type":
            found[key] = v.choice(member, member_path, ("restful", "grpc", "builtin"))
        elif key == "policy_ids":
            found[key] = _policy_ids(member, member_path)
        elif key == "trusted_certs_paths":
            found[key] = v.string_list(member, member_path)
        else:
            found[key] = v.frozen_json(member)
    grpc, as_type = _grpc(found, paths)
    model = found.get("model", "background_check")
    builtin = as_type == "builtin"
    if "attestation_policy" in found and not builtin:
        raise ConfigError(paths["attestation_policy"], 'only used with "as_type": "builtin"')
    if model == "passport":
        if builtin:
            raise ConfigError(
                paths["as_type"], '"builtin" is only available with the background_check model'
            )
        _required(found, "policy_ids", path)
        if "as_addr" not in found and not found.get("trusted_certs_paths"):
            raise ConfigError(
                path,
                "the passport model needs trusted_certs_paths (or as_addr, to fetch the "
                "attestation service's certificate) to check the peer's token",
            )
    elif builtin:
        if "as_addr" in found:
            raise ConfigError(
                paths["as_addr"], 'not used with "as_type": "builtin" (the verifier is built in)'
            )
    else:
        _required(found, "as_addr", path)
        _required(found, "policy_ids", path)
    return VerifyConfig(
        model=model,
        as_addr=found.get("as_addr"),
        as_is_grpc=grpc,
        as_type=as_type,  # type: ignore[arg-type]
        policy_ids=found.get("policy_ids", ()),
        trusted_certs_paths=found.get("trusted_certs_paths", ()),
        attestation_policy=found.get("attestation_policy"),
    )
