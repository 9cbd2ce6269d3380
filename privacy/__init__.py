"""Sotto's transport-free privacy core and every device<->backend contract.

Everything here is pure computation on bytes and numbers: no sockets, no clocks or secret
sources read behind the caller's back (a :class:`Randomness` and the time are passed in). The
one file touch is :mod:`privacy.adapter_file`'s private scratch file, because ONNX Runtime's
adapter API reads and writes adapter files by path only. edge_client/ and the backend drive
this over Kafka; tests drive it directly. Wire contracts (envelopes and payloads, round
messages, the adapter plan, manifest and its verification, the contribution layout, the
model graph's names, the episode features and the open app catalogue) are defined here once.
"""

from privacy.adapter_manifest import AdapterManifest, AdapterRejected, SignedAdapter, verify
from privacy.adapter_plan import AdapterPlan, AdapterStatus
from privacy.contribution import ContributionLayout, layout_named
from privacy.envelope import open_payload, parse, seal
from privacy.errors import (
    ConfigError,
    EnvelopeRejected,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SottoError,
)
from privacy.keys import KeyEntry, KeySet, PrivateKey
from privacy.policy import RegionConfig, RegionPolicy
from privacy.rand import Randomness, SeededRandomness, SystemRandomness
from privacy.round import RoundPlan, plan_round
from privacy.round_wire import Checkin, RoundClosed, RoundOpen
from privacy.wire import DeadLetter, Envelope, RejectReason, ReleasedAggregate, RoundSummary

__all__ = [
    "AdapterManifest",
    "AdapterPlan",
    "AdapterRejected",
    "AdapterStatus",
    "Checkin",
    "ConfigError",
    "ContributionLayout",
    "DeadLetter",
    "Envelope",
    "EnvelopeRejected",
    "KeyEntry",
    "KeySet",
    "LocalProtocolError",
    "PrivateKey",
    "ProtocolError",
    "Randomness",
    "RegionConfig",
    "RegionPolicy",
    "RejectReason",
    "ReleasedAggregate",
    "RemoteProtocolError",
    "RoundClosed",
    "RoundOpen",
    "RoundPlan",
    "RoundSummary",
    "SeededRandomness",
    "SignedAdapter",
    "SottoError",
    "SystemRandomness",
    "layout_named",
    "open_payload",
    "parse",
    "plan_round",
    "seal",
    "verify",
]
