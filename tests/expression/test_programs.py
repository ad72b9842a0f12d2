"""Gene programs: the shipped file, scores that follow the programs' genes, and their
mixed-model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.expression import fit_program_models, load_programs, program_scores
from pipeline.expression._programs import ProgramFileError

from ..conftest import CommandRun


def test_the_shipped_programs_name_their_genes_and_sources() -> None:
    programs = load_programs()
    assert programs.version >= 1 and len(programs.sha256) == 64
    assert {"type_I_interferon", "baff_cytokines_chemokines", "b_activation_abc",
            "plasmablast_upr"} <= set(programs.genes)  # fmt: skip
    assert {"IFI27", "IFI44L", "IFIT1", "ISG15", "RSAD2", "SIGLEC1"} <= set(
        programs.genes["type_I_interferon"]
    )
    assert "TNFSF13B" in programs.genes["baff_cytokines_chemokines"]  # BAFF, belimumab's target


def test_a_bad_program_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nprograms:\n  ifn: {genes: []}\n")
    with pytest.raises(ProgramFileError, match=r"p.yaml: program 'ifn' has no 'genes' list"):
        load_programs(path)
    path.write_text("programs: [a, b]\n")
    with pytest.raises(ProgramFileError, match="expected keys 'version' and 'programs'"):
        load_programs(path)


def _pseudobulk(n: int = 12, shift: float = 1.5):
    rng = np.random.default_rng(1)
    symbols = [f"G{i}" for i in range(300)] + [f"IFN{i}" for i in range(8)]
    mu = np.exp(rng.normal(4, 1, len(symbols)))
    up = np.repeat([0.0, shift], n // 2)
    log_fc = np.zeros((n, len(symbols)))
    log_fc[:, 300:] = up[:, None]
    counts = rng.poisson(mu * np.exp(log_fc + rng.normal(0, 0.1, (n, len(symbols)))))
    return counts, symbols, up


def test_scores_rise_with_the_programs_genes(tmp_path: Path) -> None:
    counts, symbols, up = _pseudobulk()
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nprograms:\n"
                    "  ifn: {genes: [IFN0, IFN1, IFN2, IFN3, IFN4, IFN5, IFN6, IFN7, MISSING]}\n"
                    "  rare: {genes: [G1, G2, NOPE1, NOPE2, NOPE3]}\n")  # fmt: skip
    scores, found = program_scores(counts, symbols, load_programs(path))
    assert found == {"ifn": 8, "rare": 2}
    assert list(scores.columns) == ["ifn"]  # fewer than 5 genes found: not scored
    assert scores["ifn"][up > 0].min() > scores["ifn"][up == 0].max()


def test_program_models_find_a_baseline_difference_and_name_what_they_cannot_estimate() -> None:
    rng = np.random.default_rng(3)
    rows = [(f"P{p}_m{t}", f"P{p}", t, "non_responder" if p % 2 else "responder")
            for p in range(10) for t in (0, 3, 6)]  # fmt: skip
    samples = pd.DataFrame(rows, columns=["sample_id", "patient_id", "timepoint_months",
                                          "response"])  # fmt: skip
    patient = rng.normal(0, 0.3, 10)[np.repeat(np.arange(10), 3)]
    y = patient + 2.0 * (samples["response"] == "non_responder") + rng.normal(0, 0.3, 30)
    tests, missing = fit_program_models(pd.DataFrame({"ifn": y}), samples)
    base = tests.set_index("contrast").loc["response@month0"]
    assert base["estimate"] == pytest.approx(2.0, abs=0.6) and base["pvalue"] < 0.01
    assert base["ci_low"] < base["estimate"] < base["ci_high"] and not missing
    only_responders = samples["response"] == "responder"
    tests, missing = fit_program_models(
        pd.DataFrame({"ifn": y[only_responders.to_numpy()]}), samples[only_responders]
    )
    assert "no patient has response 'non_responder'" in missing["response@month0"]
    assert "response@month0" not in set(tests.dropna()["contrast"])


def test_the_stage_writes_program_scores_and_tests(analysed_small: CommandRun) -> None:
    folder = analysed_small.workdir / "expression"
    tests = pd.read_csv(folder / "program_tests.csv")
    assert list(tests.columns) == ["level", "cell_type", "program", "contrast", "estimate",
                                   "ci_low", "ci_high", "pvalue", "qvalue", "method"]  # fmt: skip
    assert set(tests["cell_type"]) == {"B", "naive"} and "type_I_interferon" in set(
        tests["program"]
    )
    scores = pd.read_csv(folder / "program_scores.csv")
    assert scores.groupby(["cell_type", "program"])["sample_id"].nunique().min() >= 4
    import json

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["programs"]["genes_found"]["type_I_interferon"] == "20 of 20"


def test_the_workers_program_tables_are_the_kernels_on_the_stored_pseudobulk(
    analysed_small: CommandRun,
) -> None:
    """The stage scores and tests the programs on the workers, a task per cell type reading
    its rows of the sums: the same tables as `program_scores` and `fit_program_models` on
    the written pseudobulk's rows of each tested cell type."""
    import anndata as ad

    from pipeline.expression._programs import with_qvalues
    from pipeline.labels import DESIGN_COLUMNS

    folder = analysed_small.workdir / "expression"
    pb = ad.read_zarr(folder / "pseudobulk.zarr")
    obs = pb.obs.reset_index(drop=True)
    symbols = [str(s) for s in pb.var["gene_symbols"]]
    programs = load_programs()
    tests, scores = [], []
    for level, cell_type in [("lineage", "B"), ("b_subset", "naive")]:
        rows = obs.index[(obs["level"] == level) & (obs["cell_type"] == cell_type)
                         & obs["in_models"]].to_numpy()  # fmt: skip
        score, _ = program_scores(np.asarray(pb.X[rows]), symbols, programs)
        samples = obs.loc[rows, list(DESIGN_COLUMNS)].astype({"sample_id": str})
        table, _ = fit_program_models(score, samples.reset_index(drop=True))
        tests.append(table.assign(level=level, cell_type=cell_type, method="lmm"))
        scores.append(score.assign(sample_id=samples["sample_id"].to_numpy(), level=level,
                                   cell_type=cell_type))  # fmt: skip
    expected = with_qvalues(pd.concat(tests, ignore_index=True))
    written = pd.read_csv(folder / "program_tests.csv")
    key = ["level", "cell_type", "program", "contrast"]
    merged = written.merge(expected, on=key, suffixes=("", "_expected"), validate="1:1")
    assert len(merged) == len(written) == len(expected) > 0
    for column in ["estimate", "ci_low", "ci_high", "pvalue", "qvalue"]:
        np.testing.assert_allclose(merged[column], merged[f"{column}_expected"], rtol=1e-6)
    long = pd.concat(scores).melt(id_vars=["sample_id", "level", "cell_type"],
                                  var_name="program", value_name="score")  # fmt: skip
    stored = pd.read_csv(folder / "program_scores.csv")
    both = stored.merge(long, on=["sample_id", "level", "cell_type", "program"],
                        suffixes=("", "_expected"), validate="1:1")  # fmt: skip
    assert len(both) == len(stored) == len(long)
    np.testing.assert_allclose(both["score"], both["score_expected"], rtol=1e-6)
