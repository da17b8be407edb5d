"""Supervised learners g for DSL's cross-fitting: anything with fit(X, y) and predict(X).

DSL stays valid (consistent, with honest CIs) for any g: a better g only narrows the CI.
The learner still moves the estimate by a fraction of an SE, so the default follows the R
package's learner, `grf::regression_forest(X, Y, seed = seed)` with grf's defaults
(`dsl` 0.1.0, R/estimate_g.R; X = the model matrix of `prediction` + `feature` without
intercept, factors as treatment dummies, as `ifl.dsl.inputs` builds it).

- "forest" (default): `HonestForest`, grf's honest regression forest rebuilt on scikit-learn's
  CART trees (see its docstring for what matches grf and what does not).
- "forest-sklearn": scikit-learn's random forest with grf-like sizes (half-samples, leaves of
  >= 5 rows, grf's mtry) but no honesty; the default before `HonestForest`, kept for comparison.
- "linear": least squares on the learner inputs; fast, for simulations.
- "logistic": logistic regression, predicting probabilities; for a 0/1 predicted variable.
- a scikit-learn estimator: cloned for every fold; classifiers predict P(y = 1).

>>> import numpy as np
>>> X = np.array([[0.0], [0.0], [1.0], [1.0]]); y = np.array([0.0, 0.0, 1.0, 1.0])
>>> g = make_learner("linear", random_state=0).fit(X, y)
>>> np.round(g.predict(np.array([[0.5]])), 3).tolist()
[0.5]
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from .honest_forest import HonestForest, grf_mtry

LEARNERS = ("forest", "forest-sklearn", "linear", "logistic")


class ForestLearner:
    """scikit-learn's random forest sized like grf (half-samples, leaves >= 5, grf's mtry), without
    honesty; 100 trees; sklearn subsamples with replacement. The learner "forest-sklearn"."""

    def __init__(self, n_estimators: int = 100, min_samples_leaf: int = 5,
                 sample_fraction: float = 0.5, random_state: int | None = None):
        self.n_estimators, self.min_samples_leaf = n_estimators, min_samples_leaf
        self.sample_fraction, self.random_state = sample_fraction, random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ForestLearner":
        p = X.shape[1]
        self.forest_ = RandomForestRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=grf_mtry(p),
            max_samples=self.sample_fraction,  # grf's sample.fraction
            random_state=self.random_state,
            n_jobs=1,  # DSL is run many times; parallelise over fits, not trees
        ).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.forest_.predict(X)


class _ProbabilityOf1:
    """Adapts a scikit-learn classifier to predict P(y = 1), the conditional mean of a 0/1 y."""

    def __init__(self, classifier):
        self.classifier = classifier

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        if len(self.classes_) > 1:  # a fold whose labels are all equal predicts that value
            self.classifier.fit(X, y)
        return self

    def predict(self, X):
        if len(self.classes_) == 1:
            return np.full(X.shape[0], float(self.classes_[0]))
        return self.classifier.predict_proba(X)[:, list(self.classifier.classes_).index(1)]


def make_learner(learner, random_state: int):
    """A fresh, unfitted learner for one fold: a name in LEARNERS or a sklearn estimator."""
    if isinstance(learner, str):
        if learner == "forest":
            return HonestForest(random_state=random_state)
        if learner == "forest-sklearn":
            return ForestLearner(random_state=random_state)
        if learner == "linear":
            return LinearRegression()
        if learner == "logistic":
            return _ProbabilityOf1(LogisticRegression(C=1e4, max_iter=1000))
        raise ValueError(f"learner must be one of {LEARNERS} or a scikit-learn estimator, "
                         f"got {learner!r}")
    if not (hasattr(learner, "fit") and hasattr(learner, "predict")):
        raise TypeError(f"learner needs fit(X, y) and predict(X); got {type(learner).__name__}")
    fresh = clone(learner) if hasattr(learner, "get_params") else learner
    if hasattr(fresh, "get_params") and "random_state" in fresh.get_params():
        fresh.set_params(random_state=random_state)
    return _ProbabilityOf1(fresh) if is_classifier(fresh) else fresh
