"""The open catalogue against Open-AutoGLM's own app table: every spelling we call launchable is
one its ``Launch`` accepts, every app it can launch is one we can suggest, and what the device
suggests is always launchable, whatever the instruction, context or adapter."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from edge_client.runtime import DeviceModel, candidate_apps
from privacy import catalog
from privacy.embedding import combine, embed_app, embed_episode
from tests.vendor import VENDOR


@pytest.fixture(scope="module")
def app_packages() -> dict[str, str]:
    apps = VENDOR / "phone_agent" / "config" / "apps.py"
    if not apps.is_file():
        pytest.skip(f"Open-AutoGLM is not vendored at {VENDOR}")
    spec = importlib.util.spec_from_file_location("autoglm_apps", apps)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.APP_PACKAGES)


def test_catalogue_spellings_are_open_autoglms(app_packages: dict[str, str]) -> None:
    for entry in catalog.APPS:
        for name in entry.launch_names:
            assert app_packages.get(name) == entry.package, name
        for alias in entry.aliases:
            assert alias not in app_packages, f"{alias} is launchable: list it as a launch name"
    covered = {n for a in catalog.APPS for n in a.launch_names}
    assert set(app_packages) == covered  # every app Open-AutoGLM can launch can be suggested
    for name in catalog.UNLAUNCHABLE:
        assert name not in app_packages and catalog.resolve(name) is None


def test_aliases_map_both_ways() -> None:
    for spelling in ("bilibili", "哔哩哔哩", "B站", "b站", "Bilibili"):
        assert catalog.resolve(spelling) == "bilibili"
        assert spelling.casefold() in {s.casefold() for s in catalog.spellings("bilibili")}
    assert catalog.resolve("wechat") == catalog.resolve("WeChat") == "微信"
    assert catalog.resolve("Google-Maps") == catalog.resolve("googlemaps") == "Google Maps"
    assert catalog.same_app("淘宝闪购", "淘宝") and not catalog.same_app("淘宝", "京东")
    # identity features: all spellings of one app are one app to the model
    assert np.allclose(embed_app("B站"), embed_app("bilibili"))
    assert float(embed_app("高德地图") @ embed_app("百度地图")) > float(
        embed_app("高德地图") @ embed_app("QQ音乐")
    )  # the intent tags make maps close to maps


def test_every_suggestion_is_launchable(
    base_onnx: bytes, signing_key: Any, app_packages: dict[str, str]
) -> None:
    model = DeviceModel(base_onnx, signing_key.public_key(), "cn", "cn-c0")
    model.set_apps(app_packages)  # the phone can launch everything in the agent's table
    assert set(model.apps) <= set(app_packages)
    assert len(model.apps) == len(catalog.APPS)  # one candidate per package
    contexts = [
        np.zeros(128, dtype=np.float32),
        combine([embed_episode("打开B站看视频", "bilibili", "accepted", 21)], [1.0]),
        combine([embed_episode("navigate home", "GoogleMaps", "overridden", 8)], [1.0]),
    ]
    tasks = ["导航回家", "打开bilibili", "play music", "点外卖", "你好", "open WeChat", "xyz"]
    for ctx in contexts:
        for task in tasks:
            for s in model.suggest(task, ctx, k=5):
                assert s.app in app_packages, (task, s.app)
    assert candidate_apps(["支付宝", "哔哩哔哩", "bilibili"]) == ("bilibili",)
