"""The SecAgg+ client (one device, one round) as a sans-IO state machine.

Drive it with ``start()`` then ``receive(msg)`` for each server message; each call returns the
one message to send back. The input vector (residues mod ``2**bits``, e.g. from
:func:`privacy.quantize.encode`) is given at construction and never leaves the object except
masked. Private keys, the self-mask seed and the shares held for neighbours live in private
attributes; ``repr`` shows none of them.

Against an active server (docs/threat-model.md) the client trusts nothing it is shown:

* it signs its advertised keys with a one-round credential key and accepts a neighbour only
  with a valid credential (from an issuer its :class:`~privacy.credential.CredentialVerifier`
  trusts), a valid signature over that neighbour's keys, and keys of full order;
* it signs exactly one survivor set (the consistency round) and unmasks only for that set,
  and only when at least ``t`` of its neighbours signed the same set;
* it validates the unmask request: ids in range, survivors and dropped disjoint, every
  neighbour whose shares it holds in exactly one list, dropped ones only among those, every
  surviving neighbour one it exchanged masks with, at least ``t`` surviving neighbours and
  ``min_clients`` survivors. Together with ``t`` signing neighbours this means a server can
  only ever isolate the sum of a group of at least ``t + 1`` clients (the release floor
  against an active server, which :func:`privacy.round_check.check_round` prices in ε).

Out-of-order or replayed messages raise :class:`RemoteProtocolError` and are otherwise
ignored (state unchanged), so a duplicate Kafka delivery cannot break a round. Any other
refusal moves the client to ABORTED: it answers nothing further in this round. Every
cryptographic failure on a peer's data is a :class:`RemoteProtocolError`, never another
exception.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from privacy import prg, shamir
from privacy.credential import CredentialVerifier, DeviceCredential, SigningKey, verify_signature
from privacy.errors import LocalProtocolError, ProtocolReason, RemoteProtocolError
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.secagg import crypto
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    RoundParams,
    SealedShare,
    ServerToClient,
    ShareValue,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.states import ClientState, Role, next_state

Reply = EncryptedShares | MaskedInput | ConsistencySignature | UnmaskResponse


class SecAggClient:
    """One client's side of one SecAgg+ round."""

    def __init__(
        self,
        params: RoundParams,
        cid: int,
        vector: np.ndarray,
        rng: Randomness = DEFAULT_RANDOMNESS,
        *,
        identity: tuple[DeviceCredential, SigningKey],
        verifier: CredentialVerifier,
    ) -> None:
        if not 0 <= cid < params.n:
            raise LocalProtocolError(f"client id {cid} outside 0..{params.n - 1}")
        vec = np.asarray(vector).reshape(-1)
        if vec.size != params.dim:
            raise LocalProtocolError(
                f"client {cid}: input has {vec.size} values, round wants {params.dim}"
            )
        if vec.dtype.kind == "i" and vec.size and (vec.min() < 0 or vec.max() >= 1 << params.bits):
            raise LocalProtocolError(f"client {cid}: input is not encoded mod 2^{params.bits}")
        self.params = params
        self.cid = cid
        self._rng = rng
        self._state: str = ClientState.IDLE
        self._input = vec.astype(prg.mask_dtype(params.bits)) & prg.mask_dtype(params.bits).type(
            (1 << params.bits) - 1
        )
        self._mask_sk, self._mask_pk = crypto.new_keypair(rng)
        self._enc_sk, self._enc_pk = crypto.new_keypair(rng)
        self._credential, self._signing = identity
        self._verifier = verifier
        self._seed: bytes = rng.token_bytes(32)
        self._neighbours: dict[int, tuple[bytes, bytes]] = {}  # cid -> (mask_pk, enc_pk)
        self._signers: dict[int, ed25519.Ed25519PublicKey] = {}  # neighbour -> credential key
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (seed share y, key share y)
        self._signed: tuple[int, ...] | None = None  # the one survivor set this client signed

    @property
    def state(self) -> str:
        return self._state

    def __repr__(self) -> str:
        return f"SecAggClient(round_id={self.params.round_id!r}, cid={self.cid}, state={self._state!r})"

    # -- driving ---------------------------------------------------------------------------

    def start(self) -> AdvertiseKeys:
        """Stage 0: advertise this round's two public keys."""
        self._state = next_state(Role.CLIENT, self._state, "start", self._who())
        p = self.params
        commit = crypto.seed_commitment(p.round_id, self.cid, self._seed)
        signed = crypto.advertise_bytes(p.round_id, self.cid, self._mask_pk, self._enc_pk, commit)
        return AdvertiseKeys(
            round_id=p.round_id,
            sender=self.cid,
            mask_pk=self._mask_pk,
            enc_pk=self._enc_pk,
            seed_commit=commit,
            credential=self._credential,
            signature=self._signing.sign(signed),
        )

    def receive(self, msg: ServerToClient) -> Reply:
        """Handle one server message and return the reply to send."""
        if msg.round_id != self.params.round_id:
            raise RemoteProtocolError(
                ProtocolReason.WRONG_ROUND, f"{self._who()}: message for round {msg.round_id!r}"
            )
        if msg.to != self.cid:
            raise RemoteProtocolError(
                ProtocolReason.MISROUTED, f"{self._who()}: message addressed to {msg.to}"
            )
        if self._state == ClientState.ABORTED:
            raise RemoteProtocolError(
                ProtocolReason.ABORTED, f"{self._who()}: round aborted, refusing {msg.type}"
            )
        target = next_state(Role.CLIENT, self._state, msg.type, self._who())
        try:
            if isinstance(msg, NeighbourKeys):
                reply: Reply = self._on_neighbours(msg)
            elif isinstance(msg, ForwardedShares):
                reply = self._on_forwarded(msg)
            elif isinstance(msg, ConsistencyRequest):
                reply = self._on_consistency(msg)
            elif isinstance(msg, UnmaskRequest):
                reply = self._on_unmask(msg)
            else:  # pragma: no cover - the table already refused it
                raise RemoteProtocolError(
                    ProtocolReason.UNEXPECTED, f"{self._who()}: {type(msg).__name__}"
                )
        except RemoteProtocolError:
            self._abort()
            raise
        except ValueError as exc:  # a key or value the crypto refused: the peer's fault
            self._abort()
            raise RemoteProtocolError(
                ProtocolReason.WEAK_KEY, f"{self._who()}: {type(exc).__name__} on peer data"
            ) from None
        self._state = target
        return reply

    def abort(self) -> None:
        """The caller gives up on this round (e.g. the coordinator announced an abort)."""
        self._state = next_state(Role.CLIENT, self._state, "abort", self._who())
        self._wipe()

    # -- stages ----------------------------------------------------------------------------

    def _on_neighbours(self, msg: NeighbourKeys) -> EncryptedShares:
        p = self.params
        ids = [nb.cid for nb in msg.neighbours]
        if len(set(ids)) != len(ids) or self.cid in ids or any(not 0 <= i < p.n for i in ids):
            raise RemoteProtocolError(
                ProtocolReason.BAD_NEIGHBOURS, f"{self._who()}: invalid neighbour list"
            )
        if not p.t <= len(ids) <= p.k:
            raise RemoteProtocolError(
                ProtocolReason.BAD_NEIGHBOURS,
                f"{self._who()}: {len(ids)} neighbours, need {p.t}..{p.k}",
            )
        keys = [nb.mask_pk for nb in msg.neighbours] + [nb.enc_pk for nb in msg.neighbours]
        keys += [self._mask_pk, self._enc_pk]
        if len(set(keys)) != len(keys):
            raise RemoteProtocolError(
                ProtocolReason.BAD_NEIGHBOURS, f"{self._who()}: repeated public keys"
            )
        creds = [nb.credential.public_key for nb in msg.neighbours] + [self._signing.public]
        if len(set(creds)) != len(creds):
            raise RemoteProtocolError(
                ProtocolReason.DUPLICATE_CREDENTIAL, f"{self._who()}: a credential used twice"
            )
        signers: dict[int, ed25519.Ed25519PublicKey] = {}
        for nb in msg.neighbours:
            # enc_pk needs no probe: the share-key exchange below raises ValueError on a weak
            # one, which ``receive`` turns into weak_key; mask_pk is exchanged only later.
            if crypto.is_weak_key(nb.mask_pk):
                raise RemoteProtocolError(
                    ProtocolReason.WEAK_KEY, f"{self._who()}: neighbour {nb.cid} has a weak key"
                )
            key = self._verifier.public_key(nb.credential)
            signed = crypto.advertise_bytes(
                p.round_id, nb.cid, nb.mask_pk, nb.enc_pk, nb.seed_commit
            )
            if not verify_signature(key, nb.signature, signed):
                raise RemoteProtocolError(
                    ProtocolReason.BAD_SIGNATURE,
                    f"{self._who()}: keys of neighbour {nb.cid} not signed by its credential",
                )
            signers[nb.cid] = key
        self._signers = signers
        self._neighbours = {nb.cid: (nb.mask_pk, nb.enc_pk) for nb in msg.neighbours}
        xs = [i + 1 for i in ids]
        seed_shares = shamir.split(self._seed, xs, p.t, self._rng)
        key_shares = shamir.split(crypto.private_bytes(self._mask_sk), xs, p.t, self._rng)
        sealed = []
        for i, s_share, k_share in zip(ids, seed_shares, key_shares, strict=True):
            aead = crypto.share_key(self._enc_sk, self._neighbours[i][1], p.round_id, self.cid, i)
            nonce = self._rng.token_bytes(12)
            ct = crypto.seal_shares(
                aead, nonce, p.round_id, self.cid, i, s_share.y_bytes(), k_share.y_bytes()
            )
            sealed.append(SealedShare(peer=i, nonce=nonce, ct=ct))
        return EncryptedShares(round_id=p.round_id, sender=self.cid, shares=tuple(sealed))

    def _on_forwarded(self, msg: ForwardedShares) -> MaskedInput:
        p = self.params
        senders = [peer for peer, _, _ in msg.shares]
        if len(set(senders)) != len(senders) or not set(senders) <= self._neighbours.keys():
            raise RemoteProtocolError(
                ProtocolReason.BAD_FORWARD,
                f"{self._who()}: shares from non-neighbours or repeated senders",
            )
        if len(senders) < p.t:
            # Its masked input would carry pairwise masks with fewer than t neighbours (none
            # at all for an empty list): the server, which must rebuild this client's
            # self-mask seed from t holders, could then also strip those few masks (their
            # owners "dropped") and read the input. An honest server aborts instead.
            raise RemoteProtocolError(
                ProtocolReason.BAD_FORWARD,
                f"{self._who()}: shares from {len(senders)} neighbours < t={p.t}",
            )
        held: dict[int, tuple[bytes, bytes]] = {}
        for peer, nonce, ct in msg.shares:
            aead = crypto.share_key(
                self._enc_sk, self._neighbours[peer][1], p.round_id, peer, self.cid
            )
            opened = crypto.open_shares(aead, nonce, ct, p.round_id, peer, self.cid)
            if opened is None:
                raise RemoteProtocolError(
                    ProtocolReason.SHARE_AUTH_FAILED,
                    f"{self._who()}: sealed share from client {peer} is not authentic",
                )
            held[peer] = opened
        self._held = held
        # Pairwise masks only with neighbours the server says shared their keys (set U2).
        masked = self._input + crypto.self_mask(self._seed, p.round_id, p.dim, p.bits)
        for j in sorted(held):
            seed = crypto.pair_seed(self._mask_sk, self._neighbours[j][0], p.round_id, self.cid, j)
            if self.cid < j:
                masked += crypto.pair_mask(seed, p.dim, p.bits)
            else:
                masked -= crypto.pair_mask(seed, p.dim, p.bits)
        masked &= masked.dtype.type((1 << p.bits) - 1)
        return MaskedInput(
            round_id=p.round_id, sender=self.cid, bits=p.bits, dim=p.dim, data=masked.tobytes()
        )

    def _on_consistency(self, msg: ConsistencyRequest) -> ConsistencySignature:
        p = self.params
        survivors = self._survivor_set(msg.survivors)
        self._signed = survivors
        signature = self._signing.sign(crypto.survivor_set_bytes(p.round_id, survivors))
        return ConsistencySignature(round_id=p.round_id, sender=self.cid, signature=signature)

    def _survivor_set(self, ids: tuple[int, ...]) -> tuple[int, ...]:
        p = self.params
        if len(set(ids)) != len(ids) or any(not 0 <= i < p.n for i in ids):
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK_REQUEST,
                f"{self._who()}: survivor ids repeat or lie outside 0..{p.n - 1}",
            )
        if self.cid not in ids:
            raise RemoteProtocolError(
                ProtocolReason.NOT_SURVIVOR, f"{self._who()}: not listed as a survivor"
            )
        if len(ids) < p.min_clients:
            raise RemoteProtocolError(
                ProtocolReason.TOO_FEW_SURVIVORS,
                f"{self._who()}: {len(ids)} survivors < min {p.min_clients}",
            )
        return tuple(sorted(ids))

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        p = self.params
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        if survivors & dropped:
            raise RemoteProtocolError(
                ProtocolReason.BOTH_SETS,
                f"{self._who()}: clients {sorted(survivors & dropped)[:5]} listed as both survivor and dropped",
            )
        if self._survivor_set(msg.survivors) != self._signed:
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK_REQUEST,
                f"{self._who()}: survivor set differs from the one this client signed",
            )
        held = set(self._held)
        if len(dropped) != len(msg.dropped) or not dropped <= held:
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK_REQUEST,
                f"{self._who()}: dropped clients must be distinct neighbours whose shares it holds",
            )
        if not held <= survivors | dropped:
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK_REQUEST,
                f"{self._who()}: {len(held - survivors - dropped)} share owners in neither list",
            )
        alive = set(self._neighbours) & survivors
        if not alive <= held:
            # A "survivor" it never exchanged masks with: the server hid that neighbour's shares
            # from it, so its input is masked only towards the clients it was shown; with those
            # declared dropped, a small group's sum (or one input) would come out.
            raise RemoteProtocolError(
                ProtocolReason.BAD_UNMASK_REQUEST,
                f"{self._who()}: {len(alive - held)} surviving neighbours it shares no masks with",
            )
        if len(alive) < p.t:
            raise RemoteProtocolError(
                ProtocolReason.TOO_FEW_SURVIVORS,
                f"{self._who()}: {len(alive)} surviving neighbours < t={p.t}",
            )
        signed = crypto.survivor_set_bytes(p.round_id, msg.survivors)
        valid: set[int] = set()
        for sig in msg.signatures:  # t valid ones suffice: stop there (each costs ~0.1 ms)
            if len(valid) >= p.t:
                break
            fresh = sig.cid in alive and sig.cid not in valid
            if fresh and verify_signature(self._signers[sig.cid], sig.signature, signed):
                valid.add(sig.cid)
        if len(valid) < p.t:
            raise RemoteProtocolError(
                ProtocolReason.NOT_SIGNED,
                f"{self._who()}: {len(valid)} neighbours signed the survivor set < t={p.t}",
            )
        seed_out, key_out = [], []
        for owner in sorted(self._held):
            seed_y, key_y = self._held[owner]
            if owner in survivors:
                seed_out.append(ShareValue(owner=owner, y=seed_y))
            elif owner in dropped:
                key_out.append(ShareValue(owner=owner, y=key_y))
        self._wipe()
        return UnmaskResponse(
            round_id=p.round_id,
            sender=self.cid,
            seed_shares=tuple(seed_out),
            key_shares=tuple(key_out),
        )

    # -- helpers ---------------------------------------------------------------------------

    def _who(self) -> str:
        return f"client {self.cid} (round {self.params.round_id}, state {self._state})"

    def _abort(self) -> None:
        self._state = ClientState.ABORTED
        self._wipe()

    def _wipe(self) -> None:
        """Drop secrets we no longer need (best effort: Python cannot zero memory)."""
        self._held = {}
        self._seed = b""
        self._signed = None
