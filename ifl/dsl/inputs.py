"""Check a `dsl()` call's inputs and turn the data frame into the arrays the estimator uses.

Everything here is O(N): one pass of hashing for clusters and learner-input patterns, one
formulaic model matrix. The R package instead indexes folds with `which()` per cluster,
which is O(N^2) and dominates its run time at the paper's 730k rows.

Differences from R, on purpose:
- A missing value in any input other than a predicted variable is an error naming the column;
  R silently drops such rows (listwise deletion), which changes N and the sample.
- With an explicit `labeled` column, predicted-variable values in unlabeled rows are ignored
  (handy in simulations that know the truth everywhere); R stops with an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import Formula, ModelSpecs, model_matrix
from scipy.linalg import qr


@dataclass(frozen=True)
class Prepared:
    """A validated problem. N rows, n labeled, V predicted variables, q learner inputs."""

    spec: ModelSpecs  # formulaic specs of the formula's two sides (column coding fixed once)
    frame: pd.DataFrame  # (N, formula variables): the columns the formula needs
    predicted_var: list[str]
    labels: np.ndarray  # (N, V) expert labels, NaN where unlabeled
    lab: np.ndarray  # (n,) row indices of labeled rows
    pi: np.ndarray  # (N,) sampling probabilities after R's rescaling to mean n / N
    cluster: np.ndarray | None  # (N,) codes 0..G-1, or None: every row its own cluster
    features: np.ndarray  # (N, q) learner inputs, categoricals one-hot coded
    pattern: np.ndarray  # (N,) id of each row's distinct learner-input row
    pattern_rows: np.ndarray  # (U,) one row index per distinct pattern
    Xo_lab: np.ndarray  # (n, p) design from the expert labels, labeled rows
    yo_lab: np.ndarray  # (n,) outcome from the expert labels, labeled rows
    terms: list[str]  # p column names, e.g. "Intercept", "image", "image:llm[T.b]"
    outcome: str
    fixed_X: np.ndarray | None  # (N, p) design when no predicted variable is a regressor
    fixed_y: np.ndarray | None  # (N,) outcome when the outcome is not predicted

    @property
    def n_rows(self) -> int:
        return self.frame.shape[0]


def _as_list(cols, what: str) -> list[str]:
    if cols is None:
        return []
    cols = [cols] if isinstance(cols, str) else list(cols)
    if not all(isinstance(c, str) for c in cols):
        raise TypeError(f"{what} must be a column name or a list of column names, got {cols!r}")
    return cols


def _require_columns(data: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise KeyError(f"{what} column(s) {missing} not in data (columns: {list(data.columns)})")


def _require_complete(data: pd.DataFrame, cols: list[str], what: str) -> None:
    for c in cols:
        n_na = int(data[c].isna().sum())
        if n_na:
            raise ValueError(
                f"{what} column {c!r} has {n_na} missing value(s); drop or impute those rows "
                "first (the R package drops them silently)"
            )


def _learner_inputs(data: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """(N, q) float matrix: numeric and bool columns as they are, others as R's model.matrix
    codes them for the learner: treatment dummies, the first (sorted) level dropped. The number
    of columns sets grf's mtry, so the learner sees what R's sees. Coded once on all rows, so
    every fold sees the same columns (R codes train and test separately, which breaks when a
    level is missing from a fold)."""
    parts = []
    for c in cols:
        col = data[c]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            parts.append(col.to_numpy(dtype=float)[:, None])
        else:
            parts.append(pd.get_dummies(col, dtype=float, drop_first=True).to_numpy())
    features = np.hstack(parts)
    if features.shape[1] == 0:
        raise ValueError(f"learner input column(s) {cols} are constant: the learner has nothing "
                         "to learn from")
    return features


def _distinct_rows(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash the rows of features (N, q): pattern id per row (N,), one row per pattern (U,).
    The learner then predicts each distinct pattern once: with a binary surrogate and a few
    design factors, U is tiny even at N = 730k."""
    pattern = pd.DataFrame(features).groupby(list(range(features.shape[1])), sort=False).ngroup()
    pattern = pattern.to_numpy()
    _, first = np.unique(pattern, return_index=True)
    return pattern, first


def _require_full_rank(X: np.ndarray, terms: list[str], formula: str) -> None:
    """Collinear terms make the estimating equations singular: name them up front.
    As R's lm does, a column is flagged when it is (nearly) a combination of earlier ones:
    the diagonal of an unpivoted QR's R is then ~0 relative to the column's norm."""
    r = qr(X, mode="r")[0]
    norms = np.linalg.norm(X, axis=0)
    dependent = np.abs(np.diag(r)) <= 1e-9 * np.maximum(norms, np.finfo(float).tiny)
    if dependent.any():
        dropped = [t for t, d in zip(terms, dependent) if d]
        raise ValueError(f"the design of {formula!r} is rank deficient: term(s) {dropped} are "
                         "collinear with earlier terms (e.g. a constant column or a factor level "
                         "never seen); drop them from the formula")


def _labeled_rows(data, predicted_var, labeled) -> np.ndarray:
    """(N,) bool: which rows carry expert labels."""
    observed = data[predicted_var].notna().to_numpy()
    if labeled is None:
        partial = observed.any(axis=1) & ~observed.all(axis=1)
        if partial.any():
            raise ValueError(
                f"{int(partial.sum())} row(s) have some but not all of {predicted_var} coded; "
                "code all predicted variables in a labeled row, or pass `labeled`"
            )
        return observed.all(axis=1)
    _require_complete(data, [labeled], "labeled")
    flag = data[labeled].to_numpy()
    if not np.isin(flag, [0, 1]).all():
        raise ValueError(f"labeled column {labeled!r} must hold only 0/1 (or False/True)")
    flag = flag.astype(bool)
    gaps = flag & ~observed.all(axis=1)
    if gaps.any():
        raise ValueError(
            f"{int(gaps.sum())} labeled row(s) (by column {labeled!r}) miss a value in {predicted_var}"
        )
    return flag


def _sample_prob(data, sample_prob, is_lab) -> np.ndarray:
    """(N,) pi rescaled as R does: pi * (n / N) / mean(pi), so mean(pi) = n / N."""
    share = is_lab.mean()
    if sample_prob is None:
        return np.full(is_lab.shape, share)
    _require_complete(data, [sample_prob], "sample_prob")
    pi = data[sample_prob].to_numpy(dtype=float)
    bad = (pi <= 0) | (pi > 1)
    if bad.any():
        raise ValueError(
            f"sample_prob column {sample_prob!r} must lie in (0, 1]; {int(bad.sum())} value(s) "
            f"do not, e.g. {pi[bad][0]!r}"
        )
    return pi * share / pi.mean()


def prepare(data, formula, predicted_var, prediction, *, feature=None, labeled=None,
            sample_prob=None, cluster=None) -> Prepared:
    """Validate a `dsl()` call and build its arrays; see `ifl.dsl.dsl` for the arguments."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    predicted_var = _as_list(predicted_var, "predicted_var")
    prediction, feature = _as_list(prediction, "prediction"), _as_list(feature, "feature")
    if not predicted_var:
        raise ValueError("predicted_var must name at least one expert-coded column")
    _require_columns(data, predicted_var, "predicted_var")
    _require_columns(data, prediction, "prediction")
    _require_columns(data, feature, "feature")
    for what, col in (("labeled", labeled), ("sample_prob", sample_prob), ("cluster", cluster)):
        if col is not None:
            _require_columns(data, [col], what)
    inputs = [c for c in dict.fromkeys(prediction + feature) if c not in predicted_var]
    if not inputs:
        raise ValueError("give `prediction` and/or `feature` columns (other than predicted_var) "
                         "for the supervised learner")
    for v in predicted_var:
        if not pd.api.types.is_numeric_dtype(data[v]) and not pd.api.types.is_bool_dtype(data[v]):
            raise TypeError(f"predicted_var column {v!r} must be numeric (0/1 for a binary code)")

    parsed = Formula(formula)
    if not parsed.lhs.required_variables:
        raise ValueError(f"formula {formula!r} needs an outcome on the left of '~'")
    formula_vars = sorted(parsed.required_variables)
    missing = [v for v in formula_vars if v not in data.columns]
    if missing:
        raise KeyError(f"formula term(s) {missing} not in data (columns: {list(data.columns)})")
    if not set(predicted_var) & set(formula_vars):
        raise ValueError(f"none of predicted_var {predicted_var} appears in formula {formula!r}")
    _require_complete(data, [c for c in prediction if c not in predicted_var], "prediction")
    _require_complete(data, [c for c in feature if c not in predicted_var], "feature")
    _require_complete(data, [v for v in formula_vars if v not in predicted_var], "formula")
    if cluster is not None:
        _require_complete(data, [cluster], "cluster")

    is_lab = _labeled_rows(data, predicted_var, labeled)
    if not is_lab.any():
        raise ValueError(f"no labeled rows: every row misses {predicted_var}; DSL needs expert "
                         "labels on a random sample of rows")
    pi = _sample_prob(data, sample_prob, is_lab)
    lab = np.flatnonzero(is_lab)
    labels = data[predicted_var].to_numpy(dtype=float, copy=True)
    labels[~is_lab] = np.nan

    # The column coding (levels, stateful transforms) is fixed once on all rows; unlabeled
    # predicted values are filled with the labeled mean only so that coding sees numbers.
    frame = data[formula_vars].reset_index(drop=True)
    coding = frame.copy()
    for j, v in enumerate(predicted_var):
        if v in coding:
            coding[v] = np.where(is_lab, labels[:, j], np.nanmean(labels[:, j]))
    spec = model_matrix(parsed, coding, na_action="raise").model_spec
    if len(spec.lhs.column_names) != 1:
        raise ValueError(f"the outcome of {formula!r} must be one numeric column, "
                         f"got {list(spec.lhs.column_names)}")
    labeled_frame = coding.iloc[lab]
    Xo_lab = spec.rhs.get_model_matrix(labeled_frame).to_numpy(dtype=float)
    yo_lab = spec.lhs.get_model_matrix(labeled_frame).to_numpy(dtype=float)[:, 0]

    X_coding = spec.rhs.get_model_matrix(coding).to_numpy(dtype=float)
    _require_full_rank(X_coding, list(spec.rhs.column_names), formula)
    # Sides of the formula free of predicted variables are the same in every split: build once.
    fixed_X = fixed_y = None
    if not set(predicted_var) & set(parsed.rhs.required_variables):
        fixed_X = X_coding
    if not set(predicted_var) & set(parsed.lhs.required_variables):
        fixed_y = spec.lhs.get_model_matrix(coding).to_numpy(dtype=float)[:, 0]

    codes = None if cluster is None else pd.factorize(data[cluster])[0]
    features = _learner_inputs(data, inputs)
    pattern, pattern_rows = _distinct_rows(features)
    return Prepared(
        spec=spec, frame=frame, predicted_var=predicted_var, labels=labels, lab=lab, pi=pi,
        cluster=codes, features=features, pattern=pattern, pattern_rows=pattern_rows,
        Xo_lab=Xo_lab, yo_lab=yo_lab, terms=list(spec.rhs.column_names),
        outcome=spec.lhs.column_names[0], fixed_X=fixed_X, fixed_y=fixed_y,
    )


def design_with(prep: Prepared, g_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Xp (N, p) and yp (N,): the formula's design with g_hat (N, V) substituted for every
    predicted variable in every row, labeled rows included (as R does)."""
    frame = prep.frame.copy()
    for j, v in enumerate(prep.predicted_var):
        if v in frame:
            frame[v] = g_hat[:, j]
    Xp = prep.fixed_X
    if Xp is None:
        Xp = prep.spec.rhs.get_model_matrix(frame).to_numpy(dtype=float)
    yp = prep.fixed_y
    if yp is None:
        yp = prep.spec.lhs.get_model_matrix(frame).to_numpy(dtype=float)[:, 0]
    return Xp, yp
