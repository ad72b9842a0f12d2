"""The predict stage in a workdir: the abundance counts (and optionally the program scores)
of the baseline samples in; ``WORKDIR/predict/`` out (built under a temporary name with its
manifest).

Training patients: the cohort's (cohort.zarr, not added batches) with a month-0 sample and
a known response. Patients of the cohort with `unknown` response and patients whose
baseline sample came with an added batch are not trained on: the saved model predicts them
(`predict/patients.csv` and `predict/new_patients.csv`), with an interval from the
cross-validation models and flags for a poor mapping or features outside the training
range.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..results import read_obs_columns
from ..store import json_sha256
from ..workdir import Workdir
from ._features import baseline_samples, composition_features, program_features, usable_features
from ._model import ModelFit, fit_model, model_record, predict_patients

if TYPE_CHECKING:
    from ..config_analysis import PredictConfig
    from ..stages import StageContext

PATIENT_COLUMNS = ["patient_id", "response", "p_non_responder", "fold", "score"]
NEW_COLUMNS = ["patient_id", "sample_id", "batch", "response", "p_non_responder", "p_low",
               "p_high", "flags"]  # fmt: skip


def predict_digest_inputs(cfg: RunConfig, workdir: Workdir) -> dict[str, Any]:
    """Besides its parameters: every batch layer (new patients) and the mapping threshold
    that flags them."""
    return {
        "params": cfg.predict.model_dump(mode="json"),
        "poor_mapping_ratio": cfg.add_batch.poor_mapping_ratio,
        "batches": {name: layer.digest for name, layer in workdir.batch_layers().items()},
    }


def feature_table(workdir: Workdir, params: PredictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every patient's baseline features (patients x features) and the patients' rows
    (`patient_id, sample_id, response`), from the abundance counts (and program scores)."""
    counts_path = workdir.abundance.counts
    if not counts_path.exists():
        msg = f"{counts_path} does not exist: run the abundance stage first"
        raise ImmunoprofileError(msg)
    counts = pd.read_csv(counts_path)
    try:
        patients = baseline_samples(counts)
    except ValueError as err:
        raise ImmunoprofileError(f"{counts_path}: {err}") from None
    table = composition_features(counts, pseudocount=params.pseudocount)
    if "programs" in params.features:
        scores_path = workdir.expression.program_scores
        if not scores_path.exists():
            msg = (f"{scores_path} does not exist: predict.features lists 'programs'; run the "
                   "expression stage first or leave 'programs' out")  # fmt: skip
            raise ImmunoprofileError(msg)
        programs = program_features(pd.read_csv(scores_path), counts,
                                    cell_types=params.program_cell_types)  # fmt: skip
        table = table.join(programs, how="left")
    return table, patients.set_index("patient_id")


def batch_samples(workdir: Workdir, poor_ratio: float) -> pd.DataFrame:
    """Each added batch's samples: `sample_id, batch, mapping_ratio` (median over its
    QC-passed cells) and `maps_poorly`."""
    rows = []
    for name, layer in workdir.batch_layers().items():
        cells = read_obs_columns(layer.files.cells, ["sample_id", "qc_pass", "mapping_ratio"],
                                 needs="re-run add-batch", index=False)  # fmt: skip
        kept = cells[cells["qc_pass"].to_numpy(dtype=bool)]
        for sid in layer.samples:
            ratio = kept.loc[kept["sample_id"].astype(str) == sid, "mapping_ratio"]
            median = float(np.nanmedian(ratio)) if len(ratio) else float("nan")
            rows.append({"sample_id": sid, "batch": name, "mapping_ratio": median,
                         "maps_poorly": not median <= poor_ratio})  # fmt: skip
    return pd.DataFrame(rows, columns=["sample_id", "batch", "mapping_ratio", "maps_poorly"])


def run_predict(ctx: StageContext) -> str:
    """Features, nested cross-validation, permutation test, the final model and the
    predictions of untrained patients; one summary line."""
    params = ctx.cfg.predict
    t = time.perf_counter()
    table, patients = feature_table(ctx.workdir, params)
    batches = batch_samples(ctx.workdir, ctx.cfg.add_batch.poor_mapping_ratio)
    from_batch = patients["sample_id"].isin(batches["sample_id"])
    labelled = patients["response"].isin(["responder", "non_responder"])
    train = patients.index[labelled & ~from_batch]
    counts = patients.loc[train, "response"].value_counts()
    n_resp, n_non = int(counts.get("responder", 0)), int(counts.get("non_responder", 0))
    record: dict[str, Any] = {"n_responder": n_resp, "n_non_responder": n_non}
    short = min(n_resp, n_non) < params.min_patients_per_class
    fits: dict[str, ModelFit] = {}
    dropped: dict[str, str] = {}
    if not short:
        sets = {"composition": [c for c in table.columns if not c.startswith("program:")]}
        if "programs" in params.features:
            sets["composition+programs"] = list(table.columns)
        for name, columns in sets.items():
            usable, gone = usable_features(table.loc[train, columns])
            dropped.update(gone)
            y = (patients.loc[train, "response"] == "non_responder").to_numpy(dtype=int)
            fits[name] = fit_model(usable, y, params, client=ctx.cluster, name=name)
    seconds = round(time.perf_counter() - t, 2)
    with ctx.stage_folder() as (out, manifest):
        table.rename_axis("patient_id").to_csv(out.features)
        if short:
            reason = (f"{n_resp} responders and {n_non} non-responders with a baseline sample; "
                      f"expected at least {params.min_patients_per_class} of each "
                      "(predict.min_patients_per_class)")  # fmt: skip
            metrics = {"skipped": reason, "auc": None, "auc_ci_low": None, "auc_ci_high": None,
                       "permutation_pvalue": None, "brier": None, **record, "features": []}  # fmt: skip
            out.metrics.write_text(json.dumps(metrics, indent=2))
            pd.DataFrame(columns=PATIENT_COLUMNS).to_csv(out.patients, index=False)
            pd.DataFrame(columns=NEW_COLUMNS).to_csv(out.new_patients, index=False)
            manifest.update(skipped=reason)
            return f"predict: skipped: {reason}"
        main_name = "composition+programs" if "programs" in params.features else "composition"
        main = fits[main_name]
        digest = json_sha256({"features": table.loc[train].round(12).to_dict(orient="split"),
                              "response": patients.loc[train, "response"].tolist()})  # fmt: skip
        metrics = {**main.metrics, **record, "features": main.features, "model": main_name,
                   "dropped_features": dropped, "seconds": seconds,
                   "models": {n: f.metrics for n, f in fits.items()}}  # fmt: skip
        out.metrics.write_text(json.dumps(metrics, indent=2))
        out.model.write_text(json.dumps(model_record(main, training_digest=digest), indent=2))
        main.coefficients.to_csv(out.coefficients, index=False)
        _patients_table(main, patients, train, table, labelled, from_batch).to_csv(
            out.patients, index=False
        )
        _new_patients(main, patients, table, from_batch, batches).to_csv(
            out.new_patients, index=False
        )
        manifest.update(n_train=len(train), auc=main.metrics["auc"])
    m = main.metrics
    return (
        f"predict: {n_non} non-responders vs {n_resp} responders at baseline, "
        f"{len(main.features)} features ({main_name}); out-of-fold AUC {m['auc']:.2f} "
        f"(95% CI {m['auc_ci_low']:.2f}-{m['auc_ci_high']:.2f}), permutation p = "
        f"{m['permutation_pvalue']:.3g}; outputs in {ctx.workdir.predict.root}"
    )


def _patients_table(
    fit: ModelFit,
    patients: pd.DataFrame,
    train: pd.Index,
    table: pd.DataFrame,
    labelled: pd.Series,
    from_batch: pd.Series,
) -> pd.DataFrame:
    """The training patients' out-of-fold probabilities, first-repeat folds and
    out-of-fold scores (the AUC's ranking), then the cohort's patients of unknown response
    with the saved model's probability (no fold, no score)."""
    trained = pd.DataFrame({
        "patient_id": train, "response": patients.loc[train, "response"].to_numpy(),
        "p_non_responder": fit.oof, "fold": fit.first_folds, "score": fit.score,
    })  # fmt: skip
    unknown = patients.index[~labelled & ~from_batch]
    if len(unknown):
        pred = predict_patients(fit, table.loc[unknown, fit.features])
        extra = pd.DataFrame({"patient_id": unknown, "response": "unknown",
                              "p_non_responder": pred["p"].to_numpy(), "fold": pd.NA,
                              "score": np.nan})  # fmt: skip
        trained = pd.concat([trained, extra], ignore_index=True)
    return trained[PATIENT_COLUMNS]


def _new_patients(
    fit: ModelFit,
    patients: pd.DataFrame,
    table: pd.DataFrame,
    from_batch: pd.Series,
    batches: pd.DataFrame,
) -> pd.DataFrame:
    """Patients whose baseline sample came with an added batch: the saved model's
    probability, the cross-validation models' 95% range, and why to doubt it."""
    new = patients.index[from_batch]
    if not len(new):
        return pd.DataFrame(columns=NEW_COLUMNS)
    pred = predict_patients(fit, table.loc[new, fit.features])
    info = batches.set_index("sample_id").loc[patients.loc[new, "sample_id"]]
    flags = []
    for outside, poor, ratio in zip(pred["outside"], info["maps_poorly"], info["mapping_ratio"],
                                    strict=True):  # fmt: skip
        reasons = []
        if poor:
            reasons.append(f"maps poorly (distance ratio {ratio:.2f})")
        if outside:
            reasons.append(f"outside the training range: {outside}")
        flags.append("; ".join(reasons))
    return pd.DataFrame({
        "patient_id": new, "sample_id": patients.loc[new, "sample_id"].to_numpy(),
        "batch": info["batch"].to_numpy(), "response": patients.loc[new, "response"].to_numpy(),
        "p_non_responder": pred["p"].to_numpy(), "p_low": pred["low"].to_numpy(),
        "p_high": pred["high"].to_numpy(), "flags": flags,
    })[NEW_COLUMNS]  # fmt: skip
