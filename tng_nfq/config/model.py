"""The typed, validated form of a TNG configuration document.

Everything here is frozen: once `load` has accepted a document, later stages
(plan, apply, run) only read it. Field names follow the JSON keys of the TNG
manual where they are not Python keywords (`in` -> `listen`, `out` ->
`upstream`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

DEFAULT_SO_MARK = 565
DEFAULT_REFRESH_INTERVAL = 600
DEFAULT_AA_ADDR = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AttestConfig:
    """`attest`: this endpoint proves its TEE (background-check or passport model)."""

    aa_addr: str
    refresh_interval: int = DEFAULT_REFRESH_INTERVAL
    model: Literal["background_check", "passport"] = "background_check"
    # passport model only: where the attester fetches its token
    as_addr: str | None = None
    as_is_grpc: bool = False
    policy_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifyConfig:
    """`verify`: this endpoint checks the peer's TEE."""

    model: Literal["background_check", "passport"] = "background_check"
    as_addr: str | None = None  # required for background_check, except as_type builtin
    as_is_grpc: bool = False  # `as_is_grpc: true` or `as_type: "grpc"`
    as_type: Literal["restful", "grpc", "builtin"] = "restful"
    policy_ids: tuple[str, ...] = ()
    trusted_certs_paths: tuple[str, ...] = ()
    # upstream's builtin AS takes an inline policy; kept verbatim
    attestation_policy: object | None = None


@dataclass(frozen=True)
class RaConfig:
    attest: AttestConfig | None = None
    verify: VerifyConfig | None = None
    no_ra: bool = False

    @property
    def attested(self) -> bool:
        return self.attest is not None

    @property
    def verifying(self) -> bool:
        return self.verify is not None


@dataclass(frozen=True)
class PathRewrite:
    match_regex: str
    substitution: str


@dataclass(frozen=True)
class EncapInHttp:
    path_rewrites: tuple[PathRewrite, ...] = ()


@dataclass(frozen=True)
class DecapFromHttp:
    allow_non_tng_traffic_regexes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DstFilter:
    domain: str = "*"
    port: int | None = None  # None: any port


@dataclass(frozen=True)
class CaptureDst:
    host: str | None = None  # None: any local address (egress) / any address (ingress)
    port: int | None = None


# ---- ingress modes -------------------------------------------------------


@dataclass(frozen=True)
class MappingIngress:
    listen: Address  # JSON `in`
    upstream: Address  # JSON `out`
    kind: Literal["mapping"] = "mapping"


@dataclass(frozen=True)
class HttpProxyIngress:
    proxy_listen: Address
    dst_filters: tuple[DstFilter, ...] = (DstFilter(),)
    kind: Literal["http_proxy"] = "http_proxy"


@dataclass(frozen=True)
class NetfilterIngress:
    capture_dst: tuple[CaptureDst, ...] = ()
    capture_cgroup: tuple[str, ...] = ()
    nocapture_cgroup: tuple[str, ...] = ()
    listen_port: int | None = None
    so_mark: int = DEFAULT_SO_MARK
    kind: Literal["netfilter"] = "netfilter"


IngressMode = Union[MappingIngress, HttpProxyIngress, NetfilterIngress]


# ---- egress modes --------------------------------------------------------


@dataclass(frozen=True)
class MappingEgress:
    listen: Address
    upstream: Address
    kind: Literal["mapping"] = "mapping"


@dataclass(frozen=True)
class NetfilterEgress:
    capture_dst: CaptureDst
    capture_local_traffic: bool = False
    listen_port: int | None = None
    so_mark: int = DEFAULT_SO_MARK
    kind: Literal["netfilter"] = "netfilter"


EgressMode = Union[MappingEgress, NetfilterEgress]


# ---- endpoints and the whole document ------------------------------------


@dataclass(frozen=True)
class Ingress:
    index: int  # position in add_ingress, used in names and paths
    mode: IngressMode
    ra: RaConfig
    encap_in_http: EncapInHttp | None = None
    web_page_inject: bool = False

    @property
    def path(self) -> str:
        return f"add_ingress[{self.index}]"


@dataclass(frozen=True)
class Egress:
    index: int
    mode: EgressMode
    ra: RaConfig
    decap_from_http: DecapFromHttp | None = None

    @property
    def path(self) -> str:
        return f"add_egress[{self.index}]"


@dataclass(frozen=True)
class Config:
    ingress: tuple[Ingress, ...] = ()
    egress: tuple[Egress, ...] = ()
    # `admin_bind` (manual) or `control_interface.restful` (upstream 2.x)
    admin: Address | None = None
