"""The cryptographic steps of SecAgg+, all from ``cryptography``: X25519, HKDF, AES-GCM, AES-CTR.

Labels bind every derived key to its purpose, the round and (for pairs) both client ids, so
keys from one round or pair can never be replayed into another.
"""

from __future__ import annotations

import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privacy import prg
from privacy.rand import Randomness
from privacy.shamir import SHARE_BYTES

_RAW = serialization.Encoding.Raw
_PUB = serialization.PublicFormat.Raw
_PRIV = serialization.PrivateFormat.Raw
_SHARE_PLAIN = struct.Struct(f">II{SHARE_BYTES}s{SHARE_BYTES}s")


def clamp(raw: bytes) -> bytes:
    """The canonical (RFC 7748 clamped) encoding of an X25519 private key: the 32 encodings
    that differ only in the 5 bits clamping ignores are the same key."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def new_keypair(rng: Randomness) -> tuple[x25519.X25519PrivateKey, bytes]:
    """An X25519 key from the caller's randomness (so tests can be reproducible), stored
    clamped, so its raw bytes are the one encoding a rebuilt key is checked against."""
    sk = x25519.X25519PrivateKey.from_private_bytes(clamp(rng.token_bytes(32)))
    return sk, public_bytes(sk)


def public_bytes(sk: x25519.X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(_RAW, _PUB)


def private_bytes(sk: x25519.X25519PrivateKey) -> bytes:
    return sk.private_bytes(_RAW, _PRIV, serialization.NoEncryption())


# The u-coordinates of every point of small order: on the curve the 8-torsion is cyclic (u = 0
# for order 2, u = 1 for order 4, two u for the four points of order 8), on the twist the
# 4-torsion (u = 0, u = p - 1). Any clamped scalar is a multiple of 8 and prime to the large
# subgroup orders, so X25519 of a public key gives the all-zero secret exactly for these.
_P25519 = 2**255 - 19
_SMALL_ORDER_U = frozenset(
    {
        0,
        1,
        _P25519 - 1,
        0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
        0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F,
    }
)
_LOW_255 = (1 << 255) - 1


def is_weak_key(pk: bytes) -> bool:
    """True for public keys whose shared secrets are all-zero (the small-order points of
    Curve25519 in any encoding) or that are not 32 bytes: such a key would give its
    "neighbours" masks and share keys that anyone can compute.

    A table lookup, not a probing exchange (two X25519 operations per advertisement were the
    server's largest cost after the signature checks): X25519 ignores the top bit and reduces
    u mod p (RFC 7748), so the 14 weak encodings are the five u above, plus ``p`` and
    ``p + 1``, each with either top bit. tests/privacy/test_secagg_weak_keys.py checks the
    table against the probe it replaced."""
    if len(pk) != 32:
        return True
    return (int.from_bytes(pk, "little") & _LOW_255) % _P25519 in _SMALL_ORDER_U


def _digest(*parts: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    for p in parts:
        h.update(struct.pack(">I", len(p)))
        h.update(p)
    return h.finalize()


def seed_commitment(round_id: str, cid: int, seed: bytes) -> bytes:
    """A hash commitment to the self-mask seed (binding; hiding since the seed is 256 random
    bits), so a rebuilt seed can be checked and a holder who returned a bad share found."""
    return _digest(b"sotto-secagg|v2|seed-commit", round_id.encode(), b"%d" % cid, seed)


def advertise_bytes(
    round_id: str, cid: int, mask_pk: bytes, enc_pk: bytes, seed_commit: bytes
) -> bytes:
    """What a client signs at advertise: its keys, bound to the round and its id."""
    return _digest(
        b"sotto-secagg|v2|advertise", round_id.encode(), b"%d" % cid, mask_pk, enc_pk, seed_commit
    )


def survivor_set_bytes(round_id: str, survivors: tuple[int, ...] | list[int]) -> bytes:
    """What a client signs in the consistency round: the sorted survivor set of the round."""
    ids = sorted(set(survivors))
    return _digest(
        b"sotto-secagg|v2|survivors", round_id.encode(), struct.pack(f">{len(ids)}I", *ids)
    )


def _pair_label(kind: bytes, round_id: str, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return b"sotto-secagg|v1|" + kind + b"|" + round_id.encode() + b"|%d|%d" % (lo, hi)


def pair_seed(
    sk: x25519.X25519PrivateKey,
    peer_pk: bytes | x25519.X25519PublicKey,
    round_id: str,
    a: int,
    b: int,
) -> bytes:
    """The seed of the pairwise mask between clients ``a`` and ``b`` (same from both ends).

    ``peer_pk`` may come parsed: the server reuses one survivor's key for every dropped
    neighbour it unmasks."""
    if isinstance(peer_pk, bytes):
        peer_pk = x25519.X25519PublicKey.from_public_bytes(peer_pk)
    shared = sk.exchange(peer_pk)
    return prg.derive_key(shared, _pair_label(b"pair", round_id, a, b))


def share_key(sk: x25519.X25519PrivateKey, peer_pk: bytes, round_id: str, a: int, b: int) -> AESGCM:
    shared = sk.exchange(x25519.X25519PublicKey.from_public_bytes(peer_pk))
    return AESGCM(prg.derive_key(shared, _pair_label(b"share", round_id, a, b)))


def _aad(round_id: str, sender: int, recipient: int) -> bytes:
    return b"sotto-secagg-share|v1|" + round_id.encode() + b"|%d>%d" % (sender, recipient)


def seal_shares(
    aead: AESGCM,
    nonce: bytes,
    round_id: str,
    sender: int,
    recipient: int,
    seed_y: bytes,
    key_y: bytes,
) -> bytes:
    plain = _SHARE_PLAIN.pack(sender, recipient, seed_y, key_y)
    return aead.encrypt(nonce, plain, _aad(round_id, sender, recipient))


def open_shares(
    aead: AESGCM, nonce: bytes, ct: bytes, round_id: str, sender: int, recipient: int
) -> tuple[bytes, bytes] | None:
    """The (seed share, key share) bytes, or None if the ciphertext is not authentic."""
    try:
        plain = aead.decrypt(nonce, ct, _aad(round_id, sender, recipient))
        s, r, seed_y, key_y = _SHARE_PLAIN.unpack(plain)
    except (InvalidTag, struct.error):
        return None
    if (s, r) != (sender, recipient):
        return None
    return seed_y, key_y


_PAIR_MASK = b"sotto-secagg|v1|pairmask"


def self_mask(
    seed: bytes, round_id: str, dim: int, bits: int, into: prg.Expander | None = None
) -> np.ndarray:
    """The self mask; with ``into`` (made for ``dim`` and ``bits``) in its reused buffer."""
    label = b"sotto-secagg|v1|self|" + round_id.encode()
    return into.expand(seed, label) if into is not None else prg.expand(seed, dim, bits, label)


def pair_mask(seed: bytes, dim: int, bits: int, into: prg.Expander | None = None) -> np.ndarray:
    """The pairwise mask of a :func:`pair_seed`; ``into`` as for :func:`self_mask`."""
    if into is not None:
        return into.expand(seed, _PAIR_MASK)
    return prg.expand(seed, dim, bits, _PAIR_MASK)
