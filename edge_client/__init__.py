"""The edge SDK: records agent steps on the device and sends private round summaries.

Installs alone (``pip install sotto``): it imports :mod:`privacy` and nothing of the backend."""

from __future__ import annotations

from privacy.lazy import exports

# name -> defining module; resolved on first use (PEP 562), so importing one submodule
# (say, the settings section) does not import the whole package (say, torch).
_EXPORTS = {
    "AdapterFeed": "edge_client.adapter_sync",
    "AgentObserver": "edge_client.autoglm",
    "AgentStep": "edge_client.steps",
    "ContextStore": "edge_client.context_store",
    "DeviceModel": "edge_client.runtime",
    "EdgeDevice": "edge_client.device",
    "KeySource": "edge_client.keys",
    "Outbox": "edge_client.outbox",
    "OutboxProducer": "edge_client.producer",
    "OutboxTransport": "edge_client.round_client",
    "PreferenceHint": "edge_client.hint",
    "RoundParticipant": "edge_client.round_client",
    "SendReceipt": "edge_client.device",
    "Suggestion": "edge_client.runtime",
    "apply": "edge_client.adapter_sync",
    "build_contribution": "edge_client.contribution",
    "personalize": "edge_client.autoglm",
    "published_keyset": "edge_client.keys",
    "summarize": "edge_client.summary",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = exports(__name__, _EXPORTS)
