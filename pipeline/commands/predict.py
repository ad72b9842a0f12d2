"""``immunoprofile predict``: the predict stage again on demand (nested cross-validation,
permutation test, saved model, new patients' predictions), on a workdir whose earlier
stages are current."""

from __future__ import annotations

from pathlib import Path

from distributed import Client

from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..registry import stages_until
from ..stages import is_current, run_stage
from .stagelog import stage_log


def run_predict_command(cfg: RunConfig, client: Client) -> str:
    """Run the predict stage whether or not it is current; the line it prints."""
    stale = [s.name for s in stages_until("predict")[:-1] if not is_current(cfg, s.name)]
    if stale:
        msg = (f"{cfg.workdir}: stage(s) {', '.join(stale)} are not current; `predict` re-runs "
               "the prediction alone: run `immunoprofile run CONFIG` first")  # fmt: skip
        raise ImmunoprofileError(msg)
    with stage_log(Path(cfg.workdir), "predict", client) as record:
        record["message"] = run_stage("predict", cfg, client)
    return str(record["message"])
