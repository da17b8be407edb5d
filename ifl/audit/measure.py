"""Fidelity per language and condition, and IFL = fidelity(image) - fidelity(text) (as
ifl.score.fidelity_table: negative = the image costs fidelity) with 95% CIs.

Without labels the outcome is the language-ID surrogate (ifl.langid, the paper's rule) and the
CI a cluster bootstrap over items (an item's image and text replies are resampled together).
With an annotated sheet, DSL (ifl.dsl) debiases the surrogate: fidelity ~ image per language,
clustered by item."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ifl.audit.generate import STEERED
from ifl.langid import fidelity, load_identifier, parse_glotlid


def score(responses: pd.DataFrame, tasks: pd.DataFrame, identifier=None) -> tuple[pd.DataFrame, str]:
    identifier = identifier or load_identifier()
    df = responses.merge(tasks[["task_id", "parallel_id", "lang"]], on="task_id", how="left")
    df["label"] = identifier.predict(df["response"].fillna("").tolist())
    df["fidelity_lid"] = [float(fidelity(parse_glotlid(x), lang)) for x, lang in zip(df["label"], df["lang"])]
    return df, identifier.name


def _bootstrap(diff_by_item: np.ndarray, n_boot: int, rng) -> tuple[float, float]:
    if len(diff_by_item) < 2:
        return (np.nan, np.nan)
    means = rng.choice(diff_by_item, size=(n_boot, len(diff_by_item))).mean(axis=1)
    return tuple(np.quantile(means, [0.025, 0.975]))


def fidelity_table(scored: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per language: n items, fidelity per condition, IFL (and steered - text) with a
    cluster-bootstrap 95% CI over items."""
    rng = np.random.default_rng(seed)
    rows = []
    for lang, g in scored.groupby("lang", sort=True):
        wide = g.pivot_table(index="task_id", columns="condition", values="fidelity_lid")
        row = {"lang": lang, "n_items": len(wide)}
        for c in ("image", "text", STEERED):
            if c in wide:
                row[f"fidelity_{c}"] = wide[c].mean()
        pairs = [("ifl", "image")] + ([("ifl_steered", STEERED)] if STEERED in wide else [])
        for name, c in pairs:
            d = (wide[c] - wide["text"]).dropna().to_numpy()
            lo, hi = _bootstrap(d, n_boot, rng)
            row.update({name: d.mean(), f"{name}_lo": lo, f"{name}_hi": hi})
        row["ci_method"] = "language-ID surrogate, cluster bootstrap by item"
        rows.append(row)
    return pd.DataFrame(rows)


def dsl_table(scored: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """DSL-debiased IFL per language from an annotated sample: `labels` has task_id,
    condition and fidelity (0/1 by a human) for a random subset of rows."""
    from ifl.dsl import dsl

    need = {"task_id", "condition", "fidelity"}
    if not need <= set(labels.columns):
        raise ValueError(f"--labels sheet needs columns {sorted(need)}, has {list(labels.columns)}")
    df = scored[scored["condition"].isin(["image", "text"])].merge(
        labels[["task_id", "condition", "fidelity"]], on=["task_id", "condition"], how="left")
    df["image"] = (df["condition"] == "image").astype(float)
    rows = []
    for lang, g in df.groupby("lang", sort=True):
        fit = dsl(g.reset_index(drop=True), "fidelity ~ image", predicted_var="fidelity",
                  prediction="fidelity_lid", feature=["image"], cluster="task_id")
        ci = fit.conf_int(0.95).loc["image"]
        rows.append({"lang": lang, "n_labelled": int(g["fidelity"].notna().sum()),
                     "ifl": float(fit.coef["image"]), "ifl_lo": float(ci["lower"]),
                     "ifl_hi": float(ci["upper"]), "ci_method": "DSL (annotated sample)"})
    return pd.DataFrame(rows)


def overall_ifl(scored: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """IFL over every item of every language (each item weighs the same), with a cluster
    bootstrap 95% CI by item; and steered - text when steered replies were collected."""
    rng = np.random.default_rng(seed)
    wide = scored.pivot_table(index="task_id", columns="condition", values="fidelity_lid")
    out = {"n_items": len(wide), "n_languages": int(scored["lang"].nunique())}
    for c in ("image", "text", STEERED):
        out[f"fidelity_{c}"] = float(wide[c].mean()) if c in wide else np.nan
    for name, c in (("ifl", "image"), ("ifl_steered", STEERED)):
        if c not in wide:
            out.update({name: np.nan, f"{name}_lo": np.nan, f"{name}_hi": np.nan})
            continue
        d = (wide[c] - wide["text"]).dropna().to_numpy()
        lo, hi = _bootstrap(d, n_boot, rng)
        out.update({name: float(d.mean()), f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    out["ci_method"] = "language-ID surrogate, cluster bootstrap by item"
    return out
