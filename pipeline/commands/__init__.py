"""What the command line runs: the stages in order (`run`), `validate`, `power`, `predict`; the
stage log. add-batch has a package of its own (`pipeline.add_batch`)."""

from .power import run_power_command
from .predict import run_predict_command
from .run import run_or_skip, run_stages
from .stagelog import stage_log
from .validate import ValidationReport, folder_problems, sample_store_problems, validate_workdir

__all__ = [
    "ValidationReport",
    "folder_problems",
    "run_or_skip",
    "run_power_command",
    "run_predict_command",
    "run_stages",
    "sample_store_problems",
    "stage_log",
    "validate_workdir",
]
