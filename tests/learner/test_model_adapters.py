"""The ONNX export binds LoRA through ORT adapters exactly as the torch model computes it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploy.simulation.population import Population
from learner.model import PersonalizationNet, export_onnx, model_sha256
from learner.onnx_eval import onnx_scores
from privacy.adapter_file import (
    LoRAWeights,
    adapter_from_bytes,
    adapter_to_bytes,
    zero_adapter,
)
from privacy.features import StepArrays
from privacy.graph_io import LORA_A, LORA_B


@pytest.fixture(scope="module")
def sample(population: Population) -> StepArrays:
    return StepArrays.from_rows(
        r for d in population.devices[::4] for r in population.rows_for_round(d, 0)
    )


def _random_lora(net: PersonalizationNet, seed: int) -> LoRAWeights:
    rng = np.random.default_rng(seed)
    cfg = net.config
    return LoRAWeights(
        rng.normal(0, 0.3, (cfg.hidden, cfg.rank)),
        rng.normal(0, 0.3, (cfg.rank, cfg.query_dim)),
    )


def test_lora_tensors_are_overridable_graph_inputs(base_onnx: bytes) -> None:
    graph = onnx.load_from_string(base_onnx).graph
    inputs = {i.name for i in graph.input}
    inits = {i.name: i for i in graph.initializer}
    assert {LORA_A, LORA_B} <= inputs
    for name in (LORA_A, LORA_B):
        assert not onnx.numpy_helper.to_array(inits[name]).any()  # zero defaults


def test_export_is_deterministic(base_net: PersonalizationNet, base_onnx: bytes) -> None:
    assert model_sha256(export_onnx(base_net)) == model_sha256(base_onnx)


def test_zero_adapter_equals_torch_base(
    base_net: PersonalizationNet, base_onnx: bytes, sample: StepArrays
) -> None:
    cfg = base_net.config
    expected = base_net.logits(sample)
    zero = zero_adapter(cfg.hidden, cfg.rank, cfg.query_dim)
    np.testing.assert_allclose(onnx_scores(base_onnx, sample, zero), expected, atol=1e-5)
    np.testing.assert_allclose(onnx_scores(base_onnx, sample), expected, atol=1e-5)


def test_known_lora_delta_changes_ort_exactly_as_torch(
    base_net: PersonalizationNet, base_onnx: bytes, sample: StepArrays
) -> None:
    lora = _random_lora(base_net, seed=3)
    adapter = adapter_to_bytes(lora, adapter_version=7)
    got = onnx_scores(base_onnx, sample, adapter)
    np.testing.assert_allclose(got, base_net.logits(sample, lora), atol=1e-4)
    # ...and the delta is real: the top candidates move.
    assert (got.argmax(1) != base_net.logits(sample).argmax(1)).any()
    # The delta equals (scale * h @ A @ B) @ V^T computed independently in numpy: a query-side
    # delta read through the fixed app tower.
    import torch

    with torch.no_grad():
        h = base_net.features(
            torch.from_numpy(sample.instruction), torch.from_numpy(sample.context)
        ).numpy()
        v = base_net.app_vectors(torch.from_numpy(sample.app_features())).numpy()
    delta = base_net.config.scale * h @ lora.delta() @ v.T
    np.testing.assert_allclose(got - base_net.logits(sample), delta, atol=1e-4)


def test_the_graph_scores_any_set_of_apps(base_net: PersonalizationNet, base_onnx: bytes) -> None:
    """The app side is an input: any apps, any number, any order; an app the catalogue does
    not know is scored by its name alone, and reordering the apps reorders the scores."""
    from dataclasses import replace

    from privacy import catalog

    pop = Population(seed=3, cohorts_per_region=1, devices_per_cohort=1)
    rows = pop.rows_for_round(pop.devices[0], 0)
    few = StepArrays.from_rows(rows, apps=("高德地图", "百度地图", "MyNewMaps"))
    assert len(few) <= len(rows)
    full = StepArrays.from_rows(rows)
    three = replace(
        full, apps=("高德地图", "百度地图", "MyNewMaps"), available=full.available[:, :3]
    )
    got = onnx_scores(base_onnx, three)
    assert got.shape == (len(full), 3)
    np.testing.assert_allclose(got, base_net.logits(three), atol=1e-5)
    flipped = replace(three, apps=three.apps[::-1])
    np.testing.assert_allclose(onnx_scores(base_onnx, flipped), got[:, ::-1], atol=1e-5)
    everything = onnx_scores(base_onnx, full)
    assert everything.shape == (len(full), catalog.NUM_APPS)


def test_adapter_bytes_round_trip_and_size(base_net: PersonalizationNet) -> None:
    lora = _random_lora(base_net, seed=4)
    blob = adapter_to_bytes(lora, adapter_version=12, model_version=3)
    back = adapter_from_bytes(blob)
    assert (back.adapter_version, back.model_version) == (12, 3)
    np.testing.assert_array_equal(back.weights.A, lora.A)
    np.testing.assert_array_equal(back.weights.B, lora.B)
    cfg = base_net.config
    raw = 4 * (cfg.hidden * cfg.rank + cfg.rank * cfg.query_dim)
    assert raw <= len(blob) < raw + 512  # a few KB: cheap to ship often, whatever the apps


def test_garbage_is_not_an_adapter() -> None:
    with pytest.raises(ValueError):
        adapter_from_bytes(b"not an adapter" * 8)
