"""The SecAgg+ server (one round) as a sans-IO state machine.

Feed client messages to :meth:`SecAggServer.receive`; call :meth:`close_stage` when a stage
is complete or its deadline passed (the caller owns the clock). ``close_stage`` returns the
messages to send, one per recipient, and moves to the next stage, or aborts the round when too
few clients are left, in which case it raises :class:`RoundAborted` and nothing is released.

Client sets, as in Bonawitz et al.: U1 advertised keys (with a valid credential, a valid
signature and keys of full order), U2 sent shares, U3 sent a masked input, U4 signed the
survivor set U3 (the consistency round), U5 answered the unmask request. The server sums masked inputs as they arrive (memory
is one vector), and at the end reconstructs, for each survivor in U3, its self-mask seed and,
for each dropped client in U2 \\ U3, its pairwise-mask key, whose masks with surviving
neighbours it recomputes and removes. It asks each client for exactly one kind of share per
owner, and rejects any response that offers the other kind, so it never holds both share sets
of one client. Each rebuilt secret is checked against what its owner committed to (the
advertised mask key, the signed seed commitment); when the check fails, the spare shares find
the holder whose share is wrong, that holder's shares are excluded from every reconstruction
(``AggregateResult.excluded``), and the round goes on; if no single holder explains it, the
round aborts, and an aborted round is never charged to the privacy ledger.

A bad client message raises :class:`RemoteProtocolError` naming the client and stage and
leaves the server state unchanged (the caller dead-letters the message; one faulty device
cannot stop a round). Calling a method out of order raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from privacy import prg, shamir
from privacy.credential import CredentialVerifier, verify_signature
from privacy.errors import LocalProtocolError, ProtocolError, ProtocolReason, RemoteProtocolError
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.secagg import crypto
from privacy.secagg.graph import neighbour_ring, ring_graph
from privacy.secagg.messages import (
    AdvertiseKeys,
    ClientToServer,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShare,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    PeerKeys,
    RoundParams,
    SealedShare,
    SetSignature,
    ShareValue,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.states import Role, ServerState, next_state

ServerMessage = NeighbourKeys | ForwardedShares | ConsistencyRequest | UnmaskRequest


_PREFETCH = 512  # owners whose Lagrange weights are computed in one batch


class RoundAborted(ProtocolError):
    """Too many clients dropped (or too few shares came back): the round releases nothing."""

    def __init__(self, round_id: str, stage: str, detail: str) -> None:
        super().__init__(f"round {round_id} aborted in {stage}: {detail}")
        self.round_id = round_id
        self.stage = stage
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The unmasked sum (residues mod 2**bits) and who is in it."""

    total: np.ndarray
    bits: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    excluded: tuple[int, ...] = ()  # holders whose unmask shares were found wrong


class SecAggServer:
    """The server side of one SecAgg+ round."""

    def __init__(
        self,
        params: RoundParams,
        rng: Randomness = DEFAULT_RANDOMNESS,
        *,
        verifier: CredentialVerifier,
    ) -> None:
        self.params = params
        self._rng = rng
        self._verifier = verifier
        self._state: str = ServerState.COLLECT_KEYS
        self._dtype = prg.mask_dtype(params.bits)
        self._keys: dict[int, tuple[bytes, bytes]] = {}  # U1: cid -> (mask_pk, enc_pk)
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._signers: dict[int, ed25519.Ed25519PublicKey] = {}  # cid -> credential key
        self._credentials: set[bytes] = set()
        self._graph: dict[int, frozenset[int]] = {}
        self._ring: list[int] = []  # U1 in the graph's ring order (ring neighbours are linked)
        self._shares: dict[int, tuple[SealedShare, ...]] = {}  # U2: sender -> sealed shares
        self._u2: frozenset[int] = frozenset()
        self._sum = np.zeros(params.dim, dtype=self._dtype)
        self._masked_from: set[int] = set()  # U3 while collecting
        self._u3: frozenset[int] = frozenset()
        self._dropped: frozenset[int] = frozenset()
        self._survivors: tuple[int, ...] = ()  # U3 sorted, shared by every message naming it
        self._survivor_digest = b""  # what each survivor signs: computed once, not per signer
        # owner -> {x: y} in arrival order (~k per client, no objects each; the keys are the
        # points a set of holders is picked from, see _share_plan)
        self._seed_shares: dict[int, dict[int, int]] = {}
        self._key_shares: dict[int, dict[int, int]] = {}
        self._lagrange = shamir.LagrangeCache()
        self._set_sigs: dict[int, bytes] = {}  # U4: signer -> signature over U3
        self._asked: frozenset[int] = frozenset()  # who got an unmask request
        self._answered: set[int] = set()  # U5
        self._cheaters: set[int] = set()
        self._result: AggregateResult | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def graph(self) -> dict[int, frozenset[int]]:
        return dict(self._graph)

    def __repr__(self) -> str:
        return f"SecAggServer(round_id={self.params.round_id!r}, state={self._state!r})"

    def result(self) -> AggregateResult:
        if self._result is None:
            raise LocalProtocolError(
                f"round {self.params.round_id}: no result in state {self._state!r}"
            )
        return self._result

    # -- receiving -------------------------------------------------------------------------

    def receive(self, msg: ClientToServer) -> None:
        """Accept one client message for the current stage (or raise a typed error)."""
        sender = getattr(msg, "sender", None)
        who = f"client {sender} (round {self.params.round_id}, server state {self._state})"
        if msg.round_id != self.params.round_id:
            raise RemoteProtocolError(
                ProtocolReason.WRONG_ROUND, f"{who}: message for round {msg.round_id!r}"
            )
        if sender is None or not 0 <= sender < self.params.n:
            raise RemoteProtocolError(
                ProtocolReason.UNKNOWN_CLIENT, f"{who}: sender outside 0..{self.params.n - 1}"
            )
        next_state(Role.SERVER, self._state, msg.type, who)  # out-of-order check
        if isinstance(msg, AdvertiseKeys):
            self._on_advertise(msg, who)
        elif isinstance(msg, EncryptedShares):
            self._on_shares(msg, who)
        elif isinstance(msg, MaskedInput):
            self._on_masked(msg, who)
        elif isinstance(msg, ConsistencySignature):
            self._on_signature(msg, who)
        elif isinstance(msg, UnmaskResponse):
            self._on_unmask(msg, who)

    def _on_advertise(self, msg: AdvertiseKeys, who: str) -> None:
        if msg.sender in self._keys:
            raise RemoteProtocolError(ProtocolReason.REPLAY, f"{who}: keys already advertised")
        if crypto.is_weak_key(msg.mask_pk) or crypto.is_weak_key(msg.enc_pk):
            raise RemoteProtocolError(ProtocolReason.WEAK_KEY, f"{who}: a low-order public key")
        key = self._verifier.public_key(msg.credential)
        signed = crypto.advertise_bytes(
            msg.round_id, msg.sender, msg.mask_pk, msg.enc_pk, msg.seed_commit
        )
        if not verify_signature(key, msg.signature, signed):
            raise RemoteProtocolError(
                ProtocolReason.BAD_SIGNATURE, f"{who}: keys not signed by its credential"
            )
        if msg.credential.public_key in self._credentials:
            raise RemoteProtocolError(
                ProtocolReason.DUPLICATE_CREDENTIAL, f"{who}: credential already used this round"
            )
        self._credentials.add(msg.credential.public_key)
        self._keys[msg.sender] = (msg.mask_pk, msg.enc_pk)
        self._adverts[msg.sender] = msg
        self._signers[msg.sender] = key

    def _on_shares(self, msg: EncryptedShares, who: str) -> None:
        if msg.sender not in self._graph:
            raise RemoteProtocolError(ProtocolReason.NOT_IN_ROUND, f"{who}: did not advertise keys")
        if msg.sender in self._shares:
            raise RemoteProtocolError(ProtocolReason.REPLAY, f"{who}: shares already received")
        peers = [s.peer for s in msg.shares]
        if sorted(peers) != sorted(self._graph[msg.sender]):
            raise RemoteProtocolError(
                ProtocolReason.BAD_SHARES, f"{who}: shares must go to exactly its neighbours"
            )
        self._shares[msg.sender] = msg.shares

    def _on_masked(self, msg: MaskedInput, who: str) -> None:
        if msg.sender not in self._u2:
            raise RemoteProtocolError(ProtocolReason.NOT_IN_ROUND, f"{who}: did not share keys")
        if msg.sender in self._masked_from:
            raise RemoteProtocolError(
                ProtocolReason.REPLAY, f"{who}: masked input already received"
            )
        if (msg.bits, msg.dim) != (self.params.bits, self.params.dim):
            raise RemoteProtocolError(
                ProtocolReason.BAD_INPUT, f"{who}: bits/dim do not match the round"
            )
        self._sum += msg.vector()
        self._masked_from.add(msg.sender)

    def _on_signature(self, msg: ConsistencySignature, who: str) -> None:
        if msg.sender not in self._u3:
            raise RemoteProtocolError(ProtocolReason.NOT_IN_ROUND, f"{who}: not a survivor")
        if msg.sender in self._set_sigs:
            raise RemoteProtocolError(ProtocolReason.REPLAY, f"{who}: already signed")
        if not verify_signature(self._signers[msg.sender], msg.signature, self._survivor_digest):
            raise RemoteProtocolError(
                ProtocolReason.BAD_SIGNATURE, f"{who}: signature over the survivor set invalid"
            )
        self._set_sigs[msg.sender] = msg.signature

    def _on_unmask(self, msg: UnmaskResponse, who: str) -> None:
        j = msg.sender
        if j not in self._asked:
            raise RemoteProtocolError(
                ProtocolReason.NOT_IN_ROUND, f"{who}: was not asked to unmask"
            )
        if j in self._answered:
            raise RemoteProtocolError(
                ProtocolReason.REPLAY, f"{who}: unmask shares already received"
            )
        nbrs = self._graph[j]
        seed_owners = [s.owner for s in msg.seed_shares]
        key_owners = [s.owner for s in msg.key_shares]
        seed_set, key_set = set(seed_owners), set(key_owners)
        if not (seed_set <= self._u3 and seed_set <= nbrs):
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK, f"{who}: seed shares only for surviving neighbours"
            )
        if not (key_set <= self._dropped and key_set <= nbrs):
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK, f"{who}: key shares only for dropped neighbours"
            )
        if len(seed_set) != len(seed_owners) or len(key_set) != len(key_owners):
            raise RemoteProtocolError(ProtocolReason.BAD_UNMASK, f"{who}: repeated share owners")
        seed, keys = _field_values(msg.seed_shares), _field_values(msg.key_shares)
        if seed is None or keys is None:
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK, f"{who}: share value outside the field"
            )
        x = j + 1
        for store, owners, ys in (
            (self._seed_shares, seed_owners, seed),
            (self._key_shares, key_owners, keys),
        ):
            for owner, y in zip(owners, ys, strict=True):
                got = store.get(owner)
                if got is None:
                    store[owner] = {x: y}
                else:
                    got[x] = y
        self._answered.add(j)

    # -- closing stages --------------------------------------------------------------------

    def close_stage(self) -> list[ServerMessage]:
        """End the current collection stage; returns the next stage's messages (maybe none)."""
        stage = self._state
        target = next_state(Role.SERVER, stage, "close", f"server (round {self.params.round_id})")
        try:
            if stage == ServerState.COLLECT_KEYS:
                out: list = self._close_keys()
            elif stage == ServerState.COLLECT_SHARES:
                out = self._close_shares()
            elif stage == ServerState.COLLECT_MASKED:
                out = self._close_masked()
            elif stage == ServerState.COLLECT_SIGNATURES:
                out = self._close_signatures()
            else:
                self._result = self._unmask()
                out = []
        except RoundAborted:
            self._state = ServerState.ABORTED
            self._wipe()
            raise
        self._state = target
        return out

    def abort(self, reason: str = "aborted by caller") -> None:
        next_state(Role.SERVER, self._state, "abort", f"server (round {self.params.round_id})")
        self._state = ServerState.ABORTED
        self._wipe()

    def _need(self, count: int, stage: str, what: str) -> None:
        if count < self.params.min_clients:
            raise RoundAborted(
                self.params.round_id,
                stage,
                f"{count} {what} < min_clients {self.params.min_clients}",
            )

    def _close_keys(self) -> list[NeighbourKeys]:
        p = self.params
        u1 = sorted(self._keys)
        self._need(len(u1), "collect_keys", "clients advertised keys")
        all_keys = [k for pair in self._keys.values() for k in pair]
        if len(set(all_keys)) != len(all_keys):
            # A copied key would let one client impersonate another's agreement.
            dup = {k for k, count in Counter(all_keys).items() if count > 1}
            bad = sorted(c for c, pair in self._keys.items() if set(pair) & dup)
            for c in bad:
                del self._keys[c]
                del self._adverts[c]
            u1 = sorted(self._keys)
            self._need(len(u1), "collect_keys", "clients with unique keys")
        k = min(p.k, len(u1) - 1)
        if k < len(u1) - 1 and k % 2:
            k -= 1
        if k < p.t:
            raise RoundAborted(
                p.round_id, "collect_keys", f"only {k} neighbours possible < t={p.t}"
            )
        self._ring = neighbour_ring(u1, k, self._rng)
        self._graph = ring_graph(self._ring, k)
        peer = {c: PeerKeys.of(self._adverts[c]) for c in u1}  # once each, not once per reader
        # Built without re-validating: validated PeerKeys, ids from this server's own graph.
        return [
            NeighbourKeys.model_construct(
                round_id=p.round_id,
                to=c,
                neighbours=tuple(peer[j] for j in sorted(self._graph[c])),
            )
            for c in u1
        ]

    def _close_shares(self) -> list[ForwardedShares]:
        p = self.params
        self._u2 = frozenset(self._shares)
        self._need(len(self._u2), "collect_shares", "clients sent shares")
        # n * k forwarded shares, the server's largest object count: plain tuples (see
        # ForwardedShare), each message built without re-validating them.
        inbox: dict[int, list[ForwardedShare]] = {c: [] for c in self._u2}
        for sender in sorted(self._u2):
            for s in self._shares[sender]:
                got = inbox.get(s.peer)
                if got is not None:
                    got.append((sender, s.nonce, s.ct))
        self._shares = {}
        for c, got in inbox.items():
            if len(got) < p.t:
                # c could not be unmasked if it dropped later, nor its seed recovered.
                raise RoundAborted(
                    p.round_id,
                    "collect_shares",
                    f"client {c} has {len(got)} share holders < t={p.t}",
                )
        return [
            ForwardedShares.model_construct(round_id=p.round_id, to=c, shares=tuple(got))
            for c, got in sorted(inbox.items())
        ]

    def _close_masked(self) -> list[ConsistencyRequest]:
        p = self.params
        self._u3 = frozenset(self._masked_from)
        self._dropped = self._u2 - self._u3
        self._need(len(self._u3), "collect_masked", "masked inputs")
        self._survivors = survivors = tuple(sorted(self._u3))
        self._survivor_digest = crypto.survivor_set_bytes(p.round_id, survivors)
        # Built without re-validating the n survivor ids once per recipient (O(n^2) in all):
        # they are this server's own sorted set of validated sender ids.
        return [
            ConsistencyRequest.model_construct(round_id=p.round_id, to=c, survivors=survivors)
            for c in survivors
        ]

    def _close_signatures(self) -> list[UnmaskRequest]:
        """Ask every signer to unmask, with its neighbours' signatures on the survivor set."""
        p = self.params
        signers = frozenset(self._set_sigs)
        survivors = self._survivors
        signed = {j: SetSignature(cid=j, signature=sig) for j, sig in self._set_sigs.items()}
        out = []
        for c in sorted(signers):
            nbrs = self._graph[c]
            sigs = tuple(signed[j] for j in sorted(nbrs & signers))
            if len(sigs) < p.t:
                continue  # it would refuse: fewer than t of its neighbours signed
            # As in _close_masked: every field is this server's own validated data.
            out.append(
                UnmaskRequest.model_construct(
                    round_id=p.round_id,
                    to=c,
                    survivors=survivors,
                    dropped=tuple(sorted(self._dropped & nbrs)),
                    signatures=sigs,
                )
            )
        self._asked = frozenset(m.to for m in out)
        self._need(len(self._asked), "collect_sigs", "signers with t signing neighbours")
        return out

    def _unmask(self) -> AggregateResult:
        p = self.params
        mod = self._dtype.type((1 << p.bits) - 1)
        total = self._sum.copy()
        self._need(len(self._answered), "collect_unmask", "clients answered the unmask request")
        adverts = self._adverts

        def seed_ok(owner: int) -> Callable[[bytes], bool]:
            commit = adverts[owner].seed_commit
            return lambda s: crypto.seed_commitment(p.round_id, owner, s) == commit

        def key_ok(owner: int) -> Callable[[bytes], bool]:
            pk = self._keys[owner][0]
            # Canonical encoding only: 32 raw keys share one public key, and a holder who
            # could steer the rebuilt key to another of them would frame an honest holder.
            return lambda s: s == crypto.clamp(s) and _public_of(s) == pk

        peer_pk: dict[int, x25519.X25519PublicKey] = {}  # a survivor's key, parsed once
        buf = prg.Expander(p.dim, p.bits)  # each mask is subtracted before the next is made
        u3, dropped = self._u3, self._dropped
        owners = [i for i in self._ring if i in u3 or i in dropped]
        plan = self._share_plan(owners)
        for at in range(0, len(owners), _PREFETCH):
            chunk = owners[at : at + _PREFETCH]
            self._lagrange.prefetch([xs for i in chunk if (xs := plan[i])])
            for i in chunk:
                if i in u3:
                    seed = self._reconstruct(
                        i, self._seed_shares.get(i, {}), plan[i], "self-mask seed", seed_ok(i)
                    )
                    total -= crypto.self_mask(seed, p.round_id, p.dim, p.bits, buf)
                    continue
                raw = self._reconstruct(
                    i, self._key_shares.get(i, {}), plan[i], "pairwise key", key_ok(i)
                )
                sk = x25519.X25519PrivateKey.from_private_bytes(raw)
                for j in sorted(self._graph[i] & self._u3):
                    pk = peer_pk.get(j)
                    if pk is None:
                        pk = peer_pk[j] = x25519.X25519PublicKey.from_public_bytes(self._keys[j][0])
                    seed = crypto.pair_seed(sk, pk, p.round_id, i, j)
                    if j < i:  # survivor j added +mask for j < i, else -mask
                        total -= crypto.pair_mask(seed, p.dim, p.bits, buf)
                    else:
                        total += crypto.pair_mask(seed, p.dim, p.bits, buf)
        total &= mod
        result = AggregateResult(
            total,
            p.bits,
            self._survivors,
            tuple(sorted(self._dropped)),
            tuple(sorted(self._cheaters)),
        )
        self._wipe()
        return result

    def _share_plan(self, owners: list[int]) -> dict[int, tuple[int, ...]]:
        """The ``t`` points each owner's secret is first rebuilt from: the same tuple for runs
        of owners next to each other in ``owners`` (the ring order); ``()`` for an owner with
        fewer than ``t`` usable shares (:meth:`_reconstruct` aborts on it).

        Why: the Lagrange weights cost O(t) field operations per distinct set of points, and
        were the largest cost of the unmask stage after the key exchanges. Owners adjacent in
        the ring have all but a few of their holders in common, so a greedy run of owners
        (extended while the holders they all have number at least ``t``: about k/8 owners at
        10 % dropout) is rebuilt from one set of points and one set of weights. Which ``t``
        honest shares is immaterial to the result, and :meth:`_reconstruct` checks it and
        searches the spares the same way whichever points come first."""
        t, cheaters = self.params.t, self._cheaters
        points: list[set[int]] = []
        for i in owners:
            xs = set((self._seed_shares if i in self._u3 else self._key_shares).get(i, ()))
            points.append({x for x in xs if x - 1 not in cheaters} if cheaters else xs)
        plan: dict[int, tuple[int, ...]] = {}
        at = 0
        while at < len(owners):
            common = points[at]
            end = at + 1
            while end < len(owners):
                both = common & points[end]
                if len(both) < t:
                    break
                common, end = both, end + 1
            chosen = tuple(sorted(common)[:t]) if len(common) >= t else ()
            for i in owners[at:end]:
                plan[i] = chosen
            at = end
        return plan

    def _reconstruct(
        self,
        owner: int,
        shares: dict[int, int],
        first: tuple[int, ...],
        what: str,
        check: Callable[[bytes], bool],
    ) -> bytes:
        """Rebuild from the ``t`` points ``first`` (or, when one of them is no longer usable,
        from the first ``t`` shares in arrival order) and check it against the owner's
        commitment; on a mismatch leave out one of the used shares at a time (a spare takes
        its place): the one whose absence fixes it came from a cheating holder, who is
        excluded from then on."""
        p = self.params
        cheaters = self._cheaters
        if len(first) == p.t and not (cheaters and any(x - 1 in cheaters for x in first)):
            # first comes from these very shares (_share_plan): only a cheater found since
            # can have made one of them unusable.
            secret = _combine_checked([(x, shares[x]) for x in first], p.t, check, self._lagrange)
            if secret is not None:
                return secret
            chosen = set(first)
            usable = [*first, *(x for x in shares if x not in chosen and x - 1 not in cheaters)]
        else:
            usable = [x for x in shares if x - 1 not in cheaters]
            if len(usable) < p.t:
                raise RoundAborted(
                    p.round_id,
                    "collect_unmask",
                    f"client {owner}: {len(usable)} {what} shares < t={p.t}",
                )
            points = [(x, shares[x]) for x in usable[: p.t]]
            secret = _combine_checked(points, p.t, check, self._lagrange)
            if secret is not None:
                return secret
        for suspect in usable[: p.t]:
            rest = [x for x in usable if x != suspect][: p.t]
            if len(rest) < p.t:
                break
            secret = _combine_checked([(x, shares[x]) for x in rest], p.t, check, self._lagrange)
            if secret is not None:
                self._cheaters.add(suspect - 1)
                return secret
        raise RoundAborted(
            p.round_id,
            "collect_unmask",
            f"client {owner}: {what} shares do not match its commitment "
            "(no single holder explains it)",
        )

    def _wipe(self) -> None:
        self._seed_shares = {}
        self._key_shares = {}


def _field_values(shares: tuple[ShareValue, ...]) -> list[int] | None:
    """The share values, or None when one is not a 33-byte field element (checked here too:
    an in-process message may not have been validated)."""
    raw = [s.y for s in shares]
    if not set(map(len, raw)) <= {shamir.SHARE_BYTES}:
        return None
    ys = [int.from_bytes(r, "big") for r in raw]
    return ys if not ys or max(ys) < shamir.PRIME else None


def _public_of(raw: bytes) -> bytes:
    return crypto.public_bytes(x25519.X25519PrivateKey.from_private_bytes(raw))


def _combine_checked(
    points: list[tuple[int, int]],
    t: int,
    check: Callable[[bytes], bool],
    cache: shamir.LagrangeCache,
) -> bytes | None:
    try:
        secret = shamir.combine_points(points, t, cache)
    except ValueError:
        return None
    return secret if check(secret) else None
