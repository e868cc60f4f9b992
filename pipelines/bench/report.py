"""The outputs of a run: ``bench.json`` (every raw timing), ``bench.md`` (tables), ``bench.png`` (ratios)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import build, cli_build, compute, engines, layouts, loading, loss, storage, streaming, topology
from .common import Comparison, Part, fmt_bytes

# bench.md's sections after the summary, in this order (not the order the sections run in)
SECTION_LINES = (
    build.report_lines,
    cli_build.report_lines,
    compute.report_lines,
    loss.report_lines,
    topology.report_lines,
    loading.report_lines,
    storage.report_lines,
    layouts.report_lines,
    streaming.report_lines,
    engines.report_lines,
)


@dataclass
class Results:
    """Everything measured, as written to bench.json."""

    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)

    def add(self, part: Part) -> None:
        self.sections.update(part.sections)
        self.comparisons += part.comparisons


def write_json(res: Results, out: Path) -> None:
    data = {"meta": res.meta, "comparisons": [c.as_dict() for c in res.comparisons], "sections": res.sections}
    (out / "bench.json").write_text(json.dumps(data, indent=1, default=str))


def summary_lines(res: Results) -> list[str]:
    m = res.meta
    lines = [
        "# skelprep benchmark",
        "",
        f"Mode `{m['mode']}`, {m['machine']}; {m['reps']} repetitions per comparison "
        f"({m['build_reps']} for builds), sides interleaved in one run. Times: median (min-max). "
        "Ratio = baseline / skelprep (> 1: skelprep better).",
        "",
        "## Summary",
        "",
        "| section | comparison | skelprep | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in res.comparisons:
        fmt = fmt_bytes if c.unit == "B" else (lambda x: f"{x:.3f} s")
        met = "" if c.met is None else ("yes" if c.met else "**no**")
        lines.append(
            f"| {c.section} | {c.what}: {c.ours} vs {c.baseline} | {fmt(c.ours_value)} | "
            f"{fmt(c.baseline_value)} | {c.ratio:.2f}x | {c.target_text} | {met} |"
        )
    lines.append("")
    if "datasets" in res.sections:
        lines += ["## Datasets", ""] + [f"- `{k}`: {v}" for k, v in res.sections["datasets"].items()] + [""]
    return lines


def write_report(res: Results, out: Path) -> None:
    lines = summary_lines(res)
    for section_lines in SECTION_LINES:
        lines += section_lines(res.sections)
    (out / "bench.md").write_text("\n".join(lines))


def write_chart(res: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = res.comparisons
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(comps) + 1.5))
    labels = [f"{c.section}: {c.what} [{c.ours}]" for c in comps]
    ratios = [c.ratio if math.isfinite(c.ratio) else 1.0 for c in comps]
    colors = ["tab:grey" if c.met is None else ("tab:green" if c.met else "tab:red") for c in comps]
    y = np.arange(len(comps))[::-1]
    ax.barh(y, ratios, color=colors)
    for yi, c in zip(y, comps, strict=True):
        if c.target is not None:
            ax.plot([c.target] * 2, [yi - 0.4, yi + 0.4], color="black", lw=2)
        text = f" {c.ratio:.1f}x" if math.isfinite(c.ratio) else " n/a"
        ax.text(ratios[len(comps) - 1 - int(yi)], yi, text, va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("baseline / skelprep (log); black tick = target; green met, red missed, grey no target")
    ax.set_title(f"skelprep benchmark ({res.meta['mode']})")
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)


def write_all(res: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(res, out)
    write_report(res, out)
    write_chart(res, out)
