"""The device side of a learning round: its steps -> one contribution vector (numpy, no torch).

Why numpy and not the ONNX session: the statistics need the trunk features ``h`` and the base
probabilities, which the shipped graph does not output; the device already holds the base
weights (they are the graph's initializers), so :meth:`Trunk.from_onnx` reads them from the
very bytes the device runs and computes ``h = relu(W1 x + b1)`` in a few microseconds.
The shadow comparison goes through :meth:`DeviceModel.shadow_eval` (the real ORT path) when
the device has the candidate staged; otherwise the numpy trunk scores the adapters the
device holds (canary devices compare against the live adapter they keep as previous).

What to do this round is the cohort's :class:`~privacy.adapter_plan.AdapterPlan`; the vector's
meaning is :data:`privacy.contribution.LAYOUT_V1`. The result is clipped to the layout's
``C`` and is what :func:`privacy.round.client_input` quantizes, noises and masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edge_client.runtime import DeviceModel, in_canary
from privacy.adapter_file import LoRAWeights
from privacy.adapter_plan import AdapterPlan
from privacy.catalog import NUM_CANDIDATES
from privacy.contribution import LAYOUT_V1, ContributionLayout
from privacy.features import LabelledStep, StepArrays


@dataclass(frozen=True)
class Trunk:
    """The base model's weights as numpy: features, base logits, and logits with a LoRA."""

    w1: np.ndarray  # [hidden, 2*embed]
    b1: np.ndarray
    w2: np.ndarray  # [candidates, hidden]
    b2: np.ndarray
    scale: float

    @classmethod
    def from_onnx(cls, onnx_bytes: bytes) -> Trunk:
        """Read the weights out of the shipped graph (names fixed by ``learner.model``)."""
        model = onnx.load_from_string(onnx_bytes)
        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        scale = None
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output[0].startswith("/Constant"):
                scale = float(numpy_helper.to_array(node.attribute[0].t))
        if scale is None:
            raise ValueError("base graph has no LoRA scale constant")
        return cls(
            init["hidden.weight"].astype(np.float64),
            init["hidden.bias"].astype(np.float64),
            init["out.weight"].astype(np.float64),
            init["out.bias"].astype(np.float64),
            scale,
        )

    @classmethod
    def from_net(cls, net: object) -> Trunk:
        """From a :class:`learner.model.PersonalizationNet` (duck-typed: no torch import)."""

        def arr(t: object) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float64)  # type: ignore[attr-defined]

        return cls(
            arr(net.hidden.weight),  # type: ignore[attr-defined]
            arr(net.hidden.bias),  # type: ignore[attr-defined]
            arr(net.out.weight),  # type: ignore[attr-defined]
            arr(net.out.bias),  # type: ignore[attr-defined]
            float(net.config.scale),  # type: ignore[attr-defined]
        )

    def features(self, data: StepArrays) -> np.ndarray:
        x = np.concatenate([data.instruction, data.context], axis=1).astype(np.float64)
        return np.maximum(x @ self.w1.T + self.b1, 0.0)

    def logits(self, h: np.ndarray, lora: LoRAWeights | None = None) -> np.ndarray:
        out = h @ self.w2.T + self.b2
        if lora is not None:
            out = out + (h @ lora.A) @ lora.B * self.scale
        return out


def as_arrays(steps: StepArrays | Sequence[LabelledStep]) -> StepArrays:
    return steps if isinstance(steps, StepArrays) else StepArrays.from_steps(steps)  # type: ignore[arg-type]


def stats_block(trunk: Trunk, data: StepArrays, h: np.ndarray | None = None) -> np.ndarray:
    """``mean_t h_t (e_{y_t} - p_base,t)^T``: the device's share of the cohort gradient."""
    h = trunk.features(data) if h is None else h
    z = trunk.logits(h)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(data)), data.labels] -= 1.0  # p - e_y
    return -(h.T @ p) / max(len(data), 1)


def _hits(trunk: Trunk, h: np.ndarray, labels: np.ndarray, lora: LoRAWeights | None) -> np.ndarray:
    return np.argmax(trunk.logits(h, lora), axis=1) == labels


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
    steps: StepArrays | Sequence[LabelledStep],
    plan: AdapterPlan,
    device_id: str,
    *,
    adapters: Mapping[int, LoRAWeights] | None = None,
    trunk: Trunk | None = None,
    steps_list: Sequence[LabelledStep] | None = None,
    layout: ContributionLayout = LAYOUT_V1,
) -> np.ndarray:
    """This device's contribution vector for the round ``plan`` governs (clipped to ``C``).

    ``adapters`` are the weights of the versions the device holds (version 0 is implicit).
    With a :class:`DeviceModel`, pass its ``trunk`` too; the shadow block then comes from
    ``shadow_eval`` when the candidate staged there is the plan's ``shadow_version`` (give
    ``steps`` as step objects, or also ``steps_list``, for that path).
    """
    model = device_model_or_trunk
    if isinstance(model, Trunk):
        trunk = model
    elif trunk is None:
        raise ValueError("a DeviceModel needs trunk= (Trunk.from_onnx of its base bytes)")
    adapters = adapters or {}
    data = as_arrays(steps)
    if data.labels.size and int(data.labels.max()) >= NUM_CANDIDATES:
        raise ValueError("labels outside the catalogue")
    parts: dict[str, np.ndarray] = {}
    if len(data) == 0:
        return layout.encode(parts)
    h = trunk.features(data)
    parts["stats"] = stats_block(trunk, data, h)
    live = _weights(adapters, plan.live_version)

    if plan.shadow_version is not None:
        objs = (
            steps_list
            if steps_list is not None
            else (None if isinstance(steps, StepArrays) else steps)
        )
        if (
            isinstance(model, DeviceModel)
            and objs is not None
            and model.candidate_version == plan.shadow_version
            and model.live_version == (plan.live_version or 0)
        ):
            res = [model.shadow_eval(s.instruction, s.context, s.candidate) for s in objs]
            a = np.array([r.candidate_hit for r in res])
            b = np.array([r.live_hit for r in res])
        else:
            a = _hits(trunk, h, data.labels, _weights(adapters, plan.shadow_version))
            b = _hits(trunk, h, data.labels, live)
        parts["shadow"] = _paired(a, b)

    if plan.canary_version is not None:
        if in_canary(device_id, plan.canary_version, plan.canary_fraction):
            a = _hits(trunk, h, data.labels, _weights(adapters, plan.canary_version))
            parts["rollout"] = _paired(a, _hits(trunk, h, data.labels, live))
    elif plan.live_version is not None and plan.previous_version is not None:
        prev = _weights(adapters, plan.previous_version)
        a = _hits(trunk, h, data.labels, live)
        parts["rollout"] = _paired(a, _hits(trunk, h, data.labels, prev))
    return layout.encode(parts)
