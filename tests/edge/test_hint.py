"""PreferenceHint over a real DeviceModel, and personalize() on a PhoneAgent-shaped agent.

The adapter under test is built by hand, not fitted: its one LoRA direction is the base's
hidden activation for navigation instructions (minus that of other intents), mapped onto the
query direction that raises 百度地图 alone among the device's apps (through the fixed app
tower). 百度地图 is *not* the population's favourite (高德地图 is), so when the hint names it,
it is the signed adapter speaking, not the base model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.bootstrap import init_deployment
from edge_client.autoglm import personalize
from edge_client.device import EdgeDevice
from edge_client.hint import AppPreference, PreferenceHint, named_apps
from edge_client.runtime import DeviceModel, Suggestion
from edge_client.steps import AgentStep
from learner.model import PersonalizationNet
from learner.publish import ship_lora
from privacy import catalog
from privacy.adapter_file import LoRAWeights
from privacy.embedding import embed_instruction
from privacy.features import app_features
from privacy.policy import RegionPolicy
from privacy.wire import EMBEDDING_DIM

PREFERRED = "百度地图"
ZERO_CONTEXT = np.zeros(EMBEDDING_DIM, dtype=np.float32)
NAVIGATION = ["打开导航", "导航回家", "打开导航去公司", "navigate home"]
OTHER = ["帮我点外卖", "打开音乐", "给妈妈发微信", "打车去机场", "xyz", "你好"]
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def _features(net: PersonalizationNet, instruction: str) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(embed_instruction(instruction))[None]
        return net.features(x, torch.from_numpy(ZERO_CONTEXT)[None])[0].numpy()


@pytest.fixture(scope="module")
def navigation_lora(base_net: PersonalizationNet) -> LoRAWeights:
    """Rank-1 in effect: ``h @ A[:, 0]`` is ~1 for navigation requests and small otherwise,
    and ``B[0]`` turns that into a logit boost for 百度地图 (a query direction whose product
    with the cn apps' vectors is 1 for 百度地图 and about 0 for the others)."""
    cfg = base_net.config
    nav = np.mean([_features(base_net, i) for i in NAVIGATION], axis=0)
    other = np.mean([_features(base_net, i) for i in OTHER], axis=0)
    direction = nav - other
    a = np.zeros((cfg.hidden, cfg.rank), dtype=np.float32)
    a[:, 0] = direction / float(direction @ nav)
    apps = catalog.apps_for_region("cn")
    with torch.no_grad():
        v = base_net.app_vectors(torch.from_numpy(app_features(apps))).numpy()
    target = np.array([1.0 if app == PREFERRED else 0.0 for app in apps])
    u = np.linalg.lstsq(v.astype(np.float64), target, rcond=None)[0]
    b = np.zeros((cfg.rank, cfg.query_dim), dtype=np.float32)
    b[0] = 3.0 * u
    return LoRAWeights(a, b)


@pytest.fixture
def model(base_onnx: bytes, signing_key: Ed25519PrivateKey) -> DeviceModel:
    """A fresh cn device on the zero adapter (version 0), as a new phone starts."""
    return DeviceModel(base_onnx, signing_key.public_key(), "cn", "cn-c0", device_id="phone-1")


def install(model: DeviceModel, lora: LoRAWeights, key: Ed25519PrivateKey, version: int) -> None:
    model.install(
        ship_lora(
            lora,
            base_model_sha256=model.base_sha256,
            version=version,
            region="cn",
            private_key=key,
        )
    )


# --- the hint over a real model -------------------------------------------------------------


def test_confident_adapter_chooses_its_app_and_the_hint_names_it(
    model: DeviceModel, navigation_lora: LoRAWeights, signing_key: Ed25519PrivateKey
) -> None:
    hint = PreferenceHint(model, lambda: ZERO_CONTEXT, lang="cn")
    assert hint.choose_app("打开导航") is None  # the base alone is not sure (高德地图 ~0.55)

    install(model, navigation_lora, signing_key, version=1)
    assert hint.choose_app("打开导航") == PREFERRED
    assert hint.choose_app("导航回家") == PREFERRED
    text = hint.text("打开导航")
    assert text.startswith("用户偏好（设备端学习）：此类请求通常使用 百度地图（0.9")
    assert text.endswith("任务未指定应用时，优先打开 百度地图。")

    en = PreferenceHint(model, lambda: ZERO_CONTEXT, lang="en").text("打开导航")
    assert en.startswith("User preference (learned on device): ")
    assert "usually opens 百度地图 (0.9" in en

    # the adapter is navigation-specific: other requests are not pushed towards 百度地图
    for other in ("帮我点外卖", "打车去机场", "打开音乐"):
        assert PREFERRED not in hint.text(other), other

    # hot swap back to the base: the very next hint reflects it
    assert model.rollback_local() == 0
    assert hint.choose_app("打开导航") is None


def test_augment_task_and_system_prompt_carry_the_hint_and_strip_recovers_the_task(
    model: DeviceModel, navigation_lora: LoRAWeights, signing_key: Ed25519PrivateKey
) -> None:
    install(model, navigation_lora, signing_key, version=1)
    hint = PreferenceHint(model, lambda: ZERO_CONTEXT)
    text = hint.text("打开导航")
    assert hint.augment_task("打开导航") == f"打开导航\n\n{text}"
    assert PreferenceHint.strip(hint.augment_task("打开导航")) == "打开导航"
    base = "你是一个智能体分析专家。\n"
    assert hint.system_prompt(base, "打开导航") == f"你是一个智能体分析专家。\n\n{text}"


def test_zero_adapter_and_unsure_requests_give_no_hint(model: DeviceModel) -> None:
    hint = PreferenceHint(model, lambda: ZERO_CONTEXT)
    for instruction in ("打开导航", "你好", "今天天气怎么样", "   "):
        assert hint.text(instruction) == "", instruction
        assert hint.choose_app(instruction) is None, instruction
    assert hint.augment_task("打开导航") == "打开导航"
    assert hint.system_prompt("BASE", "打开导航") == "BASE"


def test_an_app_named_in_the_task_is_never_second_guessed(
    model: DeviceModel, navigation_lora: LoRAWeights, signing_key: Ed25519PrivateKey
) -> None:
    install(model, navigation_lora, signing_key, version=1)
    hint = PreferenceHint(model, lambda: ZERO_CONTEXT)
    assert hint.choose_app("用高德地图导航回家") is None
    assert hint.augment_task("用高德地图导航回家") == "用高德地图导航回家"
    assert named_apps("用高德地图导航回家") == ["高德地图"]
    # any spelling in the alias table counts, Open-AutoGLM's own ones included
    for task, app in [
        ("打开bilibili", "bilibili"),
        ("打开B站看猫咪视频", "bilibili"),
        ("用哔哩哔哩导航去公司", "bilibili"),
        ("用高德导航回家", "高德地图"),
        ("navigate home with GoogleMaps", "Google Maps"),
        ("用支付宝付款", "支付宝"),  # an app the agent cannot launch is still the user's choice
    ]:
        assert named_apps(task) == [app], task
        assert hint.choose_app(task) is None, task


# --- rendering, with a scripted model -------------------------------------------------------


@dataclass
class ScriptedModel:
    """Returns fixed suggestions; records what it was asked."""

    suggestions: list[Suggestion]
    calls: list[tuple[str, int]] = field(default_factory=list)

    def suggest(
        self, instruction: str, context_embedding: np.ndarray, k: int = 3
    ) -> list[Suggestion]:
        self.calls.append((instruction, k))
        return self.suggestions[:k]


SCRIPT = [
    Suggestion("高德地图", 0.70),
    Suggestion("QQ音乐", 0.15),  # confident, but music after maps would be noise
    Suggestion("百度地图", 0.11),
    Suggestion("Osmand", 0.03),  # below min_alternative
]


def test_runners_up_must_share_the_intent_and_clear_min_alternative() -> None:
    hint = PreferenceHint(ScriptedModel(SCRIPT), lambda: ZERO_CONTEXT, k=4)
    assert hint.preferences("打开导航") == [
        AppPreference("高德地图", 0.70),
        AppPreference("百度地图", 0.11),
    ]
    assert hint.text("打开导航") == (
        "用户偏好（设备端学习）：此类请求通常使用 高德地图（0.70），其次 百度地图（0.11）。"
        "任务未指定应用时，优先打开 高德地图。"
    )
    en = PreferenceHint(ScriptedModel(SCRIPT), lambda: ZERO_CONTEXT, k=4, lang="en")
    assert en.text("open navigation") == (
        "User preference (learned on device): for requests like this the user usually opens "
        "高德地图 (0.70), then 百度地图 (0.11). If the task names no app, prefer 高德地图."
    )
    quiet = PreferenceHint(ScriptedModel(SCRIPT), lambda: ZERO_CONTEXT, show_scores=False)
    assert quiet.text("打开导航") == (
        "用户偏好（设备端学习）：此类请求通常使用 高德地图，其次 百度地图。"
        "任务未指定应用时，优先打开 高德地图。"
    )


def test_k_bounds_the_suggestions_read_and_thresholds_are_checked() -> None:
    scripted = ScriptedModel(SCRIPT)
    assert PreferenceHint(scripted, lambda: ZERO_CONTEXT, k=1).text("打开导航").count("（0.") == 1
    assert scripted.calls == [("打开导航", 1)]
    assert PreferenceHint(scripted, lambda: ZERO_CONTEXT, min_score=0.8).choose_app("x") is None
    for bad in ({"min_score": 0.0}, {"k": 0}, {"lang": "fr"}, {"min_alternative": 2.0}):
        with pytest.raises(ValueError):
            PreferenceHint(scripted, lambda: ZERO_CONTEXT, **bad)  # type: ignore[arg-type]


# --- personalize(): the hint and the observer on a PhoneAgent-shaped agent ----------------


@dataclass
class StepResult:  # field-for-field Open-AutoGLM's phone_agent.agent.StepResult
    success: bool
    finished: bool
    action: dict[str, Any] | None
    thinking: str
    message: str | None = None


@dataclass
class AgentConfig:  # the part of Open-AutoGLM's AgentConfig the hint touches
    system_prompt: str = "你是一个智能体分析专家。"
    lang: str = "cn"


def launch(app: str) -> StepResult:
    return StepResult(True, False, {"_metadata": "do", "action": "Launch", "app": app}, "")


def tap() -> StepResult:
    return StepResult(True, False, {"_metadata": "do", "action": "Tap", "element": [500, 120]}, "")


def done() -> StepResult:
    return StepResult(
        True, True, {"_metadata": "finish", "message": "导航已开始"}, "", "导航已开始"
    )


class PhoneAgentShaped:
    """PhoneAgent's loop: ``run`` calls ``_execute_step(task, is_first=True)``, which reads
    ``agent_config.system_prompt`` for the first message, then steps until finished. It keeps
    what the model would have been shown."""

    def __init__(self, script: list[StepResult]) -> None:
        self.agent_config = AgentConfig()
        self._script = list(script)
        self.prompts: list[str | None] = []
        self.system_prompts: list[str] = []

    def run(self, task: str) -> str:
        result = self._execute_step(task, is_first=True)
        while not result.finished:
            result = self._execute_step(is_first=False)
        return result.message or "Task completed"

    def _execute_step(self, user_prompt: str | None = None, is_first: bool = False) -> StepResult:
        if is_first:
            self.system_prompts.append(self.agent_config.system_prompt)
        self.prompts.append(user_prompt)
        return self._script.pop(0)


def _clock() -> Any:
    t = [T0]

    def now() -> datetime:
        t[0] += timedelta(seconds=5)
        return t[0]

    return now


class Recorder:
    def __init__(self) -> None:
        self.steps: list[AgentStep] = []

    def record_step(self, step: AgentStep) -> None:
        self.steps.append(step)


@pytest.fixture
def device(tmp_path: Path) -> Any:
    """A real EdgeDevice of region cn; nothing is sent, so no broker is needed."""
    policy_path = init_deployment(tmp_path / "sotto", ("cn",), "127.0.0.1:9")
    policy = RegionPolicy.from_toml(policy_path.read_text())
    with EdgeDevice("phone-1", "cn", "cn-c0", policy, tmp_path / "dev") as dev:
        yield dev


def test_personalize_hints_the_task_and_records_the_users_own_words(
    model: DeviceModel,
    navigation_lora: LoRAWeights,
    signing_key: Ed25519PrivateKey,
    device: EdgeDevice,
) -> None:
    install(model, navigation_lora, signing_key, version=1)
    hint = PreferenceHint(model, device.context_embedding)
    expected_prompt = hint.augment_task("打开导航")
    agent = PhoneAgentShaped([launch(PREFERRED), tap(), done()])

    observer = personalize(agent, device, hint, clock=_clock())
    assert agent.run("打开导航") == "导航已开始"

    assert agent.prompts == [expected_prompt, None, None]
    assert (
        expected_prompt.startswith("打开导航\n\n用户偏好（设备端学习）：")
        and PREFERRED in expected_prompt
    )
    assert agent.system_prompts == ["你是一个智能体分析专家。"]  # where="task" leaves it alone
    assert observer.task == "打开导航"  # the hint is stripped before anything is recorded
    summary = device.build_summary(0, now=T0 + timedelta(minutes=1))
    assert summary.counts.steps == 3 and summary.counts.accepted == 3
    assert summary.action_hist["Launch"] == 1 and summary.action_hist["finish"] == 1
    assert np.linalg.norm(device.context_embedding(T0 + timedelta(minutes=1))) > 0.99

    observer.detach()  # removes the observer and the hint together
    assert "run" not in vars(agent) and "_execute_step" not in vars(agent)


def test_personalize_into_the_system_prompt_for_one_run_only(
    model: DeviceModel, navigation_lora: LoRAWeights, signing_key: Ed25519PrivateKey
) -> None:
    install(model, navigation_lora, signing_key, version=1)
    hint = PreferenceHint(model, lambda: ZERO_CONTEXT, lang="cn")
    rec = Recorder()
    agent = PhoneAgentShaped([launch(PREFERRED), done()])
    personalize(agent, rec, hint, where="system_prompt", clock=_clock())
    agent.run("导航回家")

    assert agent.prompts[0] == "导航回家"  # the task itself is untouched
    assert agent.system_prompts == [f"你是一个智能体分析专家。\n\n{hint.text('导航回家')}"]
    assert agent.agent_config.system_prompt == "你是一个智能体分析专家。"  # restored
    assert [s.action for s in rec.steps] == ["Launch", "finish"]
    assert all(s.instruction == "导航回家" for s in rec.steps)
    assert rec.steps[0].app == PREFERRED

    with pytest.raises(TypeError):
        personalize(object(), rec, hint)
    bare = PhoneAgentShaped([])
    del bare.agent_config
    with pytest.raises(TypeError):
        personalize(bare, rec, hint, where="system_prompt")


def test_a_failing_hint_never_stops_the_task(caplog: pytest.LogCaptureFixture) -> None:
    def broken_context() -> np.ndarray:
        raise OSError("context store unavailable")

    rec = Recorder()
    agent = PhoneAgentShaped([launch("高德地图"), done()])
    personalize(agent, rec, PreferenceHint(ScriptedModel(SCRIPT), broken_context), clock=_clock())
    with caplog.at_level(logging.WARNING, logger="edge_client.autoglm"):
        assert agent.run("打开导航") == "导航已开始"
    assert agent.prompts[0] == "打开导航"
    assert [s.instruction for s in rec.steps] == ["打开导航", "打开导航"]
    assert "preference hint failed" in caplog.text
