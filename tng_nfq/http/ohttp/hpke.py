"""HPKE (RFC 9180) for the one KEM/KDF pair OHTTP and upstream tng use.

DHKEM(X25519, HKDF-SHA256) = 0x0020 with HKDF-SHA256 = 0x0001, and any of the
AEADs AES-128-GCM = 0x0001, AES-256-GCM = 0x0002, ChaCha20Poly1305 = 0x0003.
Modes: base (0x00) and auth (0x02; the sender proves a static X25519 key,
which upstream's fork of the `ohttp` crate offers next to base mode).

`cryptography` has a single-shot HPKE only; OHTTP's chunked form needs a
context that seals many messages with increasing sequence numbers and
exports secrets, so the key schedule is written out here on top of
cryptography's X25519, HMAC, HKDF-Expand and AEAD primitives.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tng_nfq.http.ohttp.errors import OhttpError

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

MODE_BASE = 0x00
MODE_AUTH = 0x02

N_SECRET = 32  # KEM shared secret length for DHKEM(X25519, HKDF-SHA256)
N_ENC = 32  # enc is the ephemeral X25519 public key
N_PK = 32
N_SK = 32
N_H = 32  # SHA-256 output, also the exporter secret length


@dataclass(frozen=True)
class AeadAlgorithm:
    """Sizes of one AEAD (RFC 9180 §7.3) and how to build it from a key."""

    aead_id: int
    n_k: int
    n_n: int
    n_t: int
    factory: Callable[[bytes], object]


AEADS: dict[int, AeadAlgorithm] = {
    AEAD_AES_128_GCM: AeadAlgorithm(AEAD_AES_128_GCM, 16, 12, 16, AESGCM),
    AEAD_AES_256_GCM: AeadAlgorithm(AEAD_AES_256_GCM, 32, 12, 16, AESGCM),
    AEAD_CHACHA20_POLY1305: AeadAlgorithm(AEAD_CHACHA20_POLY1305, 32, 12, 16, ChaCha20Poly1305),
}


def aead_algorithm(aead_id: int) -> AeadAlgorithm:
    try:
        return AEADS[aead_id]
    except KeyError:
        raise OhttpError(f"unsupported HPKE AEAD 0x{aead_id:04x}") from None


def check_suite(kem_id: int, kdf_id: int, aead_id: int) -> AeadAlgorithm:
    """The AEAD of a supported (KEM, KDF, AEAD) triple, or OhttpError."""
    if kem_id != KEM_X25519_SHA256:
        raise OhttpError(f"unsupported HPKE KEM 0x{kem_id:04x}")
    if kdf_id != KDF_HKDF_SHA256:
        raise OhttpError(f"unsupported HPKE KDF 0x{kdf_id:04x}")
    return aead_algorithm(aead_id)


# --- HKDF-SHA256 and the labeled forms (RFC 9180 §4) -----------------------

def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869: an empty salt means HashLen zero bytes; HMAC pads either way,
    # but spell it out so the equivalence does not hinge on HMAC internals.
    h = hmac.HMAC(salt or bytes(N_H), hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


_VERSION_LABEL = b"HPKE-v1"


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, _VERSION_LABEL + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
    return hkdf_expand(prk, labeled_info, length)


# --- DHKEM(X25519, HKDF-SHA256) (RFC 9180 §4.1) ----------------------------

_KEM_SUITE_ID = b"KEM" + KEM_X25519_SHA256.to_bytes(2, "big")


def _private(sk: bytes) -> X25519PrivateKey:
    if len(sk) != N_SK:
        raise OhttpError("X25519 private key must be 32 bytes")
    return _private_cached(bytes(sk))


@functools.lru_cache(maxsize=64)
def _private_cached(sk: bytes) -> X25519PrivateKey:
    # Loading a key costs as much as a key agreement (~60 µs); a gateway uses
    # the same few static keys (its HPKE key pairs, an attested client key)
    # for every request.  Ephemeral keys do not come through here.
    return X25519PrivateKey.from_private_bytes(sk)


def _public(pk: bytes) -> X25519PublicKey:
    if len(pk) != N_PK:
        raise OhttpError("X25519 public key must be 32 bytes")
    return X25519PublicKey.from_public_bytes(pk)


def public_key_of(sk: bytes) -> bytes:
    return _private(sk).public_key().public_bytes_raw()


def generate_key_pair() -> tuple[bytes, bytes]:
    """A fresh (private, public) X25519 pair, raw 32-byte encodings."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def derive_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """DeriveKeyPair (RFC 9180 §7.1.3): deterministic pair from seed bytes."""
    dkp_prk = labeled_extract(_KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    sk = labeled_expand(_KEM_SUITE_ID, dkp_prk, b"sk", b"", N_SK)
    return sk, public_key_of(sk)


def _dh(sk: bytes, pk: bytes) -> bytes:
    try:
        # cryptography refuses an all-zero result (a low-order peer point),
        # which is the check RFC 9180 §7.1.4 asks for.
        return _private(sk).exchange(_public(pk))
    except ValueError as exc:
        raise OhttpError(f"X25519 key agreement failed: {exc}") from None


def _extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    eae_prk = labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, N_SECRET)


def encap(pk_r: bytes, *, sk_s: bytes | None = None, sk_e: bytes | None = None) -> tuple[bytes, bytes]:
    """(shared_secret, enc); AuthEncap when the sender key `sk_s` is given.

    `sk_e` pins the ephemeral key, for test vectors only.
    """
    if sk_e is None:
        # a fresh ephemeral key, used as an object (not re-loaded from bytes)
        key_e = X25519PrivateKey.generate()
        enc = key_e.public_key().public_bytes_raw()
        try:
            dh = key_e.exchange(_public(pk_r))
        except ValueError as exc:
            raise OhttpError(f"X25519 key agreement failed: {exc}") from None
    else:
        enc = public_key_of(sk_e)
        dh = _dh(sk_e, pk_r)
    kem_context = enc + pk_r
    if sk_s is not None:
        dh += _dh(sk_s, pk_r)
        kem_context += public_key_of(sk_s)
    return _extract_and_expand(dh, kem_context), enc


def decap(enc: bytes, sk_r: bytes, *, pk_s: bytes | None = None) -> bytes:
    """The shared secret for `enc`; AuthDecap when the sender's `pk_s` is given."""
    if len(enc) != N_ENC:
        raise OhttpError("HPKE enc must be 32 bytes")
    pk_r = public_key_of(sk_r)
    dh = _dh(sk_r, enc)
    kem_context = enc + pk_r
    if pk_s is not None:
        dh += _dh(sk_r, pk_s)
        kem_context += pk_s
    return _extract_and_expand(dh, kem_context)


# --- contexts (RFC 9180 §5.2 key schedule, §5.2/§5.3 encryption, export) ---

class AeadContext:
    """An AEAD whose nonce is base_nonce XOR the message sequence number.

    Shared by HPKE contexts and OHTTP's response encryption, which derives its
    own key and nonce but counts messages the same way.
    """

    def __init__(self, aead: AeadAlgorithm, key: bytes, base_nonce: bytes):
        self.aead = aead
        self.key = key
        self.base_nonce = base_nonce
        self.seq = 0
        self._cipher = aead.factory(key)
        self._base = int.from_bytes(base_nonce, "big")
        self._seq_limit = (1 << (8 * aead.n_n)) - 1
        # cryptography >= 45 seals straight into a caller's buffer
        self._encrypt_into = getattr(self._cipher, "encrypt_into", None)

    def _nonce(self) -> bytes:
        # The sequence number must never wrap: that would reuse a nonce.
        if self.seq >= self._seq_limit:
            raise OhttpError("HPKE message limit reached")
        return (self._base ^ self.seq).to_bytes(self.aead.n_n, "big")

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        # bytes-like plaintext (memoryview slices) is sealed without a copy
        ct = self._cipher.encrypt(self._nonce(), plaintext, aad)
        self.seq += 1
        return ct

    def seal_into(self, aad: bytes, plaintext, out: memoryview) -> None:
        """seal() writing the ciphertext into `out` (exactly len(plaintext) + n_t bytes)."""
        if self._encrypt_into is not None:
            self._encrypt_into(self._nonce(), plaintext, aad, out)
        else:
            out[:] = self._cipher.encrypt(self._nonce(), plaintext, aad)
        self.seq += 1

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        nonce = self._nonce()
        if len(ciphertext) < self.aead.n_t:
            raise OhttpError("ciphertext shorter than the AEAD tag")
        try:
            pt = self._cipher.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise OhttpError("AEAD authentication failed") from None
        self.seq += 1  # only on success, as RFC 9180 §5.2 ContextR.Open does
        return pt


class HpkeContext(AeadContext):
    """An HPKE sender or recipient context: seal/open plus the exporter."""

    def __init__(self, suite_id: bytes, aead: AeadAlgorithm, key: bytes, base_nonce: bytes,
                 exporter_secret: bytes):
        super().__init__(aead, key, base_nonce)
        self.suite_id = suite_id
        self.exporter_secret = exporter_secret

    def export(self, exporter_context: bytes, length: int) -> bytes:
        if not 0 < length <= 255 * N_H:
            raise OhttpError("HPKE export length out of range")
        return labeled_expand(self.suite_id, self.exporter_secret, b"sec", exporter_context, length)


def _key_schedule(mode: int, shared_secret: bytes, info: bytes, aead_id: int) -> HpkeContext:
    aead = check_suite(KEM_X25519_SHA256, KDF_HKDF_SHA256, aead_id)
    suite_id = (b"HPKE" + KEM_X25519_SHA256.to_bytes(2, "big")
                + KDF_HKDF_SHA256.to_bytes(2, "big") + aead_id.to_bytes(2, "big"))
    # Base and auth modes use the default (empty) PSK and PSK id.
    psk_id_hash = labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite_id, b"", b"info_hash", info)
    context = bytes([mode]) + psk_id_hash + info_hash
    secret = labeled_extract(suite_id, shared_secret, b"secret", b"")
    key = labeled_expand(suite_id, secret, b"key", context, aead.n_k)
    base_nonce = labeled_expand(suite_id, secret, b"base_nonce", context, aead.n_n)
    exporter_secret = labeled_expand(suite_id, secret, b"exp", context, N_H)
    return HpkeContext(suite_id, aead, key, base_nonce, exporter_secret)


def setup_base_sender(pk_r: bytes, info: bytes, aead_id: int, *,
                      sk_e: bytes | None = None) -> tuple[bytes, HpkeContext]:
    """SetupBaseS: (enc, sender context)."""
    aead_algorithm(aead_id)
    shared, enc = encap(pk_r, sk_e=sk_e)
    return enc, _key_schedule(MODE_BASE, shared, info, aead_id)


def setup_base_recipient(enc: bytes, sk_r: bytes, info: bytes, aead_id: int) -> HpkeContext:
    """SetupBaseR: the recipient context for `enc`."""
    aead_algorithm(aead_id)
    return _key_schedule(MODE_BASE, decap(enc, sk_r), info, aead_id)


def setup_auth_sender(pk_r: bytes, info: bytes, sk_s: bytes, aead_id: int, *,
                      sk_e: bytes | None = None) -> tuple[bytes, HpkeContext]:
    """SetupAuthS: like base mode, but binds the sender's static key `sk_s`."""
    aead_algorithm(aead_id)
    shared, enc = encap(pk_r, sk_s=sk_s, sk_e=sk_e)
    return enc, _key_schedule(MODE_AUTH, shared, info, aead_id)


def setup_auth_recipient(enc: bytes, sk_r: bytes, info: bytes, pk_s: bytes,
                         aead_id: int) -> HpkeContext:
    """SetupAuthR: succeeds only if the sender held the private key of `pk_s`
    (otherwise the first open fails)."""
    aead_algorithm(aead_id)
    return _key_schedule(MODE_AUTH, decap(enc, sk_r, pk_s=pk_s), info, aead_id)
