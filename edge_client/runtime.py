"""The device side of personalization: run the base model with a verified, hot-swappable adapter.

A :class:`DeviceModel` holds one ONNX Runtime session for the shipped base graph (one thread:
a phone agent must not hog cores) and up to three adapters:

* **live** — bound to every :meth:`~DeviceModel.suggest` call;
* **previous** — the one live before it, kept so :meth:`~DeviceModel.rollback_local` is
  instant and needs no network;
* **candidate** — staged with :meth:`~DeviceModel.stage` for shadow evaluation: scored beside
  live on real instructions, never shown, until promoted or discarded.

Nothing reaches ONNX Runtime's adapter parser before :func:`privacy.adapter_manifest.verify` has checked
the Ed25519 signature. Then the device's own policy, in this order: region, cohort, base model
hash, version rules (see :mod:`privacy.adapter_manifest`), and finally that ORT accepts the adapter's
tensors for this graph. Each refusal is an :class:`~privacy.adapter_manifest.AdapterRejected` whose
``reason`` says why (``bad_signature``, ``wrong_base``, ``downgrade``...). A swap replaces one
immutable slot object under a lock, so a concurrent ``suggest`` sees the old or the new
adapter, never a mix.

Version 0 is the zero adapter: the base model itself, what a fresh device runs.

What it ranks: the device's candidate apps (:attr:`DeviceModel.apps`; by default the
catalogue's apps of its region, or whatever launchable apps the phone has, via
:meth:`DeviceModel.set_apps`). The graph scores apps by their identity features, so the
candidate list can change at any time without a new model; every suggestion is a spelling
Open-AutoGLM's ``Launch`` accepts.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privacy import catalog
from privacy.adapter_file import adapter_from_bytes, load_lora_adapter
from privacy.adapter_manifest import (
    ALL_COHORTS,
    AdapterManifest,
    AdapterRejected,
    AdapterRejectReason,
    SignedAdapter,
    verify,
)
from privacy.errors import ConfigError, LocalProtocolError
from privacy.features import app_features, instruction_features
from privacy.graph_io import (
    INPUT_APPS,
    INPUT_CONTEXT,
    INPUT_INSTRUCTION,
    LORA_A,
    LORA_B,
    OUTPUT_LOGITS,
)
from privacy.wire import EMBEDDING_DIM

_CANARY_DOMAIN = b"sotto/canary/v1\x00"


def in_canary(device_id: str, version: int, fraction: float) -> bool:
    """Whether ``device_id`` takes adapter ``version`` rolled out to ``fraction`` of devices.

    Stable (the same answer on every call and every device restart), independent across
    versions (a new version draws a new canary set), and monotone in ``fraction`` (widening a
    rollout keeps the devices already in). SHA-256 is a hash here, not a secret.

    >>> in_canary("d1", 3, 0.0), in_canary("d1", 3, 1.0)
    (False, True)
    """
    digest = hashlib.sha256(_CANARY_DOMAIN + f"{device_id}\x00{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Suggestion:
    """One ranked app (its launchable spelling) and its probability under the live model."""

    app: str
    score: float

    @property
    def candidate(self) -> str:
        """The action id, ``"launch:<app>"``."""
        return catalog.candidate_id(self.app)


def candidate_apps(apps: Iterable[str]) -> tuple[str, ...]:
    """Names a device may suggest, deduplicated by app: catalogue spellings become the
    catalogue's canonical (launchable) name; a name the catalogue does not know is kept as
    given (the caller vouches that the agent can launch it, e.g. it is in the agent's own app
    table); known apps the agent cannot launch by name (支付宝...) are dropped.

    >>> candidate_apps(["哔哩哔哩", "bilibili", "B站", "支付宝", "Google-Maps", "MyBank"])
    ('bilibili', 'Google Maps', 'MyBank')
    """
    seen: dict[str, None] = {}
    for name in apps:
        if not name or catalog.is_unlaunchable(name) or name == "System Home":
            continue
        seen.setdefault(catalog.resolve(name) or name, None)
    return tuple(seen)


def _strip_action(name: str) -> str:
    prefix = "launch:"
    return name[len(prefix) :] if name.startswith(prefix) else name


@dataclass(frozen=True)
class ShadowResult:
    """Hit/miss at ``k`` of the live and the candidate adapter on one real step.

    Only these bits leave :meth:`DeviceModel.shadow_eval`: the candidate's ranking is never
    shown to the user nor returned, so a bad candidate cannot affect the agent.
    """

    live_version: int
    candidate_version: int
    live_hit: bool
    candidate_hit: bool


@dataclass(frozen=True)
class _Slot:
    """An installed adapter: its manifest (None for the built-in zero adapter), the loaded
    ORT adapter and the RunOptions that activate it."""

    version: int
    manifest: AdapterManifest | None
    run_options: ort.RunOptions
    adapter: ort.LoraAdapter | None  # held so RunOptions never outlives it


class DeviceModel:
    """The base model plus a verified adapter, as a phone agent runs it."""

    def __init__(
        self,
        base_onnx_bytes: bytes,
        trusted_public_key: Ed25519PublicKey,
        region: str,
        cohort: str,
        *,
        device_id: str | None = None,
        apps: Iterable[str] | None = None,
    ) -> None:
        self.region = region
        self.cohort = cohort
        self.device_id = device_id
        self._key = trusted_public_key
        self._base_sha256 = hashlib.sha256(base_onnx_bytes).hexdigest()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the overridable LoRA inputs are intended
        self._session = ort.InferenceSession(
            base_onnx_bytes, opts, providers=["CPUExecutionProvider"]
        )
        self._lora_shapes = self._check_graph()
        self._apps: tuple[str, ...] = ()
        self._app_feats = np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if apps is None:
            apps = catalog.apps_for_region(region) or catalog.APP_NAMES
        self.set_apps(apps)
        self._lock = threading.Lock()
        self._live = _Slot(0, None, ort.RunOptions(), None)
        self._previous: _Slot | None = None
        self._candidate: _Slot | None = None
        self._high_water = 0  # highest version ever installed: releases must exceed it

    # --- read-only state -------------------------------------------------------------------

    @property
    def base_sha256(self) -> str:
        return self._base_sha256

    @property
    def live_version(self) -> int:
        return self._live.version

    @property
    def live_manifest(self) -> AdapterManifest | None:
        return self._live.manifest

    @property
    def previous_version(self) -> int | None:
        return self._previous.version if self._previous else None

    @property
    def candidate_version(self) -> int | None:
        return self._candidate.version if self._candidate else None

    # --- installing ------------------------------------------------------------------------

    def install(self, signed: SignedAdapter) -> AdapterManifest:
        """Verify ``signed`` and make it live; the live adapter becomes ``previous``.

        A signed rollback also drops ``previous``: the publisher has withdrawn that version,
        so local rollback must not bring it back.
        """
        with self._lock:
            slot = self._admit(signed)
            manifest = signed.manifest
            if manifest.kind == "rollback":
                self._previous = None
            else:
                self._previous = self._live
                self._high_water = manifest.version
            self._live = slot
            if self._candidate and self._candidate.version <= self._high_water:
                self._candidate = None
            return manifest

    def offer(self, signed: SignedAdapter) -> bool:
        """Install ``signed`` if this device is in its rollout (:func:`in_canary`); rollbacks
        apply to every device. Returns whether it was installed."""
        if self.device_id is None:
            raise LocalProtocolError("offer() needs the DeviceModel's device_id")
        m = signed.manifest
        if m.kind == "release" and not in_canary(self.device_id, m.version, m.rollout_fraction):
            return False
        self.install(signed)
        return True

    def rollback_local(self) -> int:
        """Swap back to the previous adapter at once, with no network; returns the version now
        live. The withdrawn one is not kept, and the version high-water mark stays, so the
        same release cannot be re-installed later."""
        with self._lock:
            if self._previous is None:
                raise LocalProtocolError("no previous adapter to roll back to")
            self._live, self._previous = self._previous, None
            return self._live.version

    def stage(self, signed: SignedAdapter) -> AdapterManifest:
        """Verify ``signed`` (same checks as :meth:`install`) and hold it as the shadow
        candidate, without changing what the user sees."""
        with self._lock:
            if signed.manifest.kind != "release":
                raise AdapterRejected(
                    AdapterRejectReason.ROLLBACK_NOT_APPLICABLE, "only releases are staged"
                )
            self._candidate = self._admit(signed)
            return signed.manifest

    def promote(self) -> AdapterManifest:
        """Make the staged candidate live (it was verified when staged)."""
        with self._lock:
            cand = self._candidate
            if cand is None or cand.manifest is None:
                raise LocalProtocolError("no staged candidate")
            if cand.version <= self._high_water:
                self._candidate = None
                raise AdapterRejected(AdapterRejectReason.DOWNGRADE, "superseded while staged")
            self._previous, self._live, self._candidate = self._live, cand, None
            self._high_water = cand.version
            return cand.manifest

    def discard_candidate(self) -> None:
        with self._lock:
            self._candidate = None

    # --- candidates ------------------------------------------------------------------------

    @property
    def apps(self) -> tuple[str, ...]:
        """The apps this device suggests from (launchable spellings), in score order of
        :meth:`scores`."""
        return self._apps

    def set_apps(self, apps: Iterable[str]) -> None:
        """Replace the candidate apps, e.g. with the phone's installed, launchable apps (see
        :func:`candidate_apps` for how names are normalized). Default: the catalogue's apps of
        the device's region."""
        names = candidate_apps(apps)
        if not names:
            raise ConfigError("a device needs at least one launchable app to suggest")
        self._apps, self._app_feats = names, app_features(names)

    # --- inference -------------------------------------------------------------------------

    def scores(
        self,
        instruction: str,
        context_embedding: np.ndarray,
        apps: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Probabilities over the candidate apps (:attr:`apps`, or ``apps`` as
        :func:`candidate_apps` normalizes them) with the live adapter."""
        _, feats = self._candidates(apps)
        return self._probs(self._live, instruction, context_embedding, feats)

    def suggest(
        self,
        instruction: str,
        context_embedding: np.ndarray,
        k: int = 3,
        apps: Sequence[str] | None = None,
    ) -> list[Suggestion]:
        """The ``k`` most likely apps for ``instruction``, best first."""
        names, feats = self._candidates(apps)
        logits = self._logits(self._live, instruction, context_embedding, feats)
        # The softmax is monotone, so rank the logits and normalize only what is returned:
        # this runs on every agent step, beside a graph that costs tens of microseconds.
        top = np.argsort(-logits, kind="stable")[:k]
        z = np.exp(logits - logits[top[0]])
        total = float(z.sum())
        return [Suggestion(names[i], float(z[i]) / total) for i in top]

    def shadow_eval(
        self,
        instruction: str,
        context_embedding: np.ndarray,
        actual: str,
        k: int = 1,
        apps: Sequence[str] | None = None,
    ) -> ShadowResult:
        """Score the staged candidate beside live on a task whose outcome (``actual``, the app
        the user used, any spelling) is known; return hit/miss for both."""
        live, cand = self._live, self._candidate
        if cand is None:
            raise LocalProtocolError("no staged candidate to shadow-evaluate")
        names, feats = self._candidates(apps)
        used = _strip_action(actual)
        used = catalog.resolve(used) or used
        label = names.index(used) if used in names else -1
        hits = []
        for slot in (live, cand):
            probs = self._probs(slot, instruction, context_embedding, feats)
            hits.append(label in np.argsort(-probs, kind="stable")[:k])
        return ShadowResult(live.version, cand.version, bool(hits[0]), bool(hits[1]))

    # --- internals -------------------------------------------------------------------------

    def _candidates(self, apps: Sequence[str] | None) -> tuple[tuple[str, ...], np.ndarray]:
        if apps is None:
            return self._apps, self._app_feats
        names = candidate_apps(apps)
        if not names:
            raise ValueError("no launchable app among the candidates given")
        return names, app_features(names)

    def _check_graph(self) -> dict[str, tuple[int, ...]]:
        out = self._session.get_outputs()
        if out[0].name != OUTPUT_LOGITS:
            raise ConfigError(f"base model's output is {out[0].name!r}, not {OUTPUT_LOGITS!r}")
        names = {i.name for i in self._session.get_inputs()}
        if {INPUT_INSTRUCTION, INPUT_CONTEXT, INPUT_APPS} - names:
            raise ConfigError(
                f"base model lacks inputs {INPUT_INSTRUCTION}/{INPUT_CONTEXT}/{INPUT_APPS}: "
                "not the two-tower graph of this release"
            )
        lora = {i.name: i.shape for i in self._session.get_overridable_initializers()}
        if not {LORA_A, LORA_B} <= set(lora):
            raise ConfigError("base model has no overridable lora_A/lora_B inputs")
        return {name: tuple(lora[name]) for name in (LORA_A, LORA_B)}

    def _admit(self, signed: SignedAdapter) -> _Slot:
        """All checks, then load. Caller holds the lock."""
        adapter_bytes = verify(signed, self._key)  # nothing unverified goes further
        m = signed.manifest
        if m.region != self.region:
            raise AdapterRejected(AdapterRejectReason.WRONG_REGION, f"{m.region} != {self.region}")
        if m.cohort not in (self.cohort, ALL_COHORTS):
            raise AdapterRejected(AdapterRejectReason.WRONG_COHORT, f"{m.cohort} != {self.cohort}")
        if m.base_model_sha256 != self._base_sha256:
            raise AdapterRejected(
                AdapterRejectReason.WRONG_BASE,
                f"built for {m.base_model_sha256[:12]}, device runs {self._base_sha256[:12]}",
            )
        if m.kind == "release" and m.version <= self._high_water:
            raise AdapterRejected(
                AdapterRejectReason.DOWNGRADE,
                f"version {m.version} <= {self._high_water} already installed",
            )
        if m.kind == "rollback" and m.parent_version != self._live.version:
            raise AdapterRejected(
                AdapterRejectReason.ROLLBACK_NOT_APPLICABLE,
                f"rollback from {m.parent_version}, device is on {self._live.version}",
            )
        try:
            parsed = adapter_from_bytes(adapter_bytes)
            shapes = {LORA_A: parsed.weights.A.shape, LORA_B: parsed.weights.B.shape}
            if shapes != self._lora_shapes:
                raise ValueError(f"shapes {shapes} != graph {self._lora_shapes}")
            adapter = load_lora_adapter(adapter_bytes)
        except ValueError as exc:
            raise AdapterRejected(AdapterRejectReason.BAD_ADAPTER, str(exc)) from exc
        run_options = ort.RunOptions()
        run_options.add_active_adapter(adapter)
        return _Slot(m.version, m, run_options, adapter)

    def _logits(
        self, slot: _Slot, instruction: str, context_embedding: np.ndarray, apps: np.ndarray
    ) -> np.ndarray:
        context = np.asarray(context_embedding, dtype=np.float32).reshape(1, EMBEDDING_DIM)
        feeds = {
            INPUT_INSTRUCTION: instruction_features(instruction).reshape(1, EMBEDDING_DIM),
            INPUT_CONTEXT: context,
            INPUT_APPS: apps,
        }
        logits: np.ndarray = self._session.run([OUTPUT_LOGITS], feeds, slot.run_options)[0][0]
        return logits

    def _probs(
        self, slot: _Slot, instruction: str, context_embedding: np.ndarray, apps: np.ndarray
    ) -> np.ndarray:
        logits = self._logits(slot, instruction, context_embedding, apps)
        z = np.exp(logits - logits.max())
        return z / z.sum()
