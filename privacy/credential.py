"""Device credentials: why a coordinator cannot swap a device's SecAgg+ keys for its own.

In SecAgg+ every device learns its neighbours' public keys from the server. Unauthenticated,
a malicious server substitutes keys it holds and opens the shares sealed to "them". So each
device signs what it advertises with an Ed25519 key that an **issuer the device trusts**
vouches for, and checks the same for every neighbour (Bonawitz et al., CCS 2017, active
variant: a PKI the server does not control).

Pseudonymous by construction: a credential names no device. It binds a fresh per-round
signing key to a region and a coarse expiry, nothing else, and a device uses each credential
for one round only (:class:`CredentialWallet`), so the coordinator cannot link two rounds of
one device by its key. The issuer sees which device received which batch; an issuer that
colludes with the coordinator can link and can mint Sybils (docs/threat-model.md).

The issuer interface is deliberately small (:class:`CredentialVerifier`) so that platform
attestation (Android key attestation, Apple App Attest) can replace the region-issued
credential: such a verifier checks the platform's chain instead of a region key.

Sans-IO: keys and time are passed in.

>>> from privacy.rand import SeededRandomness
>>> rng = SeededRandomness.from_int(1)
>>> issuer = CredentialIssuer.generate("eu", "dev-ca-1", rng)
>>> cred, key = issuer.issue(not_after=2_000_000_000, rng=rng)
>>> verifier = IssuerVerifier("eu", {issuer.key_id: issuer.public_key}, valid_at=1_900_000_000)
>>> verifier.public_key(cred).public_bytes_raw() == key.public
True
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import ConfigDict, Field

from privacy.errors import ProtocolReason, RemoteProtocolError
from privacy.rand import Randomness
from privacy.wire import ID_PATTERN, REGION_PATTERN, Frozen

_RAW = serialization.Encoding.Raw
_PUB = serialization.PublicFormat.Raw

Pub32 = Annotated[bytes, Field(min_length=32, max_length=32)]
Sig64 = Annotated[bytes, Field(min_length=64, max_length=64)]


class DeviceCredential(Frozen):
    """The issuer's statement "a genuine device of ``region`` holds ``public_key``"."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    v: Annotated[int, Field(ge=1, le=1)] = 1
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    issuer: Annotated[str, Field(pattern=ID_PATTERN)]  # the issuer key id
    not_after: Annotated[int, Field(ge=0, lt=1 << 62)]  # unix seconds, coarse (unlinkable)
    public_key: Pub32  # raw Ed25519
    signature: Sig64  # the issuer's, over :func:`credential_bytes`


def credential_bytes(region: str, issuer: str, not_after: int, public_key: bytes) -> bytes:
    """The exact bytes an issuer signs (domain-separated, length-prefixed)."""
    parts = [b"sotto-credential|v1", region.encode(), issuer.encode(), public_key]
    out = b"".join(struct.pack(">H", len(p)) + p for p in parts)
    return out + struct.pack(">Q", not_after)


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A device's per-round Ed25519 key. ``repr`` never shows the private half."""

    private: ed25519.Ed25519PrivateKey
    public: bytes

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}…)"

    @classmethod
    def generate(cls, rng: Randomness) -> SigningKey:
        sk = ed25519.Ed25519PrivateKey.from_private_bytes(rng.token_bytes(32))
        return cls(sk, sk.public_key().public_bytes(_RAW, _PUB))

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


class CredentialIssuer:
    """The region's credential authority (in production behind attestation and an HSM)."""

    def __init__(self, region: str, key_id: str, private: ed25519.Ed25519PrivateKey) -> None:
        self.region = region
        self.key_id = key_id
        self._private = private
        self.public_key = private.public_key().public_bytes(_RAW, _PUB)

    def __repr__(self) -> str:
        return f"CredentialIssuer(region={self.region!r}, key_id={self.key_id!r})"

    @classmethod
    def generate(cls, region: str, key_id: str, rng: Randomness) -> CredentialIssuer:
        return cls(
            region, key_id, ed25519.Ed25519PrivateKey.from_private_bytes(rng.token_bytes(32))
        )

    def issue(self, *, not_after: int, rng: Randomness) -> tuple[DeviceCredential, SigningKey]:
        """A fresh key pair and its credential (the device keeps the key, shows the credential)."""
        key = SigningKey.generate(rng)
        return self.certify(key.public, not_after=not_after), key

    def certify(self, public_key: bytes, *, not_after: int) -> DeviceCredential:
        """Vouch for a key the device generated itself (the enrollment path)."""
        sig = self._private.sign(credential_bytes(self.region, self.key_id, not_after, public_key))
        return DeviceCredential(
            region=self.region,
            issuer=self.key_id,
            not_after=not_after,
            public_key=public_key,
            signature=sig,
        )


class CredentialVerifier(Protocol):
    """Turns a credential into the Ed25519 key it vouches for, or refuses it."""

    def public_key(self, credential: DeviceCredential) -> ed25519.Ed25519PublicKey:
        """Raise :class:`RemoteProtocolError` (``bad_credential``) unless it is genuine."""
        ...


class IssuerVerifier:
    """Accepts credentials signed by one of ``issuers`` (key id -> raw Ed25519 public key) for
    ``region`` and still valid at ``valid_at`` (the round's opening time, so that replaying a
    round after a restart decides exactly as the first time)."""

    def __init__(self, region: str, issuers: Mapping[str, bytes], *, valid_at: float) -> None:
        self.region = region
        self._issuers = {
            k: ed25519.Ed25519PublicKey.from_public_bytes(v) for k, v in issuers.items()
        }
        self.valid_at = valid_at
        self._cache: dict[bytes, ed25519.Ed25519PublicKey] = {}

    def __repr__(self) -> str:
        return f"IssuerVerifier(region={self.region!r}, issuers={sorted(self._issuers)})"

    def at(self, valid_at: float) -> IssuerVerifier:
        """The same trust roots, judged at another time."""
        out = IssuerVerifier(self.region, {}, valid_at=valid_at)
        out._issuers = self._issuers
        return out

    def public_key(self, credential: DeviceCredential) -> ed25519.Ed25519PublicKey:
        c = credential
        if c.region != self.region:
            raise RemoteProtocolError(
                ProtocolReason.BAD_CREDENTIAL, f"credential of region {c.region!r}"
            )
        issuer = self._issuers.get(c.issuer)
        if issuer is None:
            raise RemoteProtocolError(ProtocolReason.BAD_CREDENTIAL, "unknown credential issuer")
        if c.not_after < self.valid_at:
            raise RemoteProtocolError(ProtocolReason.BAD_CREDENTIAL, "credential expired")
        signed = credential_bytes(c.region, c.issuer, c.not_after, c.public_key)
        # The cache skips only the signature check, keyed by every signed field (a copy with
        # another region or expiry but the same signature is not the statement that was signed).
        cache_key = signed + c.signature
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        try:
            issuer.verify(c.signature, signed)
            key = ed25519.Ed25519PublicKey.from_public_bytes(c.public_key)
        except (InvalidSignature, ValueError):
            raise RemoteProtocolError(
                ProtocolReason.BAD_CREDENTIAL, "credential signature invalid"
            ) from None
        if len(self._cache) < 1 << 16:
            self._cache[cache_key] = key
        return key


def verify_signature(key: ed25519.Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is ``key``'s over ``data`` (never raises on bad input)."""
    try:
        key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(slots=True)
class CredentialWallet:
    """A device's unused credentials; each round takes one and it is never shown again.

    Why one per round: a reused key would let the coordinator link the rounds of a device.
    ``take`` raises ``LookupError`` when empty (the device then sits rounds out until it
    enrolls again)."""

    _items: list[tuple[DeviceCredential, SigningKey]]

    def __init__(self, items: Iterable[tuple[DeviceCredential, SigningKey]] = ()) -> None:
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"CredentialWallet(unused={len(self._items)})"

    def add(self, items: Iterable[tuple[DeviceCredential, SigningKey]]) -> None:
        self._items.extend(items)

    def take(self) -> tuple[DeviceCredential, SigningKey]:
        if not self._items:
            raise LookupError("no unused device credential: enroll again")
        return self._items.pop()
