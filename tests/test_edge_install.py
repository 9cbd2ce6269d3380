"""The device SDK installs and runs alone: a clean venv with only the base (edge) install.

What an integrator of the companion app gets from ``pip install sotto``: the SDK's own tests
pass there, torch and SQLAlchemy (and the other backend libraries) are not importable, and the
venv stays small. The pip cache makes the install cheap after the first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_VENV_BYTES = 400 * 1024 * 1024
BACKEND_LIBS = ("torch", "sqlalchemy", "alembic", "matplotlib", "river", "typer", "rich")
EDGE_MODULES = (
    "edge_client.steps",
    "edge_client.context_store",
    "edge_client.summary",
    "edge_client.outbox",
    "edge_client.producer",
    "edge_client.device",
    "edge_client.round_client",
    "edge_client.runtime",
    "edge_client.contribution",
    "edge_client.adapter_sync",
    "edge_client.autoglm",
    "edge_client.autoglm_cli",
    "edge_client.hint",
    "edge_client.pii",
    "edge_client.sealing",
    "edge_client.retention",
    "edge_client.hint_options",
    "edge_client.intents",
    "edge_client.memory",
    "edge_client.controls",
    "privacy.secagg.client",
    "privacy.envelope",
)
# The SDK's own tests that need neither a broker nor torch.
EDGE_TESTS = (
    "test_steps.py",
    "test_context_store.py",
    "test_outbox.py",
    "test_summary.py",
    "test_autoglm.py",
    "test_pii.py",
    "test_sealing.py",
    "test_sealing_stores.py",
    "test_memory.py",
    "test_controls.py",
)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge-venv") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    py = root / "bin" / "python"
    # Build from a copy of the tracked files: an in-tree build would leave build/ in the checkout.
    source = root.parent / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.split(b"\0")
    for name in filter(None, (t.decode() for t in tracked)):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        check=True,
        env=env,
        timeout=1200,
    )
    return root


def _run(py: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(py), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_edge_install_has_no_backend_libraries_and_is_small(
    edge_venv: Path, tmp_path: Path
) -> None:
    py = edge_venv / "bin" / "python"
    code = (
        "import importlib, importlib.util, sys\n"
        f"for m in {EDGE_MODULES!r}: importlib.import_module(m)\n"
        f"present = [m for m in {BACKEND_LIBS!r} if importlib.util.find_spec(m)]\n"
        "assert not present, present\n"
        "print('ok')\n"
    )
    res = _run(py, "-c", code, cwd=tmp_path)  # outside the checkout: the installed package
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ok"
    size = _size(edge_venv)
    print(f"edge venv: {size / 2**20:.0f} MiB")
    assert size <= MAX_VENV_BYTES, f"edge venv is {size / 2**20:.0f} MiB"


def test_edge_sdk_tests_pass_in_the_edge_venv(edge_venv: Path) -> None:
    py = edge_venv / "bin" / "python"
    install = _run(
        py,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "pytest>=8,<10",
        "pytest-timeout>=2.3,<3",
        "hypothesis>=6.100,<7",
        cwd=REPO,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    tests = [f"tests/edge/{name}" for name in EDGE_TESTS]
    # --confcutdir: the session conftest (a Kafka broker, deploy/) is not the SDK's business;
    # -P and importlib mode keep the checkout off sys.path: the installed package is what runs.
    res = _run(
        py,
        "-P",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--confcutdir=tests/edge",
        "--import-mode=importlib",
        "--rootdir",
        str(REPO),
        *tests,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "error" not in res.stdout.splitlines()[-1]


def test_documented_example_runs_on_the_edge_install(edge_venv: Path) -> None:
    """docs/examples/phone_agent_with_sotto.py is what an integrator copies: it must import
    nothing of the backend (it runs here, where the backend libraries are absent)."""
    py = edge_venv / "bin" / "python"
    res = _run(py, "-P", "docs/examples/phone_agent_with_sotto.py", "--help", cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--base-model" in res.stdout
