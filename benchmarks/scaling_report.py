"""Tables (Markdown) and a plot from `scaling.py`'s JSON lines, for docs/benchmarks.md.

Uses the records of one run of `scaling.py` (the last one in the file unless ``--run``
names another), so that every ratio compares figures measured side by side.

    python benchmarks/scaling_report.py benchmarks/results/scaling.jsonl --plot docs/img/scaling.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# The stages whose work scanpy's tutorial pipeline also does (read the inputs, QC with
# doublets, HVG, normalize, PCA, Harmony, kNN, Leiden, UMAP).
MATCHING = ("ingest", "qc", "preprocess", "integrate", "graph")


def load(path: Path, run: str | None) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"{path} holds no records")
    run = run or records[-1]["run"]
    chosen = [r for r in records if r["run"] == run]
    if not chosen:
        raise SystemExit(f"{path}: no records of run {run!r}")
    return sorted(chosen, key=lambda r: r["pipeline"]["cells"])


def matching_seconds(record: dict[str, Any]) -> float:
    return sum(s["wall_s"] for s in record["pipeline"]["stages"] if s["stage"] in MATCHING)


def _scanpy(record: dict[str, Any]) -> dict[str, Any] | None:
    return record.get("scanpy")


def summary_table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| size | samples | cells (after QC) | wall | CPU | µs per cell | cells/s "
        "| peak, all processes | per-cell outputs | scanpy wall | scanpy peak "
        "| time ratio (scanpy / ours, ingest→graph) | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        p = r["pipeline"]
        s = _scanpy(r)
        ours = f"{p['wall_s']:.1f} s ({p['wall_s'] / 60:.1f} min)"
        per_cell = 1e6 * p["wall_s"] / p["cells"]
        if s is None:
            sc_wall = sc_peak = t_ratio = m_ratio = "not run"
        elif s["status"] == "ok":
            sc_wall, sc_peak = f"{s['wall_s']:.1f} s", f"{s['peak_rss_gib']:.2f} GiB"
            t_ratio = f"{s['wall_s'] / p['wall_s']:.2f} ({s['wall_s'] / matching_seconds(r):.2f})"
            m_ratio = f"{s['peak_rss_gib'] / p['peak_rss_gib']:.2f}"
        else:
            sc_wall = f"failed: {s['status']} after {s['wall_s']:.0f} s"
            sc_peak = f"> {s['peak_rss_gib']:.1f} GiB"
            t_ratio = m_ratio = "-"
        lines.append(
            f"| {r['size']} | {p['samples']} | {p['cells']:,} ({p['cells_after_qc']:,}) "
            f"| {ours} | {p['cpu_s']:.0f} s | {per_cell:.0f} | {p['cells'] / p['wall_s']:,.0f} "
            f"| **{p['peak_rss_gib']:.2f} GiB** | {p.get('per_cell_outputs_gib', 0):.2f} GiB "
            f"| {sc_wall} | {sc_peak} | {t_ratio} | {m_ratio} |"
        )
    return "\n".join(lines)


def stage_table(records: list[dict[str, Any]]) -> str:
    head = "| stage | " + " | ".join(r["size"] for r in records) + " |"
    lines = [
        "Per stage: wall s (share of the run) / CPU s / peak over all processes GiB / cells per s",
        "",
        head,
        "|---|" + "---|" * len(records),
    ]
    stages = [s["stage"] for s in records[0]["pipeline"]["stages"]]
    for stage in stages:
        cells = []
        for r in records:
            row = next(s for s in r["pipeline"]["stages"] if s["stage"] == stage)
            cells.append(
                f"{row['wall_s']:.1f} ({row['share']:.0%}) / {row['cpu_s']:.0f} "
                f"/ {row['peak_rss_gib']:.2f} / {row['cells_per_s']:,}"
            )
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    outside = [f"{r['pipeline']['outside_stages_s']:.1f}" for r in records]
    lines.append("| outside stages (start-up, shut-down) | " + " | ".join(outside) + " |")
    return "\n".join(lines)


def scanpy_table(records: list[dict[str, Any]]) -> str:
    runs = [r for r in records if _scanpy(r) is not None]
    if not runs:
        return ""
    steps: list[str] = []
    for r in runs:
        steps += [k for k in r["scanpy"].get("seconds", {}) if k not in steps]
    lines = [
        "scanpy in memory, seconds per step:",
        "",
        "| step | " + " | ".join(r["size"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for step in steps:
        cells = [str(r["scanpy"].get("seconds", {}).get(step, "-")) for r in runs]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r["pipeline"]["cells"] for r in records]
    wall = [r["pipeline"]["wall_s"] for r in records]
    matching = [matching_seconds(r) for r in records]
    outputs = [r["pipeline"].get("per_cell_outputs_gib", 0) for r in records]
    scanpy = [(c, _scanpy(r)) for r, c in zip(records, cells, strict=True) if _scanpy(r)]
    ok = [(c, s) for c, s in scanpy if s["status"] == "ok"]
    failed = [(c, s) for c, s in scanpy if s["status"] != "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    per_cell = [1e6 * w / c for w, c in zip(wall, cells, strict=True)]
    left.plot(cells, per_cell, "o-", label="immunoprofile, samplesheet to report")
    per_cell = [1e6 * w / c for w, c in zip(matching, cells, strict=True)]
    left.plot(cells, per_cell, "s--", label="immunoprofile, ingest to graph")
    peaks = [r["pipeline"]["peak_rss_gib"] for r in records]
    right.plot(cells, peaks, "o-", label="immunoprofile, all processes")
    right.plot(cells, outputs, ":", label="per-cell outputs (obs, obsm, obsp)")
    if ok:
        per_cell = [1e6 * s["wall_s"] / c for c, s in ok]
        left.plot([c for c, _ in ok], per_cell, "^-", label="scanpy in memory")
        peaks = [s["peak_rss_gib"] for _, s in ok]
        right.plot([c for c, _ in ok], peaks, "^-", label="scanpy in memory")
    for c, s in failed:
        label = f"scanpy killed ({s['status']})"
        right.plot([c], [s["peak_rss_gib"]], "rx", markersize=10, label=label)
    for ax, ylabel in ((left, "wall time per cell (µs)"), (right, "peak memory (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("cells in the cohort")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"2-core scaling, run {records[0]['run']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--run", help="the run to show (default: the last)")
    parser.add_argument("--plot", type=Path, help="write the plot (PNG) here")
    args = parser.parse_args()
    records = load(args.results, args.run)
    print(
        f"Run {records[0]['run']} (commit {records[0]['commit']}), machine {records[0]['machine']}\n"
    )
    print(summary_table(records), stage_table(records), scanpy_table(records), sep="\n\n")
    if args.plot:
        plot(records, args.plot)


if __name__ == "__main__":
    main()
