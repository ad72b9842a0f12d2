"""The label vocabularies of the output contract (../shared/DESIGN.md, "Labels")."""

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
