"""Expression programs of the simulated PBMC cell types (data, no logic).

Levels are in counts per 10,000 UMI (CP10K) of a typical cell of that type: at the default
median of 3,500 UMI, a gene at 10 CP10K is seen ~3.5 times per cell. Marker choices follow
the literature (Jenks 2018 for DN2, Stewart 2021 and Azimuth PBMC for the rest).
"""

from __future__ import annotations

from ..labels import B_SUBSETS, LINEAGES

# Leaf cell types: every lineage but B, plus the B subsets.
CELL_TYPES: tuple[str, ...] = tuple(x for x in LINEAGES if x != "B") + B_SUBSETS

MT_GENES: tuple[str, ...] = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip
RIBO_GENES: tuple[str, ...] = tuple(
    [f"RPL{i}" for i in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 21, 22)]
    + [f"RPL{i}" for i in (23, 24, 26, 27, 28, 29, 30, 31, 32, 34, 35, 36, 37, 38, 39, 41)]
    + ["RPL7A", "RPL10A", "RPL13A", "RPL18A", "RPL23A", "RPL27A", "RPL35A", "RPL36A", "RPLP0"]
    + ["RPLP1", "RPLP2", "RPSA", "RPS2", "RPS3", "RPS3A", "RPS4X", "RPS5", "RPS6", "RPS7"]
    + ["RPS8", "RPS9", "RPS10", "RPS11", "RPS12", "RPS13", "RPS14", "RPS15", "RPS15A"]
    + ["RPS16", "RPS17", "RPS18", "RPS19", "RPS20", "RPS21", "RPS23", "RPS24", "RPS25"]
    + ["RPS26", "RPS27", "RPS27A", "RPS28", "RPS29"]
)
HB_GENES: tuple[str, ...] = ("HBA1", "HBA2", "HBB", "HBD", "HBG1", "HBG2", "HBM", "HBQ1")
# Type I interferon-stimulated genes (the SLE interferon signature).
ISG_GENES: tuple[str, ...] = (
    "IFI27", "IFI44L", "IFI44", "ISG15", "MX1", "MX2", "RSAD2", "IFI6", "IFIT1", "IFIT2",
    "IFIT3", "OAS1", "OAS2", "OAS3", "XAF1", "HERC5", "EPSTI1", "LY6E", "SIGLEC1", "IFITM3",
)  # fmt: skip
# Immunoglobulin constant genes: one heavy and one light chain per B cell.
IGH_CONSTANT: tuple[str, ...] = (
    "IGHM", "IGHD", "IGHG1", "IGHG2", "IGHG3", "IGHG4", "IGHA1", "IGHA2",
)  # fmt: skip
IG_LIGHT: tuple[str, ...] = ("IGKC", "IGLC2")

# Shared by every cell type (CP10K); ribosomal and mitochondrial totals are added per type.
HOUSEKEEPING: dict[str, float] = {
    "MALAT1": 250.0, "B2M": 180.0, "TMSB4X": 200.0, "EEF1A1": 150.0, "ACTB": 120.0,
    "FTL": 60.0, "FTH1": 70.0, "TPT1": 90.0, "GAPDH": 30.0, "MYL6": 40.0, "PFN1": 30.0,
    "HLA-B": 40.0, "HLA-A": 30.0, "HLA-C": 30.0, "UBC": 15.0, "ACTG1": 30.0,
}  # fmt: skip

# Per type: share of UMI in ribosomal and mitochondrial genes, and library-size factor.
RIBO_SHARE: dict[str, float] = {
    "T_CD4": 0.34, "T_CD8": 0.30, "NK": 0.22, "mono_CD14": 0.14, "mono_CD16": 0.16,
    "cDC": 0.18, "pDC": 0.24, "platelet": 0.05,
}  # fmt: skip
MT_SHARE_DEFAULT = 0.04
LIBRARY_FACTOR: dict[str, float] = {
    "T_CD4": 0.95, "T_CD8": 0.95, "NK": 1.0, "mono_CD14": 1.3, "mono_CD16": 1.25,
    "cDC": 1.3, "pDC": 1.2, "platelet": 0.45, "plasmablast": 2.2,
}  # fmt: skip
B_RIBO_SHARE = 0.30

# Markers per lineage (CP10K), shared by every B subset for lineage B.
LINEAGE_MARKERS: dict[str, dict[str, float]] = {
    "T_CD4": {
        "CD3D": 25, "CD3E": 20, "CD3G": 10, "CD2": 8, "IL7R": 15, "CD4": 4, "CCR7": 8,
        "LEF1": 6, "TCF7": 8, "MAL": 6, "LTB": 40, "CD27": 10, "CXCR5": 0.6, "CD28": 4,
    },
    "T_CD8": {
        "CD3D": 25, "CD3E": 20, "CD3G": 10, "CD2": 10, "CD8A": 12, "CD8B": 12, "GZMK": 10,
        "CCL5": 40, "GZMH": 10, "NKG7": 15, "CD27": 8, "TBX21": 1.5, "LTB": 10,
    },
    "NK": {
        "NKG7": 60, "GNLY": 120, "KLRD1": 20, "KLRF1": 10, "GZMB": 25, "PRF1": 20,
        "NCAM1": 4, "FCGR3A": 15, "GZMA": 20, "CTSW": 15, "TBX21": 4, "ZEB2": 5,
    },
    "mono_CD14": {
        "CD14": 20, "LYZ": 300, "S100A8": 250, "S100A9": 300, "VCAN": 25, "FCN1": 40,
        "CSF1R": 6, "HLA-DRA": 40, "CST3": 50, "ZEB2": 8, "ITGAX": 3, "LGALS2": 10,
    },
    "mono_CD16": {
        "FCGR3A": 40, "MS4A7": 25, "CDKN1C": 20, "LST1": 40, "AIF1": 40, "CSF1R": 15,
        "HLA-DRA": 60, "CST3": 50, "LYZ": 60, "ZEB2": 8, "ITGAX": 6, "RHOC": 12,
    },
    "cDC": {
        "FCER1A": 20, "CD1C": 15, "CLEC10A": 15, "HLA-DQA1": 30, "CLEC9A": 3,
        "HLA-DRA": 150, "CST3": 80, "LYZ": 80, "ITGAX": 6, "HLA-DPB1": 60,
    },
    "pDC": {
        "LILRA4": 25, "IL3RA": 8, "CLEC4C": 8, "IRF7": 15, "TCF4": 20, "GZMB": 30,
        "JCHAIN": 10, "PLD4": 20, "SERPINF1": 10, "HLA-DRA": 50, "ITM2C": 25,
    },
    "B": {
        "CD79A": 40, "CD79B": 25, "MS4A1": 25, "CD19": 6, "CD22": 6, "BANK1": 8,
        "PAX5": 5, "HLA-DRA": 80, "CD74": 120, "CXCR5": 3, "CR2": 4,
    },
    "platelet": {
        "PPBP": 300, "PF4": 150, "GP9": 15, "ITGA2B": 10, "TUBB1": 20, "GNG11": 40,
        "NRGN": 40, "SPARC": 20, "CAVIN2": 20,
    },
}  # fmt: skip

# B subsets: markers override the lineage-B levels (the B-cell subset markers' literature).
B_SUBSET_MARKERS: dict[str, dict[str, float]] = {
    "naive": {
        "TCL1A": 25, "FCER2": 8, "IL4R": 6, "YBX3": 6, "CXCR4": 35, "BTG1": 40,
        "CD27": 0.1, "CR2": 5, "CXCR5": 4,
    },
    "transitional": {
        "MME": 5, "CD38": 12, "CD24": 15, "VPREB3": 12, "SOX4": 8, "CD9": 6, "TCL1A": 30,
        "CD27": 0.1, "CR2": 3, "FCER2": 4,
    },
    "unswitched_memory": {
        "CD27": 8, "TNFRSF13B": 6, "AIM2": 5, "CR2": 5, "CXCR5": 4, "CD24": 6, "TCL1A": 1,
    },
    "switched_memory": {
        "CD27": 8, "TNFRSF13C": 6, "SSPN": 4, "COCH": 3, "TNFRSF13B": 3, "CR2": 5,
        "CXCR5": 4, "TCL1A": 0.5,
    },
    "DN1": {"CD27": 0.3, "CR2": 7, "CXCR5": 6, "ITGAX": 0.2, "TCL1A": 0.5, "FCER2": 1},
    "DN2": {
        "ITGAX": 10, "TBX21": 6, "FCRL5": 8, "ZEB2": 6, "CR2": 0.3, "CXCR5": 0.4,
        "CD27": 0.3, "FCRL4": 3, "SOX5": 3, "TCL1A": 0.3, "FCER2": 0.5,
    },
    "plasmablast": {
        "CD38": 40, "PRDM1": 8, "XBP1": 40, "JCHAIN": 200, "MZB1": 80, "TNFRSF17": 15,
        "TXNDC5": 25, "DERL3": 10, "CD27": 30, "MS4A1": 1, "CD19": 1, "CD22": 1, "CR2": 0.2,
        "CXCR5": 0.2, "BANK1": 1, "PAX5": 0.5, "HLA-DRA": 15, "CD74": 40,
    },
}  # fmt: skip

# Switched-memory genes other than CD27 that DN1 cells keep when the simulation's
# ``dn1_memory_genes`` is set (DN1 then differs from switched memory by CD27 and a little
# more CR2 / CXCR5 only, as in cohorts simulated independently of this one).
DN1_MEMORY_GENES: tuple[str, ...] = ("TNFRSF13B", "TNFRSF13C", "SSPN", "COCH")

# Per-cell exclusive choices: each B cell expresses one heavy-chain constant gene (with
# IGHD alongside IGHM in naive-like cells) and one light chain, at the subset's budget.
# (budget in CP10K, {gene: probability}); IGHD co-expression is handled by the partner.
HEAVY_CHAIN: dict[str, tuple[float, dict[str, float]]] = {
    "naive": (150.0, {"IGHM": 1.0}),
    "transitional": (250.0, {"IGHM": 1.0}),
    "unswitched_memory": (200.0, {"IGHM": 1.0}),
    "switched_memory": (250.0, {"IGHG1": 0.35, "IGHA1": 0.30, "IGHG2": 0.15, "IGHA2": 0.1,
                                "IGHG3": 0.06, "IGHG4": 0.04}),
    "DN1": (200.0, {"IGHG1": 0.45, "IGHA1": 0.25, "IGHG2": 0.15, "IGHG3": 0.1, "IGHA2": 0.05}),
    "DN2": (200.0, {"IGHG1": 0.45, "IGHG3": 0.25, "IGHA1": 0.15, "IGHG2": 0.1, "IGHM": 0.05}),
    "plasmablast": (1500.0, {"IGHG1": 0.4, "IGHA1": 0.3, "IGHG2": 0.1, "IGHA2": 0.1,
                             "IGHG3": 0.05, "IGHM": 0.05}),
}  # fmt: skip
# IGHD expressed together with IGHM (CP10K) in these subsets; IgD- subsets have none.
IGHD_WITH_IGHM: dict[str, float] = {"naive": 60.0, "transitional": 40.0, "unswitched_memory": 6.0}
LIGHT_CHAIN_BUDGET: dict[str, float] = {
    "naive": 200.0, "transitional": 200.0, "unswitched_memory": 250.0,
    "switched_memory": 300.0, "DN1": 250.0, "DN2": 250.0, "plasmablast": 1500.0,
}  # fmt: skip
LIGHT_CHAIN_PROBS: dict[str, float] = {"IGKC": 0.6, "IGLC2": 0.4}
