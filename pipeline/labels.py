"""The label vocabularies and column names of the output contract (docs/contracts.md)."""

from __future__ import annotations

import re

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


# Sample ids and batch names name folders in the workdir (samples/<id>.zarr,
# batches/<name>/): a name may not be '.', '..' or hidden (a leading '.' is how staging
# files are recognised and cleared), and must fit in a file name with its suffix.
NAME_MAX_LENGTH = 100
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a sample id or batch name, or None if it can."""
    if len(name) > NAME_MAX_LENGTH:
        return f"is {len(name)} characters long; at most {NAME_MAX_LENGTH} are allowed"
    if not _SAFE_NAME.fullmatch(name):
        return (
            "may contain only letters, digits, '_', '-' and '.', and must start with a "
            "letter, digit or '_'"
        )
    return None
