"""docs/architecture.md's package diagram is the import contracts, edge for edge.

The contracts in pyproject.toml forbid imports; the diagram allows them. For every ordered pair
of Sotto packages, "the diagram has an arrow" must equal "no contract forbids the import". So
the drawing cannot drift from what `lint-imports` enforces.
"""

from __future__ import annotations

import re
import tomllib
from itertools import permutations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _diagram_edges() -> set[tuple[str, str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("<!-- dag:begin -->", 1)[1].split("<!-- dag:end -->", 1)[0]
    return set(re.findall(r"^\s*(\w+) --> (\w+)\s*$", block, flags=re.M))


def _config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_diagram_matches_the_import_contracts() -> None:
    config = _config()
    packages = config["root_packages"]
    forbidden: set[tuple[str, str]] = set()
    for contract in config["contracts"]:
        assert contract["type"] == "forbidden", contract["name"]
        assert not contract.get("ignore_imports"), f"exception list in {contract['name']!r}"
        for src in contract["source_modules"]:
            for dst in contract["forbidden_modules"]:
                if src in packages and dst in packages:
                    forbidden.add((src, dst))
    allowed = {(a, b) for a, b in permutations(packages, 2) if (a, b) not in forbidden}
    assert _diagram_edges() == allowed


def test_nothing_imports_deploy() -> None:
    edges = _diagram_edges()
    assert not {a for a, b in edges if b == "deploy"}
    assert {b for a, b in edges if a == "privacy"} == set()  # privacy imports nothing of ours
