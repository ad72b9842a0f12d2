"""The report's words and numbers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.report._html import number
from pipeline.report._sections import contrast_sentence


@pytest.mark.parametrize(
    ("value", "shown"),
    [(5000.0, "5,000"), (12345.6, "12,346"), (0.5, "0.5"), (0.04567, "0.0457"),
     (2.1e-05, "2.1e-05"), (3.0, "3"), (-1.25, "-1.25"), (float("nan"), "")],
)  # fmt: skip
def test_numbers_read_as_people_write_them(value: float, shown: str) -> None:
    assert number(value) == shown


def _row(contrast: str, estimate: float, denominator: str = "B") -> SimpleNamespace:
    return SimpleNamespace(cell_type="DN2", denominator=denominator, contrast=contrast,
                           estimate=estimate, ci_low=estimate - 0.3, ci_high=estimate + 0.3,
                           qvalue=0.004)  # fmt: skip


def test_each_kind_of_contrast_in_words() -> None:
    base = contrast_sentence(_row("response@month0", 0.7))
    assert base.startswith("Before treatment, DN2 (within B cells) is higher in non-responders")
    assert f"odds ratio {np.exp(0.7):.2f}" in base and "q = 0.004" in base
    assert contrast_sentence(_row("response@month6", -0.5, "PBMC")).startswith(
        "At month 6, DN2 (within PBMC) is lower in non-responders"
    )
    assert contrast_sentence(_row("time3@responder", -0.5)).startswith(
        "From baseline to month 3, DN2 (within B cells) falls in responders"
    )
    assert "rises in non-responders" in contrast_sentence(_row("time6@non_responder", 0.4))
    assert "changes more upwards in non-responders than in responders" in contrast_sentence(
        _row("response:time6", 0.4)
    )
