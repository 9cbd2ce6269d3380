"""Run Open-AutoGLM's own command line (its ``main.py``) with Sotto attached.

Everything after ``--`` goes to Open-AutoGLM's ``main.py`` unchanged (``--base-url``,
``--model``, ``--device-id``, ``--lang``, a task or interactive mode...). Before its
``main()`` runs, the ``PhoneAgent`` (and ``IOSPhoneAgent``) it will construct is replaced by
a factory that builds the real agent and calls :func:`edge_client.autoglm.personalize` on it:
every step is recorded in ``--data-dir`` under the user's controls
(:class:`edge_client.controls.DeviceControls`), and every task is hinted from this user's
memory (and an on-device model, with ``--base-model``)::

    pip install 'sotto[autoglm]'            # the device SDK plus Open-AutoGLM's own needs
    git clone https://github.com/zai-org/Open-AutoGLM
    python -m edge_client.autoglm_cli --data-dir ~/.sotto/devices/phone-1 \\
        --autoglm-path Open-AutoGLM -- --base-url http://localhost:8000/v1 "打开导航去公司"
    sotto autoglm run --data-dir ... -- <main.py arguments>   # the same, from the sotto CLI

Hint options: ``SOTTO_AUTOGLM__*`` variables (:class:`edge_client.hint_options.HintOptions`),
then the flags below. The device's own switches (``sotto device hint --off``) still apply.

``--confirm`` and ``--takeover`` choose what answers Open-AutoGLM's sensitive-action
confirmation and take-over requests: ``ask`` keeps its console prompts; ``no`` refuses every
sensitive action (recorded as the user overriding it), ``yes`` allows it; ``continue`` goes on
after a take-over request without waiting (recorded as handed over).

Nothing here imports Open-AutoGLM at module level: it is loaded from ``--autoglm-path``
(``$SOTTO_AUTOGLM_PATH``), else from beside the installed ``phone_agent`` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from edge_client.autoglm import AgentObserver, personalize
from edge_client.controls import DeviceControls
from edge_client.hint import PreferenceHint
from edge_client.hint_options import HintOptions

INSTALL = (
    "Open-AutoGLM is not importable. Install its requirements (pip install 'sotto[autoglm]'), "
    "clone https://github.com/zai-org/Open-AutoGLM and pass --autoglm-path to the clone "
    "(or pip install -e it)."
)
AGENT_CLASSES = ("PhoneAgent", "IOSPhoneAgent")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the arguments for Open-AutoGLM's main.py (after ``--``)."""
    argv = list(argv)
    ours, theirs = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    p = argparse.ArgumentParser(
        prog="python -m edge_client.autoglm_cli",
        description="Run Open-AutoGLM's main.py with Sotto attached (arguments after -- go to it).",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("SOTTO_DEVICE_DATA_DIR"),
        help="this device's Sotto data dir ($SOTTO_DEVICE_DATA_DIR)",
    )
    p.add_argument(
        "--autoglm-path",
        type=Path,
        default=os.environ.get("SOTTO_AUTOGLM_PATH"),
        help="an Open-AutoGLM checkout (main.py and phone_agent/); default: beside the "
        "installed phone_agent ($SOTTO_AUTOGLM_PATH)",
    )
    hint = p.add_argument_group("hint (defaults from SOTTO_AUTOGLM__* variables)")
    hint.add_argument("--no-hint", action="store_true", help="record steps, never hint")
    hint.add_argument("--hint-where", choices=("task", "system_prompt"), default=None)
    hint.add_argument("--hint-min-score", type=float, default=None)
    hint.add_argument(
        "--hint-local-only",
        action="store_true",
        help="hint only when the model endpoint is on this machine",
    )
    hint.add_argument("--hint-no-scores", action="store_true", help="name apps without numbers")
    p.add_argument(
        "--confirm",
        choices=("ask", "yes", "no"),
        default="ask",
        help="answer to sensitive-action confirmations (ask: Open-AutoGLM's prompt)",
    )
    p.add_argument(
        "--takeover",
        choices=("ask", "continue"),
        default="ask",
        help="what a take-over request does (ask: Open-AutoGLM's prompt)",
    )
    model = p.add_argument_group("on-device model (optional; the memory works without it)")
    model.add_argument("--base-model", type=Path, default=None, help="base model ONNX file")
    model.add_argument(
        "--keyset-dir", type=Path, default=None, help="the region's published keys (signing key)"
    )
    model.add_argument("--region", default="cn")
    model.add_argument("--cohort", default="cn-c0")
    model.add_argument("--device-id", default="phone-1", help="local label; never sent")
    args = p.parse_args(ours)
    if args.data_dir is None:
        p.error("--data-dir is required (or set SOTTO_DEVICE_DATA_DIR)")
    return args, theirs


def hint_options(args: argparse.Namespace, defaults: HintOptions | None = None) -> HintOptions:
    """``defaults`` (else the ``SOTTO_AUTOGLM__*`` variables) with the flags on top."""
    base = defaults if defaults is not None else HintOptions.from_env(os.environ)
    flags = {
        "enabled": False if args.no_hint else None,
        "where": args.hint_where,
        "min_score": args.hint_min_score,
        "local_only": True if args.hint_local_only else None,
        "show_scores": False if args.hint_no_scores else None,
    }
    return HintOptions.model_validate(
        {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
    )


def load_autoglm_main(path: Path | None) -> ModuleType:
    """Open-AutoGLM's ``main.py`` as a module (its ``phone_agent`` importable)."""
    if path is not None:
        root = path.resolve()
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        import phone_agent
    except ImportError as exc:
        raise SystemExit(f"sotto: {INSTALL} ({exc})") from None
    root = Path(phone_agent.__file__).resolve().parent.parent if path is None else path.resolve()
    main_py = root / "main.py"
    if not main_py.is_file():
        raise SystemExit(
            f"sotto: Open-AutoGLM's main.py is not at {main_py}; pass --autoglm-path to a clone"
        )
    spec = importlib.util.spec_from_file_location("_sotto_autoglm_main", main_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def callbacks(confirm: str, takeover: str) -> dict[str, Callable[[str], Any]]:
    """Non-interactive answers to Open-AutoGLM's prompts (``ask`` keeps its own)."""
    out: dict[str, Callable[[str], Any]] = {}
    if confirm != "ask":
        allow = confirm == "yes"

        def confirmation(message: str) -> bool:
            verdict = "allowed" if allow else "refused"
            print(f"sotto: sensitive action {verdict} (--confirm {confirm})", file=sys.stderr)
            return allow

        out["confirmation_callback"] = confirmation
    if takeover == "continue":

        def take_over(message: str) -> None:
            print("sotto: take-over requested; continuing (--takeover continue)", file=sys.stderr)

        out["takeover_callback"] = take_over
    return out


def _model(args: argparse.Namespace) -> Any:
    if args.base_model is None:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_client.keys import published_signing_key
    from edge_client.runtime import DeviceModel
    from privacy.errors import ConfigError

    try:
        key = published_signing_key(args.keyset_dir) if args.keyset_dir else None
    except ConfigError as exc:
        print(f"sotto: {exc}; the base model runs without adapters", file=sys.stderr)
        key = None
    return DeviceModel(
        args.base_model.read_bytes(),
        key or Ed25519PrivateKey.generate().public_key(),  # no adapter can verify
        args.region,
        args.cohort,
        device_id=args.device_id,
    )


@contextmanager
def attached(
    module: ModuleType,
    device: DeviceControls,
    options: HintOptions,
    *,
    model: Any = None,
    extra_kwargs: dict[str, Callable[[str], Any]] | None = None,
) -> Iterator[list[AgentObserver]]:
    """While inside, every agent ``module`` constructs is personalized on ``device``; yields
    the observers (one per agent)."""
    observers: list[AgentObserver] = []
    originals = {name: getattr(module, name) for name in AGENT_CLASSES if hasattr(module, name)}

    def factory(real: Any) -> Callable[..., Any]:
        def make(*args: Any, **kwargs: Any) -> Any:
            for key, value in (extra_kwargs or {}).items():
                if kwargs.get(key) is None:
                    kwargs[key] = value
            agent = real(*args, **kwargs)
            lang = getattr(getattr(agent, "agent_config", None), "lang", "cn")
            hint = PreferenceHint(
                model,
                device.context.context_embedding if model is not None else None,
                memory=device.memory,
                clock=device.clock,
                min_score=options.min_score,
                min_alternative=options.min_alternative,
                show_scores=options.show_scores,
                lang="en" if lang == "en" else "cn",
            )
            observers.append(
                personalize(
                    agent,
                    device,
                    hint,
                    where=options.where,
                    clock=device.clock,
                    local_only=options.local_only,
                    enabled=options.enabled,
                    opt_out=options.prefixes,
                    controls=device,
                )
            )
            return agent

        return make

    for name, real in originals.items():
        setattr(module, name, factory(real))
    try:
        yield observers
    finally:
        for name, real in originals.items():
            setattr(module, name, real)
        for observer in observers:
            observer.detach()


def main(argv: Sequence[str] | None = None, *, defaults: HintOptions | None = None) -> int:
    """Run Open-AutoGLM's ``main()`` with Sotto attached; returns its exit status.

    ``defaults``: the hint options under the flags (``sotto autoglm run`` passes the
    ``[autoglm]`` settings); without them the ``SOTTO_AUTOGLM__*`` variables are read."""
    args, theirs = parse_args(sys.argv[1:] if argv is None else argv)
    options = hint_options(args, defaults)
    try:
        module = load_autoglm_main(args.autoglm_path)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    with DeviceControls(args.data_dir) as device:
        model = _model(args)
        saved_argv = sys.argv
        sys.argv = [str(Path(module.__file__ or "main.py")), *theirs]
        code, observers = 0, []
        try:
            with attached(
                module,
                device,
                options,
                model=model,
                extra_kwargs=callbacks(args.confirm, args.takeover),
            ) as observers:
                module.main()
        except SystemExit as exc:  # main.py exits 1 on a failed system or model check
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = saved_argv
        stored = sum(o.recorded for o in observers)
        print(
            f"sotto: {stored} steps recorded in {args.data_dir} "
            f"(see them: sotto device show --data-dir {args.data_dir})",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
