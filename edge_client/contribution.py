"""The device side of a learning round: its tasks -> one contribution vector (numpy, no torch).

Why numpy and not the ONNX session: the statistics need the trunk features ``h``, the app
vectors and the base probabilities, which the shipped graph does not output; the device
already holds the base weights (they are the graph's initializers), so :meth:`Trunk.from_onnx`
reads them from the very bytes the device runs and computes ``h = relu(W1 x + b1)`` in a few
microseconds. The rows are the device's finished tasks (:func:`privacy.features.rows_of`),
never its individual taps.
The shadow comparison goes through :meth:`DeviceModel.shadow_eval` (the real ORT path) when
the device has the candidate staged; otherwise the numpy trunk scores the adapters the
device holds (canary devices compare against the live adapter they keep as previous).

What to do this round is the cohort's :class:`~privacy.adapter_plan.AdapterPlan`; the vector's
meaning is :data:`privacy.contribution.LAYOUT_V2`. The result is clipped to the layout's
``C`` and is what :func:`privacy.round.client_input` quantizes, noises and masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_client.runtime import DeviceModel, in_canary
from privacy.adapter_file import LoRAWeights
from privacy.adapter_plan import AdapterPlan
from privacy.contribution import LAYOUT_V2, ContributionLayout
from privacy.features import Row, StepArrays, row_gradient, softmax_masked
from privacy.graph_io import INPUT_APPS


@dataclass(frozen=True)
class Trunk:
    """The base model's weights as numpy: trunk features, app vectors, logits with a LoRA."""

    w1: np.ndarray  # [hidden, 2*embed]
    b1: np.ndarray
    w2: np.ndarray  # [query, hidden]
    b2: np.ndarray
    wv: np.ndarray  # [query, embed]: the app tower
    bv: np.ndarray
    wp: np.ndarray  # [embed]: the app prior
    affinity: float
    scale: float

    @classmethod
    def from_onnx(cls, onnx_bytes: bytes) -> Trunk:
        """Read the weights out of the shipped graph (names fixed by ``learner.model``)."""
        model = onnx.load_from_string(onnx_bytes)
        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        meta = {p.key: p.value for p in model.metadata_props}
        if "sotto.lora_scale" not in meta:
            raise ValueError("base graph carries no LoRA scale (sotto.lora_scale)")
        if INPUT_APPS not in {i.name for i in model.graph.input}:
            raise ValueError("base graph has no apps input: not a two-tower model")

        def f64(name: str) -> np.ndarray:
            return init[name].astype(np.float64)

        return cls(
            f64("hidden.weight"),
            f64("hidden.bias"),
            f64("query.weight"),
            f64("query.bias"),
            f64("app.weight"),
            f64("app.bias"),
            f64("app_prior").reshape(-1),
            float(init["affinity"]),
            float(meta["sotto.lora_scale"]),
        )

    @classmethod
    def from_net(cls, net: object) -> Trunk:
        """From a :class:`learner.model.PersonalizationNet` (duck-typed: no torch import)."""

        def arr(t: object) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float64)  # type: ignore[attr-defined]

        n: Any = net
        return cls(
            arr(n.hidden.weight),
            arr(n.hidden.bias),
            arr(n.query.weight),
            arr(n.query.bias),
            arr(n.app.weight),
            arr(n.app.bias),
            arr(n.app_prior).reshape(-1),
            float(n.affinity.detach()),
            float(n.config.scale),
        )

    def features(self, data: StepArrays) -> np.ndarray:
        x = np.concatenate([data.instruction, data.context], axis=1).astype(np.float64)
        return np.maximum(x @ self.w1.T + self.b1, 0.0)

    def app_vectors(self, apps: np.ndarray) -> np.ndarray:
        """``[num_apps, query]``: the app tower on identity features ``apps``."""
        return apps.astype(np.float64) @ self.wv.T + self.bv

    def logits(
        self,
        data: StepArrays,
        lora: LoRAWeights | None = None,
        h: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[N, len(data.apps)]`` unmasked scores, with ``lora`` (or the base)."""
        h = self.features(data) if h is None else h
        feats = data.app_features().astype(np.float64)
        q = h @ self.w2.T + self.b2
        if lora is not None:
            q = q + (h @ lora.A) @ lora.B * self.scale
        prior = feats @ self.wp
        return q @ self.app_vectors(feats).T + prior + self.affinity * (data.context @ feats.T)


def as_arrays(rows: StepArrays | Sequence[Row]) -> StepArrays:
    return rows if isinstance(rows, StepArrays) else StepArrays.from_rows(rows)


def stats_block(trunk: Trunk, data: StepArrays, h: np.ndarray | None = None) -> np.ndarray:
    """``mean_t h_t (V^T g_t)^T`` (``g`` = :func:`privacy.features.row_gradient` at the base):
    the device's share of the cohort gradient with respect to a delta on the query layer."""
    h = trunk.features(data) if h is None else h
    probs = softmax_masked(trunk.logits(data, h=h), data.available)
    g = row_gradient(probs, data.labels, data.polarity, data.available)
    v = trunk.app_vectors(data.app_features())
    return h.T @ (g @ v) / max(len(data), 1)


def _hits(trunk: Trunk, data: StepArrays, h: np.ndarray, lora: LoRAWeights | None) -> np.ndarray:
    pos = data.polarity > 0
    scores = data.masked(trunk.logits(data, lora, h))[pos]
    return np.argmax(scores, axis=1) == data.labels[pos]


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(d, d**2)``: the device's hit-rate difference A - B and its square."""
    d = float(np.mean(a.astype(np.float64) - b.astype(np.float64))) if a.size else 0.0
    return np.array([d, d * d])


def _weights(adapters: Mapping[int, LoRAWeights], version: int | None) -> LoRAWeights | None:
    if version is None or version == 0:
        return None  # the zero adapter: the base model
    try:
        return adapters[version]
    except KeyError:
        raise KeyError(f"device does not hold adapter version {version}") from None


def build_contribution(
    device_model_or_trunk: DeviceModel | Trunk,
    rows: StepArrays | Sequence[Row],
    plan: AdapterPlan,
    device_id: str,
    *,
    adapters: Mapping[int, LoRAWeights] | None = None,
    trunk: Trunk | None = None,
    rows_list: Sequence[Row] | None = None,
    layout: ContributionLayout = LAYOUT_V2,
) -> np.ndarray:
    """This device's contribution vector for the round ``plan`` governs (clipped to ``C``).

    ``rows`` are the device's labelled rows of the round (:func:`privacy.features.rows_of`
    of its finished tasks). ``adapters`` are the weights of the versions the device holds
    (version 0 is implicit). With a :class:`DeviceModel`, pass its ``trunk`` too; the shadow
    block then comes from ``shadow_eval`` when the candidate staged there is the plan's
    ``shadow_version`` (give ``rows`` as :class:`~privacy.features.Row` objects, or also
    ``rows_list``, for that path).
    """
    model = device_model_or_trunk
    if isinstance(model, Trunk):
        trunk = model
    elif trunk is None:
        raise ValueError("a DeviceModel needs trunk= (Trunk.from_onnx of its base bytes)")
    adapters = adapters or {}
    data = as_arrays(rows)
    parts: dict[str, np.ndarray] = {}
    if len(data) == 0:
        return layout.encode(parts)
    h = trunk.features(data)
    parts["stats"] = stats_block(trunk, data, h)
    live = _weights(adapters, plan.live_version)

    if plan.shadow_version is not None:
        objs = (
            rows_list if rows_list is not None else (None if isinstance(rows, StepArrays) else rows)
        )
        if (
            isinstance(model, DeviceModel)
            and objs is not None
            and model.candidate_version == plan.shadow_version
            and model.live_version == (plan.live_version or 0)
        ):
            res = [
                model.shadow_eval(r.instruction, r.context, r.app, apps=r.candidates)
                for r in objs
                if r.polarity > 0
            ]
            a = np.array([r.candidate_hit for r in res])
            b = np.array([r.live_hit for r in res])
        else:
            a = _hits(trunk, data, h, _weights(adapters, plan.shadow_version))
            b = _hits(trunk, data, h, live)
        parts["shadow"] = _paired(a, b)

    if plan.canary_version is not None:
        if in_canary(device_id, plan.canary_version, plan.canary_fraction):
            a = _hits(trunk, data, h, _weights(adapters, plan.canary_version))
            parts["rollout"] = _paired(a, _hits(trunk, data, h, live))
    elif plan.live_version is not None and plan.previous_version is not None:
        prev = _weights(adapters, plan.previous_version)
        a = _hits(trunk, data, h, live)
        parts["rollout"] = _paired(a, _hits(trunk, data, h, prev))
    return layout.encode(parts)
