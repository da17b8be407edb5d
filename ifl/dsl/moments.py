"""DSL estimating equations for one sample split: exact root and sandwich variance.

Pure numpy, no pandas. Notation follows Egami et al. (2023) and the R package `dsl`:
N rows, p regressors, n labeled rows (indices ``lab``), weights w = R / pi on labeled rows.
"p" arrays use the cross-fitted prediction g_hat for every predicted variable, "o" arrays
the expert labels (needed on labeled rows only, since w = 0 elsewhere).

The doubly robust moment of row i is

    m_dr_i(b) = m(yp_i, Xp_i; b) + w_i * [m(yo_i, Xo_i; b) - m(yp_i, Xp_i; b)],
    m(y, x; b) = x * (y - mu(x'b)),   mu = identity (lm) or expit (logit),

and b_hat solves mean_i m_dr_i(b) = 0. R minimises ||mean m_dr||^2 with L-BFGS-B and
finite differences, which stops near |mean m_dr| ~ 1e-6; we solve the same equations by
Newton's method to machine precision (for lm, one Newton step from 0 is the closed form).
`solver="r-lbfgsb"` instead replays R's optimiser (same scaling, finite differences and
stopping rule, via scipy's L-BFGS-B) and reproduces R's coefficients to ~1e-9 given R's g_hat.

>>> import numpy as np
>>> X = np.c_[np.ones(4), [0.0, 1, 2, 3]]; y = np.array([0.0, 1, 1, 3])
>>> lab = np.arange(4); w = np.ones(4)   # everything labeled, pi = 1: plain OLS
>>> est = estimate("lm", X, y, X, y, lab, w)
>>> np.round(est.beta, 6).tolist()
[-0.1, 0.9]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

MODELS = ("lm", "logit")
SOLVERS = ("newton", "r-lbfgsb")


@dataclass(frozen=True)
class SplitEstimate:
    """One split's solution: beta (p,), vcov (p, p), jacobian J (p, p), meat Omega (p, p)."""

    beta: np.ndarray
    vcov: np.ndarray
    jacobian: np.ndarray
    meat: np.ndarray
    max_abs_moment: float  # |mean m_dr(beta)|_inf at the solution, a convergence record


def _mean_and_slope(model: str, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu(eta) and d mu / d eta, both shaped like eta."""
    if model == "lm":
        return eta, np.ones_like(eta)
    mu = expit(eta)
    return mu, mu * (1.0 - mu)


class _Moments:
    """Evaluates mean m_dr, its Jacobian and per-row m_dr for fixed data."""

    def __init__(self, model, Xp, yp, Xo_lab, yo_lab, lab, w_lab):
        self.model, self.Xp, self.yp = model, Xp, yp
        self.Xo, self.yo, self.lab, self.w = Xo_lab, yo_lab, lab, w_lab
        self.Xp_lab, self.yp_lab = Xp[lab], yp[lab]
        self.n_rows = Xp.shape[0]

    def residuals(self, beta):
        """(rp (N,), sp (N,), ro (n,), so (n,)): y - mu and dmu/deta for both versions."""
        mu_p, s_p = _mean_and_slope(self.model, self.Xp @ beta)
        mu_o, s_o = _mean_and_slope(self.model, self.Xo @ beta)
        return self.yp - mu_p, s_p, self.yo - mu_o, s_o

    def mean_moment(self, beta) -> np.ndarray:
        """mean_i m_dr_i(beta), shape (p,)."""
        rp, _, ro, _ = self.residuals(beta)
        total = self.Xp.T @ rp + self.Xo.T @ (self.w * ro) - self.Xp_lab.T @ (self.w * rp[self.lab])
        return total / self.n_rows

    def jacobian(self, beta) -> np.ndarray:
        """J = -d mean m_dr / d beta, shape (p, p); R's `J` in helper_moment.R."""
        _, sp, _, so = self.residuals(beta)
        total = (self.Xp.T * sp) @ self.Xp
        total += (self.Xo.T * (self.w * so)) @ self.Xo
        total -= (self.Xp_lab.T * (self.w * sp[self.lab])) @ self.Xp_lab
        return total / self.n_rows

    def row_moments(self, beta) -> np.ndarray:
        """m_dr_i(beta) for every row, shape (N, p)."""
        rp, _, ro, _ = self.residuals(beta)
        m = self.Xp * rp[:, None]
        m[self.lab] += self.w[:, None] * (self.Xo * ro[:, None] - m[self.lab])
        return m


def _newton(moments: _Moments, p: int, max_iter: int = 100) -> np.ndarray:
    """Damped Newton on mean m_dr = 0. Newton is affine invariant, so unlike R we need not
    standardise the columns of X first."""
    beta = np.zeros(p)
    g = moments.mean_moment(beta)
    g_start = np.linalg.norm(g)
    for _ in range(max_iter):
        step = np.linalg.solve(moments.jacobian(beta), g)
        if np.max(np.abs(step)) <= 1e-12 * (1.0 + np.max(np.abs(beta))):
            return beta + step  # quadratic convergence: this step is at rounding level
        t = 1.0
        while True:  # backtrack on ||g||: the DSL moment is not the gradient of a concave loss
            new_g = moments.mean_moment(beta + t * step)
            if np.linalg.norm(new_g) < np.linalg.norm(g):
                break
            t /= 2
            if t < 1e-10:  # no decrease possible: fine only if g is already rounding noise
                if np.linalg.norm(g) <= 1e-12 * max(g_start, 1.0):
                    return beta
                break
        beta, g = beta + t * step, new_g
    raise RuntimeError(
        f"DSL estimating equations did not converge in {max_iter} Newton steps "
        f"(|mean moment| = {np.max(np.abs(g)):.2e}); with model='logit' the pseudo-outcomes "
        "may separate the data: check the formula or use model='lm'"
    )


def _r_lbfgsb(moments: _Moments) -> np.ndarray:
    """R's `optim(0, fn, method = "L-BFGS-B")` on ||mean m_dr||^2 after R's column scaling.

    R standardises each non-constant column by the mean and sd of Xp (or divides by the sd
    when there is no intercept), starts at 0, differences with step 1e-3, keeps 5 updates
    (lmm), stops when f falls by less than factr * eps = 1e7 * eps, and maps back."""
    Xp, Xo = moments.Xp, moments.Xo
    sd = Xp.std(axis=0, ddof=1)
    scaled = sd > 0
    has_intercept = bool(np.all(Xp[:, 0] == 1) and np.all(Xo[:, 0] == 1))
    center = np.where(scaled & has_intercept, Xp.mean(axis=0), 0.0)
    scale = np.where(scaled, sd, 1.0)
    m = _Moments(moments.model, (Xp - center) / scale, moments.yp, (Xo - center) / scale,
                 moments.yo, moments.lab, moments.w)

    def f(b):
        return float(np.sum(m.mean_moment(b) ** 2))

    def grad(b, h=1e-3):  # R's central differences (optim's ndeps)
        eye = np.eye(len(b)) * h
        return np.array([(f(b + e) - f(b - e)) / (2 * h) for e in eye])

    fit = minimize(f, np.zeros(Xp.shape[1]), jac=grad, method="L-BFGS-B",
                   options=dict(maxcor=5, ftol=1e7 * np.finfo(float).eps, gtol=0.0,
                                maxiter=5000, maxfun=10**9))
    beta = fit.x / scale  # back-transform: x_scaled'b = x'(b / scale) - center'(b / scale)
    if has_intercept:
        beta[0] -= center @ beta
    return beta


def cluster_sums(m: np.ndarray, cluster: np.ndarray | None) -> np.ndarray:
    """Sum the rows of m (N, p) within clusters (codes 0..G-1, shape (N,)) -> (G, p)."""
    if cluster is None:
        return m
    n_groups = int(cluster.max()) + 1
    return np.column_stack([np.bincount(cluster, weights=col, minlength=n_groups) for col in m.T])


def estimate(
    model: str,
    Xp: np.ndarray,
    yp: np.ndarray,
    Xo_lab: np.ndarray,
    yo_lab: np.ndarray,
    lab: np.ndarray,
    w_lab: np.ndarray,
    cluster: np.ndarray | None = None,
    solver: str = "newton",
) -> SplitEstimate:
    """Solve the DSL equations of one split and return its sandwich variance.

    Xp (N, p), yp (N,): design and outcome with g_hat substituted for predicted variables.
    Xo_lab (n, p), yo_lab (n,): the same built from expert labels, labeled rows only.
    lab (n,): row indices of the labeled rows in Xp; w_lab (n,): R / pi on those rows.
    cluster (N,) int codes or None (each row its own cluster).
    Variance: V = J^-1 Omega J^-T / N with Omega = (1/N) sum_c s_c s_c^T, s_c the cluster
    sum of m_dr (HC0-type: no G/(G-1) factor, as in R).
    solver: "newton" (exact root) or "r-lbfgsb" (R's early-stopping optimiser, replayed).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    moments = _Moments(model, Xp, yp, Xo_lab, yo_lab, lab, w_lab)
    beta = _newton(moments, Xp.shape[1]) if solver == "newton" else _r_lbfgsb(moments)
    J = moments.jacobian(beta)
    s = cluster_sums(moments.row_moments(beta), cluster)
    meat = s.T @ s / moments.n_rows
    J_inv = np.linalg.inv(J)
    vcov = J_inv @ meat @ J_inv.T / moments.n_rows
    vcov = (vcov + vcov.T) / 2
    max_abs = float(np.max(np.abs(moments.mean_moment(beta))))
    return SplitEstimate(beta=beta, vcov=vcov, jacobian=J, meat=meat, max_abs_moment=max_abs)
