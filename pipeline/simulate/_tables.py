"""The simulator at the abundance-table level: the same cohort design and true per-sample
proportions as the cell-level simulator (patient and sample random effects, planted
effects), with the cell counts drawn directly instead of cells (pure, seeded).

Used to calibrate and power the abundance models over hundreds of cohorts in minutes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import SimulationConfig
from ..labels import COUNTS_COLUMNS
from ._design import design_cohort
from ._programs import B_SUBSETS, LINEAGES

COLUMNS = list(COUNTS_COLUMNS)


def simulate_count_table(cfg: SimulationConfig) -> pd.DataFrame:
    """The tidy counts of docs/contracts.md for the cohort ``cfg`` describes: per sample, lineage
    counts ~ Multinomial(cells, lineage proportions) and B-subset counts among the B
    cells ~ Multinomial(B cells, subset proportions). No cells are unassigned."""
    design = design_cohort(cfg)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(7,)))
    b_index = LINEAGES.index("B")
    n = len(design.samples)
    cells = np.array([s.n_cells for s in design.samples])
    lin = rng.multinomial(cells, np.array([s.lineage_probs for s in design.samples]))
    sub = rng.multinomial(lin[:, b_index], np.array([s.b_subset_probs for s in design.samples]))
    meta = pd.DataFrame(
        {
            "sample_id": [s.sample_id for s in design.samples],
            "patient_id": [s.patient_id for s in design.samples],
            "timepoint_months": [s.timepoint_months for s in design.samples],
            "response": [s.response for s in design.samples],
            "batch": [s.batch for s in design.samples],
        }
    )
    frames = []
    for level, types, table, total in (
        ("lineage", LINEAGES, lin, cells),
        ("b_subset", B_SUBSETS, sub, lin[:, b_index]),
    ):
        frame = meta.loc[np.repeat(np.arange(n), len(types))].reset_index(drop=True)
        frame["level"] = level
        frame["cell_type"] = np.tile(types, n)
        frame["count"] = table.ravel().astype(np.int64)
        frame["total"] = np.repeat(total, len(types)).astype(np.int64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[COLUMNS]
