"""The device side of a SecAgg+ round: answer the coordinator, send everything sealed home.

A :class:`RoundParticipant` wraps :class:`privacy.secagg.SecAggClient` for one device:

1. :meth:`RoundParticipant.checkin` sends a ``secagg_checkin`` with a fresh random token (no
   device id: the backend cannot link rounds of one device);
2. on the :class:`~privacy.round_wire.RoundOpen` that lists one of its tokens, it takes one
   unused device credential from its wallet (one per round, so rounds stay unlinkable), asks the
   ``contribution(round_open)`` callback for its vector (the learner's contribution builder
   plugs in here; by default the round summary's embedding), then clips, scales, rounds,
   adds its share of the DP noise and encodes it (:func:`privacy.round.client_input`) and
   starts the SecAgg+ client;
3. each server message addressed to it (neighbour keys, forwarded shares, the survivor set to
   sign, unmask request) gets exactly one reply; the client checks neighbours' credentials
   against the issuers the device trusts.

Every message leaves the device as a payload in an HPKE envelope sealed to the home
region's current key, through the durable outbox and the idempotent producer
(:class:`OutboxTransport`), to the home region's ingest topic only. The clear vector, the
masks' seeds and the private keys never leave the participant (nor its logs).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge_client.outbox import Outbox
from edge_client.producer import OutboxProducer
from privacy import quantize
from privacy.adapter_plan import AdapterPlan
from privacy.credential import CredentialWallet, IssuerVerifier
from privacy.envelope import seal
from privacy.errors import ProtocolError, RemoteProtocolError
from privacy.keys import KeyEntry
from privacy.policy import RegionConfig
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.round_check import DEFAULT_FLOOR, PrivacyFloor, check_round
from privacy.round_wire import Checkin, RoundClosed, RoundOpen
from privacy.secagg import SecAggClient
from privacy.secagg.messages import (
    ConsistencyRequest,
    ForwardedShares,
    NeighbourKeys,
    UnmaskRequest,
)
from privacy.wire import Frozen

if TYPE_CHECKING:
    from edge_client.device import EdgeDevice

log = logging.getLogger(__name__)

Contribution = Callable[[RoundOpen], np.ndarray]
ServerMessage = (
    RoundOpen | NeighbourKeys | ForwardedShares | ConsistencyRequest | UnmaskRequest | RoundClosed
)
STAGE_OF = {
    "round_open": "advertise",
    "secagg_neighbours": "shares",
    "secagg_forward": "masked",
    "secagg_consistency": "consistency",
    "secagg_unmask": "unmask",
}


class Transport(Protocol):
    """How a participant's payloads reach its home region's ingest topic."""

    def send(self, payload: Frozen, *, cohort: str, round: int, dedupe_key: str) -> None: ...

    def flush(self) -> int: ...


class OutboxTransport:
    """Seal to the home region's current key, store in the outbox, drain with the producer."""

    def __init__(
        self,
        home: RegionConfig,
        outbox: Outbox,
        producer: OutboxProducer,
        key_source: Callable[[], KeyEntry],
    ) -> None:
        self.home = home
        self.outbox = outbox
        self.producer = producer
        self.key_source = key_source

    def send(self, payload: Frozen, *, cohort: str, round: int, dedupe_key: str) -> None:
        key = self.key_source()
        if key.region != self.home.name:
            raise ValueError(f"key of {key.region!r} offered to a device of {self.home.name!r}")
        env = seal(payload, key=key, cohort=cohort, round=round)
        self.outbox.put(env.to_bytes(), self.home.t.ingest, cohort.encode(), dedupe_key=dedupe_key)

    def flush(self) -> int:
        return self.producer.flush_outbox()


def summary_contribution(device: EdgeDevice) -> Contribution:
    """The default contribution: the device's round-summary embedding (128-d)."""
    return lambda announce: device.build_summary(announce.round).vector()


def adapter_plan(announce: RoundOpen) -> AdapterPlan | None:
    """The learner's plan for the cohort carried by the round (what to shadow-evaluate)."""
    return announce.adapter_plan


@dataclass
class _Active:
    announce: RoundOpen
    cid: int
    client: SecAggClient


@dataclass(frozen=True, slots=True)
class KeptInput:
    """What a simulated device fed into a round (tests compare the release with it)."""

    quantized: np.ndarray  # clipped, scaled, rounded, signed integer units
    noise: np.ndarray  # this device's noise share, integer units


class RoundParticipant:
    """One device's rounds. ``keep_inputs`` keeps its own inputs in memory (simulation only).

    ``wallet`` holds the device's unused one-round credentials; ``trust`` the credential
    issuers it accepts for its neighbours, judged by ``clock`` when a round opens."""

    def __init__(
        self,
        region: str,
        cohort: str,
        transport: Transport,
        contribution: Contribution,
        *,
        wallet: CredentialWallet,
        trust: IssuerVerifier,
        clock: Callable[[], float] = time.time,
        layout: str = "",
        randomness: Randomness = DEFAULT_RANDOMNESS,
        keep_inputs: bool = False,
        floor: PrivacyFloor = DEFAULT_FLOOR,
    ) -> None:
        self.region = region
        self.cohort = cohort
        self.transport = transport
        self.contribution = contribution
        self.layout = layout
        self.randomness = randomness
        self.keep_inputs = keep_inputs
        self.floor = floor
        self.wallet = wallet
        self.trust = trust
        self.clock = clock
        self.refused: dict[str, str] = {}  # round_id -> why this device stayed out
        self._tokens: set[str] = set()
        self._active: dict[str, _Active] = {}
        self.kept: dict[str, KeptInput] = {}

    def __repr__(self) -> str:
        return f"RoundParticipant(region={self.region!r}, cohort={self.cohort!r})"

    @property
    def tokens(self) -> frozenset[str]:
        return frozenset(self._tokens)

    def cid(self, round_id: str) -> int | None:
        act = self._active.get(round_id)
        return None if act is None else act.cid

    def checkin(self, round_hint: int = 0) -> str:
        """Announce availability for the cohort's next round; returns the (random) token."""
        token = secrets.token_hex(16)
        self._tokens.add(token)
        self.transport.send(
            Checkin(token=token, layout=self.layout),
            cohort=self.cohort,
            round=round_hint,
            dedupe_key=f"checkin|{token}",
        )
        return token

    def handle(self, msg: ServerMessage) -> bool:
        """React to one rounds-topic message; True when a reply was queued."""
        if isinstance(msg, RoundOpen):
            return self._on_open(msg)
        act = self._active.get(msg.round_id)
        if act is None:
            return False
        if isinstance(msg, RoundClosed):
            del self._active[msg.round_id]
            return False
        if msg.to != act.cid:
            return False
        try:
            reply = act.client.receive(msg)
        except ProtocolError as exc:  # a repeat (outbox republish) or a refused request
            log.debug("round %s: %s ignored (%s)", msg.round_id, msg.type, type(exc).__name__)
            return False
        self._send(act.announce, reply)
        return True

    def vanish(self, round_id: str) -> None:
        """Drop out of a round (simulated dropout): forget its state, answer nothing more."""
        self._active.pop(round_id, None)

    def _on_open(self, announce: RoundOpen) -> bool:
        if (announce.region, announce.cohort) != (self.region, self.cohort):
            return False
        if announce.round_id in self._active:
            return False
        mine = [t for t in announce.participants if t in self._tokens]
        if not mine:
            return False
        self._tokens.discard(mine[0])
        try:
            check_round(announce, self.floor)  # the device's own check of the privacy promise
        except RemoteProtocolError as exc:
            self.refused[announce.round_id] = exc.reason
            log.warning("round %s refused by the device: %s", announce.round_id, exc)
            return False
        cid = announce.participants.index(mine[0])
        plan = announce.plan()
        try:
            x = np.asarray(self.contribution(announce), dtype=np.float64).reshape(-1)
            if x.size != announce.dim:
                raise ValueError(f"contribution has {x.size} values, round wants {announce.dim}")
            q = quantize.quantize(x, plan.quant, self.randomness)
        except ValueError as exc:  # not a participant this time: the server sees a dropout
            log.warning("round %s: no contribution (%s)", announce.round_id, exc)
            return False
        try:
            identity = self.wallet.take()
        except LookupError:
            self.refused[announce.round_id] = "no_credential"
            log.warning("round %s: no unused device credential, sitting it out", announce.round_id)
            return False
        noise = plan.noise.sample(self.randomness)
        vec = quantize.encode(q + noise, plan.quant.bits)
        if self.keep_inputs:
            self.kept[announce.round_id] = KeptInput(q, noise)
        client = SecAggClient(
            plan.params,
            cid,
            vec,
            self.randomness,
            identity=identity,
            verifier=self.trust.at(self.clock()),
        )
        self._active[announce.round_id] = _Active(announce, cid, client)
        self._send(announce, client.start())
        return True

    def _send(self, announce: RoundOpen, payload: Frozen) -> None:
        cid = self._active[announce.round_id].cid
        self.transport.send(
            payload,
            cohort=announce.cohort,
            round=announce.round,
            dedupe_key=f"{announce.round_id}|{payload.type}|{cid}",  # type: ignore[attr-defined]
        )
