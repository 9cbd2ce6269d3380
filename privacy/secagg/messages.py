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

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from privacy import prg
from privacy.wire import ID_PATTERN, Frozen, register_payload

PROTOCOL_VERSION: Literal[1] = 1
Cid = Annotated[int, Field(ge=0, lt=1 << 31)]
RoundId = Annotated[str, Field(pattern=ID_PATTERN)]
Key32 = Annotated[bytes, Field(min_length=32, max_length=32)]


class Msg(Frozen):
    """Base of SecAgg+ messages: frozen, no unknown fields, bytes as base64 in JSON."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    v: Literal[1] = PROTOCOL_VERSION
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
    v: Literal[1] = PROTOCOL_VERSION
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
        **kw: int,
    ) -> RoundParams:
        """Defaults: ``k = min(n-1, 2*ceil(3*log2(n)/2))`` (O(log n), even), ``t = k//2 + 1``.

        With ``dropout`` (the share of clients expected to vanish), ``k`` grows until the
        chance that some client keeps fewer than ``t`` surviving neighbours is below
        :data:`ABORT_RISK` (see :func:`degree_for_dropout`)."""
        if k is None:
            k = n - 1 if n <= 32 else 2 * int(np.ceil(1.5 * np.log2(n)))
            if dropout is not None:
                k = max(k, degree_for_dropout(n, dropout))
            k = min(k, n - 1)
        t = kw.pop("t", k // 2 + 1)
        min_clients = kw.pop("min_clients", max(t, int(np.ceil(0.5 * n))))
        return cls(round_id=round_id, n=n, k=k, t=t, min_clients=min_clients, dim=dim, bits=bits)


ABORT_RISK = 1e-6


def _below_threshold(k: int, survive: float) -> float:
    """P(Binomial(k, survive) < k//2 + 1): one client's neighbourhood falls below t."""
    t = k // 2 + 1
    return sum(math.comb(k, i) * survive**i * (1 - survive) ** (k - i) for i in range(t))


def degree_for_dropout(n: int, dropout: float, risk: float = ABORT_RISK) -> int:
    """The smallest even k whose union bound ``n * P(neighbourhood < t)`` is at most ``risk``.

    Why: with k = O(log n) and t = k/2 + 1 (needed so that no server learns both a client's
    seed and key shares), a dropout rate near 30 % makes some neighbourhood fall below t and
    the whole round abort. Bell et al. size k from the expected dropout; so do we.
    """
    if not 0 <= dropout < 0.5:
        raise ValueError("dropout must be in [0, 0.5): t > k/2 survivors are needed")
    k = 2
    while k < n - 1 and n * _below_threshold(k, 1 - dropout) > risk:
        k += 2
    return min(k, n - 1)


class AdvertiseKeys(Msg):
    """Stage 0, client -> server: this round's two X25519 public keys."""

    type: Literal["secagg_advertise"] = "secagg_advertise"
    sender: Cid
    mask_pk: Key32  # agreement key for pairwise masks
    enc_pk: Key32  # agreement key for encrypting shares


class PeerKeys(Frozen):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    cid: Cid
    mask_pk: Key32
    enc_pk: Key32


class NeighbourKeys(Msg):
    """Stage 1, server -> client: the client's neighbours and their public keys."""

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


class EncryptedShares(Msg):
    """Stage 1 reply, client -> server: one sealed share pair per neighbour."""

    type: Literal["secagg_shares"] = "secagg_shares"
    sender: Cid
    shares: tuple[SealedShare, ...]


class ForwardedShares(Msg):
    """Stage 2, server -> client: the sealed shares addressed to ``to`` by surviving senders."""

    type: Literal["secagg_forward"] = "secagg_forward"
    to: Cid
    shares: tuple[SealedShare, ...]


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


class UnmaskRequest(Msg):
    """Stage 3, server -> client: who sent a masked input (survivors) and who did not (dropped).

    The server asks for self-mask seed shares of survivors and pairwise-key shares of dropped
    clients; the two sets must be disjoint or the client refuses.
    """

    type: Literal["secagg_unmask"] = "secagg_unmask"
    to: Cid
    survivors: tuple[Cid, ...]
    dropped: tuple[Cid, ...]


class ShareValue(Frozen):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    owner: Cid
    y: Annotated[bytes, Field(min_length=33, max_length=33)]


class UnmaskResponse(Msg):
    """Stage 3 reply, client -> server: shares it holds, seed shares XOR key shares per owner."""

    type: Literal["secagg_unmask_shares"] = "secagg_unmask_shares"
    sender: Cid
    seed_shares: tuple[ShareValue, ...]
    key_shares: tuple[ShareValue, ...]


ClientToServer = AdvertiseKeys | EncryptedShares | MaskedInput | UnmaskResponse
ServerToClient = NeighbourKeys | ForwardedShares | UnmaskRequest

register_payload("masked_input", MaskedInput)
