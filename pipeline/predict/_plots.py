"""The predict stage's figure (matplotlib; a pure function of its files).

Inputs: `predict/patients.csv` (the training patients' out-of-fold `score` and
`p_non_responder`), `predict/metrics.json` (AUC, interval, calibration table) and
`predict/coefficients.csv`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FPR_GRID = np.linspace(0.0, 1.0, 101)


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates as the threshold falls past each distinct score."""
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    s, t = np.asarray(score)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each tie block
    tp, fp = np.cumsum(t)[last], np.cumsum(~t)[last]
    return np.r_[0.0, fp / max((~y).sum(), 1)], np.r_[0.0, tp / max(y.sum(), 1)]


def roc_band(y: np.ndarray, score: np.ndarray, *, n_boot: int = 500, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """2.5% and 97.5% of the true positive rate at each false positive rate of
    `FPR_GRID`, over patients resampled within each class."""
    y = np.asarray(y, dtype=int)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    curves = []
    for _ in range(n_boot):
        rows = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        fpr, tpr = roc_curve(y[rows], np.asarray(score)[rows])
        curves.append(np.interp(FPR_GRID, fpr, tpr))
    return np.quantile(curves, 0.025, axis=0), np.quantile(curves, 0.975, axis=0)


def prediction_figure(patients: pd.DataFrame, metrics: dict[str, Any],
                      coefficients: pd.DataFrame, *, top: int = 12) -> Figure:  # fmt: skip
    """Four panels: the out-of-fold ROC curve with its bootstrap band; the calibration
    (observed share of non-responders against the mean predicted probability); the final
    model's ``top`` largest coefficients with the outer models' mean and sd; each
    patient's out-of-fold probability by true response."""
    from ..runtime import pyplot

    trained = patients[patients["response"].isin(["responder", "non_responder"])
                       & patients["fold"].notna()]  # fmt: skip
    y = (trained["response"] == "non_responder").to_numpy(dtype=int)
    score = trained["score"].to_numpy(dtype=float)
    fig, axes = pyplot().subplots(1, 4, figsize=(17, 4.0))
    ax = axes[0]
    low, high = roc_band(y, score)
    ax.fill_between(FPR_GRID, low, high, color="#9ecae1", alpha=0.6, linewidth=0,
                    label="95% band (bootstrap)")  # fmt: skip
    fpr, tpr = roc_curve(y, score)
    ax.step(fpr, tpr, where="post", color="#08519c",
            label=f"AUC {metrics['auc']:.2f} ({metrics['auc_ci_low']:.2f}-"
                  f"{metrics['auc_ci_high']:.2f})")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title="Out-of-fold ROC (non-response)")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    cal = pd.DataFrame(metrics.get("calibration", []))
    if len(cal):
        ax.plot(cal["mean_predicted"], cal["observed"], marker="o", color="#08519c")
        for row in cal.itertuples():
            ax.annotate(f"n={row.n}", (row.mean_predicted, row.observed), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
           ylabel="observed share of non-responders", title="Calibration")  # fmt: skip
    ax = axes[2]
    coef = coefficients.head(top).iloc[::-1]
    pos = np.arange(len(coef))
    ax.errorbar(coef["cv_mean"], pos, xerr=coef["cv_sd"], fmt="o", color="#bdbdbd",
                markersize=3, label="outer models: mean +- sd")  # fmt: skip
    ax.scatter(coef["coefficient"], pos, color="#d95f02", zorder=3, s=18, label="final model")
    ax.axvline(0, color="#999999", linewidth=0.8)
    ax.set_yticks(pos, coef["feature"], fontsize=7)
    ax.set(xlabel="coefficient (per sd; + = non-response)", title="Coefficients")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[3]
    rng = np.random.default_rng(0)
    for i, (group, colour) in enumerate([("responder", "#1b9e77"), ("non_responder", "#d95f02")]):
        p = trained.loc[trained["response"] == group, "p_non_responder"].to_numpy(dtype=float)
        ax.scatter(i + rng.uniform(-0.15, 0.15, p.size), p, color=colour, s=16)
        if p.size:
            ax.hlines(np.median(p), i - 0.25, i + 0.25, color="black", linewidth=1.2)
    ax.axhline(0.5, color="#999999", linewidth=0.8, linestyle="--")
    ax.set_xticks([0, 1], ["responders", "non-responders"])
    ax.set(ylim=(0, 1), ylabel="out-of-fold probability of non-response",
           title="Per patient")  # fmt: skip
    fig.tight_layout()
    return fig
