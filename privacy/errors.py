"""One root exception for Sotto, and typed errors that say which side is at fault.

Like h11, a protocol error is either *local* (we were asked to do something the protocol
forbids) or *remote* (the peer sent something invalid). Callers decide policy: ingestion turns
remote errors into dead letters, local errors are bugs or misconfiguration.
"""

from __future__ import annotations

from enum import StrEnum


class ProtocolReason(StrEnum):
    """Why a peer's protocol message (or a round announcement) was refused. Stable strings."""

    ABORTED = "aborted"
    BAD_CREDENTIAL = "bad_credential"
    BAD_FORWARD = "bad_forward"
    BAD_INPUT = "bad_input"
    BAD_NEIGHBOURS = "bad_neighbours"
    BAD_SENDER = "bad_sender"
    BAD_SHARES = "bad_shares"
    BAD_SIGNATURE = "bad_signature"
    BAD_UNMASK = "bad_unmask"
    BAD_UNMASK_REQUEST = "bad_unmask_request"
    BOTH_SETS = "both_sets"
    BUDGET_TOO_HIGH = "budget_too_high"
    CHEATING_SHARES = "cheating_shares"
    DUPLICATE_CREDENTIAL = "duplicate_credential"
    EPSILON_UNDERSTATED = "epsilon_understated"
    MISROUTED = "misrouted"
    NO_DP_NOISE = "no_dp_noise"
    NOISE_OVERCLAIMED = "noise_overclaimed"
    NOT_IN_ROUND = "not_in_round"
    NOT_SURVIVOR = "not_survivor"
    NOT_SIGNED = "not_signed"
    OUT_OF_ORDER = "out_of_order"
    REPLAY = "replay"
    ROUND_TOO_SMALL = "round_too_small"
    SHARE_AUTH_FAILED = "share_auth_failed"
    TOO_FEW_SURVIVORS = "too_few_survivors"
    UNEXPECTED = "unexpected"
    UNKNOWN_CLIENT = "unknown_client"
    WEAK_KEY = "weak_key"
    WRONG_ROUND = "wrong_round"


class SottoError(Exception):
    """Root of every error Sotto raises on purpose."""


class ConfigError(SottoError):
    """The configuration or region policy is unusable; the message says what to fix."""


class ProtocolError(SottoError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (our bug or misuse)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something invalid. ``reason`` is a machine-readable code: a member of a
    reason enum (:class:`ProtocolReason`, ``privacy.wire.RejectReason``, ...); a plain string
    must be one of :class:`ProtocolReason`'s values."""

    def __init__(self, reason: StrEnum | str, detail: str = "") -> None:
        if not isinstance(reason, StrEnum):
            reason = ProtocolReason(reason)  # ValueError for an undeclared reason
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


class EnvelopeRejected(RemoteProtocolError):
    """An envelope failed validation; ``reason`` is one of :class:`privacy.wire.RejectReason`."""
