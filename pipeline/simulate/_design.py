"""Cohort design of the simulator: patients, samples, batches and true proportions (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import logit, softmax

from ..config import SimulationConfig
from ._programs import B_SUBSETS, LINEAGES

GROUPS: tuple[str, ...] = ("responder", "non_responder")
MAX_IFN_SCORE = 2.5


@dataclass(frozen=True)
class SampleSpec:
    """Everything a worker needs to simulate one sample."""

    index: int
    sample_id: str
    patient_id: str
    patient_index: int
    timepoint_months: int
    response: str
    batch: str
    batch_index: int
    n_cells: int
    lineage_probs: tuple[float, ...]  # in LINEAGES order
    b_subset_probs: tuple[float, ...]  # in B_SUBSETS order
    ifn_score: float
    library_factor: float  # per-batch capture efficiency
    late: bool
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortDesign:
    samples: list[SampleSpec]
    patients: pd.DataFrame
    effects: pd.DataFrame
    group_proportions: pd.DataFrame
    contrasts: pd.DataFrame


def _effect_shift(cfg: SimulationConfig, level: str, vocab: tuple[str, ...], group: str, t: int):
    shift = np.zeros(len(vocab))
    for e in cfg.effects:
        if e.level == level and e.group in (group, "all"):
            shift[vocab.index(e.cell_type)] += e.log_ratio.get(t, 0.0)
    return shift


def _typical_proportions(cfg: SimulationConfig) -> pd.DataFrame:
    """Proportions of a typical patient (random effects zero) per group and timepoint."""
    rows = []
    base_lin = np.log([cfg.lineage_proportions[k] for k in LINEAGES])
    base_b = np.log([cfg.b_subset_proportions[k] for k in B_SUBSETS])
    for group in GROUPS:
        for t in cfg.timepoints_months:
            p_lin = softmax(base_lin + _effect_shift(cfg, "lineage", LINEAGES, group, t))
            p_b = softmax(base_b + _effect_shift(cfg, "b_subset", B_SUBSETS, group, t))
            p_b_cell = p_lin[LINEAGES.index("B")]
            for k, name in enumerate(LINEAGES):
                rows.append((group, t, "lineage", name, "PBMC", p_lin[k]))
            for k, name in enumerate(B_SUBSETS):
                rows.append((group, t, "b_subset", name, "B", p_b[k]))
                rows.append((group, t, "b_subset", name, "PBMC", p_b[k] * p_b_cell))
    cols = ["response", "timepoint_months", "level", "cell_type", "denominator", "proportion"]
    return pd.DataFrame(rows, columns=cols)


def true_contrasts(typical: pd.DataFrame, timepoints: list[int]) -> pd.DataFrame:
    """The contrasts of docs/contracts.md on the log-odds scale, for a typical patient."""
    lo = typical.assign(log_odds=logit(typical["proportion"])).set_index(
        ["level", "cell_type", "denominator", "response", "timepoint_months"]
    )["log_odds"]
    rows = []
    for key, sub in lo.groupby(level=[0, 1, 2]):
        level, cell_type, denominator = key
        v = sub.droplevel([0, 1, 2])
        for t in timepoints:
            rows.append((level, cell_type, denominator, f"response@month{t}",
                         v["non_responder", t] - v["responder", t]))  # fmt: skip
        for t in timepoints[1:]:
            d_r = v["responder", t] - v["responder", 0]
            d_n = v["non_responder", t] - v["non_responder", 0]
            rows.append((level, cell_type, denominator, f"time{t}@responder", d_r))
            rows.append((level, cell_type, denominator, f"time{t}@non_responder", d_n))
            rows.append((level, cell_type, denominator, f"response:time{t}", d_n - d_r))
    cols = ["level", "cell_type", "denominator", "contrast", "true_log_odds"]
    return pd.DataFrame(rows, columns=cols)


def design_cohort(cfg: SimulationConfig) -> CohortDesign:
    """Draw patients, their samples, batches and true per-sample proportions."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    n_total = cfg.n_patients + cfg.extra_patients
    width = max(3, len(str(n_total)))
    patient_ids = [f"P{i:0{width}d}" for i in range(1, n_total + 1)]

    def assign_response(n: int) -> np.ndarray:
        n_resp = round(n * cfg.responder_fraction)
        labels = np.array(["responder"] * n_resp + ["non_responder"] * (n - n_resp))
        return rng.permutation(labels)

    response = np.concatenate(
        [assign_response(cfg.n_patients), assign_response(cfg.extra_patients)]
    )
    female = rng.random(n_total) < cfg.female_fraction
    age = np.clip(np.round(rng.normal(42, 12, n_total)), 18, 80).astype(int)
    sledai0 = np.clip(np.round(rng.normal(10, 3, n_total)), 4, None).astype(int)
    # Interferon score: the log-fold of the ISG module in a typical cell; SLE patients
    # range from near 0 to ~2.5 (ISGs ~12x), most around 0.8 (~2x).
    ifn_patient = np.clip(rng.lognormal(np.log(0.8), 0.5, n_total), 0.0, MAX_IFN_SCORE)
    # Enrollment waves: a patient's samples go to consecutive batches, so batch and time
    # are partly crossed; patients arriving later form one extra batch.
    waves = rng.permutation(np.arange(cfg.n_patients) % cfg.n_batches)
    late_batch = cfg.n_batches
    n_batch_total = cfg.n_batches + (1 if cfg.extra_patients else 0)
    batch_lib = rng.lognormal(0.0, 0.1, n_batch_total)

    lin_base = np.log([cfg.lineage_proportions[k] for k in LINEAGES])
    b_base = np.log([cfg.b_subset_proportions[k] for k in B_SUBSETS])
    u_lin = rng.normal(0.0, cfg.patient_sd, (n_total, len(LINEAGES)))
    u_b = rng.normal(0.0, cfg.patient_sd, (n_total, len(B_SUBSETS)))

    samples: list[SampleSpec] = []
    for p, pid in enumerate(patient_ids):
        late = p >= cfg.n_patients
        for ti, t in enumerate(cfg.timepoints_months):
            b = late_batch if late else int((waves[p] + ti) % cfg.n_batches)
            group = str(response[p])
            eta_lin = lin_base + u_lin[p] + rng.normal(0, cfg.sample_sd, len(LINEAGES))
            eta_lin += _effect_shift(cfg, "lineage", LINEAGES, group, t)
            eta_b = b_base + u_b[p] + rng.normal(0, cfg.sample_sd, len(B_SUBSETS))
            eta_b += _effect_shift(cfg, "b_subset", B_SUBSETS, group, t)
            n_cells = max(
                20, round(cfg.cells_per_sample * rng.lognormal(0, cfg.cells_per_sample_sdlog))
            )
            drop = {"responder": 6 * t / 6, "non_responder": 1 * t / 6}[group]
            sledai = max(0, round(sledai0[p] - drop * (1 if t else 0) + rng.normal(0, 1)))
            samples.append(
                SampleSpec(
                    index=len(samples),
                    sample_id=f"{pid}_m{t}",
                    patient_id=pid,
                    patient_index=p,
                    timepoint_months=t,
                    response=group,
                    batch=f"batch{b + 1}",
                    batch_index=b,
                    n_cells=n_cells,
                    lineage_probs=tuple(float(x) for x in softmax(eta_lin)),
                    b_subset_probs=tuple(float(x) for x in softmax(eta_b)),
                    ifn_score=float(min(ifn_patient[p] * rng.lognormal(0, 0.2), MAX_IFN_SCORE)),
                    library_factor=float(batch_lib[b]),
                    late=late,
                    metadata={
                        "sex": "F" if female[p] else "M",
                        "age": int(age[p]),
                        "sledai": sledai,
                    },
                )
            )
    patients = pd.DataFrame(
        {
            "patient_id": patient_ids,
            "response": response,
            "sex": np.where(female, "F", "M"),
            "age": age,
            "sledai_baseline": sledai0,
            "ifn_score": ifn_patient,
            "late": [p >= cfg.n_patients for p in range(n_total)],
        }
    )
    effects = pd.DataFrame(
        [
            (e.cell_type, e.level, e.group, t, v)
            for e in cfg.effects
            for t, v in sorted(e.log_ratio.items())
        ],
        columns=["cell_type", "level", "group", "timepoint_months", "log_ratio"],
    )
    typical = _typical_proportions(cfg)
    return CohortDesign(
        samples=samples,
        patients=patients,
        effects=effects,
        group_proportions=typical,
        contrasts=true_contrasts(typical, cfg.timepoints_months),
    )
