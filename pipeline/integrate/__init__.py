"""Integration of batches: Harmony on the PCs, scVI on the HVG counts; mixing metrics;
the mapping of new cells onto a Harmony reference."""

from ._harmony import HarmonyReference, HarmonyResult, harmony_embedding
from ._mapping import map_to_reference
from ._metrics import integration_metrics
from ._run import require_extras, run_integrate
from ._scvi import (
    SCVI_EXTRA,
    ModelFileError,
    SavedModel,
    ScviTraining,
    encode_scvi,
    require_scvi,
    train_scvi,
)
from ._scvi_stage import ScviResult, encode_cells, scvi_cohort
from ._stage import IntegrationResult, integrate_cohort

__all__ = [
    "SCVI_EXTRA",
    "HarmonyReference",
    "HarmonyResult",
    "IntegrationResult",
    "ModelFileError",
    "SavedModel",
    "ScviResult",
    "ScviTraining",
    "encode_cells",
    "encode_scvi",
    "harmony_embedding",
    "integrate_cohort",
    "integration_metrics",
    "map_to_reference",
    "require_extras",
    "require_scvi",
    "run_integrate",
    "scvi_cohort",
    "train_scvi",
]
