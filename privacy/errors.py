"""One root exception for Sotto, and typed errors that say which side is at fault.

Like h11, a protocol error is either *local* (we were asked to do something the protocol
forbids) or *remote* (the peer sent something invalid). Callers decide policy: ingestion turns
remote errors into dead letters, local errors are bugs or misconfiguration.
"""

from __future__ import annotations


class SottoError(Exception):
    """Root of every error Sotto raises on purpose."""


class ConfigError(SottoError):
    """The configuration or region policy is unusable; the message says what to fix."""


class ProtocolError(SottoError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (our bug or misuse)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something invalid. ``reason`` is a machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EnvelopeRejected(RemoteProtocolError):
    """An envelope failed validation; ``reason`` is one of :class:`privacy.wire.RejectReason`."""
