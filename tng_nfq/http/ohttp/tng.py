"""What TNG 2.x puts around chunked OHTTP (docs/ohttp-wire.md), sans-io.

Every outer request is a POST whose `x-tng-ohttp-api` header names the API:

- `/tng/key-config`: JSON `{"attestation_request": ...}` in, JSON
  `{"hpke_key_config": {"expire_timestamp", "encoded_key_config_list"},
  "attestation_info": ...}` out; the key configuration list is the RFC 9458
  `application/ohttp-keys` form in standard base64;
- `/tng/tunnel`: body `message/ohttp-chunked-req` =
  u32 big-endian length || protobuf Metadata || chunked OHTTP request;
  answer `message/ohttp-chunked-res`.

Metadata (protobuf, tng.ohttp.metadata.Metadata):
  1 no_auth {}                       | 2 attested_public_key {1 attestation_result: string, 2 pk_s: bytes}
  3 key_config_hint {1 public_key: bytes}
"""

from __future__ import annotations

import base64
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

from tng_nfq.attestation import protobuf as pb
from tng_nfq.http.ohttp.chunked import ChunkedRequestDecoder
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyConfig, KeyPair, encode_key_config_list, parse_key_config_list

API_HEADER = "x-tng-ohttp-api"
KEY_CONFIG_API = "/tng/key-config"
TUNNEL_API = "/tng/tunnel"
CHALLENGE_API = "/tng/background-check/challenge"
VERIFY_API = "/tng/background-check/verify"

METADATA_MAX_LEN = 64 * 1024  # a token and a key: a few KiB in practice
KEY_CONFIG_LIFETIME = 300  # seconds a published key configuration is announced for
MAX_JSON_BODY = 1024 * 1024


# ---- metadata ------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    attestation_result: str | None = None  # None: no_auth
    pk_s: bytes = b""
    key_hint: bytes | None = None
    as_provider: str = ""  # which AS family issued the token; upstream 2.12 sends "coco"

    def encode(self) -> bytes:
        fields: list[tuple[int, Any]] = []
        if self.attestation_result is None:
            fields.append((1, b""))
        else:
            attested = [(1, self.attestation_result), (2, self.pk_s)]
            if self.as_provider:
                attested.append((3, self.as_provider))
            fields.append((2, pb.encode_message(attested)))
        if self.key_hint is not None:
            fields.append((3, pb.encode_message([(1, self.key_hint)])))
        return pb.encode_message(fields)

    @classmethod
    def decode(cls, data: bytes) -> "Metadata":
        try:
            fields = pb.decode_message(data)
            hint = pb.get_message(fields, 3)
            key_hint = pb.get_bytes(hint, 1) if hint is not None else None
            attested = pb.get_message(fields, 2)
            if attested is not None:
                return cls(pb.get_string(attested, 1), pb.get_bytes(attested, 2), key_hint,
                           pb.get_string(attested, 3))
            if pb.get_message(fields, 1) is None:
                raise OhttpError("metadata names no client authentication")
            return cls(None, b"", key_hint)
        except pb.ProtobufError as exc:
            raise OhttpError(f"malformed metadata: {exc}") from None


def tunnel_body_prefix(metadata: Metadata) -> bytes:
    encoded = metadata.encode()
    return struct.pack(">I", len(encoded)) + encoded


class TunnelBodyDecoder:
    """Gateway side of a `/tng/tunnel` body, fed in arbitrary slices: the
    metadata first (`metadata` once known), then the request plaintext."""

    def __init__(self, keys_for) -> None:
        # `keys_for(metadata)` -> (key pairs to try, HPKE auth-mode sender key
        # or None); called once the metadata is in, so the gateway can honour
        # the key hint and check the client's credential first.
        self._keys_for = keys_for
        self._buf = bytearray()
        self.metadata: Metadata | None = None
        self.decoder: ChunkedRequestDecoder | None = None

    def feed(self, data: bytes) -> bytes:
        if self.decoder is not None:
            return self.decoder.feed(data)
        self._buf += data
        if len(self._buf) < 4:
            return b""
        (length,) = struct.unpack(">I", self._buf[:4])
        if length > METADATA_MAX_LEN:
            raise OhttpError(f"metadata of {length} bytes is over the {METADATA_MAX_LEN} byte limit")
        if len(self._buf) < 4 + length:
            return b""
        self.metadata = Metadata.decode(bytes(self._buf[4:4 + length]))
        keys, sender = self._keys_for(self.metadata)
        self.decoder = ChunkedRequestDecoder(keys, sender_public_key=sender)
        rest = bytes(self._buf[4 + length:])
        self._buf.clear()
        return self.decoder.feed(rest)

    def finish(self) -> bytes:
        if self.decoder is None:
            raise OhttpError("tunnel body ended inside its metadata")
        return self.decoder.finish()


# ---- key configuration -------------------------------------------------------------


@dataclass(frozen=True)
class HpkeKeyConfig:
    expire_timestamp: int
    encoded_key_config_list: str  # standard base64 of the application/ohttp-keys list

    def as_json(self) -> dict:
        return {"expire_timestamp": self.expire_timestamp,
                "encoded_key_config_list": self.encoded_key_config_list}

    @classmethod
    def for_keys(cls, keys: list[KeyPair], lifetime: int = KEY_CONFIG_LIFETIME,
                 now: float | None = None) -> "HpkeKeyConfig":
        encoded = base64.b64encode(encode_key_config_list([k.config for k in keys])).decode()
        return cls(int(now if now is not None else time.time()) + lifetime, encoded)

    def configs(self) -> list[KeyConfig]:
        try:
            raw = base64.b64decode(self.encoded_key_config_list, validate=True)
        except ValueError:
            raise OhttpError("encoded_key_config_list is not base64") from None
        configs = parse_key_config_list(raw)
        if not configs:
            raise OhttpError("the server published no usable key configuration")
        return configs


def key_config_request(model: str | None, challenge_token: str | None = None) -> dict:
    """The JSON a client posts to /tng/key-config. `model` None: no server attestation asked."""
    if model is None:
        return {"attestation_request": None}
    if model == "passport":
        return {"attestation_request": {"model": "passport"}}
    return {"attestation_request": {"model": "background_check", "challenge_token": challenge_token}}


@dataclass(frozen=True)
class KeyConfigRequest:
    model: str | None  # None, "passport", "background_check"
    challenge_token: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> "KeyConfigRequest":
        obj = _json_object(body, "key-config request")
        req = obj.get("attestation_request")
        if req is None:
            return cls(None)
        if not isinstance(req, dict):
            raise OhttpError("attestation_request must be an object or null")
        model = req.get("model")
        if model == "passport":
            return cls("passport")
        if model == "background_check":
            token = req.get("challenge_token")
            if not isinstance(token, str) or not token:
                raise OhttpError("background_check attestation_request without challenge_token")
            return cls("background_check", token)
        raise OhttpError(f"unknown attestation model {model!r}")


@dataclass(frozen=True)
class KeyConfigResponse:
    hpke_key_config: HpkeKeyConfig
    attestation_result: str | None = None  # passport
    evidence: Any = None  # background check: CoCo evidence JSON

    def as_json(self) -> dict:
        info: dict | None = None
        if self.attestation_result is not None:
            info = {"model": "passport", "attestation_result": self.attestation_result}
        elif self.evidence is not None:
            info = {"model": "background_check", "evidence": self.evidence}
        return {"hpke_key_config": self.hpke_key_config.as_json(), "attestation_info": info}

    @classmethod
    def parse(cls, body: bytes) -> "KeyConfigResponse":
        obj = _json_object(body, "key-config response")
        hkc = obj.get("hpke_key_config")
        if not isinstance(hkc, dict):
            raise OhttpError("key-config response without hpke_key_config")
        expire, encoded = hkc.get("expire_timestamp"), hkc.get("encoded_key_config_list")
        if not isinstance(expire, int) or not isinstance(encoded, str):
            raise OhttpError("hpke_key_config needs expire_timestamp (integer) and encoded_key_config_list")
        config = HpkeKeyConfig(expire, encoded)
        info = obj.get("attestation_info")
        if info is None:
            return cls(config)
        if not isinstance(info, dict):
            raise OhttpError("attestation_info must be an object or null")
        if info.get("model") == "passport":
            token = info.get("attestation_result")
            if not isinstance(token, str):
                raise OhttpError("passport attestation_info without attestation_result")
            return cls(config, attestation_result=token)
        if info.get("model") == "background_check":
            if "evidence" not in info:
                raise OhttpError("background_check attestation_info without evidence")
            return cls(config, evidence=info["evidence"])
        raise OhttpError(f"unknown attestation_info model {info.get('model')!r}")


def _json_object(body: bytes, what: str) -> dict:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise OhttpError(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise OhttpError(f"{what} is not a JSON object")
    return obj
