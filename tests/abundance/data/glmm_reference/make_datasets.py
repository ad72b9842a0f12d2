"""Generate deterministic synthetic datasets for the lme4::glmer reference fits.

Run with:  /work/main/.venv/bin/python make_datasets.py
Writes factor_44.csv, unknown_level.csv, boundary.csv, missing_samples.csv and
continuous.csv next to this script.  numpy only; every dataset has its own seed.

Model (logit scale):
    eta = b0 + group effect + time effect + group:time effect
          + patient intercept ~ N(0, sd_patient^2)
          + sample (observation-level) effect ~ N(0, sd_sample^2)
    total ~ Poisson(lambda), floored at 50;  count ~ Binomial(total, expit(eta))
"""

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent
TIMEPOINTS = (0, 3, 6)
COLUMNS = ("sample_id", "patient_id", "timepoint_months", "response", "count", "total")


def expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate(rng, prefix, groups, eta_fixed, sd_patient, sd_sample, lam, min_total=50):
    """groups: list of (label, n_patients). eta_fixed(label, t) -> fixed-part logit."""
    rows = []
    pid = 0
    for label, n in groups:
        for _ in range(n):
            pid += 1
            patient = f"{prefix}_P{pid:03d}"
            u = rng.normal(0.0, sd_patient) if sd_patient > 0 else 0.0
            for t in TIMEPOINTS:
                e = rng.normal(0.0, sd_sample) if sd_sample > 0 else 0.0
                p = expit(eta_fixed(label, t) + u + e)
                total = max(int(rng.poisson(lam)), min_total)
                count = int(rng.binomial(total, p))
                rows.append((f"{patient}_T{t}", patient, t, label, count, total))
    return rows


def factor_eta(b0=-2.5, nr=0.6, unknown=0.2, time=None, nr_time=None):
    time = time or {0: 0.0, 3: -0.3, 6: -0.5}
    nr_time = nr_time or {0: 0.0, 3: 0.2, 6: 0.4}

    def eta(label, t):
        g = {"responder": 0.0, "non_responder": nr, "unknown": unknown}[label]
        inter = nr_time[t] if label == "non_responder" else 0.0
        return b0 + g + time[t] + inter

    return eta


def continuous_eta(label, t):
    nr = 1.0 if label == "non_responder" else 0.0
    return -1.5 + 0.5 * nr - 0.05 * t + 0.04 * nr * t


def write_csv(name, rows):
    path = OUT / name
    with open(path, "w", newline="") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        for r in rows:
            fh.write(",".join(str(v) for v in r) + "\n")
    print(f"wrote {path.name}: {len(rows)} rows")


def main():
    # factor_44: 22/22 patients, 3 timepoints
    rng = np.random.default_rng(20240101)
    rows = simulate(
        rng,
        "F44",
        [("responder", 22), ("non_responder", 22)],
        factor_eta(),
        sd_patient=0.6,
        sd_sample=0.3,
        lam=700,
    )
    write_csv("factor_44.csv", rows)

    # unknown_level: 12/12/6 patients, unknown has its own group effect 0.2 (no interaction)
    rng = np.random.default_rng(20240102)
    rows = simulate(
        rng,
        "UNK",
        [("responder", 12), ("non_responder", 12), ("unknown", 6)],
        factor_eta(),
        sd_patient=0.6,
        sd_sample=0.3,
        lam=400,
    )
    write_csv("unknown_level.csv", rows)

    # boundary: pure binomial, no patient or sample noise
    rng = np.random.default_rng(20240103)
    rows = simulate(
        rng,
        "BND",
        [("responder", 10), ("non_responder", 10)],
        factor_eta(),
        sd_patient=0.0,
        sd_sample=0.0,
        lam=500,
    )
    write_csv("boundary.csv", rows)

    # missing_samples: 12/12 patients, patient sd 1.0, sample sd 0.5, ~10% rows dropped
    rng = np.random.default_rng(20240104)
    rows = simulate(
        rng,
        "MIS",
        [("responder", 12), ("non_responder", 12)],
        factor_eta(),
        sd_patient=1.0,
        sd_sample=0.5,
        lam=300,
    )
    n_drop = round(0.10 * len(rows))
    drop = set(rng.choice(len(rows), size=n_drop, replace=False).tolist())
    rows = [r for i, r in enumerate(rows) if i not in drop]
    write_csv("missing_samples.csv", rows)

    # continuous: 15/15 patients, numeric time
    rng = np.random.default_rng(20240105)
    rows = simulate(
        rng,
        "CON",
        [("responder", 15), ("non_responder", 15)],
        continuous_eta,
        sd_patient=0.5,
        sd_sample=0.25,
        lam=600,
    )
    write_csv("continuous.csv", rows)


if __name__ == "__main__":
    main()
