"""Lazy public APIs for package ``__init__`` files (PEP 562).

Why: each package's ``__init__`` names its public API in ``__all__``, but importing one
submodule (say, a settings section) must not import the whole package (say, torch). The names
resolve to their defining module on first use.

>>> getattr_, dir_ = exports("privacy", {"seal": "privacy.envelope"})
>>> getattr_("seal").__name__
'seal'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``names`` map to defining modules."""

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def dir_() -> list[str]:
        return sorted(names)

    return getattr_, dir_
