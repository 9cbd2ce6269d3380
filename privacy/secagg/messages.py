"""SecAgg+ protocol messages: frozen, versioned pydantic models, one per protocol step.

Bytes fields travel as base64 in JSON (``ser_json_bytes``/``val_json_bytes``), so every message
round-trips through ``model_dump_json``/``model_validate_json`` and can ride inside an HPKE
envelope on Kafka. Client-to-server messages carry ``sender``; server-to-client messages carry
``to``. ``type`` is the event name the state table (:mod:`.states`) is keyed by.
:class:`MaskedInput` is registered as the envelope payload type ``masked_input``.

Nothing secret is in the clear here: public keys, AEAD ciphertexts, masked vectors (uniform
without the masks), and, in :class:`UnmaskResponse`, the shares the protocol intends the
server to receive.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, FailFast, Field, GetCoreSchemaHandler, model_validator
from pydantic_core import core_schema

from privacy import prg
from privacy.credential import DeviceCredential
from privacy.secagg import sizing
from privacy.wire import ID_PATTERN, Frozen, register_payload

PROTOCOL_VERSION: Literal[2] = 2
Cid = Annotated[int, Field(ge=0, lt=1 << 31)]
RoundId = Annotated[str, Field(pattern=ID_PATTERN)]
Key32 = Annotated[bytes, Field(min_length=32, max_length=32)]
Sig64 = Annotated[bytes, Field(min_length=64, max_length=64)]


class Msg(Frozen):
    """Base of SecAgg+ messages: frozen, no unknown fields, bytes as base64 in JSON."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    v: Literal[2] = PROTOCOL_VERSION
    round_id: RoundId

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class RoundParams(Frozen):
    """The public parameters of one round, announced by the coordinator before it starts.

    ``n`` clients with ids ``0..n-1``; each gets ``k`` neighbours (``k = n-1`` is classic
    SecAgg); a client's secrets are shared ``t``-of-``k`` (``2t > k``, so two disjoint
    neighbour sets can never both reach ``t``); a round releases nothing with fewer than
    ``min_clients`` masked inputs; vectors have ``dim`` words mod ``2**bits``.
    """

    type: Literal["secagg_round"] = "secagg_round"
    v: Literal[2] = PROTOCOL_VERSION
    round_id: RoundId
    n: Annotated[int, Field(ge=2, le=1 << 20)]
    k: Annotated[int, Field(ge=1)]
    t: Annotated[int, Field(ge=1)]
    min_clients: Annotated[int, Field(ge=1)]
    dim: Annotated[int, Field(ge=1, le=1 << 26)]
    bits: Annotated[int, Field(ge=2, le=62)]

    @model_validator(mode="after")
    def _consistent(self) -> RoundParams:
        if self.k > self.n - 1:
            raise ValueError(f"k={self.k} neighbours impossible with n={self.n} clients")
        if self.k != self.n - 1 and self.k % 2:
            raise ValueError("k must be even (Harary graph) unless k = n-1")
        if not self.k / 2 < self.t <= self.k:
            raise ValueError(f"threshold t={self.t} must satisfy k/2 < t <= k (k={self.k})")
        if not self.t <= self.min_clients <= self.n:
            raise ValueError(f"need t <= min_clients <= n, got {self.min_clients}")
        return self

    @classmethod
    def recommended(
        cls,
        round_id: str,
        n: int,
        dim: int,
        bits: int,
        *,
        k: int | None = None,
        dropout: float | None = None,
        corrupt: float = sizing.DEFAULT_CORRUPT,
        risk: float = sizing.DEFAULT_RISK,
        **kw: int,
    ) -> RoundParams:
        """``k`` and ``t`` from :func:`privacy.secagg.sizing.choose`: the smallest degree whose
        chance that some client aborts (fewer than ``t`` neighbours survive ``dropout``) or is
        exposed (``2t - k`` of its neighbours collude with the server) is at most ``risk``.
        An explicit ``k`` keeps that degree and takes the best ``t`` for it."""
        drop = sizing.DEFAULT_DROPOUT if dropout is None else dropout
        if k is None:
            s = sizing.choose(n, dropout=drop, corrupt=corrupt, risk=risk)
            k, t0 = s.k, s.t
        else:
            k = min(k, n - 1)
            t0 = min(
                range(k // 2 + 1, k + 1),
                key=lambda t: sizing.failure(n, k, t, dropout=drop, corrupt=corrupt).failure,
            )
        t = kw.pop("t", t0)
        min_clients = kw.pop("min_clients", max(t, int(np.ceil(0.5 * n))))
        return cls(round_id=round_id, n=n, k=k, t=t, min_clients=min_clients, dim=dim, bits=bits)


class AdvertiseKeys(Msg):
    """Stage 0, client -> server: this round's two X25519 public keys and a commitment to the
    self-mask seed, signed with the key of a one-round device credential."""

    type: Literal["secagg_advertise"] = "secagg_advertise"
    sender: Cid
    mask_pk: Key32  # agreement key for pairwise masks
    enc_pk: Key32  # agreement key for encrypting shares
    seed_commit: Key32  # binds the self-mask seed (checked when the server rebuilds it)
    credential: DeviceCredential
    signature: Sig64  # by credential.public_key over :func:`crypto.advertise_bytes`


class PeerKeys(Frozen):
    """A neighbour's advertisement as forwarded by the server (verifiable by the recipient)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    cid: Cid
    mask_pk: Key32
    enc_pk: Key32
    seed_commit: Key32
    credential: DeviceCredential
    signature: Sig64

    @classmethod
    def of(cls, msg: AdvertiseKeys) -> PeerKeys:
        return cls(
            cid=msg.sender,
            mask_pk=msg.mask_pk,
            enc_pk=msg.enc_pk,
            seed_commit=msg.seed_commit,
            credential=msg.credential,
            signature=msg.signature,
        )


class NeighbourKeys(Msg):
    """Stage 1, server -> client: the client's neighbours and their signed public keys."""

    type: Literal["secagg_neighbours"] = "secagg_neighbours"
    to: Cid
    neighbours: tuple[PeerKeys, ...]


class SealedShare(Frozen):
    """AEAD ciphertext of one pair of shares. ``peer`` is the recipient going up, the sender
    coming down."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    peer: Cid
    nonce: Annotated[bytes, Field(min_length=12, max_length=12)]
    ct: Annotated[bytes, Field(max_length=256)]


def _sealed_fields(share: SealedShare) -> ForwardedShare:
    return (share.peer, share.nonce, share.ct)


class _AsSealedShare:
    """The pydantic schema of a :data:`ForwardedShare`: validated as a :class:`SealedShare`
    (from the wire, from a dict, or from the tuple's own three fields), written as one."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        sealed = handler.generate_schema(SealedShare)
        as_sealed = core_schema.no_info_after_validator_function(_sealed_fields, sealed)

        def from_python(value: Any, validate: core_schema.ValidatorFunctionWrapHandler) -> Any:
            if isinstance(value, tuple) and len(value) == 3:
                value = {"peer": value[0], "nonce": value[1], "ct": value[2]}
            return validate(value)

        return core_schema.json_or_python_schema(
            json_schema=as_sealed,
            python_schema=core_schema.no_info_wrap_validator_function(from_python, as_sealed),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda s: {"peer": s[0], "nonce": s[1], "ct": s[2]}
            ),
        )


ForwardedShare = tuple[int, bytes, bytes]
"""One sealed share pair as the server forwards it: ``(peer, nonce, ct)``, ``peer`` the sender.

Why a plain tuple and not a :class:`SealedShare`: the server builds n * k of them per round,
its largest object count. A model instance (object, field dict, field set, all tracked by the
garbage collector) cost it 3-4 µs apiece; a tuple of an int and two bytes costs a tenth of
that, and the collector stops tracking it after one pass. The wire form is a
:class:`SealedShare`'s, byte for byte, and whatever a :class:`ForwardedShares` is built or
parsed from (the wire, dicts, tuples) is validated as a :class:`SealedShare`, so a device
checks forwarded shares exactly as before; only the server's own ``model_construct`` skips
that, as for every message it builds from data it validated on receipt."""


class EncryptedShares(Msg):
    """Stage 1 reply, client -> server: one sealed share pair per neighbour."""

    type: Literal["secagg_shares"] = "secagg_shares"
    sender: Cid
    # client-sent lists stop at their first bad item: pydantic otherwise makes one error
    # (kilobytes) per bad item, and a 1 MiB record of one-byte items held gigabytes
    shares: Annotated[tuple[SealedShare, ...], FailFast()]


class ForwardedShares(Msg):
    """Stage 2, server -> client: the sealed shares addressed to ``to`` by surviving senders."""

    type: Literal["secagg_forward"] = "secagg_forward"
    to: Cid
    shares: tuple[Annotated[ForwardedShare, _AsSealedShare()], ...]


class MaskedInput(Msg):
    """Stage 2 reply, client -> server: the masked vector, little-endian words mod 2**bits."""

    type: Literal["masked_input"] = "masked_input"
    sender: Cid
    bits: Annotated[int, Field(ge=2, le=62)]
    dim: Annotated[int, Field(ge=1, le=1 << 26)]
    data: bytes

    @model_validator(mode="after")
    def _length(self) -> MaskedInput:
        if len(self.data) != self.dim * prg.mask_dtype(self.bits).itemsize:
            raise ValueError("masked data length does not match dim and bits")
        return self

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=prg.mask_dtype(self.bits))


class ConsistencyRequest(Msg):
    """Stage 3, server -> client: the survivor set (clients whose masked input is in the sum),
    for the client to sign. An honest client signs exactly one set per round."""

    type: Literal["secagg_consistency"] = "secagg_consistency"
    to: Cid
    survivors: tuple[Cid, ...]


class ConsistencySignature(Msg):
    """Stage 3 reply, client -> server: its signature over the survivor set it was shown."""

    type: Literal["secagg_consistency_sig"] = "secagg_consistency_sig"
    sender: Cid
    signature: Sig64


class SetSignature(Frozen):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    cid: Cid
    signature: Sig64


class UnmaskRequest(Msg):
    """Stage 4, server -> client: the signed survivor set, the recipient's dropped neighbours,
    and its neighbours' signatures on that set.

    The client answers only if the set is the one it signed, at least ``t`` of its neighbours
    signed the same set, ids are in range, and every neighbour whose shares it holds is in
    exactly one of the two lists: then no two clients can be shown different sets, and the
    server gets, per owner, seed shares or key shares, never both.
    """

    type: Literal["secagg_unmask"] = "secagg_unmask"
    to: Cid
    survivors: tuple[Cid, ...]
    dropped: tuple[Cid, ...]
    signatures: tuple[SetSignature, ...] = ()


class ShareValue(Frozen):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    owner: Cid
    y: Annotated[bytes, Field(min_length=33, max_length=33)]


class UnmaskResponse(Msg):
    """Stage 4 reply, client -> server: shares it holds, seed shares XOR key shares per owner."""

    type: Literal["secagg_unmask_shares"] = "secagg_unmask_shares"
    sender: Cid
    # stop at the first bad item, as EncryptedShares.shares
    seed_shares: Annotated[tuple[ShareValue, ...], FailFast()]
    key_shares: Annotated[tuple[ShareValue, ...], FailFast()]


ClientToServer = (
    AdvertiseKeys | EncryptedShares | MaskedInput | ConsistencySignature | UnmaskResponse
)
ServerToClient = NeighbourKeys | ForwardedShares | ConsistencyRequest | UnmaskRequest

register_payload("masked_input", MaskedInput)
