"""A cohort adapter, fitted centrally with plain torch, beats the base model on held-out steps,
through the whole path: fit -> adapter file -> sign -> device install -> suggest."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.population import Population
from edge_client.runtime import DeviceModel
from learner.finetune import fit_lora
from learner.model import PersonalizationNet, model_sha256
from learner.publish import ship_lora
from privacy.features import StepArrays, hit_at_k

COHORT = "cn-c1"


@pytest.fixture(scope="module")
def cohort_data(population: Population) -> tuple[StepArrays, StepArrays, list]:
    devices = population.devices_in(COHORT)
    train = StepArrays.from_steps(
        s for d in devices for r in (0, 1) for s in population.steps_for_round(d, r)
    )
    held_steps = [s for d in devices for r in (1, 2) for s in population.heldout(d, r)]
    return train, StepArrays.from_steps(held_steps), held_steps


def test_cohort_adapter_beats_base(
    base_net: PersonalizationNet,
    base_onnx: bytes,
    signing_key: Ed25519PrivateKey,
    cohort_data: tuple[StepArrays, StepArrays, list],
) -> None:
    train, held, held_steps = cohort_data
    lora = fit_lora(base_net, train, seed=0)
    base_hit = hit_at_k(base_net.logits(held), held.labels)
    lora_hit = hit_at_k(base_net.logits(held, lora), held.labels)
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
        tops = [device.suggest(s.instruction, s.context, k=1)[0].candidate for s in held_steps]
        return sum(t == s.candidate for t, s in zip(tops, held_steps, strict=True)) / len(tops)

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
        fn = population.heldout if held else population.steps_for_round
        return StepArrays.from_steps(
            s for d in devices for r in rounds for s in fn(d, r) if s.intent == "navigation"
        )

    old = fit_lora(base_net, StepArrays.concat([data((0, 1, 2)), data((0, 1, 2), True)]))
    new = fit_lora(base_net, data((3, 4)), init=old)
    held = StepArrays.concat([data((3, 4, 5), held=True), data((5, 6))])
    old_hit = hit_at_k(base_net.logits(held, old), held.labels)
    new_hit = hit_at_k(base_net.logits(held, new), held.labels)
    print(f"post-drift navigation hit@1 old={old_hit:.3f} refit={new_hit:.3f} n={len(held)}")
    assert new_hit >= old_hit + 0.2
