"""Integration of batches: Harmony on the PCs, scVI on the HVG counts; mixing metrics."""

from ._harmony import HarmonyResult, harmony_embedding
from ._metrics import integration_metrics
from ._scvi import ScviTraining, encode_scvi, train_scvi
from ._scvi_stage import ScviResult, scvi_cohort, stratified_sample
from ._stage import IntegrationResult, integrate_cohort

__all__ = [
    "HarmonyResult",
    "IntegrationResult",
    "ScviResult",
    "ScviTraining",
    "encode_scvi",
    "harmony_embedding",
    "integrate_cohort",
    "integration_metrics",
    "scvi_cohort",
    "stratified_sample",
    "train_scvi",
]
