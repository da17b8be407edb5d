"""Tests of ifl.dsl: reference values (statsmodels, the R package on PanChen), a coverage
simulation, and error paths. R's numbers live in tests/data/dsl/ (copied from the R run
described in panchen_r_reference.json); nothing here needs R."""
from __future__ import annotations

import doctest
import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from ifl.dsl import dsl
from ifl.dsl.estimator import estimate_split, summarise
from ifl.dsl.inputs import prepare
from ifl.dsl.result import nearest_pd_keep_diag

DATA = Path(__file__).parent / "data" / "dsl"
R_TERMS = {"(Intercept)": "Intercept"}  # R's intercept name -> formulaic's


@pytest.fixture(scope="module")
def panchen():
    return pd.read_csv(DATA / "panchen.csv")


@pytest.fixture(scope="module")
def r_ref():
    return json.loads((DATA / "panchen_r_reference.json").read_text())


def r_series(values: dict) -> pd.Series:
    return pd.Series(values).rename(index=lambda t: R_TERMS.get(t, t))


def r_g_hat(n_rows: int) -> np.ndarray:
    """R's cross-fitted g_hat (N, 1) in CSV row order (R stacks rows by fold)."""
    split = pd.read_csv(DATA / "panchen_r_split1.csv")
    g_hat = np.empty((n_rows, 1))
    g_hat[split["row"].to_numpy() - 1, 0] = split["g_hat_countyWrong"].to_numpy()
    return g_hat


def fully_labeled(n=400, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.integers(0, 2, n).astype(float),
                       "grp": rng.integers(0, 40, n)})
    df["y"] = 0.5 + df.x1 - 0.7 * df.x2 + rng.normal(size=n) * (1 + df.x2)  # heteroskedastic
    df["yb"] = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + df.x1 - df.x2)))).astype(float)
    df["y_hat"] = df.y + rng.normal(size=n)
    df["yb_hat"] = np.where(rng.random(n) < 0.9, df.yb, 1 - df.yb)
    return df


# --- every row labeled, pi = 1: DSL is the ordinary estimator with a sandwich SE ------------


@pytest.mark.parametrize("model", ["lm", "logit"])
@pytest.mark.parametrize("clustered", [False, True])
def test_fully_labeled_equals_statsmodels(model, clustered):
    df = fully_labeled()
    y = "y" if model == "lm" else "yb"
    fit = dsl(df, f"{y} ~ x1 + x2", y, f"{y}_hat", model=model, learner="linear",
              sample_split=2, cluster="grp" if clustered else None)
    X = sm.add_constant(df[["x1", "x2"]]).rename(columns={"const": "Intercept"})
    sm_model = sm.OLS(df[y], X) if model == "lm" else sm.Logit(df[y], X)
    cov = dict(cov_type="HC0")
    if clustered:  # R's cluster sandwich has no G/(G-1) small-sample factor
        cov = dict(cov_type="cluster", cov_kwds={"groups": df.grp, "use_correction": False})
    ref = sm_model.fit(**cov, **({} if model == "lm" else {"disp": 0, "tol": 1e-12}))
    np.testing.assert_allclose(fit.coef, ref.params, rtol=1e-8)
    np.testing.assert_allclose(fit.se, ref.bse, rtol=1e-6)
    np.testing.assert_allclose(fit.vcov, ref.cov_params(), rtol=1e-6, atol=1e-12)


# --- agreement with the R package on its PanChen example --------------------------------------


@pytest.mark.parametrize("model", ["lm", "logit"])
def test_r_g_hat_fed_reproduces_r(panchen, r_ref, model):
    """Given R's g_hat, replaying R's optimiser reproduces R's numbers; the exact root sits
    within R's optimiser tolerance of them (R stops at |mean moment| ~ 1e-6)."""
    prep = prepare(panchen, r_ref["formula"], r_ref["predicted_var"], r_ref["prediction"])
    assert prep.pi[0] == pytest.approx(r_ref["sample_prob_used"], rel=1e-12)
    g_hat = r_g_hat(prep.n_rows)
    r_coef, r_se = r_series(r_ref[model]["coefficients"]), r_series(r_ref[model]["standard_errors"])

    replay = estimate_split(prep, g_hat, model, solver="r-lbfgsb")
    result = summarise(prep, [replay] * 10, np.zeros((1, 10)), model, r_ref["formula"])
    np.testing.assert_allclose(result.coef[r_coef.index], r_coef, rtol=1e-6)
    np.testing.assert_allclose(result.se[r_se.index], r_se, rtol=1e-6)
    np.testing.assert_allclose(result.vcov.to_numpy(), r_ref[model]["vcov"], rtol=1e-6)
    # R prints the one-sided p; ours is two-sided, twice R's (where R's is not 0 from underflow)
    r_p = r_series(r_ref[model]["p_value_pkg_one_sided"])
    shown = r_p > 1e-300
    np.testing.assert_allclose(result.summary()["p_value"][r_p.index][shown], 2 * r_p[shown],
                               rtol=1e-5)

    exact = estimate_split(prep, g_hat, model)
    assert exact.max_abs_moment < 1e-14
    assert np.max(np.abs(exact.beta - r_coef.to_numpy()) / r_se.to_numpy()) < 2e-3
    np.testing.assert_allclose(np.sqrt(np.diag(exact.vcov)), r_se, rtol=2e-4)


@pytest.mark.parametrize("model", ["lm", "logit"])
def test_end_to_end_close_to_r(panchen, r_ref, model):
    """Own folds and forest: within 0.25 SE of R (seed/learner noise is ~0.05 SE)."""
    fit = dsl(panchen, r_ref["formula"], "countyWrong", "pred_countyWrong", model=model)
    r_coef, r_se = r_series(r_ref[model]["coefficients"]), r_series(r_ref[model]["standard_errors"])
    assert list(fit.coef.index) == list(r_coef.index)
    assert (np.abs(fit.coef - r_coef) / r_se).max() < 0.25
    np.testing.assert_allclose(fit.se, r_se, rtol=0.05)
    assert fit.split_coef.nunique().min() > 1  # unlike R's, our sample splits differ
    assert fit.n_labeled == 500 and fit.n_obs == 1412


# --- coverage when the surrogate errs on short texts -----------------------------------------

TRUE_EFFECT = -0.15


def simulate_ifl(rng, n=1000, n_lab=250):
    """Fidelity falls by 0.15 with an image; answers to images are shorter, and language ID
    misreads short answers as the wrong language, so the surrogate exaggerates the drop."""
    image = rng.integers(0, 2, n)
    short = rng.random(n) < 0.15 + 0.35 * image
    fidelity = (rng.random(n) < 0.85 + TRUE_EFFECT * image).astype(float)
    misread = rng.random(n) < np.where(short, 0.4, 0.03)
    df = pd.DataFrame({"fidelity": fidelity, "image": image, "short": short.astype(float),
                       "surrogate": np.where(misread, 0.0, fidelity)})
    df.loc[rng.permutation(n)[n_lab:], "fidelity"] = np.nan  # simple random sample labeled
    return df


def test_simulation_covers_truth_while_surrogate_is_biased():
    rng = np.random.default_rng(2024)
    n_reps = 400
    est, se, naive, naive_se = (np.empty(n_reps) for _ in range(4))
    for r in range(n_reps):
        df = simulate_ifl(rng)
        fit = dsl(df, "fidelity ~ image", "fidelity", "surrogate", feature=["image", "short"],
                  learner="linear", sample_split=1)
        est[r], se[r] = fit.coef["image"], fit.se["image"]
        ols = sm.OLS(df.surrogate, sm.add_constant(df.image)).fit(cov_type="HC0")
        naive[r], naive_se[r] = ols.params["image"], ols.bse["image"]
    coverage = np.mean(np.abs(est - TRUE_EFFECT) <= 1.959964 * se)
    assert 0.93 <= coverage <= 0.97
    mc_se = est.std() / np.sqrt(n_reps)
    assert abs(est.mean() - TRUE_EFFECT) < 3 * mc_se
    assert naive.mean() - TRUE_EFFECT < -0.05  # biased away from the truth ...
    assert np.mean(np.abs(naive - TRUE_EFFECT) <= 1.959964 * naive_se) < 0.5  # ... confidently


def test_sample_prob_scale_is_irrelevant_and_splits_are_seeded():
    """R rescales pi to mean n/N, so pi and 0.5 * pi give the same fit; same seed, same fit."""
    df = simulate_ifl(np.random.default_rng(1))
    df["pi"] = np.where(df.image == 1, 0.3, 0.2)
    kw = dict(feature=["image", "short"], learner="logistic", sample_split=3)
    a = dsl(df, "fidelity ~ image", "fidelity", "surrogate", sample_prob="pi", **kw)
    b = dsl(df.assign(pi=df.pi / 2), "fidelity ~ image", "fidelity", "surrogate",
            sample_prob="pi", **kw)
    pd.testing.assert_series_equal(a.coef, b.coef, rtol=1e-10)
    pd.testing.assert_series_equal(a.se, b.se, rtol=1e-10)
    ci = a.conf_int(0.9)
    np.testing.assert_allclose(ci["upper"] - a.coef, 1.6448536 * a.se, rtol=1e-6)


def test_nearest_pd_keeps_diagonal():
    V = np.array([[1.0, 0.9, 0.7], [0.9, 1.0, -0.9], [0.7, -0.9, 2.0]])  # indefinite
    assert np.linalg.eigvalsh(V).min() < 0
    fixed = nearest_pd_keep_diag(V)
    assert np.linalg.eigvalsh(fixed).min() > 0
    np.testing.assert_allclose(np.diag(fixed), np.diag(V))


def test_predicted_regressor_and_outcome():
    """Y and a regressor both predicted (R's data_logit case): runs; with every row labeled
    it is plain logistic regression."""
    df = fully_labeled()
    df["x2_hat"] = df.x2
    fit = dsl(df, "yb ~ x1 + x2", ["yb", "x2"], ["yb_hat", "x2_hat"], model="logit",
              feature=["x1"], learner="linear", sample_split=1)
    ref = sm.Logit(df.yb, sm.add_constant(df[["x1", "x2"]])).fit(disp=0, cov_type="HC0")
    np.testing.assert_allclose(fit.coef, ref.params, rtol=1e-8)
    half = df.assign(yb=df.yb.where(df.index % 2 == 0), x2=df.x2.where(df.index % 2 == 0))
    fit = dsl(half, "yb ~ x1 + x2", ["yb", "x2"], ["yb_hat", "x2_hat"], model="logit",
              feature=["x1"], learner="linear", sample_split=2)
    assert fit.n_labeled == 200 and np.isfinite(fit.se).all()
    assert list(fit.rmse.index) == ["yb", "x2"]


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture()
def small():
    return simulate_ifl(np.random.default_rng(3), n=200, n_lab=60)


def call(df, **kw):
    args = dict(formula="fidelity ~ image", predicted_var="fidelity", prediction="surrogate",
                feature=["short"], learner="linear", sample_split=1)
    args.update(kw)
    return dsl(df, **args)


def test_no_labeled_rows(small):
    with pytest.raises(ValueError, match="no labeled rows.*fidelity"):
        call(small.assign(fidelity=np.nan))


def test_prediction_column_missing_or_na(small):
    with pytest.raises(KeyError, match="prediction.*'glotlid'"):
        call(small, prediction="glotlid")
    with pytest.raises(ValueError, match="prediction column 'surrogate' has 1 missing"):
        call(small.assign(surrogate=small.surrogate.where(small.index != 5)))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, np.nan])
def test_sample_prob_outside_unit_interval(small, bad):
    df = small.assign(pi=0.3)
    df.loc[7, "pi"] = bad
    with pytest.raises(ValueError, match="sample_prob column 'pi'"):
        call(df, sample_prob="pi")


def test_formula_term_not_in_data(small):
    with pytest.raises(KeyError, match=r"formula term\(s\) \['llm'\] not in data"):
        call(small, formula="fidelity ~ image + image:llm")


def test_bad_model_formula_inputs_and_types_raise_naming_the_argument(small):
    with pytest.raises(ValueError, match="model must be one of"):
        call(small, model="felm")
    with pytest.raises(ValueError, match="none of predicted_var"):
        call(small, formula="surrogate ~ image")
    with pytest.raises(ValueError, match="give `prediction` and/or `feature`"):
        call(small, prediction=None, feature=None)
    with pytest.raises(ValueError, match="cross_fit"):
        call(small, cross_fit=1)
    with pytest.raises(ValueError, match=r"rank deficient: term\(s\) \['image2'\]"):
        call(small.assign(image2=2 * small.image), formula="fidelity ~ image + image2")
    with pytest.raises(TypeError, match="predicted_var column 'fidelity' must be numeric"):
        call(small.assign(fidelity=small.fidelity.map({1.0: "yes", 0.0: "no"})))
    with pytest.raises(ValueError, match="some but not all"):
        call(small.assign(x=small.fidelity.where(small.index != 0, 1.0).where(small.index != 1)),
             predicted_var=["fidelity", "x"], formula="fidelity ~ image + x")


@pytest.mark.parametrize("module", ["crossfit", "estimator", "learners", "moments", "result",
                                    "honest_forest"])
def test_docstring_examples(module):
    failures, _ = doctest.testmod(importlib.import_module(f"ifl.dsl.{module}"))
    assert failures == 0


def test_honest_tree_takes_leaf_values_from_the_other_half_and_prunes_empty_leaves():
    """Splits from one half, leaf means from the other (grf's honesty); a leaf no honest row
    reaches is pruned: its rows go to the sibling (grf's honesty.prune.leaves)."""
    from sklearn.tree import DecisionTreeRegressor
    from ifl.dsl.honest_forest import HonestForest, _honest_tree, _stack
    X = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    tree = DecisionTreeRegressor(min_samples_split=2).fit(X, [0.0, 1.0, 2.0, 3.0])  # 4 leaves
    forest = HonestForest(n_estimators=1)
    forest.nodes_, forest.roots_ = _stack([_honest_tree(tree, X[[0, 3]], np.array([5.0, 7.0]))])
    assert forest.predict(X).tolist() == [5.0, 5.0, 7.0, 7.0]


def test_default_learner_is_the_honest_forest():
    from ifl.dsl.honest_forest import HonestForest
    from ifl.dsl.learners import make_learner
    assert isinstance(make_learner("forest", random_state=0), HonestForest)
    assert type(make_learner("forest-sklearn", random_state=0)).__name__ == "ForestLearner"
