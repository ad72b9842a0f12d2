"""``immunoprofile init``: a config that validates and a samplesheet to fill."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli import main
from pipeline.commands.init import commented_config
from pipeline.config import RunConfig, load_config
from pipeline.simulate import SimulationResult


def _main(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_the_commented_settings_are_the_defaults_and_valid_yaml() -> None:
    """Uncommenting every line (removing the leading "# ") gives YAML that parses into
    the defaults: a user who uncomments a section gets what they read."""
    text = commented_config("work", "samplesheet.csv")
    settings = text[text.index("samplesheet: ") :]  # below the header's prose
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and not line[2:].lstrip().startswith("#") else line
        for line in settings.splitlines()
    )
    data = yaml.safe_load(uncommented)
    assert set(data) == set(RunConfig.model_fields) - {"workdir"}
    parsed = RunConfig.model_validate(data)
    expected = RunConfig(samplesheet=Path("samplesheet.csv"))  # workdir: its default
    # (the proportions are normalized again on reading: equal to ~1e-16)
    assert _rounded(parsed.model_dump(mode="json")) == _rounded(expected.model_dump(mode="json"))
    assert "# annotate:" in text and "b_neighbour_exponent: 2.5" in text


def test_init_from_cell_ranger_outputs_then_run(
    tmp_path: Path, small_cohort: SimulationResult
) -> None:
    inputs = sorted((small_cohort.out / "inputs").glob("*.h5"))[:3]
    cr = tmp_path / "cellranger"
    layouts = ["{}/outs/filtered_feature_bc_matrix.h5", "{}/filtered_feature_bc_matrix.h5",
               "multi/outs/per_sample_outs/{}/count/sample_filtered_feature_bc_matrix.h5"]  # fmt: skip
    for source, layout in zip(inputs, layouts, strict=True):
        target = cr / layout.format(source.stem)
        target.parent.mkdir(parents=True)
        shutil.copy(source, target)
    project = tmp_path / "project"
    code, out, err = _main(["init", str(project), "--cellranger", str(cr)])
    assert code == 0, err
    assert "3 sample(s) found" in out
    config = load_config(project / "config.yaml")  # validates as written
    assert config.samplesheet == Path("samplesheet.csv")
    with (project / "samplesheet.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["sample_id"] for r in rows) == sorted(p.stem for p in inputs)
    assert all((project / r["path"]).exists() for r in rows)  # relative to the project
    assert all(r["patient_id"] == "" for r in rows)

    # the columns the data cannot tell are named by `run`
    args = ["run", str(project / "config.yaml"), "--samplesheet", str(project / "samplesheet.csv"),
            "--workdir", str(project / "work")]  # fmt: skip
    code, _, err = _main([*args, "--dry-run"])
    assert code == 1 and "line 2: column 'patient_id' is empty" in err
    for i, row in enumerate(rows):
        row.update(patient_id=f"P{i}", timepoint_months="0", response="unknown", batch="b1")
    with (project / "samplesheet.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (project / "config.yaml").write_text(
        (project / "config.yaml").read_text() + "cluster: {n_workers: 1, threads_per_worker: 1}\n"
    )
    code, out, err = _main([*args, "--until", "ingest"])
    assert code == 0, err
    assert "ingest: 3 samples (3 written" in out

    # nothing is replaced
    code, _, err = _main(["init", str(project)])
    assert code == 1 and "already exist" in err


def test_init_without_outputs_writes_a_template(tmp_path: Path) -> None:
    code, out, _ = _main(["init", str(tmp_path / "p")])
    assert code == 0 and "example row" in out
    header = (tmp_path / "p" / "samplesheet.csv").read_text().splitlines()[0]
    assert header == "sample_id,patient_id,timepoint_months,response,batch,path"
    code, _, err = _main(["init", str(tmp_path / "q"), "--cellranger", str(tmp_path)])
    assert code == 1 and "no Cell Ranger count matrix found" in err
    assert not (tmp_path / "q").exists()
