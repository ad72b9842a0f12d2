"""``immunoprofile power``: calibration and power of the abundance models, written to a
folder (built under a temporary name, then renamed into place)."""

from __future__ import annotations

import json
from pathlib import Path

from distributed import Client

from .. import __version__
from ..abundance import TYPE1_TARGET, power_plot, run_power
from ..config import PowerConfig, SimulationConfig
from ..store import atomic_path


def run_power_command(
    sim: SimulationConfig, power: PowerConfig, *, out: Path, client: Client
) -> str:
    """Run `run_power` and write type1.csv, type1_by_cell_type.csv, power.csv, power.png
    and summary.json to ``out``; return a short report."""
    result = run_power(sim, power, client=client)
    low, high = TYPE1_TARGET
    type1 = result.type1.assign(within_target=lambda d: d["rate"].between(low, high))
    focal = result.power[result.power["contrast"] == "response@month0"]
    summary = {
        "immunoprofile_version": __version__,
        "simulate": sim.model_dump(mode="json", exclude={"effects"}),
        "power": power.model_dump(mode="json"),
        "seconds": round(result.seconds, 1),
        "type1_target": list(TYPE1_TARGET),
        "type1_all_within_target": bool(type1["within_target"].all()),
        "power_response_month0": {
            f"{r.method}/{r.n_patients}": round(float(r.power), 4) for r in focal.itertuples()
        },
    }
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        type1.to_csv(tmp / "type1.csv", index=False)
        result.type1_by_cell_type.to_csv(tmp / "type1_by_cell_type.csv", index=False)
        result.power.to_csv(tmp / "power.csv", index=False)
        fig = power_plot(result.power, cell_type=power.cell_type, effect=power.effect,
                         denominator=power.denominator)  # fmt: skip
        fig.savefig(tmp / "power.png", dpi=110, format="png")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"power: {power.n_cohorts} null cohorts of {sim.n_patients} patients and "
        f"{power.power_cohorts} cohorts per size in {result.seconds:.0f} s; outputs in {out}",
        f"  type-I error at alpha {power.alpha:.2f} (target {low}-{high}), per contrast:",
    ]
    for r in type1.itertuples():
        flag = "" if r.within_target else "  OUTSIDE TARGET"
        lines.append(f"    {r.method:9s} {r.contrast:22s} {r.rate:.3f} [{r.ci_low:.3f}, "
                     f"{r.ci_high:.3f}]{flag}")  # fmt: skip
    lines.append(
        f"  power of response@month0 for {power.cell_type} ({power.effect:+.2f} log-odds):"
    )
    for r in focal.itertuples():
        lines.append(f"    {r.method:9s} {r.n_patients:3d} patients  {r.power:.3f}")
    return "\n".join(lines)
