"""Notebook 05: Figure 1 and Table 4 of the paper, debiased with DSL (`ifl.dsl`).

Every regression is estimated four ways, side by side (long frames, column `estimator`):
  dsl          design-based supervised learning: surrogate on every row, expert gold on the
               labeled sample, weighted by 1/pi (the paper's estimator)
  naive        least squares on the surrogate (GlotLID fidelity / reference-in-response) for all
               rows, as if it were the truth: biased where the surrogate errs non-randomly
  labels_only  weighted least squares (weights 1/pi) on the labeled rows' gold alone: unbiased,
               but uses ~5% of the rows
  oracle       miniature only: least squares on the exact truth on every row (`*_true`), the
               number DSL should recover; never used by an estimator
Standard errors of all four have the same form (sandwich, clustered, no small-sample factor).

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
from importlib import resources

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
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

# The paper's names (ifl/paper/*.csv) -> ours (ifl/models.yaml, benchmark ids of notebook 01).
PAPER_MODELS = {"llava-v1.5-7b": "llava-1.5-7b", "llava-v1.5-13b": "llava-1.5-13b",
                "bakllava": "bakllava", "llava-gemma-2b": "llava-gemma-2b"}
PAPER_BENCHMARKS = {"ViSIT": "visit", "LLaVAW": "llavaw", "MaXM": "maxm"}
MODEL_ORDER = list(PAPER_MODELS.values())


# --- estimators -----------------------------------------------------------------------------

def ols(data: pd.DataFrame, formula: str, *, cluster: str | None = None,
        weights: np.ndarray | None = None) -> pd.DataFrame:
    """(Weighted) least squares with a clustered sandwich SE of DSL's form (no small-sample
    factor). Returns a frame indexed by term with `estimate`, `se`; raises ValueError when the
    design is rank deficient.

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
    bread = np.linalg.inv((X.T * w) @ X)
    beta = bread @ (X.T @ (w * y))
    scores = X * (w * (y - X @ beta))[:, None]
    if cluster is not None:
        codes = pd.factorize(data[cluster])[0]
        scores = np.column_stack([np.bincount(codes, weights=s, minlength=codes.max() + 1)
                                  for s in scores.T])
    V = bread @ (scores.T @ scores) @ bread
    terms = list(mm.rhs.columns)
    se = np.sqrt(np.clip(np.diag(V), 0.0, None))  # an exactly fitted term gives -1e-18
    return pd.DataFrame({"estimate": beta, "se": se}, index=terms)


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


def figure1_rows(scored: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The responses Figure 1 is about, and whose they are: the off-the-shelf LLaVA models
    (kind 'llava') where the run has any (the paper), else every trained variant (the miniature,
    whose English-trained vicuna-clip-en variant stands in for LLaVA-1.5)."""
    if (scored["kind"] == "llava").any():
        return scored[scored["kind"] == "llava"], "off-the-shelf LLaVA models"
    return scored[scored["kind"] == "variant"], "trained variants (no off-the-shelf models in this run)"


def model_order(models: pd.DataFrame | pd.Series) -> list[str]:
    """Plot order: the paper's off-the-shelf models first, then variants by LLM, vision, data."""
    names = list(dict.fromkeys(models))
    rank = {"vicuna": 0, "yi": 1, "leo": 2, "clip": 0, "dinov2": 1, "en": 0, "zh": 1, "de": 2}

    def key(name: str):
        if name in MODEL_ORDER:
            return (0, MODEL_ORDER.index(name), 0, 0)
        parts = name.split("-")
        return (1, *[rank.get(x, 9) for x in parts[:3]], name)
    return sorted(names, key=key)


def figure1(scored: pd.DataFrame, p: DslRegressions, *, seed: int) -> pd.DataFrame:
    """Figure 1: IFL (image effect on fidelity) per model x benchmark, every estimator, with the
    paper's reported value where the paper reports that cell (`paper`, as a proportion)."""
    rows, _ = figure1_rows(scored)
    out = group_effects(rows, ["model", "benchmark"], OUTCOMES["fidelity"], p, seed=seed)
    paper = paper_figure1()
    out = out.merge(paper[["model", "benchmark", "paper"]], on=["model", "benchmark"], how="left")
    out.loc[out["estimator"] != "dsl", "paper"] = np.nan
    return out


def model_family(scored: pd.DataFrame) -> pd.Series:
    """An off-the-shelf model is its own family; a variant belongs to its LLM's family."""
    return pd.Series(np.where(scored["kind"] == "llava", scored["model"],
                              scored["llm"].fillna("?").astype(str) + " variants"),
                     index=scored.index, name="family")


def language_breakdown(scored: pd.DataFrame, p: DslRegressions, *, seed: int) -> pd.DataFrame:
    """IFL per model family x query language (the paper pools languages within a benchmark)."""
    data = scored.assign(family=model_family(scored))
    return group_effects(data, ["family", "lang"], OUTCOMES["fidelity"], p, seed=seed)


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


# --- the paper's numbers --------------------------------------------------------------------

def _read_paper(name: str) -> pd.DataFrame:
    return pd.read_csv(resources.files("ifl.paper").joinpath(name).open(encoding="utf-8"))


def paper_figure1() -> pd.DataFrame:
    """The IFL values the paper's text reports (the extremes per model; Figure 1 itself is an
    image), with our model and benchmark names and `paper` as a proportion (-5.9 pp -> -0.059)."""
    paper = _read_paper("figure1_ifl_text.csv")
    return paper.assign(model=paper["model"].map(PAPER_MODELS),
                        benchmark=paper["benchmark"].map(PAPER_BENCHMARKS),
                        paper=paper["ifl_pp_reported"] / 100)


def paper_table4() -> pd.DataFrame:
    """The paper's Table 4 (fidelity and accuracy coefficients of Image x factor, 95% CIs)."""
    return _read_paper("table4_design_effects.csv").rename(columns={"term": "row"})


def table4_beside_paper(t4: pd.DataFrame) -> pd.DataFrame:
    """Our Table 4 interactions (DSL, and the oracle where there is one) beside the paper's:
    one row per language set x factor, estimates with their CIs."""
    paper = paper_table4()
    ours = t4[t4["row"].isin(FACTORS)]
    wide = paper[["language_set", "row"]].copy()
    for name, paper_col in (("fidelity", "ifl"), ("accuracy", "accuracy")):
        for est in ("dsl", "oracle", "naive"):
            part = ours[(ours["outcome"] == name) & (ours["estimator"] == est)]
            if part.empty:
                continue
            part = part.set_index(["language_set", "row"])
            idx = pd.MultiIndex.from_frame(wide[["language_set", "row"]])
            wide[f"{name}_{est}"] = part["estimate"].reindex(idx).to_numpy()
            if est == "dsl":
                wide[f"{name}_dsl_ci"] = [_ci_text(lo, hi) for lo, hi in zip(
                    part["ci_low"].reindex(idx), part["ci_high"].reindex(idx))]
                wide[f"{name}_dsl_note"] = part["note"].reindex(idx).fillna("").to_numpy()
        wide[f"{name}_paper"] = paper[f"{paper_col}_effect"]
        wide[f"{name}_paper_ci"] = [_ci_text(lo, hi) for lo, hi in
                                    zip(paper[f"{paper_col}_ci_low"], paper[f"{paper_col}_ci_high"])]
    return wide


def _ci_text(lo: float, hi: float) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.2f}, {hi:.2f}]"


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


# --- plots -----------------------------------------------------------------------------------

STYLE = {"dsl": ("C0", "o", "DSL (debiased)"), "naive": ("C3", "s", "naive (surrogate only)"),
         "labels_only": ("C2", "^", "labels only (1/π-weighted gold)"),
         "oracle": ("k", "D", "oracle (truth on every row)")}


def forest_plot(effects: pd.DataFrame, *, row: str, panel: str, estimators=("dsl", "naive", "oracle"),
                row_order: list[str] | None = None, title: str = "", level: float = 0.95,
                highlight: set[str] = frozenset()):
    """Estimates with CIs: one panel per value of `panel`, one line per value of `row`, the
    estimators offset vertically; the paper's value (column `paper`) as a red x where given."""
    panels = list(dict.fromkeys(effects[panel]))
    rows = row_order or list(dict.fromkeys(effects[row]))
    estimators = [e for e in estimators if e in set(effects["estimator"])]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 0.32 * len(rows) + 1.6),
                             sharey=True, squeeze=False)
    offsets = np.linspace(-0.25, 0.25, len(estimators)) if len(estimators) > 1 else [0.0]
    for ax, pan in zip(axes[0], panels):
        part = effects[effects[panel] == pan]
        for off, est in zip(offsets, estimators):
            d = part[part["estimator"] == est].set_index(row).reindex(rows)
            y = np.arange(len(rows)) + off
            color, marker, label = STYLE[est]
            ax.errorbar(d["estimate"], y, xerr=[d["estimate"] - d["ci_low"], d["ci_high"] - d["estimate"]],
                        fmt=marker, color=color, ms=4, lw=1, capsize=2, label=label)
        if "paper" in part:
            d = part[part["estimator"] == "dsl"].set_index(row).reindex(rows)
            if d["paper"].notna().any():
                ax.plot(d["paper"], np.arange(len(rows)), "x", color="red", ms=7, mew=2, label="paper (text)")
        skipped = part[(part["estimator"] == "dsl") & part["estimate"].isna()]
        for name in skipped[row]:
            ax.annotate("skipped (few labels)", (0, rows.index(name)), xycoords=("axes fraction", "data"),
                        fontsize=7, color="grey", va="center")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(str(pan))
        ax.set_xlabel(f"effect of the image on fidelity ({level:.0%} CI)")
    ax0 = axes[0][0]
    ax0.set_yticks(np.arange(len(rows)))
    ax0.set_yticklabels(rows)
    for tick in ax0.get_yticklabels():
        if tick.get_text() in highlight:
            tick.set_fontweight("bold")
    ax0.invert_yaxis()
    handles, labels = ax0.get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def table4_plot(t4: pd.DataFrame, *, estimators=("dsl", "naive", "oracle"), level: float = 0.95):
    """Table 4 as a coefficient plot: language set x outcome panels, the paper's value and CI
    in red."""
    paper = paper_table4()
    t4 = t4[t4["row"].isin(FACTORS)]
    outcomes = list(dict.fromkeys(t4["outcome"]))
    fig, axes = plt.subplots(len(LANGUAGE_SETS), len(outcomes), figsize=(4.6 * len(outcomes), 5),
                             squeeze=False, sharey=True)
    estimators = [e for e in estimators if e in set(t4["estimator"])]
    offsets = np.linspace(-0.22, 0.22, len(estimators) + 1)
    y = np.arange(len(FACTORS))
    for i, lset in enumerate(LANGUAGE_SETS):
        for j, name in enumerate(outcomes):
            ax = axes[i][j]
            part = t4[(t4["language_set"] == lset) & (t4["outcome"] == name)]
            for off, est in zip(offsets, estimators):
                d = part[part["estimator"] == est].set_index("row").reindex(FACTORS)
                color, marker, label = STYLE[est]
                ax.errorbar(d["estimate"], y + off, xerr=[d["estimate"] - d["ci_low"], d["ci_high"] - d["estimate"]],
                            fmt=marker, color=color, ms=4, lw=1, capsize=2, label=label)
            pcol = "ifl" if name == "fidelity" else "accuracy"
            pp = paper[paper["language_set"] == lset].set_index("row").reindex(FACTORS)
            ax.errorbar(pp[f"{pcol}_effect"], y + offsets[-1], xerr=[pp[f"{pcol}_effect"] - pp[f"{pcol}_ci_low"],
                        pp[f"{pcol}_ci_high"] - pp[f"{pcol}_effect"]], fmt="x", color="red", ms=6, lw=1,
                        capsize=2, label="paper")
            if part["estimate"].isna().all():
                ax.text(0.5, 0.5, "not estimated (few labels)", transform=ax.transAxes, ha="center",
                        color="grey", fontsize=8)
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_title(f"{lset}: {name}")
            ax.set_xlabel(f"coefficient of Image x factor ({level:.0%} CI)")
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(["LLM: Vicuna→Yi/Leo", "VE: CLIP→DINOv2", "Data: en→target"])
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def language_plot(effects: pd.DataFrame, *, level: float = 0.95):
    """IFL per query language, one line of DSL estimates (with CIs) per model family; the
    oracle as hollow markers where the run has one."""
    fam = list(dict.fromkeys(effects["family"]))
    langs = sorted(set(effects["lang"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(langs) + 3), 3.6))
    offsets = np.linspace(-0.25, 0.25, len(fam)) if len(fam) > 1 else [0.0]
    x = np.arange(len(langs))
    for k, (f, off) in enumerate(zip(fam, offsets)):
        d = effects[(effects["family"] == f) & (effects["estimator"] == "dsl")].set_index("lang").reindex(langs)
        ax.errorbar(x + off, d["estimate"], yerr=[d["estimate"] - d["ci_low"], d["ci_high"] - d["estimate"]],
                    fmt="o", color=f"C{k}", ms=4, capsize=2, lw=1, label=f"{f} (DSL)")
        o = effects[(effects["family"] == f) & (effects["estimator"] == "oracle")].set_index("lang").reindex(langs)
        if o["estimate"].notna().any():
            ax.plot(x + off, o["estimate"], "D", mfc="none", color=f"C{k}", ms=5)
    if (effects["estimator"] == "oracle").any():
        ax.plot([], [], "D", mfc="none", color="grey", label="oracle")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(langs)
    ax.set_xlabel("query language")
    ax.set_ylabel(f"effect of the image on fidelity ({level:.0%} CI)")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def measurement_errors(scored: pd.DataFrame) -> pd.DataFrame:
    """How often each fidelity/accuracy measure disagrees: surrogate vs gold on the labeled rows
    and, in the miniature, gold and surrogate vs the truth (annotator and identifier errors)."""
    rows = []
    lab = scored[scored["labeled"] == 1]
    for name, o in OUTCOMES.items():
        both = lab[lab[o.gold].notna()]
        rows.append({"outcome": name, "comparison": "surrogate vs gold (labeled rows)", "rows": len(both),
                     "disagree": float((both[o.surrogate] != both[o.gold]).mean()) if len(both) else np.nan})
        if o.truth in scored:
            rows.append({"outcome": name, "comparison": "gold vs truth (labeled rows)", "rows": len(both),
                         "disagree": float((both[o.gold] != both[o.truth]).mean()) if len(both) else np.nan})
            rows.append({"outcome": name, "comparison": "surrogate vs truth (all rows)", "rows": len(scored),
                         "disagree": float((scored[o.surrogate] != scored[o.truth]).mean())})
    return pd.DataFrame(rows)


def headline(fig1: pd.DataFrame, t4: pd.DataFrame, recov: pd.DataFrame) -> str:
    """One line with the key numbers: Figure 1's DSL range (and, in the miniature, how often
    DSL's and the naive CIs cover the truth), and Table 4's DSL fidelity interactions beside
    the paper's."""
    d = fig1[(fig1["estimator"] == "dsl") & fig1["estimate"].notna()]
    parts = [f"Fig. 1 DSL IFL {d['estimate'].min():+.2f} to {d['estimate'].max():+.2f} over {len(d)} "
             f"model x benchmark cells" if len(d) else "Fig. 1: no cell had enough labels"]
    if len(recov):
        r = recov.set_index("estimator")
        parts.append(f"truth inside the CI: DSL {r.loc['dsl', 'coverage']:.0%}, naive "
                     f"{r.loc['naive', 'coverage']:.0%}")
    paper = paper_table4().set_index(["language_set", "row"])
    t = t4[(t4["outcome"] == "fidelity") & (t4["estimator"] == "dsl") & t4["row"].isin(FACTORS)]
    for lset, part in t.groupby("language_set", sort=False):
        est = part.set_index("row")["estimate"].reindex(list(FACTORS))
        ours = "/".join("n.a." if pd.isna(v) else f"{v:+.2f}" for v in est)
        theirs = "/".join(f"{paper.loc[(lset, f), 'ifl_effect']:+.2f}" for f in FACTORS)
        parts.append(f"Table 4 {lset} LLM/VE/Data {ours} (paper {theirs})")
    return "; ".join(parts)
