"""Where within each stage a run's memory peaked, from the timeline `scaling.py` keeps.

For each stage of ``ROOT/SIZE/work/logs/stages.jsonl`` run during the samples of
``ROOT/SIZE/timeline.json``: the moment of the peak over all processes (seconds into the
stage) with the driver's and the largest other process's RSS at that moment, and the
moments of the driver's own and the largest worker's own peaks. Align the offsets with a
stage's own seconds (``uns`` / summary records) to find the step that peaked.

    python benchmarks/timeline_peaks.py /work/cmp/scaling/4M
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

GIB = 2**30


def peak_moments(timeline: list[list[float]], log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage with samples: ``[time, all RSS, CPU, driver RSS, largest other
    RSS, ...]`` samples (as `measure.measure(timeline=True)`), stage log entries with
    ``started_unix`` and ``seconds``."""
    rows = []
    for entry in log:
        t0 = entry["started_unix"]
        window = [s for s in timeline if t0 <= s[0] <= t0 + entry["seconds"]]
        if not window:
            continue
        top = max(window, key=lambda s: s[1])
        driver = max(window, key=lambda s: s[3])
        other = max(window, key=lambda s: s[4])
        rows.append(
            {
                "stage": entry["stage"],
                "seconds": entry["seconds"],
                "peak_gib": round(top[1] / GIB, 2),
                "peak_at_s": round(top[0] - t0, 1),
                "driver_at_peak_gib": round(top[3] / GIB, 2),
                "largest_other_at_peak_gib": round(top[4] / GIB, 2),
                "driver_peak_gib": round(driver[3] / GIB, 2),
                "driver_peak_at_s": round(driver[0] - t0, 1),
                "largest_other_peak_gib": round(other[4] / GIB, 2),
                "largest_other_peak_at_s": round(other[0] - t0, 1),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="ROOT/SIZE of a scaling.py run")
    args = parser.parse_args()
    timeline = json.loads((args.folder / "timeline.json").read_text())
    lines = (args.folder / "work" / "logs" / "stages.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    rows = peak_moments(timeline, [e for e in log if e["started_unix"] >= timeline[0][0] - 1])
    print("| stage | s | peak GiB | at s | driver / largest other there | driver peak (at s) "
          "| largest other peak (at s) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(
            f"| {r['stage']} | {r['seconds']:.0f} | {r['peak_gib']:.2f} | {r['peak_at_s']:.0f} "
            f"| {r['driver_at_peak_gib']:.2f} / {r['largest_other_at_peak_gib']:.2f} "
            f"| {r['driver_peak_gib']:.2f} ({r['driver_peak_at_s']:.0f}) "
            f"| {r['largest_other_peak_gib']:.2f} ({r['largest_other_peak_at_s']:.0f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
