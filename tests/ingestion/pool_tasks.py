"""Worker tasks that crash on purpose, for the validation pool's fault tests.

They are top-level picklable objects in an importable module because the pool's workers are
separate processes (forkserver): a monkeypatch in the test process would not reach them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ingestion.pool import Item, judge_chunk
from ingestion.validator import Verdict


@dataclass(frozen=True)
class KillOnce:
    """SIGKILLs the worker that takes the first chunk while ``flag`` exists (removing the
    flag is atomic, so exactly one worker dies), mid-batch; otherwise judges normally."""

    flag: str

    def __call__(self, items: Sequence[Item]) -> list[Verdict]:
        if items:
            try:
                os.remove(self.flag)
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return judge_chunk(items)


@dataclass(frozen=True)
class Poison:
    """A worker dies (hard exit, as a segfault would) whenever its chunk holds ``marker``."""

    marker: bytes

    def __call__(self, items: Sequence[Item]) -> list[Verdict]:
        if any(raw == self.marker for raw, _, _, _ in items):
            os._exit(70)
        return judge_chunk(items)


@dataclass(frozen=True)
class AlwaysDie:
    """Workers that die whatever they get, even nothing: a broken deployment, not a record."""

    code: int = 71

    def __call__(self, items: Sequence[Item]) -> list[Verdict]:
        os._exit(self.code)


@dataclass(frozen=True)
class Hang:
    """A worker stalls (forever, as a pathological input could make it) on ``marker``."""

    marker: bytes

    def __call__(self, items: Sequence[Item]) -> list[Verdict]:
        if any(raw == self.marker for raw, _, _, _ in items):
            time.sleep(3600)
        return judge_chunk(items)
