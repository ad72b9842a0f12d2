"""The label vocabularies and column names of the output contract (../shared/DESIGN.md)."""

from __future__ import annotations

LINEAGES: tuple[str, ...] = (
    "T_CD4",
    "T_CD8",
    "NK",
    "mono_CD14",
    "mono_CD16",
    "cDC",
    "pDC",
    "B",
    "platelet",
)
B_SUBSETS: tuple[str, ...] = (
    "naive",
    "transitional",
    "unswitched_memory",
    "switched_memory",
    "DN1",
    "DN2",
    "plasmablast",
)
UNASSIGNED = "unassigned"
RESPONSES: tuple[str, ...] = ("responder", "non_responder", "unknown")

# The samplesheet's required columns but ``path``: carried into every cell's obs, they
# make the study design of every sample-level table.
DESIGN_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "patient_id",
    "timepoint_months",
    "response",
    "batch",
)
# abundance/counts.csv
COUNTS_COLUMNS: tuple[str, ...] = (*DESIGN_COLUMNS, "level", "cell_type", "count", "total")
