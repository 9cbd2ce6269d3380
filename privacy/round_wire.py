"""Wire contracts of a SecAgg+ round over Kafka: what travels on ``<region>.rounds`` and which
device payloads ride in envelopes on ``<region>.ingest``.

Devices -> region (HPKE envelopes on the ingest topic, one payload each):

* :class:`Checkin` (``secagg_checkin``): "a device of this cohort is available". It carries
  a fresh random ``token`` instead of any device id, so the backend cannot link a device's
  rounds; the device recognises itself in :class:`RoundOpen` by its token.
* the SecAgg+ client messages (``secagg_advertise``, ``secagg_shares``, ``masked_input``,
  ``secagg_consistency_sig``, ``secagg_unmask_shares``), registered here as envelope payloads.

Region -> devices (clear MessagePack on the rounds topic, :func:`rounds_message_bytes`; JSON
from coordinators not yet updated is still read; keyed by ``round_id``): :class:`RoundOpen`,
the SecAgg+ server messages (``secagg_neighbours``, ``secagg_forward``,
``secagg_consistency``, ``secagg_unmask``),
and :class:`RoundClosed`. Nothing on the rounds topic is secret: public parameters, public
keys, AEAD ciphertexts only the addressee can open, and survivor/dropped id lists.

Pure data, no I/O (like the rest of :mod:`privacy`).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final, Literal

import msgspec
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from privacy import dp, quantize
from privacy.adapter_plan import AdapterPlan
from privacy.round import RoundPlan
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    RoundParams,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.wire import ID_PATTERN, REGION_PATTERN, Frozen, Round, register_payload

TOKEN_PATTERN = r"^[0-9a-f]{32}$"

# The device-side stage names (as in privacy.secagg.simulate.STAGES) and the client message
# type that answers each; the coordinator collects them in this order.
STAGE_OF_TYPE: dict[str, str] = {
    "secagg_advertise": "advertise",
    "secagg_shares": "shares",
    "masked_input": "masked",
    "secagg_consistency_sig": "consistency",
    "secagg_unmask_shares": "unmask",
}
CLIENT_PAYLOADS = frozenset(STAGE_OF_TYPE)


def round_id_for(region: str, cohort: str, round: int) -> str:
    """The SecAgg+ round id: unique per (region, cohort, round), so masks, share encryption
    and every message are bound to exactly one round of one cohort of one region."""
    rid = f"{region}:{cohort}:{round}"
    if len(rid) <= 64:
        return rid
    digest = hashlib.sha256(cohort.encode()).hexdigest()[:16]
    return f"{region}:{digest}:{round}"


class Checkin(Frozen):
    """A device announces it can take part in its cohort's next round (no device id)."""

    type: Literal["secagg_checkin"] = "secagg_checkin"
    v: Literal[1] = 1
    token: Annotated[str, Field(pattern=TOKEN_PATTERN)]
    # contribution layouts the device has; no NUL: the round sink stores it as text, which
    # PostgreSQL refuses with NUL in it (and with it the checkpoint's whole batch, every retry)
    layout: Annotated[str, Field(max_length=64, pattern=r"^[^\x00]*$")] = ""


class NoiseSpec(Frozen):
    """The public fields of :class:`privacy.dp.NoisePlan` (what every client adds)."""

    client_variance: Annotated[float, Field(ge=0)]
    min_clients: Annotated[int, Field(ge=1)]
    sensitivity: Annotated[float, Field(ge=0)]
    dim: Annotated[int, Field(ge=1)]
    noise_multiplier: Annotated[float, Field(ge=0)]
    bound: Annotated[int, Field(ge=0)]

    @classmethod
    def of(cls, plan: dp.NoisePlan) -> NoiseSpec:
        return cls(
            client_variance=plan.client_variance,
            min_clients=plan.min_clients,
            sensitivity=plan.sensitivity,
            dim=plan.dim,
            noise_multiplier=plan.noise_multiplier,
            bound=plan.bound,
        )

    def to_plan(self) -> dp.NoisePlan:
        return dp.NoisePlan(**self.model_dump())


class RoundOpen(Frozen):
    """Announces one round to the cohort: its public parameters and who is in it.

    ``participants[cid]`` is the check-in token of the device that plays client ``cid``.
    ``adapter_plan`` is the learner's current :class:`~privacy.adapter_plan.AdapterPlan` for the
    cohort, so devices know what to run and shadow-evaluate; absent when the learner has
    published none. A plan for another cohort makes the announcement invalid.
    """

    type: Literal["round_open"] = "round_open"
    v: Literal[1] = 1
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    cohort: Annotated[str, Field(pattern=ID_PATTERN)]
    round: Round
    params: RoundParams
    layout: Annotated[str, Field(max_length=64)]
    clip: Annotated[float, Field(gt=0)]
    scale: Annotated[float, Field(gt=0)]
    noise: NoiseSpec
    epsilon: Annotated[float, Field(ge=0)]  # this round's epsilon (0: test round, no DP)
    delta: Annotated[float, Field(ge=0, lt=1)]
    participants: tuple[Annotated[str, Field(pattern=TOKEN_PATTERN)], ...]
    stage_timeout_s: Annotated[float, Field(gt=0)]
    adapter_plan: AdapterPlan | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RoundOpen:
        if self.adapter_plan is not None and self.adapter_plan.cohort != self.cohort:
            raise ValueError("adapter_plan is for another cohort")
        if self.params.round_id != round_id_for(self.region, self.cohort, self.round):
            raise ValueError("params.round_id does not match region, cohort and round")
        if len(self.participants) != self.params.n:
            raise ValueError("one participant token per client id is required")
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participant tokens repeat")
        if self.noise.dim != self.params.dim:
            raise ValueError("noise plan and round disagree on dim")
        return self

    @property
    def round_id(self) -> str:
        return self.params.round_id

    @property
    def dim(self) -> int:
        return self.params.dim

    def plan(self) -> RoundPlan:
        """The :class:`privacy.round.RoundPlan` a device needs for ``client_input``."""
        quant = quantize.QuantConfig(
            dim=self.params.dim, clip=self.clip, scale=self.scale, bits=self.params.bits
        )
        return RoundPlan(self.params, quant, self.noise.to_plan())

    def cid_of(self, token: str) -> int | None:
        try:
            return self.participants.index(token)
        except ValueError:
            return None


class RoundClosed(Frozen):
    """The round is over: ``released`` (a DP sum went to the aggregates topic) or ``aborted``
    (too many dropouts, nothing released). Devices drop their round state on it."""

    type: Literal["round_closed"] = "round_closed"
    v: Literal[1] = 1
    round_id: Annotated[str, Field(pattern=ID_PATTERN)]
    outcome: Literal["released", "aborted"]
    reason: Annotated[str, Field(max_length=256)] = ""


RoundsMessage = Annotated[
    RoundOpen | NeighbourKeys | ForwardedShares | ConsistencyRequest | UnmaskRequest | RoundClosed,
    Field(discriminator="type"),
]
_ROUNDS = TypeAdapter(RoundsMessage)


ROUNDS_PREFIX: Final = b"\xf5SR\x01"  # never the start of JSON; "S"otto "R"ounds, version 1
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()
RoundsMessageT = (
    RoundOpen | NeighbourKeys | ForwardedShares | ConsistencyRequest | UnmaskRequest | RoundClosed
)


def rounds_message_bytes(msg: RoundsMessageT) -> bytes:
    """A rounds-topic message as the coordinator publishes it: the prefix, then the model's
    fields as one MessagePack map with bytes raw (public keys, signatures, sealed shares are
    most of a NeighbourKeys or ForwardedShares; base64 made them a third larger)."""
    return ROUNDS_PREFIX + _ENCODER.encode(msg.model_dump(mode="python"))


def parse_rounds_message(raw: bytes) -> RoundsMessageT:
    """Bytes from the rounds topic (binary, or JSON from before the binary codec) to a
    message; raises ``pydantic.ValidationError`` for anything else, framing included."""
    if raw[:1] != ROUNDS_PREFIX[:1]:
        return _ROUNDS.validate_json(raw)
    if raw[:4] != ROUNDS_PREFIX:
        raise _invalid("not a rounds message of a known version")
    try:
        obj = _DECODER.decode(raw[4:])
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _invalid(str(exc)[:80]) from None
    return _ROUNDS.validate_python(obj)


def _invalid(why: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "RoundsMessage", [{"type": "value_error", "loc": (), "input": b"", "ctx": {"error": why}}]
    )


def envelope_bytes_estimate(dim: int, bits: int) -> int:
    """Upper estimate of the sealed ``masked_input`` envelope for ``dim`` words of ``bits``.

    v1's size: base64 of the words in the payload JSON, base64 again around the ciphertext.
    A v2 envelope is ~0.56 of it (the words raw, under 256 bytes more), but while v1 devices
    may still answer a round, the ingest limit has to admit theirs."""
    raw = dim * (4 if bits <= 32 else 8)
    payload = 4 * (raw + 2) // 3 + 256
    return 4 * (payload + 32 + 16 + 2) // 3 + 512


for _name, _model in (
    ("secagg_checkin", Checkin),
    ("secagg_advertise", AdvertiseKeys),
    ("secagg_shares", EncryptedShares),
    ("masked_input", MaskedInput),
    ("secagg_consistency_sig", ConsistencySignature),
    ("secagg_unmask_shares", UnmaskResponse),
):
    register_payload(_name, _model)
