"""The regressions of notebook 05: image effects per group (Figure 1) and Table 4's design
effects, each estimated four ways. DSL itself is `ifl.dsl`; the three comparison fits go
through statsmodels.

Every regression is estimated four ways, side by side (long frames, column `estimator`):
  dsl          design-based supervised learning: surrogate on every row, expert gold on the
               labeled sample, weighted by 1/pi (the paper's estimator)
  naive        least squares on the surrogate (GlotLID fidelity / reference-in-response) for all
               rows, as if it were the truth: biased where the surrogate errs non-randomly
  labels_only  weighted least squares (weights 1/pi) on the labeled rows' gold alone: unbiased,
               but uses ~5% of the rows
  oracle       miniature only: least squares on the exact truth on every row (`*_true`), the
               number DSL should recover; never used by an estimator
Standard errors of all four have the same form: DSL's sandwich, clustered, without a small-sample
factor (statsmodels `cov_type="cluster"` with `use_correction=False`, or `HC0` without clusters).

Choices (params `05_dsl_regressions`, see ifl/params_schema.py `DslRegressions`):
- pooled: the groups of one figure (e.g. model x benchmark cells) are estimated in ONE DSL fit of
  a saturated model, `y ~ 0 + group + group:image`; its group:image coefficients are exactly the
  per-group image effects, but the learner g is trained on all labeled rows (with the group as a
  feature) instead of the ~30 of one cell. pooled=False fits each group alone (the paper's most
  literal reading), slower and noisier.
- cluster: responses to the same parallel item (same image/question, both conditions, every
  language, every model) share one cluster; falls back to task_id, then rows, when there are
  fewer than min_clusters clusters (said in the `cluster` column).
- min_labeled: a group (or a Table 4 factor level) with fewer labeled rows in either condition is
  not estimated; its row says why.
- main_effects: Table 4 with the factors' main effects (text-condition differences between models)
  besides their interactions with the image; the paper's equation lists only the interactions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from formulaic import model_matrix
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from ifl.dsl import dsl
from ifl.params_schema import DslRegressions


@dataclass(frozen=True)
class Outcome:
    """An expert-coded outcome: its gold column, surrogate column and (miniature) truth column."""
    name: str
    gold: str
    surrogate: str
    truth: str


OUTCOMES = {
    "fidelity": Outcome("fidelity", "fidelity_gold", "fidelity_lid", "fidelity_true"),
    "accuracy": Outcome("accuracy", "correct_gold", "correct_surrogate", "correct_true"),
}
ESTIMATORS = ("dsl", "naive", "labels_only", "oracle")
# What the learner g sees besides the surrogate: the condition, the query language, the benchmark
# and the response length (the paper: GlotLID errs more on short texts), plus the group columns.
LEARNER_INPUTS = ["image", "lang", "benchmark", "n_new_tokens"]
CLUSTER_FALLBACK = {"parallel_id": ["parallel_id", "task_id", "none"], "task_id": ["task_id", "none"],
                    "none": ["none"]}

# Table 4: language set -> (query language, the LLM capable in it). Reference: Vicuna, CLIP, English.
LANGUAGE_SETS = {"Chinese": ("zh", "yi"), "German": ("de", "leo")}
FACTORS = ("LLM", "VE", "Data")  # the paper's row names: Vicuna -> Yi/Leo, CLIP -> DINOv2, en -> target
TABLE4_TERMS = {"Image": "image", "LLM": "image:LLM", "VE": "image:VE", "Data": "image:Data"}

# --- estimators -----------------------------------------------------------------------------

def ols(data: pd.DataFrame, formula: str, *, cluster: str | None = None,
        weights: np.ndarray | None = None) -> pd.DataFrame:
    """(Weighted) least squares (statsmodels WLS) with the standard error of DSL's form: the
    clustered sandwich without small-sample factor (HC0 when `cluster` is None), so the four
    estimators' intervals are comparable. Returns a frame indexed by term with `estimate`, `se`;
    raises ValueError when the design is rank deficient (statsmodels would quietly use a
    pseudo-inverse).

    >>> d = pd.DataFrame({"y": [0.0, 1, 1, 1], "image": [1, 1, 0, 0]})
    >>> ols(d, "y ~ image")["estimate"].round(3).tolist()
    [1.0, -0.5]
    """
    mm = model_matrix(formula, data, na_action="raise")
    X = mm.rhs.to_numpy(dtype=float)
    y = mm.lhs.to_numpy(dtype=float)[:, 0]
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    if np.linalg.matrix_rank(X * np.sqrt(w)[:, None]) < X.shape[1]:
        raise ValueError(f"{formula!r} is rank deficient on these rows")
    model = sm.WLS(y, X, weights=w)
    if cluster is None:
        fit = model.fit(cov_type="HC0")
    else:
        groups = pd.factorize(data[cluster])[0]
        fit = model.fit(cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False,
                                                      "df_correction": False})
    V = np.asarray(fit.cov_params())
    se = np.sqrt(np.clip(np.diag(V), 0.0, None))  # an exactly fitted term gives -1e-18
    return pd.DataFrame({"estimate": np.asarray(fit.params), "se": se}, index=list(mm.rhs.columns))


def choose_cluster(data: pd.DataFrame, preferred: str, min_clusters: int) -> tuple[str | None, str]:
    """The clustering column for these rows: `preferred`, or the next finer one (parallel_id ->
    task_id -> rows) while there are fewer than `min_clusters` clusters. Returns (column or
    None, what was used: e.g. 'parallel_id (120)')."""
    for col in CLUSTER_FALLBACK[preferred]:
        if col == "none":
            return None, f"rows ({len(data)})"
        n = data[col].nunique()
        if n >= min_clusters:
            return col, f"{col} ({n})"
    raise AssertionError("unreachable")


def run_dsl(data: pd.DataFrame, formula: str, outcome: Outcome, features: list[str],
            p: DslRegressions, *, seed: int, cluster: str | None):
    """`ifl.dsl.dsl` with the gold outcome (NaN where not labeled) and the surrogate as the
    prediction. BLAS is held to one thread: on a busy 2-core machine a threaded BLAS spins and
    makes the estimating equations ~50x slower."""
    y = formula.split("~")[0].strip()
    frame = data.assign(**{y: data[outcome.gold].where(data["labeled"] == 1)})
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: small bootstrap samples
        # an exactly fitted term has a variance of -1e-18; estimate_all takes its own sqrt
        warnings.filterwarnings("ignore", "invalid value encountered in sqrt", RuntimeWarning)
        return dsl(frame, formula, y, outcome.surrogate, model="lm", feature=features,
                   sample_prob="sample_prob", cluster=cluster, cross_fit=p.cross_fit,
                   sample_split=p.sample_split, seed=seed, learner=p.learner)


def estimate_all(data: pd.DataFrame, rhs: str, outcome: Outcome, features: list[str],
                 p: DslRegressions, *, seed: int) -> pd.DataFrame:
    """`outcome ~ rhs` by every estimator (ESTIMATORS; oracle only where the truth exists).

    Long frame: term, estimator, estimate, se, ci_low, ci_high, plus n_rows, n_labeled,
    cluster and g_rmse (the DSL learner's out-of-fold RMSE on labeled rows). A DSL failure
    (too few labels or clusters for the folds) raises ValueError; a rank-deficient
    labels-only design leaves that estimator out."""
    y = outcome.name
    formula = f"{y} ~ {rhs}"
    cluster, cluster_note = choose_cluster(data, p.cluster, p.min_clusters)
    fit = run_dsl(data, formula, outcome, features, p, seed=seed, cluster=cluster)
    dsl_se = np.sqrt(np.clip(np.diag(fit.vcov.to_numpy()), 0.0, None))  # exact fits: -1e-18, not NaN
    parts = {"dsl": pd.DataFrame({"estimate": fit.coef, "se": dsl_se}, index=fit.coef.index)}
    parts["naive"] = ols(data.assign(**{y: data[outcome.surrogate]}), formula, cluster=cluster)
    lab = data[(data["labeled"] == 1) & data[outcome.gold].notna()]
    try:
        parts["labels_only"] = ols(lab.assign(**{y: lab[outcome.gold]}), formula, cluster=cluster,
                                   weights=1.0 / lab["sample_prob"].to_numpy())
    except ValueError:
        pass
    if outcome.truth in data and data[outcome.truth].notna().all():
        parts["oracle"] = ols(data.assign(**{y: data[outcome.truth]}), formula, cluster=cluster)
    z = norm.ppf(0.5 + p.level / 2)
    out = pd.concat(parts, names=["estimator", "term"]).reset_index()
    out["ci_low"], out["ci_high"] = out["estimate"] - z * out["se"], out["estimate"] + z * out["se"]
    out["n_rows"], out["n_labeled"] = len(data), fit.n_labeled
    out["cluster"] = cluster_note
    out["g_rmse"] = np.where(out["estimator"] == "dsl", float(fit.rmse.to_numpy().mean()), np.nan)
    return out


# --- image effects per group (Figure 1, per-language breakdown) -----------------------------

def labeled_counts(data: pd.DataFrame, outcome: Outcome, by: list[str]) -> pd.DataFrame:
    """Rows and labeled rows (gold present) per group and condition: by..., n_rows,
    n_labeled_image, n_labeled_text."""
    has = ((data["labeled"] == 1) & data[outcome.gold].notna()).astype(int)
    frame = data[by].assign(_has=has, _img=data["image"])
    counts = frame.groupby(by + ["_img"], sort=False)["_has"].sum().unstack("_img")
    counts = counts.reindex(columns=[0, 1], fill_value=0).fillna(0).astype(int)
    counts.columns = ["n_labeled_text", "n_labeled_image"]
    counts["n_rows"] = frame.groupby(by, sort=False).size()
    return counts.reset_index()[by + ["n_rows", "n_labeled_image", "n_labeled_text"]]


def _group_key(data: pd.DataFrame, by: list[str]) -> pd.Series:
    return data[by].astype(str).agg(" · ".join, axis=1)


def group_effects(data: pd.DataFrame, by: list[str], outcome: Outcome, p: DslRegressions, *,
                  seed: int) -> pd.DataFrame:
    """The effect of the image on `outcome` within each group of `by` (e.g. model x benchmark),
    by every estimator: one saturated DSL fit over all usable groups (p.pooled) or one fit per
    group. Groups with fewer than p.min_labeled labeled rows in a condition are skipped and get
    one `dsl` row with a `note`. Long frame: by..., estimator, estimate, se, ci_low, ci_high,
    n_rows, n_labeled_image, n_labeled_text, n_labeled, cluster, g_rmse, note."""
    counts = labeled_counts(data, outcome, by)
    counts["key"] = _group_key(counts, by)
    ok = (counts["n_labeled_image"] >= p.min_labeled) & (counts["n_labeled_text"] >= p.min_labeled)
    skipped = counts[~ok].assign(
        estimator="dsl", note=lambda d: [
            f"skipped: {i} image / {t} text labeled rows (< min_labeled {p.min_labeled})"
            for i, t in zip(d["n_labeled_image"], d["n_labeled_text"])])
    keys = data.assign(key=_group_key(data, by))
    features = list(dict.fromkeys(LEARNER_INPUTS + by))
    fits: list[tuple[list[str], pd.DataFrame]] = []
    usable = counts.loc[ok, "key"].tolist()
    if p.pooled and usable:
        fits.append((usable, keys[keys["key"].isin(usable)]))
    elif usable:
        fits += [([k], keys[keys["key"] == k]) for k in usable]
    results = [skipped]
    for group_keys, rows in fits:
        rows = rows.reset_index(drop=True)
        rows["group"] = pd.Categorical(rows["key"], categories=group_keys)
        rhs = "0 + group + group:image" if len(group_keys) > 1 else "image"
        try:
            est = estimate_all(rows, rhs, outcome, features, p, seed=seed)
        except (ValueError, RuntimeError) as exc:
            failed = counts[counts["key"].isin(group_keys)].assign(estimator="dsl",
                                                                  note=f"not estimated: {exc}")
            results.append(failed)
            continue
        term_of = {k: (f"group[{k}]:image" if len(group_keys) > 1 else "image") for k in group_keys}
        est = est[est["term"].isin(term_of.values())]
        est["key"] = est["term"].map({t: k for k, t in term_of.items()})
        est = est.drop(columns=["term", "n_rows"]).rename(columns={"n_labeled": "n_labeled_fit"})
        results.append(counts[counts["key"].isin(group_keys)].merge(est, on="key"))
    out = pd.concat(results, ignore_index=True)
    out["n_labeled"] = out["n_labeled_image"] + out["n_labeled_text"]
    group_rank = {k: i for i, k in enumerate(counts["key"])}  # the data's order of groups
    est_rank = {e: i for i, e in enumerate(ESTIMATORS)}
    out = out.iloc[np.lexsort((out["estimator"].map(est_rank), out["key"].map(group_rank)))]
    cols = by + ["estimator", "estimate", "se", "ci_low", "ci_high", "n_rows", "n_labeled_image",
                 "n_labeled_text", "n_labeled", "cluster", "g_rmse", "note"]
    return out.reindex(columns=cols)


# --- Table 4: design effects ----------------------------------------------------------------

def design_data(scored: pd.DataFrame, language_set: str) -> pd.DataFrame:
    """The rows of one Table 4 regression: variants answering queries in the set's language,
    built on Vicuna or the set's LLM and trained on English or the set's language, with the
    paper's 0/1 factors LLM (Vicuna -> Yi/Leo), VE (CLIP -> DINOv2), Data (English -> target)."""
    lang, llm = LANGUAGE_SETS[language_set]
    rows = scored[(scored["kind"] == "variant") & (scored["lang"] == lang)
                  & scored["llm"].isin(["vicuna", llm]) & scored["data_lang"].isin(["en", lang])]
    return rows.assign(LLM=(rows["llm"] == llm).astype(int), VE=(rows["vision"] == "dinov2").astype(int),
                       Data=(rows["data_lang"] == lang).astype(int)).reset_index(drop=True)


def table4_rhs(factors: list[str], main_effects: bool) -> str:
    """Right-hand side of the Table 4 regression.

    >>> table4_rhs(["LLM", "VE", "Data"], main_effects=False)
    'image + image:LLM + image:VE + image:Data'
    >>> table4_rhs(["LLM", "VE"], main_effects=True)
    'image + LLM + VE + image:LLM + image:VE'
    """
    mains = " + ".join(factors) + " + " if main_effects and factors else ""
    return "image + " + mains + " + ".join(f"image:{f}" for f in factors) if factors else "image"


def factor_shortfalls(data: pd.DataFrame, outcome: Outcome, factors: list[str], min_labeled: int) -> list[str]:
    """Factor level x condition cells with fewer than `min_labeled` labeled rows (each
    interaction needs labels on both sides of its factor, with and without the image)."""
    has = (data["labeled"] == 1) & data[outcome.gold].notna()
    short = []
    for f in factors:
        for level in (0, 1):
            for img in (1, 0):
                n = int((has & (data[f] == level) & (data["image"] == img)).sum())
                if n < min_labeled:
                    short.append(f"{f}={level}, {'image' if img else 'text'}: {n}")
    return short


def table4(scored: pd.DataFrame, p: DslRegressions, *, seed: int, main_effects: bool | None = None,
           outcomes: tuple[str, ...] = ("fidelity", "accuracy")) -> pd.DataFrame:
    """Table 4: per language set and outcome, the regression on image and its interactions with
    the three design factors, by every estimator. Long frame: language_set, outcome, row (the
    paper's row name: Image, LLM, VE, Data; '' for intercept and main effects), term,
    estimator, estimate, se, ci_low, ci_high, n_rows, n_labeled, cluster, g_rmse, note.
    A coefficient of image:LLM = +0.17 means the image costs 17 pp LESS fidelity with Yi than
    with Vicuna: the paper's Table 4 reports exactly this number ("reducing IFL by 17 pp")."""
    main_effects = p.main_effects if main_effects is None else main_effects
    row_of = {t: r for r, t in TABLE4_TERMS.items()}
    results = []
    for language_set in LANGUAGE_SETS:
        data = design_data(scored, language_set)
        factors = [f for f in FACTORS if data[f].nunique() == 2] if len(data) else []
        missing = [f for f in FACTORS if f not in factors]
        for name in outcomes:
            outcome = OUTCOMES[name]
            base = {"language_set": language_set, "outcome": name, "n_rows": len(data)}
            n_lab = int(((data["labeled"] == 1) & data[outcome.gold].notna()).sum()) if len(data) else 0
            short = factor_shortfalls(data, outcome, factors, p.min_labeled) if len(data) else []
            if not len(data) or short:
                why = ("no rows" if not len(data) else
                       f"labeled rows < min_labeled {p.min_labeled} in " + "; ".join(short))
                results.append(pd.DataFrame([{**base, "row": r, "estimator": "dsl", "n_labeled": n_lab,
                                              "note": f"skipped: {why}"} for r in TABLE4_TERMS]))
                continue
            features = LEARNER_INPUTS + ["model"]
            try:
                est = estimate_all(data, table4_rhs(factors, main_effects), outcome, features, p, seed=seed)
            except (ValueError, RuntimeError) as exc:
                results.append(pd.DataFrame([{**base, "row": r, "estimator": "dsl", "n_labeled": n_lab,
                                              "note": f"not estimated: {exc}"} for r in TABLE4_TERMS]))
                continue
            est = est.assign(**base, row=est["term"].map(row_of).fillna(""), note="")
            results.append(est)
            if missing:
                results.append(pd.DataFrame([{**base, "row": f, "estimator": "dsl", "n_labeled": n_lab,
                                              "note": f"not in the design: no variant differs in {f}"}
                                             for f in missing]))
    cols = ["language_set", "outcome", "row", "term", "estimator", "estimate", "se", "ci_low",
            "ci_high", "n_rows", "n_labeled", "cluster", "g_rmse", "note"]
    return pd.concat(results, ignore_index=True).reindex(columns=cols)


# --- summaries -------------------------------------------------------------------------------

def wide(effects: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per group: estimate and CI per estimator side by side (for display and CSV)."""
    est = effects.pivot_table(index=by, columns="estimator", values=["estimate", "ci_low", "ci_high"],
                              aggfunc="first", sort=False, dropna=False)
    est.columns = [f"{e}_{v}".replace("_estimate", "") for v, e in est.columns]
    present = [e for e in ESTIMATORS if e in set(effects["estimator"])]
    order = [c for e in present for c in (e, f"{e}_ci_low", f"{e}_ci_high")]
    est = est.reindex(columns=order)  # all-NaN estimators (every group skipped) keep their columns
    dsl_rows = effects[effects["estimator"] == "dsl"].set_index(by)
    extra = dsl_rows[[c for c in ("n_rows", "n_labeled", "cluster", "note", "paper") if c in dsl_rows]]
    return extra.join(est[order], how="left").reset_index()


def recovery(effects: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Miniature: how far each estimator lands from the oracle, over the estimated groups:
    mean |estimate - oracle|, mean bias, coverage of the oracle by the CI, mean CI width."""
    w = wide(effects, by)
    if "oracle" not in w:
        return pd.DataFrame()
    rows = []
    for est in ("dsl", "naive", "labels_only"):
        if est not in w:
            continue
        ok = w[est].notna() & w["oracle"].notna()
        d = w[ok]
        rows.append({"estimator": est, "groups": int(ok.sum()),
                     "mean_abs_error": float((d[est] - d["oracle"]).abs().mean()),
                     "mean_bias": float((d[est] - d["oracle"]).mean()),
                     "coverage": float(((d[f"{est}_ci_low"] <= d["oracle"])
                                        & (d["oracle"] <= d[f"{est}_ci_high"])).mean()),
                     "mean_ci_width": float((d[f"{est}_ci_high"] - d[f"{est}_ci_low"]).mean())})
    return pd.DataFrame(rows)
