"""A cohort adapter, fitted centrally with plain torch, beats the base model on held-out tasks,
through the whole path: fit -> adapter file -> sign -> device install -> suggest."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.population import Population
from edge_client.runtime import DeviceModel
from learner.finetune import fit_lora
from learner.model import PersonalizationNet, model_sha256
from learner.publish import ship_lora
from privacy.features import StepArrays

COHORT = "cn-c1"


@pytest.fixture(scope="module")
def cohort_data(population: Population) -> tuple[StepArrays, StepArrays, list]:
    devices = population.devices_in(COHORT)
    train = StepArrays.from_rows(
        r for d in devices for q in (0, 1) for r in population.rows_for_round(d, q)
    )
    held_rows = [
        r for d in devices for q in (1, 2) for e in population.heldout(d, q) for r in e.rows
    ]
    return train, StepArrays.from_rows(held_rows), [r for r in held_rows if r.polarity > 0]


def test_cohort_adapter_beats_base(
    base_net: PersonalizationNet,
    base_onnx: bytes,
    signing_key: Ed25519PrivateKey,
    cohort_data: tuple[StepArrays, StepArrays, list],
) -> None:
    train, held, held_rows = cohort_data
    lora = fit_lora(base_net, train, seed=0)
    base_hit = held.hits(base_net.logits(held))
    lora_hit = held.hits(base_net.logits(held, lora))
    print(f"hit@1 base={base_hit:.3f} cohort-lora={lora_hit:.3f} n={len(held)}")
    assert lora_hit >= base_hit + 0.08

    # The same gain on the device, through a signed ORT adapter.
    signed = ship_lora(
        lora,
        base_model_sha256=model_sha256(base_onnx),
        version=1,
        region="cn",
        cohort=COHORT,
        private_key=signing_key,
    )
    device = DeviceModel(base_onnx, signing_key.public_key(), "cn", COHORT)

    def device_hits() -> float:
        tops = [device.suggest(r.instruction, r.context, k=1)[0].app for r in held_rows]
        return sum(t == r.app for t, r in zip(tops, held_rows, strict=True)) / len(tops)

    assert device_hits() == pytest.approx(base_hit, abs=1e-9)
    device.install(signed)
    assert device_hits() == pytest.approx(lora_hit, abs=0.02)


def test_adapter_refit_after_drift_recovers(
    base_net: PersonalizationNet, population: Population
) -> None:
    """cn-c0 switches navigation app at round 3: the pre-drift adapter falls behind one
    refitted on post-drift steps (warm-started from the old one)."""
    devices = population.devices_in("cn-c0")

    def data(rounds: tuple[int, ...], held: bool = False) -> StepArrays:
        fn = population.heldout if held else population.episodes_for_round
        return StepArrays.from_episodes(
            e for d in devices for r in rounds for e in fn(d, r) if e.intent == "navigation"
        )

    old = fit_lora(base_net, StepArrays.concat([data((0, 1, 2)), data((0, 1, 2), True)]))
    new = fit_lora(base_net, data((3, 4)), init=old)
    held = StepArrays.concat([data((3, 4, 5), held=True), data((5, 6))])
    old_hit = held.hits(base_net.logits(held, old))
    new_hit = held.hits(base_net.logits(held, new))
    print(f"post-drift navigation hit@1 old={old_hit:.3f} refit={new_hit:.3f} n={len(held)}")
    assert new_hit >= old_hit + 0.2
