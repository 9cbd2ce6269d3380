from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privacy import envelope, quantize, shamir, wire
from privacy.errors import LocalProtocolError, RemoteProtocolError
from privacy.keys import KeyEntry, KeyStatus, PrivateKey
from privacy.rand import SeededRandomness
from privacy.round import client_input, plan_round, release
from privacy.secagg import crypto
from privacy.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    RoundParams,
    ShareValue,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.server import RoundAborted
from privacy.secagg.simulate import STAGES, run_round
from privacy.secagg.states import TRANSITIONS, ClientState, Role, ServerState

from .helpers import make_client, make_inputs, make_server

PLUS = RoundParams(round_id="plus", n=30, k=20, t=11, min_clients=15, dim=64, bits=20)
CLASSIC = RoundParams(round_id="classic", n=12, k=11, t=7, min_clients=7, dim=64, bits=16)


def _drop(n: int, frac: float, seed: int) -> set[int]:
    data = np.random.default_rng(seed)
    return set(data.choice(n, size=int(round(frac * n)), replace=False).tolist())


@pytest.mark.parametrize("params", [PLUS, CLASSIC], ids=["secagg+", "classic"])
@pytest.mark.parametrize("frac", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("stage", ["shares", "masked", "unmask"])
def test_exact_sum_with_dropouts(params: RoundParams, frac: float, stage: str) -> None:
    raw, enc = make_inputs(params)
    gone = _drop(params.n, frac, seed=len(stage))
    result = run_round(params, enc, drop={stage: gone}, rng=SeededRandomness.from_int(7))
    # Dropping before the masked input removes the input; dropping at unmask does not.
    expected_in = set(range(params.n)) - (gone if stage != "unmask" else set())
    assert set(result.survivors) == expected_in
    expected = np.sum([raw[c] for c in sorted(expected_in)], axis=0)
    assert np.array_equal(quantize.decode(result.total, params.bits), expected)


def test_dropouts_at_every_stage_at_once() -> None:
    raw, enc = make_inputs(PLUS, seed=4)
    drop = {"advertise": {0, 1}, "shares": {2}, "masked": {3, 4}, "unmask": {5, 6}}
    result = run_round(PLUS, enc, drop=drop, rng=SeededRandomness.from_int(8))
    assert set(result.survivors) == set(range(5, 30))
    assert result.dropped == (3, 4)  # advertised/shared are not in U2 -> nothing to unmask
    assert np.array_equal(
        quantize.decode(result.total, PLUS.bits), np.sum([raw[c] for c in range(5, 30)], axis=0)
    )


@pytest.mark.parametrize("stage", ["shares", "masked"])
def test_below_min_clients_the_round_aborts(stage: str) -> None:
    _, enc = make_inputs(PLUS)
    gone = set(range(PLUS.n - PLUS.min_clients + 1))  # leaves min_clients - 1
    with pytest.raises(RoundAborted, match="min_clients"):
        run_round(PLUS, enc, drop={stage: gone}, rng=SeededRandomness.from_int(1))


def test_too_few_share_holders_at_unmask_aborts_and_releases_nothing() -> None:
    """Enough clients answer (>= min_clients) but some survivor has < t share holders among
    them (k = 20 of 29 others are neighbours, t = 11): nothing can be released."""
    params = PLUS
    _, enc = make_inputs(params)
    rng = SeededRandomness.from_int(2)
    server = make_server(params, rng)
    clients = {c: make_client(params, c, enc[c], rng) for c in range(params.n)}
    for cl in clients.values():
        server.receive(cl.start())
    for _ in range(3):  # neighbours, forwarded shares, consistency
        for m in server.close_stage():
            server.receive(clients[m.to].receive(m))
    requests = server.close_stage()
    for m in requests[: params.min_clients]:
        server.receive(clients[m.to].receive(m))
    with pytest.raises(RoundAborted, match="< t=11"):
        server.close_stage()
    assert server.state == ServerState.ABORTED
    with pytest.raises(LocalProtocolError):
        server.result()


def _run_to_unmask(params: RoundParams, enc, rng, drop_masked: set[int] = frozenset()):
    server = make_server(params, rng)
    clients = {c: make_client(params, c, enc[c], rng) for c in range(params.n)}
    for cl in clients.values():
        server.receive(cl.start())
    for m in server.close_stage():
        server.receive(clients[m.to].receive(m))
    masked = {}
    for m in server.close_stage():
        if m.to not in drop_masked:
            masked[m.to] = clients[m.to].receive(m)
            server.receive(masked[m.to])
    for m in server.close_stage():  # the consistency round: every survivor signs U3
        server.receive(clients[m.to].receive(m))
    return server, clients, masked, server.close_stage()


SPARSE = RoundParams(round_id="sparse", n=120, k=24, t=13, min_clients=60, dim=16, bits=20)


@pytest.mark.parametrize("cheater", [None, 18])
def test_ring_neighbours_are_rebuilt_from_shared_point_sets(cheater: int | None) -> None:
    """In a sparse graph, owners next to each other in the ring are rebuilt from one set of t
    holders (so far fewer Lagrange weight sets than owners), the sum is exact, and a holder
    who returns wrong shares for every owner is still found and excluded."""
    raw, enc = make_inputs(SPARSE, seed=11)
    gone = _drop(SPARSE.n, 0.1, seed=11)
    server, clients, _, requests = _run_to_unmask(SPARSE, enc, SeededRandomness.from_int(11), gone)
    for m in requests:
        resp = clients[m.to].receive(m)
        if m.to == cheater:
            bump = [ShareValue(owner=s.owner, y=bytes(32) + b"\x01") for s in resp.seed_shares]
            resp = resp.model_copy(update={"seed_shares": tuple(bump)})
        server.receive(resp)
    server.close_stage()
    result = server.result()
    survivors = sorted(set(range(SPARSE.n)) - gone)
    assert list(result.survivors) == survivors
    expected = np.sum([raw[c] for c in survivors], axis=0)
    assert np.array_equal(quantize.decode(result.total, SPARSE.bits), expected)
    assert result.excluded == (() if cheater is None else (cheater,))
    if cheater is None:  # one set of weights per run of owners, not one per owner
        assert len(server._lagrange._weights) <= SPARSE.n / 3


def test_fewer_than_t_shares_cannot_recover_an_input() -> None:
    """The server's view with t-1 seed shares of a survivor does not unmask its input."""
    params = RoundParams(round_id="priv", n=10, k=9, t=6, min_clients=6, dim=32, bits=16)
    raw, enc = make_inputs(params)
    server, clients, masked, requests = _run_to_unmask(params, enc, SeededRandomness.from_int(3))
    victim = 0
    true_seed = clients[victim]._seed
    answers = [clients[m.to].receive(m) for m in requests if m.to != victim]
    shares = [
        shamir.Share.from_bytes(a.sender + 1, s.y)
        for a in answers
        for s in a.seed_shares
        if s.owner == victim
    ]
    assert len(shares) == params.n - 1 >= params.t
    with pytest.raises(ValueError):
        shamir.combine(shares[: params.t - 1], params.t)
    guess = shamir.interpolate_unchecked(shares[: params.t - 1]).to_bytes(33, "big")[-32:]
    assert guess != true_seed
    # Unmasking the victim's own masked input with the guess leaves noise, not its input
    # (its pairwise masks are still on it too; remove those with the true keys to be generous).
    y = masked[victim].vector().copy()
    y -= crypto.self_mask(guess, params.round_id, params.dim, params.bits)
    cl = clients[victim]
    for j in cl._held or range(1, params.n):
        seed = crypto.pair_seed(cl._mask_sk, cl._neighbours[j][0], params.round_id, victim, j)
        y -= (
            crypto.pair_mask(seed, params.dim, params.bits)
            if victim < j
            else -crypto.pair_mask(seed, params.dim, params.bits)
        )
    y &= np.uint32((1 << params.bits) - 1)
    assert not np.array_equal(quantize.decode(y, params.bits), raw[victim])
    # with t shares the same procedure does recover the seed
    assert shamir.combine(shares[: params.t], params.t) == true_seed


def test_masked_inputs_look_uniform() -> None:
    """A client's masked vector is uniform mod 2**b even when its input is constant."""
    params = RoundParams(round_id="unif", n=8, k=7, t=5, min_clients=5, dim=20_000, bits=8)
    enc = {c: np.zeros(params.dim, dtype=np.int64) for c in range(params.n)}
    enc[0] = np.full(params.dim, 37, dtype=np.int64)
    _, _, masked, _ = _run_to_unmask(params, enc, SeededRandomness.from_int(4))
    for c in (0, 3):
        v = masked[c].vector().astype(np.int64)
        counts = np.bincount(v, minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4
        assert stats.kstest((v + 0.5) / 256, "uniform").pvalue > 1e-4
    # power check: the unmasked constant input is (of course) rejected by the same test
    assert stats.chisquare(np.bincount(enc[0], minlength=256)).pvalue < 1e-4


# --- typed errors: replay, out of order, wrong round, both-sets refusal -----------------


def _fresh(params=CLASSIC, seed=5):
    raw, enc = make_inputs(params)
    rng = SeededRandomness.from_int(seed)
    return make_server(params, rng), {
        c: make_client(params, c, enc[c], rng) for c in range(params.n)
    }


def test_replayed_and_out_of_order_client_messages_are_rejected() -> None:
    server, clients = _fresh()
    adv = [cl.start() for cl in clients.values()]
    server.receive(adv[0])
    with pytest.raises(RemoteProtocolError) as err:
        server.receive(adv[0])
    assert err.value.reason == "replay" and "client 0" in str(err.value)
    for a in adv[1:]:
        server.receive(a)
    neighbours = server.close_stage()
    with pytest.raises(RemoteProtocolError) as err:
        server.receive(adv[1])  # a stage-0 message in stage 1
    assert err.value.reason == "out_of_order" and "collect_shares" in str(err.value)
    shares = [clients[m.to].receive(m) for m in neighbours]
    fake = MaskedInput(round_id=CLASSIC.round_id, sender=1, bits=16, dim=64, data=bytes(256))
    with pytest.raises(RemoteProtocolError, match="out_of_order"):
        server.receive(fake)
    for s in shares:
        server.receive(s)
    with pytest.raises(RemoteProtocolError, match="replay"):
        server.receive(shares[3])
    assert server.state == ServerState.COLLECT_SHARES  # bad messages change nothing
    other_round = adv[2].model_copy(update={"round_id": "other"})
    with pytest.raises(RemoteProtocolError, match="wrong_round"):
        server.receive(other_round)


def test_replayed_and_out_of_order_server_messages_are_rejected() -> None:
    server, clients = _fresh()
    for cl in clients.values():
        server.receive(cl.start())
    neighbours = server.close_stage()
    cl = clients[neighbours[0].to]
    with pytest.raises(RemoteProtocolError, match="out_of_order"):
        cl.receive(ForwardedShares(round_id=CLASSIC.round_id, to=cl.cid, shares=()))
    replies = {m.to: clients[m.to].receive(m) for m in neighbours}
    with pytest.raises(RemoteProtocolError, match="out_of_order"):
        cl.receive(neighbours[0])  # replay
    assert cl.state == ClientState.SHARED
    for r in replies.values():
        server.receive(r)
    for _ in range(2):  # forwarded shares, then the consistency round
        for m in server.close_stage():
            server.receive(clients[m.to].receive(m))
    requests = server.close_stage()
    first = clients[requests[0].to]
    first.receive(requests[0])
    assert first.state == ClientState.DONE
    with pytest.raises(RemoteProtocolError, match="out_of_order"):
        first.receive(requests[0])  # answered once; never again
    with pytest.raises(LocalProtocolError):
        first.start()
    with pytest.raises(RemoteProtocolError, match="misrouted"):
        clients[1].receive(requests[0])


def test_client_refuses_a_client_listed_as_both_survivor_and_dropped() -> None:
    server, clients = _fresh()
    for cl in clients.values():
        server.receive(cl.start())
    for _ in range(3):
        for m in server.close_stage():
            server.receive(clients[m.to].receive(m))
    honest = server.close_stage()[0]
    evil = honest.model_copy(update={"dropped": (honest.survivors[-1],)})
    cl = clients[evil.to]
    with pytest.raises(RemoteProtocolError) as err:
        cl.receive(evil)
    assert err.value.reason == "both_sets"
    assert cl.state == ClientState.ABORTED
    with pytest.raises(RemoteProtocolError, match="aborted"):
        cl.receive(honest)  # refuses to answer anything for this round afterwards


def test_client_refuses_to_unmask_when_too_few_survivors_or_itself_dropped() -> None:
    server, clients, _, requests = _run_to_unmask(
        CLASSIC, make_inputs(CLASSIC)[1], SeededRandomness.from_int(6)
    )
    req = requests[0]
    others = tuple(c for c in req.survivors if c != req.to)
    few = req.model_copy(update={"survivors": others[: CLASSIC.min_clients - 2] + (req.to,)})
    with pytest.raises(RemoteProtocolError, match="too_few_survivors"):
        clients[req.to].receive(few)
    req = requests[1]
    drop_me = req.model_copy(
        update={"survivors": tuple(c for c in req.survivors if c != req.to), "dropped": (req.to,)}
    )
    with pytest.raises(RemoteProtocolError, match="not_survivor"):
        clients[req.to].receive(drop_me)


def test_server_refuses_the_other_kind_of_share() -> None:
    server, clients, _, requests = _run_to_unmask(
        CLASSIC, make_inputs(CLASSIC)[1], SeededRandomness.from_int(6), drop_masked={11}
    )
    answer = clients[requests[0].to].receive(requests[0])
    survivor = answer.seed_shares[0].owner
    bogus = answer.model_copy(update={"key_shares": (ShareValue(owner=survivor, y=bytes(33)),)})
    with pytest.raises(RemoteProtocolError, match="key shares only for dropped"):
        server.receive(bogus)
    bogus = answer.model_copy(update={"seed_shares": (ShareValue(owner=11, y=bytes(33)),)})
    with pytest.raises(RemoteProtocolError, match="seed shares only for surviving"):
        server.receive(bogus)
    server.receive(answer)
    with pytest.raises(RemoteProtocolError, match="replay"):
        server.receive(answer)
    with pytest.raises(LocalProtocolError):
        server.result()  # still collecting: no result yet


def test_tampered_share_ciphertext_aborts_the_recipient() -> None:
    server, clients = _fresh()
    for cl in clients.values():
        server.receive(cl.start())
    for m in server.close_stage():
        server.receive(clients[m.to].receive(m))
    fwd = server.close_stage()[0]
    first = fwd.shares[0]
    bad = fwd.model_copy(update={"shares": ((*first[:2], bytes(len(first[2]))),) + fwd.shares[1:]})
    with pytest.raises(RemoteProtocolError, match="share_auth_failed"):
        clients[fwd.to].receive(bad)
    assert clients[fwd.to].state == ClientState.ABORTED


# --- the table, the wire, secrets -----------------------------------------------------


def test_transition_table_drives_a_full_round_in_order() -> None:
    client_path = [ClientState.IDLE]
    for event in (
        "start",
        "secagg_neighbours",
        "secagg_forward",
        "secagg_consistency",
        "secagg_unmask",
    ):
        client_path.append(TRANSITIONS[(Role.CLIENT, client_path[-1], event)])
    assert client_path[-1] == ClientState.DONE
    server_path = [ServerState.COLLECT_KEYS]
    for _ in range(5):
        server_path.append(TRANSITIONS[(Role.SERVER, server_path[-1], "close")])
    assert server_path[-1] == ServerState.DONE
    # nothing leaves a terminal state
    assert not [
        k for k in TRANSITIONS if k[1] in (ClientState.DONE, ServerState.DONE, ServerState.ABORTED)
    ]


def test_messages_roundtrip_json_and_ride_an_hpke_envelope() -> None:
    server, clients, masked, requests = _run_to_unmask(
        CLASSIC, make_inputs(CLASSIC)[1], SeededRandomness.from_int(9)
    )
    for msg in (masked[0], requests[0], clients[0].receive(requests[0])):
        again = type(msg).model_validate_json(msg.model_dump_json())
        assert again == msg
    with pytest.raises(Exception):  # noqa: B017 - frozen
        masked[0].sender = 3  # type: ignore[misc]
    assert wire.PAYLOAD_MODELS["masked_input"] is MaskedInput
    sk = PrivateKey.generate("k1")
    key = KeyEntry(
        key_id="k1",
        region="eu",
        public_key=wire.b64e(sk.public_bytes()),
        status=KeyStatus.CURRENT,
        created_at=wire.utcnow(),
    )
    env = envelope.seal(masked[0], key=key, cohort="c1", round=1)
    assert envelope.open_payload(envelope.parse(env.to_bytes(), max_bytes=1 << 20), sk) == masked[0]


def test_messages_are_strict() -> None:
    with pytest.raises(ValueError):
        AdvertiseKeys(round_id="r", sender=0, mask_pk=b"short", enc_pk=bytes(32))
    with pytest.raises(ValueError):
        MaskedInput(round_id="r", sender=0, bits=16, dim=4, data=bytes(7))
    with pytest.raises(ValueError):
        UnmaskRequest(round_id="r", to=0, survivors=(1,), dropped=(), extra=1)
    with pytest.raises(ValueError, match="k/2 < t"):
        RoundParams(round_id="r", n=10, k=8, t=4, min_clients=5, dim=1, bits=8)
    with pytest.raises(ValueError):
        UnmaskResponse(
            round_id="r", sender=0, seed_shares=(ShareValue(owner=1, y=bytes(32)),), key_shares=()
        )


def test_reprs_and_errors_do_not_leak_secrets() -> None:
    server, clients, _, requests = _run_to_unmask(
        CLASSIC, make_inputs(CLASSIC)[1], SeededRandomness.from_int(10)
    )
    cl = clients[0]
    secrets_hex = [
        crypto.private_bytes(cl._mask_sk).hex(),
        crypto.private_bytes(cl._enc_sk).hex(),
        cl._seed.hex(),
    ]
    texts = [repr(cl), repr(server), repr(SeededRandomness.from_int(1))]
    evil = requests[0].model_copy(update={"dropped": (requests[0].survivors[-1],)})
    try:
        cl.receive(evil)
    except RemoteProtocolError as exc:
        texts.append(str(exc))
    for text in texts:
        for s in secrets_hex:
            assert s not in text and s[:16] not in text


def test_stages_constant_matches_simulator() -> None:
    assert STAGES == ("advertise", "shares", "masked", "consistency", "unmask")


def test_end_to_end_dp_round_releases_the_noisy_sum() -> None:
    n, d = 40, 200
    plan = plan_round("dp", n=n, dim=d, clip=1.0, scale=2000.0, epsilon=4.0, delta=1e-5)
    rng = SeededRandomness.from_int(12)
    data = np.random.default_rng(3)
    xs = {c: data.normal(size=d) * 0.02 for c in range(n)}
    enc = {c: client_input(xs[c], plan, rng) for c in range(n)}
    result = run_round(plan.params, enc, drop={"masked": {0, 1, 2, 3}}, rng=rng)
    released = release(result, plan)
    true = np.sum([quantize.clip_l2(xs[c], 1.0) for c in result.survivors], axis=0)
    noise_sd = np.sqrt(len(result.survivors) * plan.noise.client_variance) / plan.quant.scale
    err = released - true
    assert abs(err.std() / noise_sd - 1) < 0.2  # the error is the calibrated noise, no more
    assert abs(err.mean()) < 4 * noise_sd / np.sqrt(d)


def test_docs_state_table_matches_the_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "privacy.md").read_text()
    for (role, state, event), nxt in TRANSITIONS.items():
        if event != "abort":
            assert f"| {role} | {state} | {event} | {nxt} |" in doc
