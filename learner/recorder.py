"""Turn a learner's :class:`~learner.actions.AdapterAction` list into registry rows and
outbox records, inside the caller's transaction.

Why one place: the registry row of a version and the signed artifact that announces it must
never disagree, so both are derived here, from the same action, in the same transaction as
the learner state and the consumed offset (:mod:`learner.checkpoint`).

How each action kind is recorded (the learner decides *what* happens; this only records and
announces it; lifecycle rules live with the learner):

``register``   upsert the version's row (lineage, metrics, adapter bytes if given).
``ship``       upsert, then sign a release with the rollout its status implies
               (:func:`learner.artifacts.rollout_for`) and queue it.
``promote``    like ship, re-signing the stored adapter bytes under the new rollout.
``reject``     status ``rejected``; tombstone its key if it was ever published.
``retire``     status ``retired`` (its last record stays: newer versions supersede it).
``rollback``   ``version`` is the target, ``parent_version`` the withdrawn one: the withdrawn
               row becomes ``rolled_back`` (unless the learner already rejected it, as after
               a failed canary) and its key is tombstoned; the target becomes ``live`` and,
               unless it already was at rollout 1, is republished at rollout 1 (for devices
               that never ran the withdrawn one); a signed rollback record moves devices on
               the parent back. Version 0 is the base: it has no release record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from learner.actions import AdapterAction
from learner.artifacts import ArtifactRecord, Signer, release_key, rollback_key, rollout_for
from learner.registry import adapter_events, adapter_versions
from privacy.adapter_file import LoRAWeights, adapter_from_bytes, adapter_to_bytes
from privacy.adapter_manifest import SignedAdapter
from privacy.adapter_plan import AdapterStatus
from privacy.errors import LocalProtocolError
from privacy.wire import ReleasedAggregate, b64d

_SHIPPING = {"ship", "promote"}
_SETTLED = {
    AdapterStatus.REJECTED.value,
    AdapterStatus.RETIRED.value,
    AdapterStatus.ROLLED_BACK.value,
}


def _weights_bytes(action: AdapterAction) -> bytes | None:
    if action.lora_a is None and action.lora_b is None:
        return None
    if action.lora_a is None or action.lora_b is None:
        raise LocalProtocolError(f"{action.kind} v{action.version}: lora_a and lora_b go together")
    return adapter_to_bytes(
        LoRAWeights(action.lora_a, action.lora_b), adapter_version=action.version
    )


class ActionRecorder:
    """Records one release's actions in ``conn``; collects the outbox items they imply."""

    def __init__(
        self, conn: Connection, signer: Signer, release: ReleasedAggregate, now: datetime
    ) -> None:
        self._conn = conn
        self._signer = signer
        self._release = release
        self._now = now
        self.outbox: list[ArtifactRecord] = []

    @property
    def region(self) -> str:
        return self._release.region

    @property
    def cohort(self) -> str:
        return self._release.cohort

    def record(self, actions: list[AdapterAction]) -> list[ArtifactRecord]:
        for action in actions:
            if action.region != self.region or action.cohort != self.cohort:
                raise LocalProtocolError(
                    f"action for {action.region}/{action.cohort} from the learner of "
                    f"{self.region}/{self.cohort}"
                )
            if action.kind == "rollback":
                self._rollback(action)
                continue
            self._upsert(action)
            if action.kind in _SHIPPING:
                self._publish_release(action.version, action.status, action.rollout_fraction)
            elif action.status in (AdapterStatus.REJECTED, AdapterStatus.ROLLED_BACK):
                self._withdraw(action.version)
            self._event(
                action.version, action.kind, action.status, action.rollout_fraction, action.reason
            )
        return self.outbox

    # -- rows -------------------------------------------------------------------------------
    def _row(self, version: int) -> Any:
        c = adapter_versions.c
        return self._conn.execute(
            select(adapter_versions).where(
                c.region == self.region, c.cohort == self.cohort, c.version == version
            )
        ).first()

    def _where(self, version: int) -> Any:
        c = adapter_versions.c
        return (c.region == self.region) & (c.cohort == self.cohort) & (c.version == version)

    def _upsert(self, action: AdapterAction) -> None:
        adapter = _weights_bytes(action)
        row = self._row(action.version)
        if row is None:
            rounds = sorted(action.rounds)
            self._conn.execute(
                adapter_versions.insert().values(
                    region=self.region,
                    cohort=self.cohort,
                    version=action.version,
                    parent_version=action.parent_version,
                    status=action.status.value,
                    rollout_fraction=action.rollout_fraction,
                    rounds=rounds,
                    window_first=rounds[0] if rounds else None,
                    window_last=rounds[-1] if rounds else None,
                    epsilon_spent=action.epsilon_spent,
                    metrics=dict(action.metrics),
                    reason=action.reason,
                    source_round=self._release.round,
                    adapter=adapter,
                    created_at=self._now,
                    updated_at=self._now,
                )
            )
            return
        values: dict[str, Any] = {
            "status": action.status.value,
            "rollout_fraction": action.rollout_fraction,
            "updated_at": self._now,
        }
        if action.metrics:
            values["metrics"] = {**(row.metrics or {}), **action.metrics}
        if action.reason:
            values["reason"] = action.reason
        if adapter is not None:
            values["adapter"] = adapter
        self._conn.execute(
            adapter_versions.update().where(self._where(action.version)).values(**values)
        )

    def _set_status(self, version: int, status: AdapterStatus, fraction: float) -> None:
        self._conn.execute(
            adapter_versions.update()
            .where(self._where(version))
            .values(status=status.value, rollout_fraction=fraction, updated_at=self._now)
        )

    def _event(
        self, version: int, action: str, status: AdapterStatus, fraction: float, reason: str
    ) -> None:
        self._conn.execute(
            adapter_events.insert().values(
                region=self.region,
                cohort=self.cohort,
                version=version,
                action=action,
                status=status.value,
                rollout_fraction=fraction,
                round=self._release.round,
                reason=reason,
                at=self._now,
            )
        )

    # -- artifacts --------------------------------------------------------------------------
    def _stored_adapter(self, version: int) -> bytes:
        row = self._row(version)
        if row is None or row.adapter is None:
            raise LocalProtocolError(f"v{version} of {self.cohort} has no adapter to sign")
        return bytes(row.adapter)

    def _note_signed(self, version: int, signed: SignedAdapter) -> None:
        self._conn.execute(
            adapter_versions.update()
            .where(self._where(version))
            .values(
                artifact_sha256=signed.manifest.adapter_sha256,
                signature=_hex_signature(signed),
                manifest=signed.manifest.model_dump(mode="json"),
            )
        )

    def _publish_release(self, version: int, status: AdapterStatus, requested: float) -> None:
        row = self._row(version)
        signed = self._signer.release(
            self.cohort,
            version,
            self._stored_adapter(version),
            rollout_fraction=rollout_for(status, requested),
            parent_version=row.parent_version,
            created_at=self._release.released_at,
        )
        self._note_signed(version, signed)
        self.outbox.append(
            ArtifactRecord(
                self.cohort,
                version,
                "release",
                release_key(self.cohort, version),
                signed.to_bytes(),
            )
        )

    def _withdraw(self, version: int) -> None:
        row = self._row(version)
        if row is not None and row.signature is not None:
            self.outbox.append(
                ArtifactRecord(
                    self.cohort, version, "tombstone", release_key(self.cohort, version), None
                )
            )

    def _rollback(self, action: AdapterAction) -> None:
        target, withdrawn = action.version, action.parent_version
        if withdrawn is None or withdrawn <= target:
            raise LocalProtocolError(f"rollback to v{target} needs a newer parent_version")
        bad = self._row(withdrawn)
        if bad is None:
            raise LocalProtocolError(f"rollback from v{withdrawn}, which the registry lacks")
        if bad.status not in _SETTLED:  # a canary the learner already rejected stays rejected
            self._set_status(withdrawn, AdapterStatus.ROLLED_BACK, 0.0)
            self._event(withdrawn, "rollback", AdapterStatus.ROLLED_BACK, 0.0, action.reason)
        self._withdraw(withdrawn)
        adapter = _weights_bytes(action)
        row = self._row(target)
        if target != 0 and row is None:
            raise LocalProtocolError(f"rollback to v{target}, which the registry lacks")
        if row is not None:
            if adapter is not None and target != 0:
                self._conn.execute(
                    adapter_versions.update().where(self._where(target)).values(adapter=adapter)
                )
            republish = target != 0 and not (
                row.status == AdapterStatus.LIVE.value
                and (row.manifest or {}).get("rollout_fraction") == 1.0
            )
            self._set_status(target, AdapterStatus.LIVE, 1.0)
            if republish:  # for devices that never ran the withdrawn version
                self._publish_release(target, AdapterStatus.LIVE, 1.0)
        if adapter is None:
            adapter = self._zero_like(withdrawn) if target == 0 else self._stored_adapter(target)
        self._event(target, "rollback", AdapterStatus.LIVE, 1.0, action.reason)
        signed = self._signer.rollback(
            self.cohort,
            target,
            adapter,
            parent_version=withdrawn,
            created_at=self._release.released_at,
        )
        self.outbox.append(
            ArtifactRecord(
                self.cohort,
                target,
                "rollback",
                rollback_key(self.cohort, withdrawn),
                signed.to_bytes(),
            )
        )

    def _zero_like(self, version: int) -> bytes:
        """The base (v0) as an adapter: zeros shaped like ``version``'s."""
        w = adapter_from_bytes(self._stored_adapter(version)).weights
        return adapter_to_bytes(
            LoRAWeights.zeros(w.A.shape[0], w.rank, w.B.shape[1]), adapter_version=0
        )


def _hex_signature(signed: SignedAdapter) -> str:
    return b64d(signed.signature).hex()
