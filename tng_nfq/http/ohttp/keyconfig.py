"""OHTTP key configurations (RFC 9458 §3).

One configuration on the wire:

    key_id (8) | kem_id (16) | public key (Npk bytes, fixed by the KEM)
    | length of the suite list (16) | (kdf_id (16), aead_id (16))...

and `application/ohttp-keys` (§3.2) is a sequence of configurations, each
preceded by its own 16-bit length, which lets a client skip configurations
with a KEM it does not know.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tng_nfq.http.ohttp import hpke
from tng_nfq.http.ohttp.errors import OhttpError

# Npk of the KEMs registered for HPKE: needed to find where the public key
# ends, since the format carries no length for it.  Only X25519 is usable
# for encryption here; the others are parsed so lists containing them work.
KEM_PUBLIC_KEY_LENGTHS = {
    0x0010: 65,  # DHKEM(P-256, HKDF-SHA256)
    0x0011: 97,  # DHKEM(P-384, HKDF-SHA384)
    0x0012: 133,  # DHKEM(P-521, HKDF-SHA512)
    0x0020: 32,  # DHKEM(X25519, HKDF-SHA256)
    0x0021: 56,  # DHKEM(X448, HKDF-SHA512)
}


@dataclass(frozen=True)
class SymmetricSuite:
    kdf_id: int
    aead_id: int


DEFAULT_SUITES = (
    SymmetricSuite(hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM),
    SymmetricSuite(hpke.KDF_HKDF_SHA256, hpke.AEAD_CHACHA20_POLY1305),
    SymmetricSuite(hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_256_GCM),
)


def _is_supported(kem_id: int, suite: SymmetricSuite) -> bool:
    try:
        hpke.check_suite(kem_id, suite.kdf_id, suite.aead_id)
    except OhttpError:
        return False
    return True


@dataclass(frozen=True)
class KeyConfig:
    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[SymmetricSuite, ...]

    def __post_init__(self):
        if not 0 <= self.key_id <= 0xFF:
            raise OhttpError("key_id must fit in one byte")
        if not 0 <= self.kem_id <= 0xFFFF:
            raise OhttpError("kem_id must fit in 16 bits")
        expected = KEM_PUBLIC_KEY_LENGTHS.get(self.kem_id)
        if expected is not None and len(self.public_key) != expected:
            raise OhttpError(f"public key for KEM 0x{self.kem_id:04x} must be {expected} bytes")
        if not self.suites:
            raise OhttpError("a key configuration needs at least one symmetric suite")
        object.__setattr__(self, "suites", tuple(self.suites))

    def encode(self) -> bytes:
        suites = b"".join(struct.pack("!HH", s.kdf_id, s.aead_id) for s in self.suites)
        return (struct.pack("!BH", self.key_id, self.kem_id) + bytes(self.public_key)
                + struct.pack("!H", len(suites)) + suites)

    def supports(self, kdf_id: int, aead_id: int) -> bool:
        """Whether this configuration offers the suite and this code can run it."""
        suite = SymmetricSuite(kdf_id, aead_id)
        return suite in self.suites and _is_supported(self.kem_id, suite)

    def select(self) -> SymmetricSuite:
        """The first offered suite this code can use (the server lists its
        preference first)."""
        for suite in self.suites:
            if _is_supported(self.kem_id, suite):
                return suite
        raise OhttpError(f"no supported HPKE suite in key configuration {self.key_id}")

    @classmethod
    def parse(cls, data: bytes) -> "KeyConfig":
        """Exactly one configuration, with nothing after it."""
        config, end = _parse_one(memoryview(bytes(data)), 0)
        if end != len(data):
            raise OhttpError("trailing bytes after key configuration")
        return config


def _parse_one(buf: memoryview, pos: int) -> tuple[KeyConfig, int]:
    if len(buf) - pos < 3:
        raise OhttpError("truncated key configuration header")
    key_id, kem_id = struct.unpack_from("!BH", buf, pos)
    pos += 3
    npk = KEM_PUBLIC_KEY_LENGTHS.get(kem_id)
    if npk is None:
        raise OhttpError(f"unknown KEM 0x{kem_id:04x} in key configuration")
    if len(buf) - pos < npk + 2:
        raise OhttpError("truncated key configuration public key")
    public_key = bytes(buf[pos:pos + npk])
    pos += npk
    (suites_len,) = struct.unpack_from("!H", buf, pos)
    pos += 2
    if suites_len == 0 or suites_len % 4:
        raise OhttpError("symmetric suite list length must be a non-zero multiple of 4")
    if len(buf) - pos < suites_len:
        raise OhttpError("truncated symmetric suite list")
    suites = tuple(SymmetricSuite(*struct.unpack_from("!HH", buf, pos + i))
                   for i in range(0, suites_len, 4))
    return KeyConfig(key_id, kem_id, public_key, suites), pos + suites_len


def encode_key_config_list(configs: Iterable[KeyConfig]) -> bytes:
    """application/ohttp-keys: every configuration behind a 16-bit length."""
    out = bytearray()
    for config in configs:
        encoded = config.encode()
        if len(encoded) > 0xFFFF:
            raise OhttpError("key configuration too long for the list form")
        out += struct.pack("!H", len(encoded)) + encoded
    return bytes(out)


def parse_key_config_list(data: bytes) -> list[KeyConfig]:
    """Parse application/ohttp-keys; entries with an unknown KEM are skipped
    (their length prefix makes that possible), any other defect is an error."""
    buf = memoryview(bytes(data))
    pos, configs = 0, []
    while pos < len(buf):
        if len(buf) - pos < 2:
            raise OhttpError("truncated key configuration length")
        (length,) = struct.unpack_from("!H", buf, pos)
        pos += 2
        if len(buf) - pos < length:
            raise OhttpError("truncated key configuration in list")
        entry = buf[pos:pos + length]
        pos += length
        if len(entry) >= 3 and struct.unpack_from("!H", entry, 1)[0] not in KEM_PUBLIC_KEY_LENGTHS:
            continue
        config, end = _parse_one(entry, 0)
        if end != length:
            raise OhttpError("key configuration shorter than its length prefix")
        configs.append(config)
    return configs


@dataclass(frozen=True)
class KeyPair:
    """A gateway's private key with the configuration it publishes."""

    private_key: bytes = field(repr=False)
    config: KeyConfig

    @property
    def key_id(self) -> int:
        return self.config.key_id

    @classmethod
    def generate(cls, key_id: int = 0,
                 suites: Sequence[SymmetricSuite] = DEFAULT_SUITES) -> "KeyPair":
        sk, _ = hpke.generate_key_pair()
        return cls.from_private_key(sk, key_id, suites)

    @classmethod
    def from_private_key(cls, private_key: bytes, key_id: int = 0,
                         suites: Sequence[SymmetricSuite] = DEFAULT_SUITES) -> "KeyPair":
        public_key = hpke.public_key_of(private_key)
        return cls(bytes(private_key),
                   KeyConfig(key_id, hpke.KEM_X25519_SHA256, public_key, tuple(suites)))
