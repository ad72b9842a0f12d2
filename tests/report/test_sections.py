"""The report's words and numbers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
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


def test_integration_metrics_are_those_of_the_whole_embeddings(analysed_small) -> None:
    """The report reads only the sampled rows of each embedding (not the cohort's whole
    embeddings into the driver): the same metrics as on the whole embeddings in memory."""
    import anndata as ad

    from pipeline import load_config
    from pipeline.integrate import integration_metrics
    from pipeline.registry import get_stage
    from pipeline.report._run import METRIC_CELLS, integration_metrics_table
    from pipeline.stages import StageContext
    from pipeline.workdir import Workdir

    cfg = load_config(analysed_small.config).model_copy(update={"workdir": analysed_small.workdir})
    table = integration_metrics_table(StageContext(get_stage("report"), cfg, Workdir(cfg.workdir)))
    cohort = ad.read_zarr(analysed_small.workdir / "cohort.zarr")
    keep = cohort.obs["qc_pass"].to_numpy(bool) & cohort.obs["lineage"].notna().to_numpy()
    assert keep.sum() > METRIC_CELLS  # the subsample is drawn
    c = cfg.integrate
    assert list(table["embedding"]) == [k for k in ("X_pca", "X_pca_harmony", "X_scvi")
                                        if k in cohort.obsm]  # fmt: skip
    for row in table.itertuples():
        whole = integration_metrics(
            np.asarray(cohort.obsm[row.embedding])[keep],
            cohort.obs["batch"].astype(str).to_numpy()[keep],
            cohort.obs["lineage"].astype(str).to_numpy()[keep],
            max_cells=min(METRIC_CELLS, c.metrics_max_cells), seed=c.seed,
        )  # fmt: skip
        assert {k: getattr(row, k) for k in whole} == whole


def test_baseline_neighbourhoods_read_in_blocks_are_the_whole_files(
    analysed_small, monkeypatch
) -> None:
    """The report reads neighbourhoods/tests.csv (a row per neighbourhood, contrast and
    method: it grows with the cohort) a block of rows at a time, keeping the baseline
    contrast's rows: the same families and rows as the whole file read at once."""
    from pipeline.report import _sections
    from pipeline.workdir import Workdir

    files = Workdir(analysed_small.workdir).neighbourhoods
    whole = pd.read_csv(files.tests)
    monkeypatch.setattr(_sections, "NHOOD_ROWS_READ", 7)  # many blocks
    families, baseline = _sections._baseline_nhood_tests(files)
    assert families == list(pd.unique(whole["denominator"])) and families[0] == "PBMC"
    expected = whole[whole["contrast"] == "response@month0"].reset_index(drop=True)
    assert len(expected) > 7
    pd.testing.assert_frame_equal(baseline, expected, check_dtype=False)


def test_a_cell_types_pseudobulk_is_its_rows_of_the_whole_store(tmp_path) -> None:
    """The top-genes heatmap reads one cell type's rows of the pseudobulk, not its whole
    X (samples x cell types x genes), a chunk of rows at a time: the same rows, obs and
    var as the whole store's."""
    import anndata as ad

    from pipeline.report._sections import pseudobulk_of

    rng = np.random.default_rng(3)
    cell_types = np.tile(["T_CD4", "B", "NK"], 9)  # 9 samples x 3 cell types
    samples = np.repeat([f"S{i}" for i in range(9)], 3)
    obs = pd.DataFrame(
        {"sample_id": samples, "cell_type": pd.Categorical(cell_types)},
        index=[f"r{i}" for i in range(27)],
    )
    var = pd.DataFrame(
        {"gene_symbols": [f"G{j}" for j in range(40)]}, index=[f"ENSG{j}" for j in range(40)]
    )
    x = rng.poisson(5, size=(27, 40)).astype(np.int32)
    store = tmp_path / "pseudobulk.zarr"
    ad.AnnData(X=x, obs=obs, var=var).write_zarr(store, chunks=(4, 16))  # rows over 7 chunks
    whole = ad.read_zarr(store)
    for cell_type in ("B", "NK"):
        part = pseudobulk_of(store, cell_type)
        rows = np.flatnonzero(cell_types == cell_type)
        np.testing.assert_array_equal(part.X, x[rows])
        pd.testing.assert_frame_equal(part.obs, whole.obs.iloc[rows])
        pd.testing.assert_frame_equal(part.var, whole.var)
    assert pseudobulk_of(store, "pDC").n_obs == 0
