"""Notebook 05: Figure 1 and Table 4 of the paper, debiased with DSL (§3.3, §4.2-4.3).

The estimators are ifl/regress.py (naive, labels-only and oracle fits beside DSL, group effects,
Table 4) and ifl/dsl/; the plots ifl/figures.py; the paper's numbers ifl/paper/. This module says
which responses each figure is about, sets the estimates beside the paper's, and puts the
numbers into sentences.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ifl import paper, regress
from ifl.findings import agrees_with
from ifl.paper import MODEL_ORDER
from ifl.params_schema import DslRegressions
from ifl.regress import FACTORS, LANGUAGE_SETS, OUTCOMES, group_effects

def figure1_rows(scored: pd.DataFrame, exclude_english: bool = True) -> tuple[pd.DataFrame, str]:
    """The responses Figure 1 is about, and whose they are: the off-the-shelf LLaVA models
    (kind 'llava') where the run has any (the paper), else every trained variant (the miniature,
    whose English-trained vicuna-clip-en variant stands in for LLaVA-1.5); without English
    queries when `exclude_english` (an English reply to them is faithful either way)."""
    if exclude_english:
        scored = scored[scored["lang"] != "en"]
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


def english_trained(models: list[str]) -> set[str]:
    """The models that play the paper's LLaVA role: the off-the-shelf ones and the variants
    trained on English data (shown in bold in Figure 1)."""
    return {m for m in models if m.endswith("-en") or m in MODEL_ORDER}


def figure1(scored: pd.DataFrame, p: DslRegressions, *, seed: int) -> pd.DataFrame:
    """Figure 1: IFL (image effect on fidelity) per model x benchmark, every estimator, with the
    paper's reported value where the paper reports that cell (`paper`, as a proportion)."""
    rows, _ = figure1_rows(scored, p.figure1_exclude_english)
    out = group_effects(rows, ["model", "benchmark"], OUTCOMES["fidelity"], p, seed=seed)
    reported = paper.figure1_reported()
    out = out.merge(reported[["model", "benchmark", "paper"]], on=["model", "benchmark"], how="left")
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


class Table4Fits(NamedTuple):
    """Table 4 in both specifications: `ours` with `main_effects` as the params say (table4.csv,
    the plot), `other` with the opposite, and `literal`, the paper's equation (image and
    image x factor only), which of the two is set beside the paper's numbers."""
    ours: pd.DataFrame
    other: pd.DataFrame
    literal: pd.DataFrame


def table4_fits(scored: pd.DataFrame, p: DslRegressions, *, seed: int,
                outcomes: tuple[str, ...] = ("fidelity", "accuracy")) -> Table4Fits:
    """Table 4 fitted with and without the factors' main effects (`Table4Fits`)."""
    ours = regress.table4(scored, p, seed=seed, outcomes=outcomes)
    other = regress.table4(scored, p, seed=seed, outcomes=outcomes, main_effects=not p.main_effects)
    return Table4Fits(ours, other, literal=other if p.main_effects else ours)


def table4_beside_paper(t4: pd.DataFrame) -> pd.DataFrame:
    """Our Table 4 interactions (DSL, and the oracle where there is one) beside the paper's:
    one row per language set x factor, estimates with their CIs. `t4` must be the paper's
    literal specification (interactions only, `Table4Fits.literal`): with main effects the
    interactions answer another question (a ValueError says so)."""
    mains = sorted(set(t4["term"].dropna()) & set(FACTORS))
    if mains:
        raise ValueError(f"table4_vs_paper sets the paper's specification (image and image x "
                         f"factor only) beside the paper; this Table 4 fit has the main effects "
                         f"{mains}: pass the fit without them (Table4Fits.literal)")
    paper_t4 = paper.table4()
    ours = t4[t4["row"].isin(FACTORS)]
    wide = paper_t4[["language_set", "row"]].copy()
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
        wide[f"{name}_paper"] = paper_t4[f"{paper_col}_effect"]
        wide[f"{name}_paper_ci"] = [_ci_text(lo, hi) for lo, hi in
                                    zip(paper_t4[f"{paper_col}_ci_low"], paper_t4[f"{paper_col}_ci_high"])]
    return wide


def _ci_text(lo: float, hi: float) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.2f}, {hi:.2f}]"



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
    paper_t4 = paper.table4().set_index(["language_set", "row"])
    t = t4[(t4["outcome"] == "fidelity") & (t4["estimator"] == "dsl") & t4["row"].isin(FACTORS)]
    for lset, part in t.groupby("language_set", sort=False):
        est = part.set_index("row")["estimate"].reindex(list(FACTORS))
        ours = "/".join("n.a." if pd.isna(v) else f"{v:+.2f}" for v in est)
        theirs = "/".join(f"{paper_t4.loc[(lset, f), 'ifl_effect']:+.2f}" for f in FACTORS)
        parts.append(f"Table 4 {lset} LLM/VE/Data {ours} (paper {theirs})")
    return "; ".join(parts)


# --- the numbers in words -------------------------------------------------------------------

def figure1_text(fig1: pd.DataFrame, level: float) -> list[str]:
    """Sentences on Figure 1's DSL cells: the largest and smallest IFL, how many intervals lie
    below 0, interval width, clusters and the learner's error."""
    d = fig1[(fig1["estimator"] == "dsl") & fig1["estimate"].notna()]
    if not len(d):
        return []
    lo, hi = d.loc[d["estimate"].idxmin()], d.loc[d["estimate"].idxmax()]
    sig = (d["ci_high"] < 0).mean()
    return [f"DSL estimates {len(d)} cells: the largest IFL is {lo['model']} on {lo['benchmark']} "
            f"({lo['estimate']:+.3f}, CI {lo['ci_low']:+.3f} to {lo['ci_high']:+.3f}), the smallest (least negative) "
            f"{hi['model']} on {hi['benchmark']} ({hi['estimate']:+.3f}); {sig:.0%} of the intervals "
            f"lie entirely below 0 (significant IFL at {1 - level:.2f}).",
            f"Mean CI width: DSL {(d['ci_high'] - d['ci_low']).mean():.3f}; clusters: "
            f"{', '.join(sorted(set(d['cluster'])))}; out-of-fold RMSE of g: {d['g_rmse'].mean():.3f}."]


def skipped_cells(effects: pd.DataFrame) -> pd.DataFrame:
    """The DSL rows that were not estimated (too few labels), with why."""
    return effects[(effects["estimator"] == "dsl") & effects["estimate"].isna()]


def recovery_text(recov: pd.DataFrame, level: float) -> str:
    """Miniature: does the truth lie inside DSL's and the naive intervals?"""
    if not len(recov):
        return "No oracle in this world (the paper world has no truth beyond the annotations)."
    r = recov.set_index("estimator")
    return (f"The truth lies inside the {level:.0%} interval for {r.loc['dsl', 'coverage']:.0%} of DSL's "
            f"cells and {r.loc['naive', 'coverage']:.0%} of the naive ones; the naive estimate is off by "
            f"{r.loc['naive', 'mean_bias']:+.3f} on average (DSL {r.loc['dsl', 'mean_bias']:+.3f}, which "
            f"includes the annotators' own error shown above).")


def language_text(by_lang: pd.DataFrame) -> str:
    """Which query language loses most and least fidelity to the image, over families."""
    d = by_lang[(by_lang["estimator"] == "dsl") & by_lang["estimate"].notna()]
    if not len(d):
        return "No family x language cell had enough labels."
    n_skip = len(skipped_cells(by_lang))
    per_lang = d.groupby("lang")["estimate"].mean().sort_values()
    return (f"Averaged over families, the image costs most fidelity for queries in {per_lang.index[0]} "
            f"({per_lang.iloc[0]:+.3f}) and least in {per_lang.index[-1]} ({per_lang.iloc[-1]:+.3f}); "
            f"{n_skip} family x language cell(s) had too few labels and are left out.")


def table4_text(t4: pd.DataFrame) -> list[str]:
    """One line per language set: the reference-class IFL and each factor's DSL interaction
    with its CI (and the oracle's, where there is one)."""
    lines = []
    fid = t4[(t4["outcome"] == "fidelity") & t4["row"].isin(["Image", *FACTORS])]
    for lset, part in fid.groupby("language_set", sort=False):
        est = part[part["estimator"] == "dsl"].set_index("row")
        if est["estimate"].isna().all():
            lines.append(f"{lset}: not estimated ({est['note'].dropna().iloc[0]})")
            continue
        line = [f"{lset} (n = {int(est['n_rows'].iloc[0]):,} responses, {int(est['n_labeled'].iloc[0])} labeled): "
                f"reference-class IFL (Vicuna/CLIP/English) {est.loc['Image', 'estimate']:+.3f}"]
        for f in FACTORS:
            if f in est.index and pd.notna(est.loc[f, "estimate"]):
                e = est.loc[f]
                line.append(f"{f} {e['estimate']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]")
        orc = part[part["estimator"] == "oracle"].set_index("row")
        if len(orc):
            line.append("oracle " + ", ".join(f"{f} {orc.loc[f, 'estimate']:+.3f}" for f in FACTORS
                                              if f in orc.index))
        lines.append("; ".join(line))
    return lines


def table4_notes(t4: pd.DataFrame) -> pd.DataFrame:
    """Table 4's rows that carry a note (skipped, not in the design), once each."""
    return t4.loc[t4["note"].fillna("") != "", ["language_set", "outcome", "row", "note"]].drop_duplicates()


def dsl_factor_rows(t4: pd.DataFrame) -> pd.DataFrame:
    """The DSL fidelity interactions of a Table 4, indexed by language set and factor."""
    rows = t4[(t4["outcome"] == "fidelity") & (t4["estimator"] == "dsl") & t4["row"].isin(FACTORS)]
    return rows.set_index(["language_set", "row"])


def compare_specifications(t4: pd.DataFrame, other: pd.DataFrame, main_effects: bool) -> pd.DataFrame:
    """Table 4's DSL fidelity interactions with and without the factors' main effects, side by
    side (`t4` fitted with `main_effects`, `other` with the opposite)."""
    this, that = ("with", "without") if main_effects else ("without", "with")
    a, b = dsl_factor_rows(t4), dsl_factor_rows(other)
    return pd.concat({f"{this} main effects": a["estimate"], f"{that} main effects": b["estimate"],
                      f"{that}: ci_low": b["ci_low"], f"{that}: ci_high": b["ci_high"]}, axis=1)


def main_effects_text(t4: pd.DataFrame) -> str:
    """The factors' main effects (text-condition differences) in a Table 4 fit, if any."""
    gap = t4[(t4["outcome"] == "fidelity") & (t4["estimator"] == "dsl") & t4["term"].isin(FACTORS)]
    if not len(gap):
        return ""
    return ("Main effects (text-condition fidelity differences) in the fit above: "
            + "; ".join(f"{r.language_set} {r.term} {r.estimate:+.3f}" for r in gap.itertuples()))


def metrics(scored: pd.DataFrame, fig1: pd.DataFrame, t4: pd.DataFrame, recov: pd.DataFrame,
            seconds: float) -> dict:
    """The stage's key numbers for stage.json."""
    out = {"n_rows": len(scored), "n_labeled": int(scored["labeled"].sum()), "seconds": round(seconds, 1),
           "figure1_cells": int(((fig1["estimator"] == "dsl") & fig1["estimate"].notna()).sum()),
           "figure1_skipped": int(((fig1["estimator"] == "dsl") & fig1["estimate"].isna()).sum())}
    for r in recov.itertuples():
        out[f"figure1_{r.estimator}_coverage"] = r.coverage
        out[f"figure1_{r.estimator}_mean_abs_error"] = r.mean_abs_error
    for r in t4[(t4["estimator"] == "dsl") & t4["row"].isin(FACTORS)].itertuples():
        out[f"table4_{r.language_set}_{r.outcome}_{r.row}"] = None if pd.isna(r.estimate) else float(r.estimate)
    return out


# --- the findings table (runs/<run>/findings.csv, ifl/findings.py) ---------------------------

# The model Figure 1's finding is about: LLaVA-1.5-7B in the paper world, its miniature analogue
# (Vicuna, CLIP, English data) in the miniature; the first one the run has.
LLAVA_ROLE = ("llava-1.5-7b", "vicuna-clip-en")
IFL_EXISTS = "IFL exists (§3): LLaVA-1.5-7B's image effect on fidelity (paper: mean of its -0.06 to -0.14)"
TABLE4_FINDINGS = {"LLM": "a backbone capable in the language reduces IFL",
                   "VE": "DINOv2 instead of CLIP increases IFL",
                   "Data": "translated training data increases IFL"}


def table4_finding_name(factor: str, language_set: str) -> str:
    """E.g. 'LLM (Table 4, zh): a backbone capable in the language reduces IFL'."""
    return f"{factor} (Table 4, {LANGUAGE_SETS[language_set][0]}): {TABLE4_FINDINGS[factor]}"


def ifl_exists_finding(fig1: pd.DataFrame) -> dict:
    """The findings row 'IFL exists': the DSL image effect on fidelity of the LLaVA-1.5-7B role
    (LLAVA_ROLE). Figure 1 has no estimate pooled over benchmarks, so the run's value is the
    mean of the model's benchmark cells, and its interval the mean of their bounds: conservative,
    as it is the interval of the mean if the cells' errors were perfectly correlated (any lower
    correlation narrows it). Paper: the mean of LLaVA-1.5-7B's two reported extremes (§3.3)."""
    reported = paper.figure1_reported()
    reported = reported[(reported["model"] == LLAVA_ROLE[0]) & reported["paper"].notna()]
    paper_value = float(reported["paper"].mean())
    paper_note = ("paper: mean of LLaVA-1.5-7B's reported " + " and ".join(
        f"{r.paper:+.3f} ({r.benchmark})" for r in reported.itertuples()))
    row = {"finding": IFL_EXISTS, "paper": f"{paper_value:.3f}"}
    dsl = fig1[fig1["estimator"] == "dsl"]
    model = next((m for m in LLAVA_ROLE if (dsl["model"] == m).any()), None)
    if model is None:
        return {**row, "run": None, "ci_low": None, "ci_high": None, "agrees": False,
                "note": f"not estimated: none of {', '.join(LLAVA_ROLE)} is in Figure 1; {paper_note}"}
    cells = dsl[dsl["model"] == model]
    done = cells[cells["estimate"].notna()]
    if done.empty:
        why = "; ".join(f"{r.benchmark}: {r.note}" for r in cells.itertuples())
        return {**row, "run": None, "ci_low": None, "ci_high": None, "agrees": False,
                "note": f"{model}: not estimated ({why}); {paper_note}"}
    est, lo, hi = (float(done[c].mean()) for c in ("estimate", "ci_low", "ci_high"))
    left_out = sorted(set(cells["benchmark"]) - set(done["benchmark"]))
    note = (f"{model}, DSL, mean over {len(done)} benchmark(s) ({', '.join(done['benchmark'])})"
            + (f", {', '.join(left_out)} not estimated (too few labels)" if left_out else "")
            + f"; interval = the mean of the cells' bounds (conservative); {paper_note}")
    return {**row, "run": est, "ci_low": lo, "ci_high": hi,
            "agrees": agrees_with(paper_value, est, lo, hi), "note": note}


def table4_findings(literal: pd.DataFrame) -> list[dict]:
    """The findings rows LLM, VE, Data per language set: the DSL Image x factor coefficient on
    fidelity of Table 4 in the paper's literal specification (`literal`: interactions only)
    beside the paper's. A cell not estimated gets no run value, agrees False and its reason."""
    ours = dsl_factor_rows(literal)
    rows = []
    for r in paper.table4().itertuples():
        key = (r.language_set, r.row)
        paper_note = f"paper {r.ifl_effect:+.2f} [{r.ifl_ci_low:+.2f}, {r.ifl_ci_high:+.2f}]"
        row = {"finding": table4_finding_name(r.row, r.language_set), "paper": f"{r.ifl_effect:.2f}"}
        got = ours.loc[key] if key in ours.index else None
        if got is None or pd.isna(got["estimate"]):
            why = ("not in this run's Table 4" if got is None
                   else got["note"] if isinstance(got["note"], str) and got["note"] else "not estimated")
            rows.append({**row, "run": None, "ci_low": None, "ci_high": None, "agrees": False,
                         "note": f"{why}; {paper_note}"})
            continue
        est, lo, hi = float(got["estimate"]), float(got["ci_low"]), float(got["ci_high"])
        rows.append({**row, "run": est, "ci_low": lo, "ci_high": hi,
                     "agrees": agrees_with(r.ifl_effect, est, lo, hi),
                     "note": f"DSL, image:{r.row} on fidelity, interactions only (the paper's equation); "
                             f"{got['n_labeled']:.0f} labeled rows; {paper_note}"})
    return rows


def findings(fig1: pd.DataFrame, literal: pd.DataFrame) -> list[dict]:
    """Every findings row notebook 05 measures (keyword arguments of ifl.findings.write_finding)."""
    return [ifl_exists_finding(fig1), *table4_findings(literal)]


# --- the miniature: where each Table 4 effect comes from ------------------------------------

def mechanism_table(scored: pd.DataFrame, component_metrics: pd.DataFrame | None) -> pd.DataFrame:
    """Miniature: each Table 4 factor split into what it does to each condition, measured on the
    exact truth of every row, beside what it does to the variants' LMs text-only.

    One row per language set x factor x level (0: Vicuna / CLIP / English data; 1: the set's LLM /
    DINOv2 / translated data): exact fidelity with the image and with the description, their
    difference (IFL at that level), and, from notebook 02's probes (kind stage2_retention), the
    variants' text-only fidelity in the set's language after stage 2 and their backbones' before.
    A factor that moves both conditions alike has no IFL effect, however much it moves
    fidelity; one that moves the LM's text-only fidelity acts through the LM's language, not
    through the image. Reading the levels side by side says which mechanism makes a finding."""
    rows = []
    after = _text_fidelity_after_stage2(component_metrics)
    for language_set, (lang, _) in LANGUAGE_SETS.items():
        data = regress.design_data(scored, language_set)
        if data.empty or "fidelity_true" not in data:
            continue
        text_after = after.get(lang, {})
        for factor in FACTORS:
            for level, group in data.groupby(factor):
                by_cond = group.groupby("image")["fidelity_true"].mean()
                variants = sorted(group["model"].unique())
                row = {"language_set": language_set, "factor": factor, "level": int(level),
                       "variants": len(variants), "image": by_cond.get(1, np.nan),
                       "text": by_cond.get(0, np.nan)}
                row["ifl"] = row["image"] - row["text"]
                for when, column in (("after", "lm_text_after_stage2"), ("before", "lm_text_before")):
                    # a variant without probe rows counts as missing (NaN when none has them)
                    row[column] = pd.Series([text_after.get(v, {}).get(when) for v in variants],
                                            dtype=float).mean()
                rows.append(row)
    return pd.DataFrame(rows)


def _text_fidelity_after_stage2(metrics: pd.DataFrame | None) -> dict:
    """{lang: {variant: {"before", "after"}}} from the stage2_retention rows (none: empty)."""
    if metrics is None or "kind" not in metrics:
        return {}
    kept = metrics[(metrics["kind"] == "stage2_retention")
                   & metrics["metric"].isin(["fidelity_before", "fidelity_after"])]
    out: dict = {}
    for r in kept.itertuples(index=False):
        out.setdefault(r.lang, {}).setdefault(r.component, {})[r.metric.split("_")[1]] = float(r.value)
    return out


def mechanism_text(table: pd.DataFrame) -> list[str]:
    """One sentence per language set x factor: how the factor moves each condition and the LM."""
    lines = []
    for (language_set, factor), g in table.groupby(["language_set", "factor"], sort=False):
        if set(g["level"]) != {0, 1}:
            continue
        a, b = (g[g["level"] == k].iloc[0] for k in (0, 1))
        lm = ("" if np.isnan(a["lm_text_after_stage2"]) else
              f"; the LMs' text-only fidelity after stage 2 {a['lm_text_after_stage2']:.2f} -> "
              f"{b['lm_text_after_stage2']:.2f}")
        lines.append(f"{language_set}, {factor}: with the image {a['image']:.2f} -> {b['image']:.2f}, "
                     f"with the description {a['text']:.2f} -> {b['text']:.2f}, so IFL "
                     f"{a['ifl']:+.2f} -> {b['ifl']:+.2f}{lm}")
    return lines
