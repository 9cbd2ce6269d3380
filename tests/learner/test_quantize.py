"""The int8 base stays close to fp32 and still takes adapters."""

from __future__ import annotations

import numpy as np

from deploy.simulation.population import Population
from learner.finetune import fit_lora
from learner.model import PersonalizationNet
from learner.onnx_eval import onnx_scores
from learner.quantize_model import quantization_report, quantize_int8
from privacy.adapter_file import adapter_to_bytes
from privacy.features import StepArrays


def test_int8_close_to_fp32_and_smaller(
    base_net: PersonalizationNet, population: Population
) -> None:
    held = StepArrays.from_episodes(e for d in population.devices for e in population.heldout(d, 0))
    report = quantization_report(base_net, held)
    print(report)
    assert report.int8_bytes < report.fp32_bytes / 2.5
    assert abs(report.hit_at_1_drop) <= 0.03


def test_int8_graph_takes_lora_adapters(
    base_net: PersonalizationNet, population: Population
) -> None:
    devices = population.devices_in("eu-c1")
    train = StepArrays.from_rows(r for d in devices for r in population.rows_for_round(d, 0))
    held = StepArrays.from_episodes(e for d in devices for e in population.heldout(d, 0))
    lora = fit_lora(base_net, train)
    adapter = adapter_to_bytes(lora, adapter_version=1)
    int8 = quantize_int8(base_net)
    with_adapter = onnx_scores(int8, held, adapter)
    assert not np.allclose(with_adapter, onnx_scores(int8, held))
    # same personalization as torch, up to int8 rounding of the base weights
    torch_top = held.masked(base_net.logits(held, lora)).argmax(1)
    assert (held.masked(with_adapter).argmax(1) == torch_top).mean() >= 0.95
    report = quantization_report(base_net, held, adapter)
    print(report)
    assert abs(report.hit_at_1_drop) <= 0.05
