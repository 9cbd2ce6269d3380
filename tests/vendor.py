"""Where the real Open-AutoGLM code is (vendored, unmodified, Apache-2.0; never copied in).

Tests import it from there. Looked up, in order: ``$SOTTO_AUTOGLM_PATH``; ``shared/vendor/
open-autoglm`` beside this checkout (``/work/main`` → ``/work/shared``); the workplace's
``/work/shared`` (a clone elsewhere on this machine, e.g. CI's, still finds it).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def open_autoglm() -> Path:
    """The first candidate that holds ``phone_agent/agent.py`` (else the first candidate)."""
    env = os.environ.get("SOTTO_AUTOGLM_PATH")
    candidates = [Path(env)] if env else []
    candidates += [
        REPO.parent / "shared" / "vendor" / "open-autoglm",
        Path("/work/shared/vendor/open-autoglm"),
    ]
    for c in candidates:
        if (c / "phone_agent" / "agent.py").is_file():
            return c.resolve()
    return candidates[0].resolve()


VENDOR = open_autoglm()
