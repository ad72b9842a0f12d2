"""Running the registered stages: their digests (what makes a stage current) and the
context a stage's run function gets. The declarations are in `pipeline.registry`."""

from ..registry import (
    STAGE_NAMES,
    STAGES,
    Elements,
    Stage,
    get_stage,
    stages_from,
    stages_until,
    writer_of,
)
from ._context import StageContext, needs, run_stage
from ._digests import (
    element_path,
    is_current,
    recorded_bases,
    recorded_digests,
    stage_bases,
    stage_digests,
)

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "Elements",
    "Stage",
    "StageContext",
    "element_path",
    "get_stage",
    "is_current",
    "needs",
    "recorded_bases",
    "recorded_digests",
    "run_stage",
    "stage_bases",
    "stage_digests",
    "stages_from",
    "stages_until",
    "writer_of",
]
