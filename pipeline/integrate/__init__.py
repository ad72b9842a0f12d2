"""Integration of batches: Harmony on the PCs; mixing and conservation metrics."""

from ._harmony import HarmonyResult, harmony_embedding
from ._metrics import integration_metrics
from ._stage import IntegrationResult, integrate_cohort

__all__ = [
    "HarmonyResult",
    "IntegrationResult",
    "harmony_embedding",
    "integrate_cohort",
    "integration_metrics",
]
