"""Sotto attached to the REAL Open-AutoGLM PhoneAgent (vendored, unmodified).

The agent's own code runs end to end: it shells out to ``adb`` (a fake one on ``PATH``,
:class:`tests.edge.autoglm_fakes.FakePhone`), streams its model replies from an
OpenAI-compatible server (:class:`~tests.edge.autoglm_fakes.FakeModelServer`), parses them
with its own ``parse_action`` and executes them with its own ``ActionHandler``. Sotto sees
all of it through :func:`edge_client.autoglm.personalize` on a real
:class:`~edge_client.device.EdgeDevice`. Chinese and English, and the ``main.py`` command
line through ``python -m edge_client.autoglm_cli`` and ``sotto autoglm run``.

Nothing waits on time: Open-AutoGLM's delays are set to zero and Sotto's clock is a counter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deploy.bootstrap import init_deployment
from edge_client.autoglm import AgentObserver, personalize
from edge_client.controls import DeviceControls
from edge_client.device import EdgeDevice
from edge_client.hint import HINT_PREFIX, PreferenceHint
from privacy.policy import RegionPolicy
from tests.edge.autoglm_fakes import ERROR, LAUNCHER, FakeModelServer, FakePhone, do, finish
from tests.vendor import VENDOR

REPO = Path(__file__).resolve().parents[2]
if not (VENDOR / "phone_agent" / "agent.py").is_file():
    pytest.skip(
        f"Open-AutoGLM is not vendored at {VENDOR} (shared/vendor/open-autoglm beside the "
        "checkout); these tests drive its real PhoneAgent",
        allow_module_level=True,
    )
if str(VENDOR) not in sys.path:
    sys.path.insert(0, str(VENDOR))
try:
    from phone_agent import PhoneAgent
    from phone_agent.agent import AgentConfig
    from phone_agent.config.timing import TIMING_CONFIG
    from phone_agent.model import ModelConfig
except ImportError as exc:  # Pillow or openai missing: the autoglm extra is not installed
    raise ImportError(f"{exc}; install Open-AutoGLM's needs: pip install -e '.[autoglm]'") from exc

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
WECHAT, AMAP, BAIDU = "com.tencent.mm", "com.autonavi.minimap", "com.baidu.BaiduMap"
ZERO_DELAYS = {
    f"PHONE_AGENT_{n}_DELAY": "0"
    for n in (
        "TAP",
        "DOUBLE_TAP",
        "LONG_PRESS",
        "SWIPE",
        "BACK",
        "HOME",
        "LAUNCH",
        "KEYBOARD_SWITCH",
        "TEXT_CLEAR",
        "TEXT_INPUT",
        "KEYBOARD_RESTORE",
    )
}


class Clock:
    """Deterministic time: one second per reading."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def skip(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(scope="module")
def server() -> Iterator[FakeModelServer]:
    srv = FakeModelServer()
    yield srv
    srv.close()


@pytest.fixture
def phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePhone:
    fake = FakePhone(tmp_path / "phone")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    for part in (TIMING_CONFIG.device, TIMING_CONFIG.action):
        for name in vars(part):
            monkeypatch.setattr(part, name, 0.0)
    for key in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    return fake


@pytest.fixture
def device(tmp_path: Path) -> Iterator[EdgeDevice]:
    """A real EdgeDevice of region cn; nothing is sent, so no broker is needed."""
    policy_path = init_deployment(tmp_path / "sotto", ("cn",), "127.0.0.1:9")
    policy = RegionPolicy.from_toml(policy_path.read_text())
    with EdgeDevice("phone-1", "cn", "cn-c0", policy, tmp_path / "dev") as dev:
        yield dev


class Session:
    """One real PhoneAgent personalized on one device, with its fakes at hand."""

    def __init__(
        self,
        server: FakeModelServer,
        phone: FakePhone,
        device: EdgeDevice,
        *,
        lang: str = "cn",
        base_url: str | None = None,
        confirm: Callable[[str], bool] | None = None,
        **personalize_kw: Any,
    ) -> None:
        self.server, self.phone, self.device = server, phone, device
        self.clock = Clock()
        self.takeovers: list[str] = []
        self.confirmations: list[str] = []

        def confirmation(message: str) -> bool:
            self.confirmations.append(message)
            return confirm(message) if confirm else True

        self.agent = PhoneAgent(
            model_config=ModelConfig(base_url=base_url or server.base_url, lang=lang),
            agent_config=AgentConfig(lang=lang, verbose=False, max_steps=10),
            confirmation_callback=confirmation,
            takeover_callback=self.takeovers.append,
        )
        self.hint = PreferenceHint(memory=device.memory, clock=self.clock, lang=lang)
        self.observer: AgentObserver = personalize(
            self.agent, device, self.hint, clock=self.clock, **personalize_kw
        )

    def run(self, task: str, *replies: str, **kwargs: Any) -> str:
        self.server.script(*replies)
        self.phone.clear_log()
        return self.agent.run(task, **kwargs)

    def shown(self) -> str:
        """What the model was shown with the task (the first user message of the run)."""
        return self.server.first_texts()[0]

    def steps(self) -> list[Any]:
        return self.device.controls.context.steps()

    def adb(self, *prefix: str) -> int:
        return sum(1 for c in self.phone.commands() if c[: len(prefix)] == list(prefix))


# --- memory: one accepted run, and the next hint names that app -------------------------------


def test_an_accepted_launch_is_the_next_hint_zh(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    result = s.run(
        "打开导航去公司",
        do("Launch", app="百度地图"),
        do("Tap", element=[500, 120]),
        finish("导航已开始"),
    )
    assert result == "导航已开始"
    assert HINT_PREFIX["cn"] not in s.shown()  # a new phone knows nothing yet
    steps = s.steps()
    assert [(x.action, x.outcome) for x in steps] == [
        ("Launch", "accepted"),
        ("Tap", "accepted"),
        ("finish", "accepted"),
    ]
    assert steps[1].current_app == "百度地图"  # the screen the Tap was decided on
    # The foreground came from the agent's own screen info: one dumpsys per step, no extra.
    assert s.adb("shell", "dumpsys", "window") == 3
    assert device.memory.scores("导航回家", s.clock.now) == {
        "百度地图": pytest.approx(0.92, abs=1e-3)
    }

    s.run("导航回家", do("Launch", app="百度地图"), finish("好的"))
    shown = s.shown()
    assert shown.startswith("导航回家\n\n用户偏好（设备端学习）：此类请求通常使用 百度地图（0.92）")
    assert s.observer.last_hint in shown
    assert [x.instruction for x in s.steps()][-2:] == ["导航回家", "导航回家"]  # hint stripped


def test_an_accepted_launch_is_the_next_hint_en(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device, lang="en", where="system_prompt")
    s.run("navigate home", do("Launch", app="Google Maps"), finish("Navigation started"))
    assert s.steps()[0].app == "Google Maps"

    s.run("navigate to work", finish("ok"))
    system = server.system_prompts()[0]
    assert (
        "User preference (learned on device): for requests like this the user usually "
        "opens Google Maps (0.92)" in system
    )
    assert s.shown().startswith("navigate to work\n\n")
    assert HINT_PREFIX["en"] not in s.shown()  # where="system_prompt": the task is untouched
    assert HINT_PREFIX["en"] not in s.agent.agent_config.system_prompt  # restored after the run


# --- step semantics --------------------------------------------------------------------------


def test_the_foreground_is_the_app_before_the_action(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    phone.foreground = WECHAT
    s = Session(server, phone, device)
    s.run("回到桌面", do("Home"), finish("已回到桌面"))
    home, done = s.steps()
    assert (home.action, home.current_app) == ("Home", "微信")  # not "System Home"
    assert done.current_app == "System Home"
    assert s.adb("shell", "dumpsys", "window") == 2


@pytest.mark.parametrize(
    ("task", "app", "lang"), [("打开导航", "腾讯地图", "cn"), ("play music", "Spotify", "en")]
)
def test_a_failed_launch_is_a_failure_not_the_foreground(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice, task: str, app: str, lang: str
) -> None:
    s = Session(server, phone, device, lang=lang)
    s.run(task, do("Launch", app=app), do("Back"), finish("done"))
    launch, back, _ = s.steps()
    assert (launch.app, launch.outcome) == (app, "failed")  # Open-AutoGLM: "App not found"
    assert back.current_app == "System Home"
    assert s.adb("shell", "monkey") == 0
    assert device.memory.scores(task, s.clock.now) == {app: 0.0}  # a negative, not a habit
    s.run(task, finish("done"))
    assert HINT_PREFIX[lang] not in s.shown()  # a failed suggestion is never repeated


@pytest.mark.parametrize(
    "reply",
    [
        "我无法完成这个任务，因为屏幕上没有相关内容。",
        "I will tap the search box now.",
        'do(action="Tap", element=[500, 100]',  # unbalanced: parse_action raises
    ],
)
def test_a_reply_the_agent_cannot_parse_is_a_failure(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice, reply: str
) -> None:
    s = Session(server, phone, device)
    s.run("打开导航", reply)  # the agent turns it into finish(message=<reply>) and stops
    (step,) = s.steps()
    assert (step.action, step.outcome, step.flags) == ("finish", "failed", ("parse_failure",))
    assert step.message is None  # the raw reply is not stored
    assert device.controls.counters["parse_failure"] == 1
    assert device.build_summary(0, now=s.clock.now).counts.accepted == 0


def test_a_model_error_is_a_failed_step(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    result = s.run("打开导航", ERROR)
    assert result.startswith("Model error")
    (step,) = s.steps()
    assert (step.action, step.outcome, step.flags) == ("finish", "failed", ("model_error",))
    assert device.controls.counters["model_error"] == 1


@pytest.mark.parametrize(
    ("task", "message", "lang"),
    [("登录微信", "请输入密码登录", "cn"), ("log in to Gmail", "Please sign in", "en")],
)
def test_take_over_is_handed_over(
    server: FakeModelServer,
    phone: FakePhone,
    device: EdgeDevice,
    task: str,
    message: str,
    lang: str,
) -> None:
    s = Session(server, phone, device, lang=lang)
    s.run(task, do("Take_over", message=message), finish("done"))
    take, _ = s.steps()
    assert (take.action, take.outcome) == ("Take_over", "handed_over")
    assert s.takeovers == [message]  # the callback, not input()
    counts = device.build_summary(0, now=s.clock.now).counts
    assert (counts.steps, counts.accepted, counts.overridden) == (2, 1, 0)


@pytest.mark.parametrize(
    ("task", "message"),
    [("给张三转账100元", "确认转账100元"), ("buy the shoes", "Confirm payment")],
)
def test_refusing_a_sensitive_action_is_the_user_overriding(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice, task: str, message: str
) -> None:
    s = Session(server, phone, device, confirm=lambda _: False)
    result = s.run(task, do("Tap", element=[500, 800], message=message), finish("never reached"))
    assert result == "User cancelled sensitive operation"
    (tap,) = s.steps()
    assert (tap.action, tap.outcome) == ("Tap", "overridden")
    assert s.confirmations == [message]
    assert s.adb("shell", "input", "tap") == 0  # nothing was tapped

    allowed = Session(server, phone, device, confirm=lambda _: True)
    allowed.run(task, do("Tap", element=[500, 800], message=message), finish("done"))
    assert allowed.steps()[-2].outcome == "accepted"


def test_unknown_actions_and_off_grid_points_are_recorded_and_counted(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    s.run(
        "打开设置",
        do("Teleport", to="设置"),
        do("Tap", element=[1500, 200]),
        do("Swipe", start=[500, 900], end=[500, -50]),
        finish("done"),
    )
    steps = s.steps()
    assert [(x.action, x.outcome, x.flags) for x in steps] == [
        ("Unknown", "failed", ("unknown_action",)),
        ("Tap", "failed", ("out_of_range",)),
        ("Swipe", "failed", ("out_of_range",)),
        ("finish", "accepted", ()),
    ]
    assert steps[1].element == (1000, 200) and steps[2].end == (500, 0)
    assert device.controls.counters == {
        "unknown_action": 1,
        "out_of_range": 2,
        "malformed": 0,
        "parse_failure": 0,
        "model_error": 0,
    }
    assert s.observer.anomalies == {"unknown_action": 1, "out_of_range": 2}
    assert "1 unknown action, 2 out of range" in device.controls.describe()


# --- user controls on the real agent ---------------------------------------------------------


def test_never_record_apps_are_not_stored(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    s.run("打开支付宝付款", do("Launch", app="支付宝"), do("Back"), finish("done"))  # default list
    assert s.steps() == [] and len(device.memory) == 0

    device.controls.add_never_record("微信")
    s.run("给妈妈发消息", do("Launch", app="微信"), do("Tap", element=[500, 500]), finish("done"))
    assert s.steps() == [] and len(device.memory) == 0
    assert s.observer.recorded == 0

    device.controls.remove_never_record("微信")
    s.run("给妈妈发消息", do("Launch", app="微信"), finish("done"))
    assert [x.app for x in s.steps()] == ["微信", None]


def test_pause_stops_recording_even_from_another_process(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    with DeviceControls(device.data_dir) as cli:  # what `sotto device pause` opens
        cli.pause()
    s.run("打开导航", do("Launch", app="高德地图"), finish("done"))
    assert s.steps() == [] and len(device.memory) == 0
    assert "PAUSED" in device.controls.describe()

    device.controls.resume()
    s.run("打开导航", do("Launch", app="高德地图"), finish("done"))
    assert len(s.steps()) == 2


def test_the_hint_can_be_turned_off_per_call_per_task_and_per_device(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    s.run("打开导航", do("Launch", app="百度地图"), finish("done"))

    s.run("导航回家", finish("done"), hint=False)
    assert s.shown() == '导航回家\n\n{"current_app": "百度地图"}'
    assert s.observer.hint_off_reason == "hint off for this task"

    s.run("#nohint 导航回家", finish("done"))
    assert s.shown().startswith("导航回家\n\n{")  # the prefix is gone too
    assert s.steps()[-1].instruction == "导航回家"

    device.controls.set_hint(enabled=False)
    s.run("导航回家", finish("done"))
    assert HINT_PREFIX["cn"] not in s.shown()
    device.controls.set_hint(enabled=True)
    s.run("导航回家", finish("done"))
    assert HINT_PREFIX["cn"] in s.shown()

    before = len(s.steps())
    off = Session(server, phone, device, enabled=False)
    off.run("导航回家", finish("done"))
    assert HINT_PREFIX["cn"] not in off.shown()
    assert len(s.steps()) == before + 1  # still recorded


def test_a_remote_model_endpoint_gets_no_hint_when_local_only(
    server: FakeModelServer,
    phone: FakePhone,
    device: EdgeDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    learn = Session(server, phone, device)
    learn.run("打开导航", do("Launch", app="百度地图"), finish("done"))
    # "models.example.com" reaches the fake server as an HTTP proxy: no network involved.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    for key in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    remote = "http://models.example.com/v1"

    phone.foreground = LAUNCHER
    s = Session(server, phone, device, base_url=remote, local_only=True)
    s.run("导航回家", finish("done"))
    assert server.paths == ["http://models.example.com/v1/chat/completions"]
    assert s.shown() == '导航回家\n\n{"current_app": "System Home"}'  # as typed, nothing more
    assert s.observer.hint_off_reason == "model endpoint is not on this device"

    device.controls.set_hint(local_only=True)  # the device's switch does the same
    s = Session(server, phone, device, base_url=remote)
    s.run("导航回家", finish("done"))
    assert HINT_PREFIX["cn"] not in s.shown()

    s = Session(server, phone, device)  # a local endpoint is hinted as before
    s.run("导航回家", finish("done"))
    assert HINT_PREFIX["cn"] in s.shown()

    device.controls.set_hint(local_only=False)
    s = Session(server, phone, device, base_url=remote)
    s.run("导航回家", finish("done"))
    assert HINT_PREFIX["cn"] in s.shown()  # the user allowed remote endpoints


def test_forget_removes_from_the_store_the_memory_and_the_next_summary(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    s.run("打开导航", do("Launch", app="百度地图"), do("Tap", element=[10, 10]), finish("ok"))
    s.run("播放音乐", do("Launch", app="QQ音乐"), finish("ok"))
    s.clock.skip(timedelta(days=2))
    s.run("play some music", do("Launch", app="网易云音乐"), finish("ok"))
    now = s.clock.now
    assert device.build_summary(1, now=now).counts.steps == 7

    gone = device.controls.forget(app="百度地图")
    # its launch, the tap and the finish in it, and the next launch, made from its screen
    assert gone == {"steps": 4, "memory": 1, "envelopes": 0}
    assert all("百度地图" not in (x.app, x.current_app) for x in s.steps())
    assert device.memory.scores("导航回家", now) == {}
    assert device.build_summary(1, now=now).counts.steps == 3
    s.run("导航回家", finish("ok"))
    assert HINT_PREFIX["cn"] not in s.shown()

    gone = device.controls.forget(since=T0 + timedelta(days=1))  # the last two days
    assert gone["memory"] == 1
    # what is left is two days old: d = 0.5 ** (2 / 14) = 0.906 of fresh evidence, a habit
    # share of d / (d + 0.25) = 0.784, scored 0.4 * 0.784 + 0.6 * d = 0.857
    assert device.memory.scores("播放音乐", now) == {"QQ音乐": pytest.approx(0.857, abs=1e-3)}

    gone = device.controls.forget(intent="music")
    assert gone["memory"] == 1 and device.memory.scores("播放音乐", now) == {}

    device.controls.forget()
    assert s.steps() == [] and len(device.memory) == 0
    assert device.build_summary(2, now=now).counts.steps == 0


def test_export_is_json_of_everything_stored_and_no_typed_text(
    server: FakeModelServer, phone: FakePhone, device: EdgeDevice
) -> None:
    s = Session(server, phone, device)
    s.run(
        "打开导航去公司",
        do("Launch", app="百度地图"),
        do("Type", text="杭州市西湖区文三路259号"),
        finish("导航已开始"),
    )
    exported = device.controls.export(now=s.clock.now)
    doc = json.loads(json.dumps(exported, ensure_ascii=False))
    assert doc["format"] == "sotto-device-export"
    assert [x["action"] for x in doc["steps"]] == ["Launch", "Type", "finish"]
    assert doc["memory"]["preferences"] == {
        "navigation": {"百度地图": pytest.approx(0.92, abs=1e-3)}
    }
    assert doc["memory"]["evidence"][0]["kind"] == "accepted"
    assert doc["controls"]["never_record"][0] == "支付宝"
    raw = json.dumps(doc, ensure_ascii=False)
    assert "文三路" not in raw and "导航已开始" not in raw  # typed text and messages: never


# --- Open-AutoGLM's own command line with Sotto attached -------------------------------------


def test_open_autoglms_main_runs_with_sotto_attached(
    server: FakeModelServer, phone: FakePhone, tmp_path: Path
) -> None:
    """``python -m edge_client.autoglm_cli ... -- <main.py args>``: a real process running
    Open-AutoGLM's main() (its adb and model checks included) against the fakes."""
    data = tmp_path / "device"
    env = {**os.environ, **phone.env(), **ZERO_DELAYS, "PYTHONPATH": str(REPO)}
    for key in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)

    def main_py(task: str, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "edge_client.autoglm_cli", "--data-dir", str(data)]
        cmd += ["--autoglm-path", str(VENDOR), "--confirm", "no", *extra, "--"]
        cmd += ["--base-url", server.base_url, "--quiet", task]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    server.script(do("Launch", app="高德地图"), do("Tap", element=[500, 500]), finish("导航已开始"))
    first = main_py("打开导航去公司")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sotto: 3 steps recorded" in first.stderr
    assert server.paths[0].endswith("/chat/completions")  # main.py's own model check ran too

    server.script(do("Tap", element=[500, 900], message="确认支付"), finish("never reached"))
    second = main_py("导航回家")
    assert second.returncode == 0, second.stderr[-3000:]
    assert server.first_texts()[0].startswith("导航回家\n\n用户偏好（设备端学习）：")
    assert "高德地图" in server.first_texts()[0]
    assert "sensitive action refused (--confirm no)" in second.stderr

    server.script(finish("ok"))
    third = main_py("导航回家", "--no-hint")
    assert third.returncode == 0 and HINT_PREFIX["cn"] not in server.first_texts()[0]

    with DeviceControls(data) as controls:
        steps = controls.context.steps()
        assert [(x.action, x.outcome) for x in steps] == [
            ("Launch", "accepted"),
            ("Tap", "accepted"),
            ("finish", "accepted"),
            ("Tap", "overridden"),
            ("finish", "accepted"),
        ]


def test_sotto_autoglm_run_and_sotto_device(
    server: FakeModelServer,
    phone: FakePhone,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sotto autoglm run`` in this process, then the ``sotto device`` commands on its data."""
    from deploy.cli import main as sotto

    data = str(tmp_path / "device")
    monkeypatch.chdir(tmp_path)  # no sotto.toml here: default settings
    server.script(do("Launch", app="Google Maps"), finish("Navigation started"))
    ours = ["--data-dir", data, "--autoglm-path", str(VENDOR), "--takeover", "continue"]
    theirs = ["--base-url", server.base_url, "--lang", "en", "--quiet", "navigate home"]
    assert sotto(["autoglm", "run", *ours, "--", *theirs]) == 0
    capsys.readouterr()

    assert sotto(["device", "show", "--data-dir", data]) == 0
    shown = capsys.readouterr().out
    assert "2 agent steps" in shown and "navigation: Google Maps 0.92" in shown

    assert sotto(["device", "never-record", "--data-dir", data, "--add", "Gmail"]) == 0
    assert "Gmail" in capsys.readouterr().out
    assert sotto(["device", "hint", "--data-dir", data, "--off", "--local-only"]) == 0
    assert capsys.readouterr().out.strip() == "hint: off"
    assert sotto(["device", "pause", "--data-dir", data]) == 0
    assert sotto(["device", "resume", "--data-dir", data]) == 0
    capsys.readouterr()

    out = tmp_path / "export.json"
    assert sotto(["device", "export", "--data-dir", data, "--out", str(out)]) == 0
    exported = json.loads(out.read_text())
    assert len(exported["steps"]) == 2 and exported["controls"]["hint_enabled"] is False

    assert sotto(["device", "forget", "--data-dir", data]) == 2  # say what to forget
    assert sotto(["device", "forget", "--data-dir", data, "--app", "Google Maps"]) == 0
    assert "forgot 2 steps and 1 learned launches" in capsys.readouterr().out
    assert sotto(["device", "show", "--data-dir", str(tmp_path / "nope")]) == 3

    # A key kept elsewhere (a custom provider): without it the commands refuse, never reset
    moved = tmp_path / "keys" / "device.key"
    moved.parent.mkdir()
    (Path(data) / "device.key").rename(moved)
    before = {p.name: p.stat().st_size for p in Path(data).glob("*.db")}
    assert sotto(["device", "show", "--data-dir", data]) == 3
    assert "no device key" in capsys.readouterr().err
    assert {p.name: p.stat().st_size for p in Path(data).glob("*.db")} == before
    assert sotto(["device", "--key-file", str(moved), "show", "--data-dir", data]) == 0
    assert "never record" in capsys.readouterr().out.lower()


def test_the_example_script_runs_the_real_agent_without_prompting(
    server: FakeModelServer,
    phone: FakePhone,
    tmp_path: Path,
    base_onnx: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/examples/phone_agent_with_sotto.py on a `sotto init` home: its confirmation and
    take-over callbacks answer the agent, so Open-AutoGLM's input() is never reached."""
    import importlib.util

    home = tmp_path / "sotto"
    init_deployment(home, ("cn",), "127.0.0.1:9")
    (home / "models" / "v1").mkdir(parents=True)
    (home / "models" / "v1" / "base.onnx").write_bytes(base_onnx)
    spec = importlib.util.spec_from_file_location(
        "phone_agent_with_sotto", REPO / "docs" / "examples" / "phone_agent_with_sotto.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def no_prompt(*_: object) -> str:
        raise AssertionError("Open-AutoGLM fell back to input()")

    monkeypatch.setattr("builtins.input", no_prompt)
    server.script(
        do("Launch", app="高德地图"),
        do("Take_over", message="请登录"),
        do("Tap", element=[500, 900], message="确认支付"),
        finish("never reached"),
    )
    argv = ["--home", str(home), "--base-url", server.base_url, "打开导航去公司"]
    assert example.main(argv) == 0
    with DeviceControls(home / "devices" / "phone-1") as controls:
        steps = controls.context.steps()
    assert [(x.action, x.outcome) for x in steps] == [
        ("Launch", "accepted"),
        ("Take_over", "handed_over"),
        ("Tap", "overridden"),
    ]
