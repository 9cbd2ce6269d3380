"""An int8 base model (dynamic quantization) that still takes LoRA adapters, and its report.

Why dynamic int8: weights shrink about 4x with no calibration data needed; activations stay
float, so the float LoRA term (``(h @ lora_A) @ lora_B``) is untouched. Quantization runs on
the graph *before* the LoRA inputs get their zero initializers (see
:func:`learner.model.export_onnx`): otherwise the quantizer would take the zeros for weights
and fold the adapter inputs away. An adapter fitted against the fp32 base applies unchanged
to the int8 base, but the int8 model has its own hash, so manifests must name the one the
device runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from learner.model import PersonalizationNet, add_lora_defaults, export_onnx
from learner.onnx_eval import onnx_hit_at_k
from privacy.features import StepArrays
from privacy.graph_io import LORA_A, LORA_B


def quantize_int8(net: PersonalizationNet) -> bytes:
    """The int8 ONNX bytes of ``net``, LoRA inputs overridable as in the fp32 export."""
    raw = export_onnx(net, lora_defaults=False)
    with tempfile.TemporaryDirectory(prefix="sotto-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(raw)
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
        quantized = dst.read_bytes()
    model = onnx.load_from_string(quantized)
    inputs = {i.name for i in model.graph.input}
    if not {LORA_A, LORA_B} <= inputs:
        raise RuntimeError("quantization removed the LoRA inputs")
    return add_lora_defaults(quantized, net.config)


@dataclass(frozen=True)
class QuantReport:
    """Size and hit@1 of the fp32 and int8 graphs on the same held-out steps."""

    fp32_bytes: int
    int8_bytes: int
    fp32_hit_at_1: float
    int8_hit_at_1: float
    n: int

    @property
    def hit_at_1_drop(self) -> float:
        return self.fp32_hit_at_1 - self.int8_hit_at_1


def quantization_report(
    net: PersonalizationNet, heldout: StepArrays, adapter: bytes | None = None
) -> QuantReport:
    """Compare fp32 and int8 on ``heldout`` (with ``adapter`` active on both, if given)."""
    fp32 = export_onnx(net)
    int8 = quantize_int8(net)
    return QuantReport(
        fp32_bytes=len(fp32),
        int8_bytes=len(int8),
        fp32_hit_at_1=onnx_hit_at_k(fp32, heldout, adapter),
        int8_hit_at_1=onnx_hit_at_k(int8, heldout, adapter),
        n=len(heldout),
    )
