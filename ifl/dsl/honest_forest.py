"""`HonestForest`: grf's honest regression forest (Athey, Tibshirani & Wager 2019) on
scikit-learn's CART trees, the default learner g of `ifl.dsl` (the R package `dsl` fits
`grf::regression_forest` with grf's defaults).

Why not a library: econml's port (`econml.grf.RegressionForest`) installs on this stack but pulls
shap, lightgbm and sparse, and grf itself is R/C++ only. Honesty is a few lines on top of
scikit-learn's trees, so the forest is built here, following grf's C++ (core/src/tree/
TreeTrainer.cpp, Tree.cpp, splitting/RegressionSplittingRule.cpp) where scikit-learn allows.

Per tree, as grf does:
- subsample `sample_fraction` (0.5) of the rows without replacement (grf's ci.group.size = 2 draws
  a half and then a double-rate half of it; each tree's marginal subsample is the same);
- honesty (`honesty.fraction` 0.5): the subsample is cut in two halves; the tree's splits are
  chosen on the first, its leaf values are the means of the second half's outcomes;
- `honesty.prune.leaves`: a split with a child that holds no second-half row is removed, and rows
  follow the other child (`Tree::prune_node` promotes the non-empty child);
- nodes of <= `min_node_size` (5) rows are not split (grf's `split_node_internal`).
The forest predicts the mean of the trees' leaf means, which equals grf's weighted-neighbour
prediction for regression.

Not matched, because scikit-learn's splitter fixes these per forest, not per node:
- grf draws each node's number of candidate variables from Poisson(mtry), mtry =
  min(ceil(sqrt(p) + 20), p), so even with mtry = p a node often sees a random subset. Here the
  Poisson draw is made once per tree (`max_features` of that tree): the same randomisation in
  distribution over trees, not within a tree.
- grf's imbalance rule `alpha` (0.05) asks each child of a node of n rows to hold ceil(alpha n)
  rows; scikit-learn's `min_samples_leaf` is one number. It is set to ceil(alpha m) for the m
  rows a tree's structure half has, i.e. grf's rule at the root, and looser below. With the 0/1
  design factors of IFL regressions the candidate splits are the same either way.
- 500 trees instead of grf's 2000: grf's extra trees serve its variance estimates, which DSL does
  not use, and the 10 sample splits average the forests' noise further (not yet measured here).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.integers(0, 2, (400, 2)).astype(float); y = X[:, 0] + rng.normal(0, 0.1, 400)
>>> g = HonestForest(n_estimators=50, random_state=0).fit(X, y)
>>> np.round(g.predict(np.array([[0.0, 0.0], [1.0, 1.0]])), 1).tolist()
[0.0, 1.0]
"""
from __future__ import annotations

import math

import numpy as np
from sklearn import config_context
from sklearn.tree import DecisionTreeRegressor


def grf_mtry(n_features: int) -> int:
    """grf's default mtry: min(ceil(sqrt(p) + 20), p)."""
    return min(math.ceil(math.sqrt(n_features) + 20), n_features)


class HonestForest:
    """Honest regression forest with grf's defaults; see the module docstring."""

    def __init__(self, n_estimators: int = 500, sample_fraction: float = 0.5,
                 honesty_fraction: float = 0.5, min_node_size: int = 5, alpha: float = 0.05,
                 random_state: int | None = None):
        self.n_estimators, self.sample_fraction = n_estimators, sample_fraction
        self.honesty_fraction, self.min_node_size = honesty_fraction, min_node_size
        self.alpha, self.random_state = alpha, random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> "HonestForest":
        X = np.ascontiguousarray(X, dtype=np.float32)  # scikit-learn's tree dtype
        y = np.asarray(y, dtype=float)
        n, p = X.shape
        n_sub = int(self.sample_fraction * n)
        n_split = int(self.honesty_fraction * n_sub)
        if n_split < 1 or n_sub - n_split < 1:
            raise ValueError(f"HonestForest needs more rows: {n} give a subsample of {n_sub} "
                             "that honesty cannot halve")
        rng = np.random.default_rng(self.random_state)
        mtry = grf_mtry(p)
        min_leaf = max(1, math.ceil(self.alpha * n_split))
        # One RandomState shared by all trees: seeding a fresh one per tree costs more than a fit.
        tree_rng = np.random.RandomState(int(rng.integers(2**31 - 1)))
        draw = dict(n=n, n_sub=n_sub, n_split=n_split, mtry=mtry, p=p, min_leaf=min_leaf)
        with config_context(skip_parameter_validation=True):  # the per-fit checks dominate
            trees = [self._grow(X, y, rng, tree_rng, **draw) for _ in range(self.n_estimators)]
        self.nodes_, self.roots_ = _stack(trees)
        return self

    def _grow(self, X, y, rng, tree_rng, *, n, n_sub, n_split, mtry, p, min_leaf):
        """One honest tree: structure from one half of a subsample, leaf values from the other."""
        sub = rng.choice(n, n_sub, replace=False)
        grow, fill = sub[:n_split], sub[n_split:]
        tree = DecisionTreeRegressor(
            max_features=int(np.clip(rng.poisson(mtry), 1, p)),  # grf: Poisson(mtry), per node
            min_samples_split=self.min_node_size + 1,
            min_samples_leaf=min_leaf,
            random_state=tree_rng,
        ).fit(X[grow], y[grow], check_input=False)
        return _honest_tree(tree, X[fill], y[fill])

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32).astype(float)  # as the trees saw it, then compared
        left, right, feature, threshold, value = self.nodes_
        node = np.repeat(self.roots_[:, None], X.shape[0], axis=1)  # (B, U): node per tree, row
        rows = np.broadcast_to(np.arange(X.shape[0]), node.shape)
        while True:
            inner = left[node] >= 0
            if not inner.any():
                break
            go_left = X[rows, np.maximum(feature[node], 0)] <= threshold[node]
            node = np.where(inner, np.where(go_left, left[node], right[node]), node)
        return value[node].mean(axis=0)


def _honest_tree(tree: DecisionTreeRegressor, X_fill: np.ndarray, y_fill: np.ndarray):
    """One tree's node arrays with honest leaf values and grf's pruning of empty honest leaves.

    Pruning is done by redirection: a child whose subtree holds no honest row is replaced by
    its sibling, so the usual descent ends in the pruned tree's leaf. (grf prunes bottom-up and
    promotes the non-empty child, which routes every row the same way.)"""
    t = tree.tree_
    left, right = t.children_left.copy(), t.children_right.copy()
    inner = left >= 0
    leaf = t.apply(X_fill)  # the low-level apply: the estimator's checks cost more than the walk
    count = np.bincount(leaf, minlength=t.node_count).astype(float)
    total = np.bincount(leaf, weights=y_fill, minlength=t.node_count)
    parent = np.full(t.node_count, -1)
    parent[left[inner]] = parent[right[inner]] = np.flatnonzero(inner)
    depth = np.zeros(t.node_count, dtype=int)
    for node in np.flatnonzero(parent >= 0):  # preorder ids: a parent's depth is already set
        depth[node] = depth[parent[node]] + 1
    for d in range(depth.max(), 0, -1):  # subtree sums, deepest level first
        at = depth == d
        np.add.at(count, parent[at], count[at])
        np.add.at(total, parent[at], total[at])
    empty_left = inner & (count[np.maximum(left, 0)] == 0)
    empty_right = inner & (count[np.maximum(right, 0)] == 0)
    left = np.where(empty_left & ~empty_right, right, left)
    right = np.where(empty_right & ~empty_left, left, right)
    value = np.divide(total, count, out=np.zeros(t.node_count), where=count > 0)
    return left, right, t.feature.copy(), t.threshold.copy(), value


def _stack(trees):
    """Concatenate the trees' node arrays (child indices shifted), so that one vectorised descent
    walks every tree at once."""
    offsets = np.cumsum([0] + [len(t[0]) for t in trees[:-1]])
    left = np.concatenate([np.where(t[0] >= 0, t[0] + o, -1) for t, o in zip(trees, offsets)])
    right = np.concatenate([np.where(t[1] >= 0, t[1] + o, -1) for t, o in zip(trees, offsets)])
    return (left, right, np.concatenate([t[2] for t in trees]),
            np.concatenate([t[3] for t in trees]), np.concatenate([t[4] for t in trees])), offsets
