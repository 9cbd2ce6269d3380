"""The demo's report: ``report.json`` (every number) and ``index.html`` (the same, with plots).

Plots are rendered with matplotlib's Agg backend to PNG files next to the HTML, so the page
works offline and the images can go into docs.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def plot_hit1(rounds: list[dict[str, Any]], path: Path) -> None:
    regions = sorted({r["region"] for r in rounds})
    fig, axes = plt.subplots(
        1, max(1, len(regions)), figsize=(5.5 * max(1, len(regions)), 3.6), squeeze=False
    )
    for ax, region in zip(axes[0], regions, strict=False):
        by_round: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rounds:
            if r["region"] != region:
                continue
            by_round[r["round"]]["base"].append(r["hit1_base"])
            by_round[r["round"]]["live"].append(r["hit1_live"])
            if r["hit1_candidate"] is not None:
                by_round[r["round"]]["candidate"].append(r["hit1_candidate"])
        xs = sorted(by_round)
        for name, style in (("base", "k--"), ("live", "b-o"), ("candidate", "r:x")):
            pts = [(x, _mean(by_round[x][name])) for x in xs if by_round[x][name]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
        ax.set_title(f"hit@1 on held-out steps, {region} (mean over cohorts)")
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_epsilon(rounds: list[dict[str, Any]], budget: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rounds:
        series[f"{r['region']}/{r['cohort']}"].append((r["round"], r["epsilon_spent"]))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.axhline(budget, color="r", linestyle="--", label="budget")
    ax.set_title("privacy budget spent per cohort (ε)")
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_rollouts(events: list[dict[str, Any]], cohorts: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.45 * max(1, len(cohorts))))
    ypos = {c: i for i, c in enumerate(cohorts)}
    styles = {
        "shadow": ("s", "tab:gray"),
        "canary": ("^", "tab:orange"),
        "live": ("o", "tab:green"),
        "rollback": ("v", "tab:red"),
    }
    seen: set[str] = set()
    placed: dict[tuple[int, str], int] = defaultdict(int)
    for e in events:
        key = f"{e['region']}/{e['cohort']}"
        if key not in ypos:
            continue
        if e["kind"] == "rollback":
            stage = "rollback"
        elif e["rollout_fraction"] >= 1.0:
            stage = "live"
        elif e["rollout_fraction"] > 0.0:
            stage = "canary"
        else:
            stage = "shadow"
        marker, color = styles[stage]
        x = e["round"] + 0.22 * placed[(e["round"], key)]  # side by side when a round has several
        placed[(e["round"], key)] += 1
        ax.scatter(
            x,
            ypos[key],
            marker=marker,
            color=color,
            s=60,
            label=None if stage in seen else stage,
        )
        ax.annotate(
            f"v{e['version']}",
            (x, ypos[key]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
        seen.add(stage)
    ax.set_yticks(list(ypos.values()), list(ypos))
    ax.set_xlabel("round")
    ax.set_title("adapter rollout and rollback events")
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_messages(messages: dict[str, dict[str, Any]], path: Path) -> None:
    regions = sorted(messages)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    accepted = [messages[r].get("accepted", 0) for r in regions]
    rejected = [sum(messages[r].get("rejected", {}).values()) for r in regions]
    xs = range(len(regions))
    ax.bar([x - 0.2 for x in xs], accepted, width=0.4, label="accepted")
    ax.bar([x + 0.2 for x in xs], rejected, width=0.4, label="dead-lettered", color="tab:red")
    ax.set_xticks(list(xs), regions)
    ax.set_yscale("symlog")
    ax.set_title("messages per region")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write report.json, the plots and index.html; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(
        json.dumps(report, indent=2, default=str, ensure_ascii=False)
    )
    loop = report.get("loop") or {}
    rounds = loop.get("rounds", [])
    images: list[tuple[str, str]] = []
    if rounds:
        plot_hit1(rounds, out_dir / "hit1.png")
        images.append(("hit1.png", "hit@1 over rounds: base, live and candidate adapters"))
        plot_epsilon(rounds, loop.get("budget_epsilon", 0.0), out_dir / "epsilon.png")
        images.append(("epsilon.png", "ε spent per cohort"))
        cohorts = sorted({f"{r['region']}/{r['cohort']}" for r in rounds})
        plot_rollouts(loop.get("events", []), cohorts, out_dir / "rollouts.png")
        images.append(("rollouts.png", "rollout and rollback events"))
    messages = loop.get("messages") or {}
    if messages:
        plot_messages(messages, out_dir / "messages.png")
        images.append(("messages.png", "messages accepted and dead-lettered per region"))
    summary = report.get("summary", {})
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
        for k, v in summary.items()
    )
    figs = "".join(
        f'<figure><img src="{src}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for src, cap in images
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Sotto demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}td{{padding:2px 8px;border-bottom:1px solid #ddd}}
figure{{display:inline-block;margin:1em}}img{{max-width:100%}}</style></head><body>
<h1>Sotto demo report</h1><p>status: <b>{html.escape(str(report.get("status")))}</b>,
elapsed {report.get("elapsed_s")} s. All numbers are in <a href="report.json">report.json</a>.</p>
<table>{rows}</table>{figs}</body></html>"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
