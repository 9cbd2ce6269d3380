"""The rounds topic's binary codec: every server message round-trips, is smaller than its
JSON, JSON from an older coordinator is still read, and bad bytes are a ValidationError
(what every reader of the topic already catches), never another exception."""

from __future__ import annotations

import json

import msgspec
import pytest
from pydantic import ValidationError

from privacy.adapter_plan import AdapterPlan
from privacy.rand import SeededRandomness
from privacy.round import plan_round
from privacy.round_wire import (
    ROUNDS_PREFIX,
    NoiseSpec,
    RoundClosed,
    RoundOpen,
    parse_rounds_message,
    round_id_for,
    rounds_message_bytes,
)
from privacy.secagg.messages import ForwardedShares, RoundParams, SealedShare

from .helpers import make_client, make_inputs, make_server

PARAMS = RoundParams(round_id="eu:c1:4", n=12, k=11, t=7, min_clients=7, dim=64, bits=16)


def server_messages() -> list:
    """One message of each server stage from a real round."""
    rng = SeededRandomness.from_int(3)
    enc = make_inputs(PARAMS)[1]
    server = make_server(PARAMS, rng)
    clients = {c: make_client(PARAMS, c, enc[c], rng) for c in range(PARAMS.n)}
    for cl in clients.values():
        server.receive(cl.start())
    out = []
    for _ in range(4):  # neighbours, forward, consistency, unmask
        stage = server.close_stage()
        out.append(stage[0])
        for m in stage:
            reply = clients[m.to].receive(m)
            if reply is not None:
                server.receive(reply)
    return out


def announce() -> RoundOpen:
    rid = round_id_for("eu", "c1", 4)
    rp = plan_round(rid, n=12, dim=64, clip=1.0, scale=256.0, epsilon=1.0, delta=1e-6)
    return RoundOpen(
        region="eu",
        cohort="c1",
        round=4,
        params=rp.params,
        layout="t",
        clip=1.0,
        scale=256.0,
        noise=NoiseSpec.of(rp.noise),
        epsilon=1.0,
        delta=1e-6,
        participants=tuple(f"{i:032x}" for i in range(12)),
        stage_timeout_s=5.0,
        adapter_plan=AdapterPlan(cohort="c1", live_version=2, shadow_version=3),
    )


def test_every_rounds_message_roundtrips_in_both_codecs() -> None:
    msgs = [announce(), *server_messages(), RoundClosed(round_id="eu:c1:4", outcome="released")]
    assert [m.type for m in msgs] == [
        "round_open",
        "secagg_neighbours",
        "secagg_forward",
        "secagg_consistency",
        "secagg_unmask",
        "round_closed",
    ]
    for msg in msgs:
        binary = rounds_message_bytes(msg)
        assert binary[:4] == ROUNDS_PREFIX
        assert parse_rounds_message(binary) == msg
        assert parse_rounds_message(msg.model_dump_json().encode()) == msg  # older coordinators
    neighbours, forward = msgs[1], msgs[2]
    for msg in (neighbours, forward):  # keys, signatures, sealed shares: raw, not base64
        assert len(rounds_message_bytes(msg)) < 0.85 * len(msg.model_dump_json())


@pytest.mark.parametrize(
    "raw",
    [
        ROUNDS_PREFIX[:3],
        b"\xf5SR\x02" + msgspec.msgpack.encode({"type": "round_closed"}),
        ROUNDS_PREFIX + b"\xc1",
        ROUNDS_PREFIX + b"\x91" * 50_000 + b"\x01",
        ROUNDS_PREFIX + msgspec.msgpack.encode([1, 2]),
        ROUNDS_PREFIX + msgspec.msgpack.encode({"type": "round_closed", "round_id": "x"}),
        ROUNDS_PREFIX + msgspec.msgpack.encode({"type": "nope"}),
        b"\xf5 not ours",
    ],
)
def test_bad_rounds_bytes_are_validation_errors(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_rounds_message(raw)


def test_forwarded_shares_keep_the_sealed_share_wire_form() -> None:
    """The server forwards shares as ``(peer, nonce, ct)`` tuples, not ``SealedShare`` models:
    both codecs write exactly the bytes the models gave, a device reads them back as the same
    message, and whatever a ``ForwardedShares`` is built or parsed from is checked as a
    ``SealedShare`` is."""
    forward = server_messages()[1]
    assert forward.shares and all(type(s) is tuple for s in forward.shares)
    as_models = ForwardedShares(
        round_id=forward.round_id,
        to=forward.to,
        shares=tuple(SealedShare(peer=p, nonce=n, ct=c) for p, n, c in forward.shares),
    )
    assert as_models == forward  # models given to the constructor become the same tuples
    assert ForwardedShares(round_id=forward.round_id, to=forward.to, shares=forward.shares) == (
        forward
    )
    assert rounds_message_bytes(as_models) == rounds_message_bytes(forward)
    assert as_models.model_dump_json() == forward.model_dump_json()
    first = forward.model_dump(mode="json")["shares"][0]
    assert list(first) == ["peer", "nonce", "ct"]
    for edit in ({"peer": -1}, {"nonce": "AAAA"}, {"ct": "A" * 400}, {"extra": 1}):
        raw = forward.model_dump(mode="json")
        raw["shares"][0] = {**first, **edit}
        with pytest.raises(ValidationError):
            ForwardedShares.model_validate_json(json.dumps(raw))
        with pytest.raises(ValidationError):
            parse_rounds_message(json.dumps(raw).encode())
    peer, nonce, ct = forward.shares[0]
    for bad in ((-1, nonce, ct), (peer, nonce[:5], ct), (peer, nonce, bytes(300)), (peer, nonce)):
        with pytest.raises(ValidationError):
            ForwardedShares(round_id=forward.round_id, to=forward.to, shares=(bad,))
