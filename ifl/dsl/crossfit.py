"""Cross-fitted predictions g_hat: K folds over clusters, one learner per fold and predicted variable.

As in the R package: folds are balanced over clusters (each cluster's rows share a fold),
not stratified by labeling; fold k's learner is trained on the labeled rows outside fold k and
predicts every row of fold k, labeled or not. Unlike R, each sample split draws fresh folds
(R resets its RNG before every fit, so its 10 splits are identical).

Cost is O(N) per split plus the learner: each fold predicts only its distinct learner-input
patterns (U of them), then looks the answers up per row.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> assign_folds(np.arange(7), 3, rng).tolist()   # counts 3, 2, 2 in a random order
[2, 1, 0, 0, 2, 0, 1]
"""
from __future__ import annotations

import numpy as np

from .inputs import Prepared
from .learners import make_learner


def assign_folds(cluster: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold (0..K-1) of each row (N,), given cluster codes (N,) 0..G-1.

    R: `sample(c(rep(1:K, each = floor(G/K)), seq_len(G %% K)))`, i.e. a random permutation
    of balanced fold labels over the G clusters, looked up per row."""
    n_clusters = int(cluster.max()) + 1
    if n_clusters < n_folds:
        raise ValueError(f"cross_fit = {n_folds} folds need at least {n_folds} clusters, "
                         f"got {n_clusters}")
    fold_of_cluster = rng.permutation(np.arange(n_clusters) % n_folds)
    return fold_of_cluster[cluster]


def cross_fit(prep: Prepared, fold: np.ndarray, n_folds: int, learner, random_state: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """g_hat (N, V) for every row and predicted variable, and the out-of-fold RMSE (V,) on
    labeled rows, averaged over folds as R's `RMSE` is."""
    n_rows, n_vars = prep.labels.shape
    is_lab = np.zeros(n_rows, dtype=bool)
    is_lab[prep.lab] = True
    n_patterns = len(prep.pattern_rows)
    g_hat = np.empty((n_rows, n_vars))
    rmse = np.zeros(n_vars)
    for k in range(n_folds):
        test = fold == k
        train = is_lab & ~test
        if train.sum() < 2:
            raise ValueError(f"fold {k + 1} of {n_folds} leaves {int(train.sum())} labeled rows to "
                             "train on; lower cross_fit or label more rows")
        # Predict each distinct input pattern of the fold once, then broadcast to its rows.
        test_patterns = np.flatnonzero(np.bincount(prep.pattern[test], minlength=n_patterns))
        X_test = prep.features[prep.pattern_rows[test_patterns]]
        lookup = np.empty(n_patterns)
        for j in range(n_vars):
            g = make_learner(learner, random_state).fit(prep.features[train], prep.labels[train, j])
            lookup[test_patterns] = np.ravel(g.predict(X_test))  # some learners give (U, 1)
            g_hat[test, j] = lookup[prep.pattern[test]]
            test_lab = test & is_lab
            if test_lab.any():
                err = prep.labels[test_lab, j] - g_hat[test_lab, j]
                rmse[j] += np.sqrt(np.mean(err**2)) / n_folds
    return g_hat, rmse
