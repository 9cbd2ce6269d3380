#!/usr/bin/env python3
"""Run Open-AutoGLM's PhoneAgent with Sotto: on-device preference hints and step recording.

What it does, in order:

1. reads what a companion app ships with: the region policy (``<home>/regions.toml``), the
   region's published public keys and the base model's ONNX bytes (``--base-model``; a
   deployment keeps them under ``<home>/models/``), and opens this phone's
   :class:`~edge_client.device.EdgeDevice` (its local context store and outbox);
2. loads the on-device model (:class:`~edge_client.runtime.DeviceModel`): the base model plus, with ``--sync``, whatever signed adapter the region's adapters topic
   holds for this cohort (verified against the region's adapter-signing key first);
3. wires both into a real ``phone_agent.PhoneAgent`` with
   :func:`edge_client.autoglm.personalize`: every ``agent.run(task)`` gets a one-line hint
   ("此类请求通常使用 高德地图（0.80）...") when this user's memory or the live adapter is
   confident, and every step is recorded on the device under the user's own words. The agent
   gets non-interactive confirmation and take-over callbacks (``--confirm``): a sensitive
   action is refused by default (recorded as the user overriding it) and a take-over request
   is reported and the run goes on (recorded as handed over), so nothing falls back to
   Open-AutoGLM's ``input()`` prompts;
4. with ``--ask``, asks whether the agent opened the right app and records an override if not.

To run Open-AutoGLM's own command line with Sotto attached instead, see
``python -m edge_client.autoglm_cli --help`` (or ``sotto autoglm run``) in docs/autoglm.md.

Nothing about the steps leaves the phone here: they stay in ``<home>/devices/<id>``. Only a
round summary or a SecAgg+ contribution, sealed to the home region, ever does, and only when
the device takes part in a round. The hint itself goes into the agent's prompt, i.e. to the
``--base-url`` model endpoint: app names and this device's own probabilities, nothing more.

Setup::

    pip install .                           # the device SDK only (no torch, no backend)
    # a region policy, public keys and a base model, e.g. from a local deployment:
    #   pip install -e '.[all]' && sotto init --regions cn && sotto demo (builds <home>/models)
    git clone https://github.com/zai-org/Open-AutoGLM && pip install -e Open-AutoGLM
    # an Android phone over ADB and a served AutoGLM model, as Open-AutoGLM's README says
    python docs/examples/phone_agent_with_sotto.py --base-url http://localhost:8000/v1 "打开导航去公司"
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_client.autoglm import personalize
from edge_client.device import EdgeDevice
from edge_client.hint import PreferenceHint
from edge_client.keys import published_signing_key
from edge_client.runtime import DeviceModel
from privacy.errors import ConfigError
from privacy.policy import RegionPolicy

INSTALL = """Open-AutoGLM (the `phone_agent` package) is not installed. To run this example:

    git clone https://github.com/zai-org/Open-AutoGLM
    pip install -e Open-AutoGLM

then connect a phone over ADB and serve an AutoGLM model (see Open-AutoGLM's README)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", nargs="?", default="打开导航去公司", help="what to ask the agent")
    p.add_argument("--home", type=Path, default=Path(".sotto"), help="Sotto home folder")
    p.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="base model ONNX file (default: the newest <home>/models/*/base.onnx)",
    )
    p.add_argument("--region", default="cn", help="this phone's home region")
    p.add_argument("--cohort", default="cn-c0", help="this phone's cohort")
    p.add_argument("--device-id", default="phone-1", help="local label; never sent")
    p.add_argument("--base-url", default="http://localhost:8000/v1", help="model endpoint")
    p.add_argument("--model", default="autoglm-phone-9b", help="served model name")
    p.add_argument("--apikey", default="EMPTY", help="model endpoint API key")
    p.add_argument("--lang", choices=("cn", "en"), default="cn", help="prompt language")
    p.add_argument(
        "--where",
        choices=("task", "system_prompt"),
        default="task",
        help="put the hint in the task text or the system prompt",
    )
    p.add_argument("--min-score", type=float, default=0.6, help="confidence for a hint")
    p.add_argument("--sync", action="store_true", help="install adapters from Kafka first")
    p.add_argument("--ask", action="store_true", help="ask whether the app was right")
    p.add_argument(
        "--confirm",
        choices=("yes", "no"),
        default="no",
        help="answer to the agent's sensitive-action confirmations (no: refuse, recorded "
        "as the user overriding the agent)",
    )
    p.add_argument(
        "--local-only", action="store_true", help="never hint a model endpoint off this machine"
    )
    return p.parse_args(argv)


def confirmation(answer: str) -> Callable[[str], bool]:
    """The agent's confirmation callback: a fixed answer, said out loud (Open-AutoGLM would
    otherwise block on input()). Sotto records a refusal as the user overriding the step."""

    def confirm(message: str) -> bool:
        print(f"sensitive action {'allowed' if answer == 'yes' else 'refused'}: {message}")
        return answer == "yes"

    return confirm


def take_over(message: str) -> None:
    """The agent's take-over callback: report and go on (recorded as handed over)."""
    print(f"the agent asks you to take over: {message} (continuing)")


def trusted_key(keyset_dir: Path) -> Ed25519PublicKey:
    """The region's adapter-signing key; without one no adapter can verify, so the phone
    runs the base model only (a throwaway key whose private half is never kept)."""
    try:
        return published_signing_key(keyset_dir)
    except ConfigError as exc:
        print(f"note: {exc}; running the base model without adapters")
        return Ed25519PrivateKey.generate().public_key()


def sync_adapters(model: DeviceModel, bootstrap: list[str], topic: str) -> None:
    """Apply every signed adapter on the region's topic; an unreachable broker is not fatal
    (the phone keeps what it had, like any offline phone)."""
    from edge_client.adapter_sync import AdapterFeed, SyncStats, apply

    stats = SyncStats()
    try:
        with AdapterFeed(bootstrap, topic) as feed:
            for item in feed.poll_all(timeout_s=10.0):
                apply(model, item, stats)
    except Exception as exc:  # offline is a normal state for a phone, not an error
        print(f"note: adapter sync skipped ({exc.__class__.__name__}: {exc})")
        return
    print(f"adapters: {dict(stats.outcomes)}; live version {model.live_version}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from phone_agent import PhoneAgent
        from phone_agent.agent import AgentConfig
        from phone_agent.model import ModelConfig
    except ImportError:
        print(INSTALL)
        return 0

    policy_file = args.home / "regions.toml"
    try:
        policy = RegionPolicy.from_toml(policy_file.read_text())
        region = policy.region(args.region)
    except (OSError, ConfigError) as exc:
        print(f"{exc}\nCreate a deployment first: sotto init --regions {args.region}")
        return 2
    # The base model every adapter of this deployment is bound to (a shipped app bundles it).
    found = sorted(args.home.glob("models/*/base.onnx"))
    base_model = args.base_model or (found[-1] if found else None)
    if base_model is None or not base_model.is_file():
        print(f"no base model at {base_model or args.home / 'models'}; pass --base-model")
        return 2
    model = DeviceModel(
        base_model.read_bytes(),
        trusted_key(Path(region.keyset_dir)),
        args.region,
        args.cohort,
        device_id=args.device_id,
    )
    if args.sync:
        sync_adapters(model, region.bootstrap_servers, region.t.adapters)

    data_dir = args.home / "devices" / args.device_id
    with EdgeDevice(args.device_id, args.region, args.cohort, policy, data_dir) as device:
        hint = PreferenceHint(
            model,
            device.context_embedding,
            memory=device.memory,  # this user's own launches: asked before the model
            min_score=args.min_score,
            lang=args.lang,
        )
        print(f"hint for {args.task!r}: {hint.text(args.task) or '(none: not confident)'}")

        agent = PhoneAgent(
            model_config=ModelConfig(
                base_url=args.base_url,
                model_name=args.model,
                api_key=args.apikey,
                lang=args.lang,
            ),
            agent_config=AgentConfig(lang=args.lang),
            confirmation_callback=confirmation(args.confirm),
            takeover_callback=take_over,
        )
        # The foreground app of each step is read from the agent's own model request: no
        # current_app callable (and no extra adb call) is needed.
        observer = personalize(agent, device, hint, where=args.where, local_only=args.local_only)
        try:
            result = agent.run(args.task)
        finally:
            observer.detach()
        print(f"result: {result}")

        if args.ask:
            wanted = input("Which app did you want? (Enter if the agent's choice was right) ")
            if wanted.strip():
                observer.user_override(wanted.strip())  # the strongest preference signal
        print(f"context window: {device.build_summary(0).counts.steps} steps in {data_dir}")
        print(f"what is stored, in words: sotto device show --data-dir {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
