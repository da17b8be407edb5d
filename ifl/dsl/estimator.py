"""`dsl()`: design-based supervised learning (Egami et al. 2023), API after the R package `dsl`."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import crossfit  # a module: dsl()'s argument `cross_fit` (R's name) shadows names
from .inputs import Prepared, design_with, prepare
from .moments import MODELS, SOLVERS, SplitEstimate, estimate
from .result import DSLResult, combine_splits


def estimate_split(prep: Prepared, g_hat: np.ndarray, model: str, solver: str = "newton"
                   ) -> SplitEstimate:
    """Solve one split's DSL equations given the cross-fitted g_hat (N, V)."""
    Xp, yp = design_with(prep, g_hat)
    w_lab = 1.0 / prep.pi[prep.lab]  # w = R / pi, nonzero on labeled rows only
    return estimate(model, Xp, yp, prep.Xo_lab, prep.yo_lab, prep.lab, w_lab, prep.cluster,
                    solver=solver)


def dsl(
    data: pd.DataFrame,
    formula: str,
    predicted_var: str | list[str],
    prediction: str | list[str] | None,
    *,
    model: str = "lm",
    feature: list[str] | None = None,
    labeled: str | None = None,
    sample_prob: str | None = None,
    cluster: str | None = None,
    cross_fit: int = 5,
    sample_split: int = 10,
    seed: int = 1234,
    learner="forest",
    solver: str = "newton",
) -> DSLResult:
    """Regression on expert-coded variables, debiased with surrogate predictions.

    data: one row per document/response (N rows). Predicted variables are NaN where a row
        has no expert label.
    formula: the downstream regression, e.g. "fidelity ~ image + image:llm" (formulaic
        syntax, close to R's: factors via C(x), `- 1` drops the intercept).
    predicted_var: expert-coded column(s), the outcome and/or regressors of `formula`.
    prediction: surrogate column(s) Q, e.g. GlotLID's fidelity. The learner g sees only
        `prediction` and `feature`; list the formula's regressors in `feature` if g should
        use them (the R package does not add them either).
    model: "lm" (linear) or "logit".
    labeled: optional 0/1 column; default: rows with every predicted_var present.
    sample_prob: optional column of labeling probabilities pi in (0, 1]; default n / N.
        Rescaled like R to mean n / N (a no-op for fixed-size stratified samples).
    cluster: optional column; SEs become cluster-robust and folds are drawn over clusters.
    cross_fit, sample_split: folds K and repeated fold draws S; S results are combined by
        the median rule. seed: seeds the folds and the learners.
    learner: "forest" (default), "linear", "logistic" or a scikit-learn estimator.
    solver: "newton" (default) solves the estimating equations exactly; "r-lbfgsb" replays
        the R package's optimiser, which stops early (up to ~1e-3 SE away), to match R.

    Returns a `DSLResult` with `coef`, `se`, `vcov`, `conf_int(level)` and `summary()`.
    Its p-values are two-sided; the R package prints a one-sided p (half of ours).

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0); n = 400
    >>> df = pd.DataFrame({"x": rng.integers(0, 2, n)})
    >>> df["y"] = (rng.random(n) < 0.3 + 0.4 * df.x).astype(float)
    >>> df["y_hat"] = np.where(rng.random(n) < 0.8, df.y, 1 - df.y)   # a noisy surrogate
    >>> df.loc[100:, "y"] = np.nan                                      # 100 rows labeled
    >>> fit = dsl(df, "y ~ x", "y", "y_hat", feature=["x"], learner="linear", sample_split=2)
    >>> list(fit.coef.index)
    ['Intercept', 'x']
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS} (R's 'felm' is not ported), got {model!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if int(cross_fit) != cross_fit or cross_fit < 2:
        raise ValueError(f"cross_fit must be an integer >= 2, got {cross_fit!r}")
    if int(sample_split) != sample_split or sample_split < 1:
        raise ValueError(f"sample_split must be an integer >= 1, got {sample_split!r}")
    prep = prepare(data, formula, predicted_var, prediction, feature=feature, labeled=labeled,
                   sample_prob=sample_prob, cluster=cluster)
    if model == "logit" and not ((prep.yo_lab >= 0) & (prep.yo_lab <= 1)).all():
        raise ValueError(f"model='logit' needs an outcome in [0, 1]; {prep.outcome!r} is not")

    rng = np.random.default_rng(seed)
    cluster_codes = prep.cluster if prep.cluster is not None else np.arange(prep.n_rows)
    estimates, rmse = [], []
    for _ in range(sample_split):
        fold = crossfit.assign_folds(cluster_codes, cross_fit, rng)
        learner_seed = int(rng.integers(2**31 - 1))
        g_hat, split_rmse = crossfit.cross_fit(prep, fold, cross_fit, learner, learner_seed)
        estimates.append(estimate_split(prep, g_hat, model, solver))
        rmse.append(split_rmse)
    return summarise(prep, estimates, np.array(rmse).T, model, formula)


def summarise(prep: Prepared, estimates: list[SplitEstimate], rmse: np.ndarray, model: str,
              formula: str) -> DSLResult:
    """Combine S split estimates by the median rule into a DSLResult; rmse is (V, S)."""
    betas = np.array([e.beta for e in estimates])  # (S, p)
    vcovs = np.array([e.vcov for e in estimates])  # (S, p, p)
    beta, V = combine_splits(betas, vcovs)
    terms = prep.terms
    splits = [f"split_{s + 1}" for s in range(len(estimates))]
    return DSLResult(
        coef=pd.Series(beta, index=terms, name="estimate"),
        se=pd.Series(np.sqrt(np.diag(V)), index=terms, name="se"),
        vcov=pd.DataFrame(V, index=terms, columns=terms),
        model=model,
        formula=formula,
        n_obs=prep.n_rows,
        n_labeled=len(prep.lab),
        split_coef=pd.DataFrame(betas, index=splits, columns=terms),
        split_se=pd.DataFrame(np.sqrt(np.diagonal(vcovs, axis1=1, axis2=2)), index=splits,
                              columns=terms),
        rmse=pd.DataFrame(rmse, index=prep.predicted_var, columns=splits),
    )

