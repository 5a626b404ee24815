"""HPKE against RFC 9180 Appendix A test vectors (X25519, HKDF-SHA256).

Vectors: A.1.1 (base, AES-128-GCM), A.1.3 (auth, AES-128-GCM), A.2.1 (base,
ChaCha20Poly1305) -- the values as published in RFC 9180's appendix.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tng_nfq.http.ohttp import OhttpError, hpke

h = bytes.fromhex
INFO = h("4f6465206f6e2061204772656369616e2055726e")  # "Ode on a Grecian Urn"
PT = h("4265617574792069732074727574682c20747275746820626561757479")  # "Beauty is truth, ..."


def aad(seq: int) -> bytes:
    return b"Count-%d" % seq


# A.1.1 DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode
A11 = dict(
    ikmE=h("7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234"),
    ikmR=h("6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037"),
    skEm=h("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736"),
    skRm=h("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8"),
    pkRm=h("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d"),
    enc=h("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"),
    key=h("4531685d41d65f03dc48f6b8302c05b0"),
    base_nonce=h("56d890e5accaaf011cff4b7d"),
    exporter_secret=h("45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8"),
    cts=[
        h("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a"),
        h("af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84"),
        h("498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180"),
    ],
    exports=[
        (b"", h("3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee")),
        (b"\x00", h("2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5")),
        (b"TestContext", h("e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931")),
    ],
)

# A.1.3 same suite, auth mode
A13 = dict(
    skEm=h("ff4442ef24fbc3c1ff86375b0be1e77e88a0de1e79b30896d73411c5ff4c3518"),
    skRm=h("fdea67cf831f1ca98d8e27b1f6abeb5b7745e9d35348b80fa407ff6958f9137e"),
    pkRm=h("1632d5c2f71c2b38d0a8fcc359355200caa8b1ffdf28618080466c909cb69b2e"),
    skSm=h("dc4a146313cce60a278a5323d321f051c5707e9c45ba21a3479fecdf76fc69dd"),
    pkSm=h("8b0c70873dc5aecb7f9ee4e62406a397b350e57012be45cf53b7105ae731790b"),
    enc=h("23fb952571a14a25e3d678140cd0e5eb47a0961bb18afcf85896e5453c312e76"),
    key=h("b062cb2c4dd4bca0ad7c7a12bbc341e6"),
    base_nonce=h("a1bc314c1942ade7051ffed0"),
    exporter_secret=h("ee1a093e6e1c393c162ea98fdf20560c75909653550540a2700511b65c88c6f1"),
    cts=[
        h("5fd92cc9d46dbf8943e72a07e42f363ed5f721212cd90bcfd072bfd9f44e06b80fd17824947496e21b680c141b"),
        h("d3736bb256c19bfa93d79e8f80b7971262cb7c887e35c26370cfed62254369a1b52e3d505b79dd699f002bc8ed"),
        h("122175cfd5678e04894e4ff8789e85dd381df48dcaf970d52057df2c9acc3b121313a2bfeaa986050f82d93645"),
    ],
    exports=[
        (b"", h("28c70088017d70c896a8420f04702c5a321d9cbf0279fba899b59e51bac72c85")),
        (b"\x00", h("25dfc004b0892be1888c3914977aa9c9bbaf2c7471708a49e1195af48a6f29ce")),
    ],
)

# A.2.1 DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base mode
A21 = dict(
    skEm=h("f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600"),
    skRm=h("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"),
    pkRm=h("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a"),
    enc=h("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a"),
    cts=[
        h("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"),
        h("6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c"),
        h("71146bd6795ccc9c49ce25dda112a48f202ad220559502cef1f34271e0cb4b02b4f10ecac6f48c32f878fae86b"),
    ],
    exports=[
        (b"", h("4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e")),
        (b"\x00", h("8c1df14732580e5501b00f82b10a1647b40713191b7c1240ac80e2b68808ba69")),
        (b"TestContext", h("5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53")),
    ],
)


def test_derive_key_pair_a11():
    assert hpke.derive_key_pair(A11["ikmE"]) == (A11["skEm"], A11["enc"])
    assert hpke.derive_key_pair(A11["ikmR"]) == (A11["skRm"], A11["pkRm"])


def test_base_sender_a11_schedule_encryptions_exports():
    enc, ctx = hpke.setup_base_sender(A11["pkRm"], INFO, hpke.AEAD_AES_128_GCM, sk_e=A11["skEm"])
    assert enc == A11["enc"]
    assert ctx.key == A11["key"]
    assert ctx.base_nonce == A11["base_nonce"]
    assert ctx.exporter_secret == A11["exporter_secret"]
    for seq, ct in enumerate(A11["cts"]):
        assert ctx.seal(aad(seq), PT) == ct
    for exporter_context, value in A11["exports"]:
        assert ctx.export(exporter_context, 32) == value


def test_base_recipient_a11_opens_in_sequence():
    ctx = hpke.setup_base_recipient(A11["enc"], A11["skRm"], INFO, hpke.AEAD_AES_128_GCM)
    assert (ctx.key, ctx.base_nonce) == (A11["key"], A11["base_nonce"])
    for seq, ct in enumerate(A11["cts"]):
        assert ctx.open(aad(seq), ct) == PT
    for exporter_context, value in A11["exports"]:
        assert ctx.export(exporter_context, 32) == value


def test_recipient_out_of_order_fails_and_does_not_advance():
    ctx = hpke.setup_base_recipient(A11["enc"], A11["skRm"], INFO, hpke.AEAD_AES_128_GCM)
    with pytest.raises(OhttpError):
        ctx.open(aad(1), A11["cts"][1])  # sequence 1 opened as 0
    assert ctx.seq == 0
    assert ctx.open(aad(0), A11["cts"][0]) == PT


def test_auth_a13_both_sides():
    enc, s = hpke.setup_auth_sender(A13["pkRm"], INFO, A13["skSm"], hpke.AEAD_AES_128_GCM,
                                    sk_e=A13["skEm"])
    assert enc == A13["enc"]
    assert (s.key, s.base_nonce, s.exporter_secret) == (A13["key"], A13["base_nonce"],
                                                        A13["exporter_secret"])
    r = hpke.setup_auth_recipient(enc, A13["skRm"], INFO, A13["pkSm"], hpke.AEAD_AES_128_GCM)
    for seq, ct in enumerate(A13["cts"]):
        assert s.seal(aad(seq), PT) == ct
        assert r.open(aad(seq), ct) == PT
    for exporter_context, value in A13["exports"]:
        assert s.export(exporter_context, 32) == value == r.export(exporter_context, 32)


def test_auth_with_wrong_sender_key_fails():
    _, other_pk = hpke.generate_key_pair()
    r = hpke.setup_auth_recipient(A13["enc"], A13["skRm"], INFO, other_pk, hpke.AEAD_AES_128_GCM)
    with pytest.raises(OhttpError):
        r.open(aad(0), A13["cts"][0])


def test_chacha_a21():
    enc, s = hpke.setup_base_sender(A21["pkRm"], INFO, hpke.AEAD_CHACHA20_POLY1305, sk_e=A21["skEm"])
    assert enc == A21["enc"]
    r = hpke.setup_base_recipient(enc, A21["skRm"], INFO, hpke.AEAD_CHACHA20_POLY1305)
    for seq, ct in enumerate(A21["cts"]):
        assert s.seal(aad(seq), PT) == ct
        assert r.open(aad(seq), ct) == PT
    for exporter_context, value in A21["exports"]:
        assert s.export(exporter_context, 32) == value


@pytest.mark.parametrize("aead_id", [hpke.AEAD_AES_128_GCM, hpke.AEAD_AES_256_GCM,
                                     hpke.AEAD_CHACHA20_POLY1305])
def test_roundtrip_every_aead(aead_id):
    sk, pk = hpke.generate_key_pair()
    enc, s = hpke.setup_base_sender(pk, b"info", aead_id)
    r = hpke.setup_base_recipient(enc, sk, b"info", aead_id)
    assert len(s.key) == hpke.AEADS[aead_id].n_k
    for i in range(3):
        assert r.open(b"a%d" % i, s.seal(b"a%d" % i, b"m" * i)) == b"m" * i
    assert s.export(b"x", 40) == r.export(b"x", 40)


def test_unsupported_and_bad_inputs_raise_ohttp_error():
    sk, pk = hpke.generate_key_pair()
    with pytest.raises(OhttpError):
        hpke.setup_base_sender(pk, b"", 0x0004)
    with pytest.raises(OhttpError):
        hpke.check_suite(0x0010, 1, 1)
    with pytest.raises(OhttpError):
        hpke.check_suite(0x0020, 2, 1)
    with pytest.raises(OhttpError):
        hpke.setup_base_recipient(b"\x01" * 31, sk, b"", 1)
    with pytest.raises(OhttpError):  # all-zero shared secret: low-order point
        hpke.setup_base_recipient(bytes(32), sk, b"", 1)
    enc, s = hpke.setup_base_sender(pk, b"", 1)
    with pytest.raises(OhttpError):
        s.export(b"", 0)
    r = hpke.setup_base_recipient(enc, sk, b"", 1)
    with pytest.raises(OhttpError):
        r.open(b"", b"short")


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_open_random_ciphertext_only_ohttp_error(ct):
    r = hpke.setup_base_recipient(A11["enc"], A11["skRm"], INFO, hpke.AEAD_AES_128_GCM)
    with pytest.raises(OhttpError):
        r.open(b"", ct)
