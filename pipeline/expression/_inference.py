"""PyDESeq2's per-gene solvers, batched over genes (pure numpy/scipy).

PyDESeq2 runs DESeq2's method (size factors, dispersion trend and prior, MAP
dispersions, Cook's distances, refits, Wald tests) and calls an `Inference` object for
the per-gene numerical work. Its default fits one gene at a time through scipy
(``minimize`` for each dispersion, a Python IRLS loop per gene): ~5 ms per gene and fit on
one core, minutes per cell type at the study's size (benchmarks/expression_inference.py).
`BatchedInference` solves the same problems for all genes at once:

- `lin_reg_mu`: one least-squares solve for every gene (the same fitted means);
- `irls`: IRLS with the same start, ridge (1e-6), bounds and stopping rule, each
  iteration a batched solve of the genes still iterating; a gene whose coefficients
  leave ``[-max_beta, max_beta]`` or that reaches ``maxiter`` goes to PyDESeq2's own
  per-gene solver (its L-BFGS-B fallback), as it would there;
- `alpha_mle`: the same objective (NB log-likelihood with the Cox-Reid term and, for MAP
  dispersions, the log-normal prior) minimized over the same bounds in log dispersion by
  a grid that brackets the minimum, then a safeguarded Newton search on the analytic
  gradient (secant curvature, bisection when a step leaves the bracket);
- `wald_test`: the same sandwich covariance and two-sided normal p-values, batched.

Results equal the default's to optimizer tolerance (tests/expression/test_inference.py)
and R's DESeq2 as closely (tests/expression/test_reference.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydeseq2 import utils
from pydeseq2.default_inference import DefaultInference
from scipy.special import digamma, gammaln
from scipy.stats import norm

RIDGE = 1e-6  # PyDESeq2's ridge on the IRLS normal equations
GRID = 10  # points of the bracketing grid in log dispersion
NEWTON_STEPS = 40


def _outer_rows(x: np.ndarray) -> np.ndarray:
    """Rows' outer products, flattened (samples x p*p): ``w.T @ this`` is every gene's
    X' diag(w) X in one matrix product."""
    return (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)


def _one_hot_columns(x: np.ndarray) -> np.ndarray:
    """Columns of 0/1 values no two of which are 1 in the same row (the patient
    indicators of a patients-blocked design), taken greedily in order."""
    taken = np.zeros(x.shape[0], dtype=bool)
    picked = []
    for j in range(x.shape[1]):
        col = x[:, j]
        if np.isin(col, (0.0, 1.0)).all() and not (taken & (col == 1)).any():
            picked.append(j)
            taken |= col == 1
    return np.array(picked, dtype=np.int64)


BLOCK_MIN = 8  # one-hot columns from which the block form is used
GENE_BLOCK = 512  # genes solved together: their samples x genes arrays stay in cache


def _gene_blocks(n_genes: int) -> list[slice]:
    return [slice(i, min(i + GENE_BLOCK, n_genes)) for i in range(0, n_genes, GENE_BLOCK)]


class Gram:
    """Every gene's ``M = X' diag(w) X (+ ridge)`` for one design, factored for its log
    determinant, solves and the quadratic forms ``x_i' M^-1 x_i``.

    A design with many one-hot columns (one per patient) is handled in block form: with
    ``X = [Z | A]`` (Z the one-hot columns), ``Z'WZ`` is diagonal, so everything goes
    through the Schur complement ``S = A'WA - B' D^-1 B`` (``D = Z'WZ``, ``B = Z'WA``) of
    the few other columns: O(n k^2) per gene instead of O(p^3).
    """

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=float)
        z = _one_hot_columns(self.x)
        self.blocked = z.size >= BLOCK_MIN
        if self.blocked:
            rest = np.setdiff1d(np.arange(self.x.shape[1]), z)
            self.z_cols, self.a_cols = z, rest
            zx = self.x[:, z]
            self.z = zx
            self.group = np.where(zx.any(axis=1), zx.argmax(axis=1), -1)
            self.a = self.x[:, rest]
            self.outer = _outer_rows(self.a)
            # rows' a_l * z_j, flattened (samples x k*P): ``w.T @ this`` is every gene's B
            # (one dense product: faster here than sparse sums over each patient's rows)
            self.az = (self.a[:, :, None] * zx[:, None, :]).reshape(self.x.shape[0], -1)
        else:
            self.outer = _outer_rows(self.x)

    def patient_sums(self, w: np.ndarray) -> np.ndarray:
        """``Z' diag(w) A`` per gene (genes x P x k)."""
        k = self.a.shape[1]
        return (w.T @ self.az).reshape(-1, k, self.z.shape[1]).transpose(0, 2, 1)

    def factor(self, w: np.ndarray, ridge: float = 0.0) -> Gram.Factor:
        return Gram.Factor(self, w, ridge)

    class Factor:
        def __init__(self, gram: Gram, w: np.ndarray, ridge: float) -> None:
            self.g = gram
            self.w = w
            if gram.blocked:
                k = gram.a.shape[1]
                self.d = w.T @ gram.z + ridge  # (G, P)
                self.b = gram.patient_sums(w)  # (G, P, k)
                c = (w.T @ gram.outer).reshape(-1, k, k) + ridge * np.eye(k)
                scaled = self.b / self.d[:, :, None]
                self.s = c - np.matmul(scaled.transpose(0, 2, 1), self.b)
            else:
                p = gram.x.shape[1]
                self.m = (w.T @ gram.outer).reshape(-1, p, p) + ridge * np.eye(p)

        def logdet(self) -> np.ndarray:
            if self.g.blocked:
                return np.log(self.d).sum(axis=1) + np.linalg.slogdet(self.s)[1]
            return np.linalg.slogdet(self.m)[1]

        def solve(self, r: np.ndarray) -> np.ndarray:
            """``M^-1 r`` for every gene (``r``: genes x p)."""
            if not self.g.blocked:
                return np.linalg.solve(self.m, r[:, :, None])[:, :, 0]
            rz, ra = r[:, self.g.z_cols], r[:, self.g.a_cols]
            rhs = ra - np.einsum("gjl,gj->gl", self.b, rz / self.d)
            beta_a = np.linalg.solve(self.s, rhs[:, :, None])[:, :, 0]
            beta_z = (rz - np.einsum("gjl,gl->gj", self.b, beta_a)) / self.d
            out = np.empty_like(r)
            out[:, self.g.z_cols], out[:, self.g.a_cols] = beta_z, beta_a
            return out

        def trace_inv(self, dw: np.ndarray) -> np.ndarray:
            """``tr(M^-1 X' diag(dw) X)`` per gene (``dw``: samples x genes): the
            derivative of ``log det M`` along a change ``dw`` of the weights."""
            g = self.g
            if not g.blocked:
                p = g.x.shape[1]
                dm = (dw.T @ g.outer).reshape(-1, p, p)
                return (np.linalg.inv(self.m) * dm).sum(axis=(1, 2))
            k = g.a.shape[1]
            s_inv = np.linalg.inv(self.s)
            dd = dw.T @ g.z  # (G, P)
            db = g.patient_sums(dw)  # (G, P, k)
            dc = (dw.T @ g.outer).reshape(-1, k, k)
            bd = self.b / self.d[:, :, None]  # D^-1 B
            t = np.matmul(bd, s_inv)  # D^-1 B S^-1 (minus M^-1's off-diagonal block)
            diag = 1.0 / self.d + (t * bd).sum(axis=2)  # diagonal of M^-1's Z block
            return ((diag * dd).sum(axis=1) - 2.0 * (t * db).sum(axis=(1, 2))
                    + (s_inv * dc).sum(axis=(1, 2)))  # fmt: skip

        def quad(self) -> np.ndarray:
            """``x_i' M^-1 x_i`` (samples x genes), as matrix products over all genes."""
            g = self.g
            if not g.blocked:
                p = g.x.shape[1]
                return g.outer @ np.linalg.inv(self.m).reshape(-1, p * p).T
            # x_i = (e_j, a_i) for sample i of patient j: with c_j = D^-1 B's row j,
            # q_i = 1/d_j + (a_i - c_j)' S^-1 (a_i - c_j)
            k = g.a.shape[1]
            s_inv = np.linalg.inv(self.s)
            q = g.outer @ s_inv.reshape(-1, k * k).T  # a_i' S^-1 a_i
            has = g.group >= 0
            j = g.group[has]
            c = self.b / self.d[:, :, None]
            t = np.matmul(c, s_inv)  # (G, P, k)
            cross = np.einsum("gnk,nk->ng", t[:, j, :], g.a[has])
            q[has] += -2.0 * cross + (t * c).sum(axis=2)[:, j].T + 1.0 / self.d[:, j].T
            return q


def nb_nll(
    counts: np.ndarray,
    mu: np.ndarray,
    alpha: np.ndarray,
    *,
    log_factorial: np.ndarray | float | None = None,
) -> np.ndarray:
    """Negative NB log-likelihood per gene (columns), PyDESeq2's parametrization;
    ``log_factorial``: ``gammaln(counts + 1)`` when the caller has it (0 where only
    differences in ``alpha`` matter)."""
    r = 1.0 / alpha
    if log_factorial is None:
        log_factorial = gammaln(counts + 1)
    logbinom = gammaln(counts + r) - log_factorial - gammaln(r)
    n = counts.shape[0]
    terms = -logbinom + (counts + r) * np.log(r + mu) - counts * np.log(mu)
    return n * r * np.log(alpha) + terms.sum(axis=0)


def _dnb_nll(counts: np.ndarray, mu: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Derivative of `nb_nll` with respect to the dispersion, per gene."""
    r = 1.0 / alpha
    part = (digamma(r) - digamma(counts + r) + np.log(1 + mu * alpha)
            + (counts - mu) / (mu + r))  # fmt: skip
    return -(r**2) * part.sum(axis=0)


class BatchedInference(DefaultInference):
    """`DefaultInference` with the per-gene loops replaced by batched numpy."""

    def __init__(self) -> None:
        super().__init__(n_cpus=1)

    def lin_reg_mu(
        self,
        counts: np.ndarray,
        size_factors: np.ndarray,
        design_matrix: np.ndarray,
        min_mu: float,
    ) -> np.ndarray:
        y = counts / size_factors[:, None]
        coef = np.linalg.lstsq(design_matrix, y, rcond=None)[0]
        return np.maximum(size_factors[:, None] * (design_matrix @ coef), min_mu)

    def irls(self, counts: np.ndarray, size_factors: np.ndarray, design_matrix: np.ndarray,
             disp: np.ndarray, min_mu: float, beta_tol: float, min_beta: float = -30,
             max_beta: float = 30, optimizer: Any = "L-BFGS-B", maxiter: int = 250,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        counts, disp = np.asarray(counts), np.asarray(disp, dtype=float)
        parts = [self._irls(counts[:, b], size_factors, design_matrix, disp[b], min_mu, beta_tol,
                            min_beta, max_beta, optimizer, maxiter)
                 for b in _gene_blocks(counts.shape[1])]  # fmt: skip
        return (np.vstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]),
                np.hstack([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))  # fmt: skip

    def _irls(
        self,
        counts: np.ndarray,
        size_factors: np.ndarray,
        design_matrix: np.ndarray,
        disp: np.ndarray,
        min_mu: float,
        beta_tol: float,
        min_beta: float = -30,
        max_beta: float = 30,
        optimizer: Any = "L-BFGS-B",
        maxiter: int = 250,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(design_matrix, dtype=float)
        y = np.asarray(counts, dtype=float)
        s = np.asarray(size_factors, dtype=float)[:, None]
        disp = np.asarray(disp, dtype=float)
        p = x.shape[1]
        n_genes = y.shape[1]
        if np.linalg.matrix_rank(x) == p:
            q, r = np.linalg.qr(x)
            beta = np.linalg.solve(r, q.T @ np.log(y / s + 0.1))
        else:
            beta = np.zeros((p, n_genes))
            beta[0] = np.log(y / s).mean(axis=0)
        gram = Gram(x)
        mu = np.maximum(s * np.exp(x @ beta), min_mu)
        dev = np.full(n_genes, 1000.0)
        active = np.arange(n_genes)
        fallback: list[int] = []
        it = 0
        while active.size:
            m = mu[:, active]
            w = m / (1.0 + m * disp[active])
            z = np.log(m / s) + (y[:, active] - m) / m
            beta_hat = gram.factor(w, RIDGE).solve((x.T @ (w * z)).T).T
            it += 1
            bad = (np.abs(beta_hat) > max_beta).any(axis=0) | (it >= maxiter)
            fallback += active[bad].tolist()
            good = active[~bad]
            beta[:, good] = beta_hat[:, ~bad]
            mu[:, good] = np.maximum(s * np.exp(x @ beta[:, good]), min_mu)
            old = dev[good]
            dev[good] = -2.0 * nb_nll(y[:, good], mu[:, good], disp[good])
            ratio = np.abs(dev[good] - old) / (np.abs(dev[good]) + 0.1)
            active = good[ratio > beta_tol]
        converged = np.ones(n_genes, dtype=bool)
        w = mu / (1.0 + mu * disp)
        hat = gram.factor(w, RIDGE).quad() * w
        mu_out = s * np.exp(x @ beta)
        for g in fallback:  # PyDESeq2's own solver: its L-BFGS-B and grid fallbacks
            b, m1, h1, ok = utils.irls_solver(
                counts=y[:, g], size_factors=s[:, 0], design_matrix=x, disp=disp[g],
                min_mu=min_mu, beta_tol=beta_tol, min_beta=min_beta, max_beta=max_beta,
                optimizer=optimizer, maxiter=maxiter,
            )  # fmt: skip
            beta[:, g], mu_out[:, g], hat[:, g], converged[g] = b, m1, h1, ok
        return beta.T, mu_out, hat, converged

    def alpha_mle(self, counts: np.ndarray, design_matrix: np.ndarray, mu: np.ndarray,
                  alpha_hat: np.ndarray, min_disp: float, max_disp: float,
                  prior_disp_var: float | None = None, cr_reg: bool = True,
                  prior_reg: bool = False, optimizer: Any = "L-BFGS-B",
                  ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        counts, alpha_hat = np.asarray(counts), np.asarray(alpha_hat, dtype=float)
        parts = [self._alpha_mle(counts[:, b], design_matrix, np.asarray(mu)[:, b], alpha_hat[b],
                                 min_disp, max_disp, prior_disp_var, cr_reg, prior_reg)
                 for b in _gene_blocks(counts.shape[1])]  # fmt: skip
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _alpha_mle(
        self,
        counts: np.ndarray,
        design_matrix: np.ndarray,
        mu: np.ndarray,
        alpha_hat: np.ndarray,
        min_disp: float,
        max_disp: float,
        prior_disp_var: float | None = None,
        cr_reg: bool = True,
        prior_reg: bool = False,
        optimizer: Any = "L-BFGS-B",
    ) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(design_matrix, dtype=float)
        y = np.asarray(counts, dtype=float)
        mu = np.asarray(mu, dtype=float)
        log_hat = np.log(np.asarray(alpha_hat, dtype=float))
        if prior_reg and prior_disp_var is None:
            msg = "Sigma_prior is required for prior regularization"
            raise ValueError(msg)
        gram = Gram(x)
        lo_bound, hi_bound = np.log(min_disp), np.log(max_disp)

        def loss(la: np.ndarray, g: np.ndarray) -> np.ndarray:
            alpha = np.exp(la)
            value = nb_nll(y[:, g], mu[:, g], alpha, log_factorial=0.0)
            if cr_reg:
                w = mu[:, g] / (1 + mu[:, g] * alpha)
                value = value + 0.5 * gram.factor(w).logdet()
            if prior_reg:
                value = value + (la - log_hat[g]) ** 2 / (2 * prior_disp_var)  # type: ignore[operator]
            return value

        def grad(la: np.ndarray, g: np.ndarray) -> np.ndarray:
            alpha = np.exp(la)
            value = alpha * _dnb_nll(y[:, g], mu[:, g], alpha)
            if cr_reg:
                w = mu[:, g] / (1 + mu[:, g] * alpha)
                # d/dalpha log det(X'WX) = tr(M^-1 X' (dW/dalpha) X), dw_i/dalpha = -w_i^2
                value = value - 0.5 * gram.factor(w).trace_inv(w**2) * alpha
            if prior_reg:
                value = value + (la - log_hat[g]) / prior_disp_var
            return value

        n_genes = y.shape[1]
        every = np.arange(n_genes)
        grid = np.linspace(lo_bound, hi_bound, GRID)
        values = np.stack([loss(np.full(n_genes, v), every) for v in grid])
        best = np.nanargmin(np.where(np.isfinite(values), values, np.inf), axis=0)
        lo = grid[np.maximum(best - 1, 0)]
        hi = grid[np.minimum(best + 1, GRID - 1)]
        xk = grid[best]
        gk = grad(xk, every)
        # at a bound with the slope pointing outwards, the bound is the answer
        done = ((best == 0) & (gk >= 0)) | ((best == GRID - 1) & (gk <= 0))
        prev_x, prev_g = np.where(gk > 0, lo, hi), grad(np.where(gk > 0, lo, hi), every)
        todo = np.flatnonzero(~done)
        for _ in range(NEWTON_STEPS):
            if not todo.size:
                break
            g = gk[todo]
            lo[todo] = np.where(g < 0, xk[todo], lo[todo])
            hi[todo] = np.where(g > 0, xk[todo], hi[todo])
            curv = (g - prev_g[todo]) / (xk[todo] - prev_x[todo])
            step = xk[todo] - g / curv
            inside = np.isfinite(step) & (curv > 0) & (step > lo[todo]) & (step < hi[todo])
            new = np.where(inside, step, 0.5 * (lo[todo] + hi[todo]))
            prev_x[todo], prev_g[todo] = xk[todo], g
            xk[todo] = new
            gk[todo] = grad(new, todo)
            small = (np.abs(new - prev_x[todo]) < 1e-10) | (hi[todo] - lo[todo] < 1e-10)
            todo = todo[~small]
        alpha = np.exp(np.clip(xk, lo_bound, hi_bound))
        return alpha, np.ones(n_genes, dtype=bool)

    def wald_test(
        self,
        design_matrix: np.ndarray,
        disp: np.ndarray,
        lfc: np.ndarray,
        mu: np.ndarray,
        ridge_factor: np.ndarray,
        contrast: np.ndarray,
        lfc_null: np.ndarray,
        alt_hypothesis: Any = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if alt_hypothesis is not None:
            return super().wald_test(design_matrix, disp, lfc, mu, ridge_factor, contrast,
                                     lfc_null, alt_hypothesis)  # fmt: skip
        x = np.asarray(design_matrix, dtype=float)
        mu = np.asarray(mu, dtype=float)
        w = mu / (1 + mu * np.asarray(disp, dtype=float))
        ridge = float(np.diag(ridge_factor)[0])
        if not np.allclose(ridge_factor, ridge * np.eye(x.shape[1])):
            return super().wald_test(design_matrix, disp, lfc, mu, ridge_factor, contrast,
                                     lfc_null, alt_hypothesis)  # fmt: skip
        gram = Gram(x)
        se = np.empty(w.shape[1])
        for b in _gene_blocks(w.shape[1]):  # samples x genes temporaries a block at a time
            wb = w[:, b]
            hc = gram.factor(wb, ridge).solve(np.tile(contrast, (wb.shape[1], 1)))
            # c' H M H c with M = X'WX: sum_i w_i (x_i' H c)^2
            se[b] = np.sqrt((wb * (x @ hc.T) ** 2).sum(axis=0))
        stat = (np.asarray(lfc, dtype=float) - lfc_null) @ contrast / se
        return 2 * norm.sf(np.abs(stat)), stat, se
