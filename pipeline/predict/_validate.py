"""Patient-level nested cross-validation of the penalized logistic regression (pure numpy;
no stores, no cluster).

Outer loop: repeated stratified K-fold over patients (leave-one-out for small cohorts);
every step that sees the training patients -- centring and scaling, the penalty's choice
-- is done on the training fold alone. Inner loop: the penalty ``C`` is chosen on the
training fold by approximate leave-one-out log loss (`loo_logloss`), one fit per
candidate. A patient's out-of-fold probability is the mean of its test-fold predictions
over the repeats; the AUC is that of these probabilities.

Everything is batched over label vectors, so that the permutation test (labels shuffled
at patient level, the whole procedure repeated, folds included) runs as the observed
labels do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ._logistic import fit_logistic, loo_logloss, sigmoid, standardize


@dataclass(frozen=True)
class CVSettings:
    folds: int = 5  # outer folds; leave-one-out when the labelled patients are fewer than loo_below
    repeats: int = 5  # outer repeats (K-fold only)
    c_grid: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 2, 10))
    loo_below: int = 20
    seed: int = 0

    def scheme(self, n: int) -> str:
        return "leave_one_out" if n < self.loo_below else "repeated_stratified_kfold"


def outer_splits(y: np.ndarray, settings: CVSettings) -> np.ndarray:
    """Training masks (splits x patients) of the outer loop for labels ``y`` (0/1): the
    folds depend on the labels (stratified) and on the seed only."""
    y = np.asarray(y, dtype=int)
    n = y.size
    if settings.scheme(n) == "leave_one_out":
        return ~np.eye(n, dtype=bool)
    rng = np.random.default_rng(settings.seed)
    masks = []
    for _ in range(settings.repeats):
        fold = np.empty(n, dtype=int)
        offset = int(rng.integers(settings.folds))
        for cls in (0, 1):
            members = rng.permutation(np.flatnonzero(y == cls))
            fold[members] = (np.arange(members.size) + offset) % settings.folds
            offset = (offset + members.size) % settings.folds
        masks += [fold != k for k in range(settings.folds)]
    return np.array(masks)


@dataclass(frozen=True)
class SplitModels:
    """The outer splits' models, one per split (problems may be label vectors x splits)."""

    train: np.ndarray  # (..., splits, patients) bool
    mean: np.ndarray  # (..., splits, features)
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray  # (..., splits)
    c: np.ndarray  # (..., splits): the chosen C


def fit_splits(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, settings: CVSettings
) -> SplitModels:
    """For label vectors ``y`` (labels x patients) and their splits' training masks
    ``train`` (labels x splits x patients): per split, standardize on its training
    patients, fit every ``C`` of the grid and keep the one with the lowest approximate
    leave-one-out log loss (ties: the stronger penalty)."""
    n_labels, n_splits, n = train.shape
    grid = np.asarray(settings.c_grid, dtype=float)
    g = grid.size
    flat_train = train.reshape(-1, n)  # (L*S, n)
    xs, mean, scale = standardize(np.broadcast_to(x, (flat_train.shape[0], *x.shape)), flat_train)
    ys = np.repeat(np.asarray(y, dtype=float), n_splits, axis=0)  # (L*S, n)
    xb = np.repeat(xs, g, axis=0)
    yb = np.repeat(ys, g, axis=0)
    wb = np.repeat(flat_train, g, axis=0).astype(float)
    cb = np.tile(grid, flat_train.shape[0])
    coef, intercept = fit_logistic(xb, yb, wb, cb)
    loss = loo_logloss(xb, yb, wb, cb, coef, intercept).reshape(-1, g)
    best = np.argmin(np.round(loss, 12), axis=1)  # first minimum: the smallest C
    pick = np.arange(best.size) * g + best
    shape = (n_labels, n_splits)
    return SplitModels(
        train=train,
        mean=mean.reshape(*shape, -1),
        scale=scale.reshape(*shape, -1),
        coef=coef[pick].reshape(*shape, -1),
        intercept=intercept[pick].reshape(shape),
        c=grid[best].reshape(shape),
    )


def auc(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of ``score`` for labels ``y`` (0/1), along the last axis
    (ties count one half; Mann-Whitney)."""
    y = np.asarray(y, dtype=bool)
    ranks = rankdata(score, axis=-1)
    n1 = y.sum(axis=-1)
    n0 = y.shape[-1] - n1
    return ((ranks * y).sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


@dataclass(frozen=True)
class CVResult:
    oof: np.ndarray  # (labels, patients): mean out-of-fold probability of non-response
    score: np.ndarray  # (labels, patients): mean out-of-fold linear score without intercept
    auc: np.ndarray  # (labels,): the AUC of ``score``
    models: SplitModels


def nested_cv(x: np.ndarray, y: np.ndarray, settings: CVSettings) -> CVResult:
    """The nested cross-validation for each label vector of ``y`` (labels x patients, or
    one vector): every label vector gets its own stratified folds, as the observed
    labels would.

    The AUC ranks the patients by their out-of-fold linear scores without the models'
    intercepts: an intercept is the same for every patient of a test fold and says only
    how many non-responders its training fold held (fewer when the test fold holds more),
    so with a strong penalty it would rank test folds against their own labels (under
    the null, a mean AUC of 0.44 instead of 0.47 at 44 patients)."""
    y = np.atleast_2d(np.asarray(y, dtype=int))
    train = np.array([outer_splits(row, settings) for row in y])  # (L, S, n)
    models = fit_splits(np.asarray(x, dtype=float), y, train, settings)
    eta = split_decisions(models, x)  # (L, S, n)
    test = ~train
    n_test = np.maximum(test.sum(axis=1), 1)
    oof = (sigmoid(eta) * test).sum(axis=1) / n_test
    score = ((eta - models.intercept[:, :, None]) * test).sum(axis=1) / n_test
    return CVResult(oof=oof, score=score, auc=auc(y, score), models=models)


def split_decisions(models: SplitModels, x: np.ndarray) -> np.ndarray:
    """Linear predictors of rows ``x`` (rows x features) under every split's model,
    each with its own centring and scaling: (labels, splits, rows)."""
    z = np.asarray(x, dtype=float)[None, None] - models.mean[:, :, None, :]
    z = z / models.scale[:, :, None, :]
    return (z * models.coef[:, :, None, :]).sum(axis=-1) + models.intercept[:, :, None]


def permutation_aucs(
    x: np.ndarray,
    y: np.ndarray,
    settings: CVSettings,
    n_perm: int,
    *,
    seed: int | np.random.SeedSequence,
    chunk: int = 25,
) -> np.ndarray:
    """The nested cross-validation's AUC for ``n_perm`` shuffles of the labels ``y`` (the
    whole procedure, folds included, repeated per shuffle; shuffles drawn from
    ``seed``)."""
    rng = np.random.default_rng(seed)
    shuffled = np.array([rng.permutation(y) for _ in range(n_perm)])
    out = [nested_cv(x, shuffled[i : i + chunk], settings).auc for i in range(0, n_perm, chunk)]
    return np.concatenate(out) if out else np.zeros(0)


def permutation_pvalue(observed: float, permuted: np.ndarray) -> float:
    """``(1 + #{permuted >= observed}) / (1 + n)``: never 0, exact under exchangeability."""
    return float((1 + np.sum(permuted >= observed - 1e-12)) / (1 + permuted.size))


def bootstrap_aucs(y: np.ndarray, score: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """The AUC of ``score`` over patients resampled within each class, ``n_boot`` times."""
    y = np.asarray(y, dtype=int)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rows = np.concatenate(
        [rng.choice(pos, (n_boot, pos.size)), rng.choice(neg, (n_boot, neg.size))], axis=1
    )
    labels = np.concatenate([np.ones(pos.size, dtype=int), np.zeros(neg.size, dtype=int)])
    return auc(np.broadcast_to(labels, rows.shape), np.asarray(score)[rows])


def auc_interval(
    observed: float, bootstrap: np.ndarray, permuted: np.ndarray, *, level: float = 0.95
) -> tuple[float, float]:
    """A normal interval around the cross-validated AUC whose standard deviation is the
    larger of the patient bootstrap's and the permutation null's.

    Resampling the patients of fixed out-of-fold scores misses the variation that comes
    from training on other patients: under the null the cross-validated AUC varies ~1.3x
    more than the bootstrap says, and a bootstrap percentile interval covered 0.5 in
    84-87% of null cohorts. The permutation null's spread is the whole procedure's, and
    the AUC varies less away from 0.5, so the interval is conservative away from the
    null (tests/predict/test_validate.py measures its coverage of 0.5 under the null)."""
    from scipy.stats import norm

    sd = float(np.std(bootstrap))
    if permuted.size > 1:
        sd = max(sd, float(np.std(permuted)))
    half = float(norm.ppf(0.5 + level / 2)) * sd
    return max(0.0, observed - half), min(1.0, observed + half)


def calibration_table(y: np.ndarray, prob: np.ndarray, *, bins: int = 5) -> list[dict[str, float]]:
    """Observed share of non-responders against the mean predicted probability, in
    ``bins`` groups of patients of about equal size (by predicted probability)."""
    order = np.argsort(prob, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(order))):
        if part.size:
            out.append({"mean_predicted": float(np.mean(prob[part])),
                        "observed": float(np.mean(np.asarray(y)[part])),
                        "n": int(part.size)})  # fmt: skip
    return out
