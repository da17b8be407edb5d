"""Combine sample splits (the DML median rule) and present the estimate.

With S splits giving beta_s (p,) and V_s (p, p) (Chernozhukov et al. 2018, as in R's dsl):
    beta = median_s beta_s
    V    = elementwise median_s [V_s + (beta_s - beta)(beta_s - beta)^T], symmetrised,
           projected to the nearest positive-definite matrix with the same diagonal if needed
    se   = sqrt(diag V) = sqrt(median_s [se_s^2 + (beta_s - beta)^2])

>>> import numpy as np
>>> b, V = combine_splits(np.array([[1.0], [2.0], [4.0]]), np.array([[[1.0]], [[1.0]], [[1.0]]]))
>>> b.tolist(), V.tolist()   # median 2; median of 1 + (1, 0, 4)
([2.0], [[2.0]])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm


def nearest_pd_keep_diag(V: np.ndarray, eig_floor: float = 1e-8, max_iter: int = 100) -> np.ndarray:
    """Higham's (2002) alternating projections with Dykstra's correction, keeping diag(V);
    what R's `Matrix::nearPD(V, keepDiag = TRUE)` computes (R's dsl then keeps the wrong
    part of nearPD's result; we keep the matrix)."""
    diag = np.diag(V).copy()
    Y, correction = V.copy(), np.zeros_like(V)
    for _ in range(max_iter):
        R = Y - correction
        w, Q = np.linalg.eigh(R)
        X = (Q * np.maximum(w, eig_floor * max(w.max(), 0.0))) @ Q.T
        correction = X - R
        Y_old, Y = Y, X.copy()
        np.fill_diagonal(Y, diag)
        if np.linalg.norm(Y - Y_old) <= 1e-12 * np.linalg.norm(Y):
            break
    return (Y + Y.T) / 2


def combine_splits(betas: np.ndarray, vcovs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """betas (S, p), vcovs (S, p, p) -> beta (p,), V (p, p) by the median rule above."""
    beta = np.median(betas, axis=0)
    dev = betas - beta
    V = np.median(vcovs + dev[:, :, None] * dev[:, None, :], axis=0)
    V = (V + V.T) / 2
    if np.linalg.eigvalsh(V).min() <= 0:  # a median of PD matrices need not be PD
        V = nearest_pd_keep_diag(V)
    return beta, V


@dataclass(frozen=True)
class DSLResult:
    """Output of `ifl.dsl.dsl`. Series/frames are indexed by the formula's term names.

    coef, se: (p,) Series. vcov: (p, p) DataFrame. split_coef, split_se: (S, p) per split.
    rmse: (V, S) out-of-fold RMSE of g on labeled rows, per predicted variable and split.
    """

    coef: pd.Series
    se: pd.Series
    vcov: pd.DataFrame
    model: str
    formula: str
    n_obs: int
    n_labeled: int
    split_coef: pd.DataFrame
    split_se: pd.DataFrame
    rmse: pd.DataFrame

    def conf_int(self, level: float = 0.95) -> pd.DataFrame:
        """Normal-approximation CI, columns "lower", "upper" (R's summary uses the same)."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        half = norm.ppf(0.5 + level / 2) * self.se
        return pd.DataFrame({"lower": self.coef - half, "upper": self.coef + half})

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Table of estimate, se, z, two-sided p-value and CI per term.

        Note: the R package prints a ONE-sided p-value, 1 - pnorm(|z|), under "p value";
        ours is the conventional two-sided 2 * (1 - pnorm(|z|)), twice R's.
        """
        z = self.coef / self.se
        table = pd.DataFrame({"estimate": self.coef, "se": self.se, "z": z,
                              "p_value": 2 * norm.sf(np.abs(z))})
        ci = self.conf_int(level)
        pct = f"{100 * level:g}%"
        table[f"ci_lower_{pct}"], table[f"ci_upper_{pct}"] = ci["lower"], ci["upper"]
        return table

    def __str__(self) -> str:
        head = (f"DSL {self.model}: {self.formula}\n"
                f"{self.n_obs} rows, {self.n_labeled} labeled, {self.split_coef.shape[0]} "
                f"sample split(s); p-values two-sided\n")
        return head + self.summary().to_string(float_format=lambda x: f"{x:.4g}")
