"""The package's figures: notebook 05's forest plot, Table 4 plot and language plot; notebook
06's UMAP and CKA heatmaps; notebook 07's steering bars and layer sweep. Each takes the long
frames the stages write and returns (or draws on) a matplotlib figure; saving is the Stage's.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ifl import paper
from ifl.regress import FACTORS, LANGUAGE_SETS

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
    paper_t4 = paper.table4()
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
            pp = paper_t4[paper_t4["language_set"] == lset].set_index("row").reindex(FACTORS)
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


def plot_umap(points: pd.DataFrame, ax, title: str) -> None:
    """Image tokens in grey, text tokens coloured by the question's language."""

    img = points[points["kind"] == "image"]
    ax.scatter(img["x"], img["y"], s=4, c="0.6", label=f"image tokens ({len(img)})", alpha=0.6)
    colours = plt.get_cmap("tab20").colors
    for k, (lang, part) in enumerate(points[points["kind"] == "text"].groupby("lang")):
        ax.scatter(part["x"], part["y"], s=4, color=colours[k % len(colours)], label=f"{lang} ({len(part)})")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]); ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=3, loc="best")


def plot_cka(square: np.ndarray, ax, title: str, names: tuple[str, str]) -> object:
    """Heatmap of `cka_square` (rows: sites of names[0], columns: of names[1]), drawn as a matrix
    (row 0 on top) so that its lower triangle is the linear kernel's; values written in the
    cells of small grids."""
    im = ax.imshow(square, origin="upper", vmin=min(0.0, float(np.nanmin(square))), vmax=1.0,
                   cmap="magma")
    step = max(1, len(square) // 8)
    ax.set_xticks(range(0, square.shape[1], step)); ax.set_yticks(range(0, square.shape[0], step))
    if square.size <= 100:
        for (i, j), value in np.ndenumerate(square):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.5 else "white")
    ax.set_xlabel(f"{names[1]}: site (0 = LLM input, l+1 = layer l)", fontsize=8)
    ax.set_ylabel(f"{names[0]}: site", fontsize=8)
    ax.set_title(title, fontsize=9)
    return im


def steering_summary_plot(summary: pd.DataFrame, ylabel: str):
    """Table 5 as bars: IFL and IFL + remedy per model; the paper's values as black ticks where
    `summary` has `ifl_paper` / `ifl_remedy_paper`."""
    fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 3, 3.5))
    x = range(len(summary))
    ax.bar([i - 0.2 for i in x], summary["ifl"], width=0.4, label="IFL")
    ax.bar([i + 0.2 for i in x], summary["ifl_remedy"], width=0.4, label="IFL + remedy")
    if "ifl_paper" in summary:
        ax.scatter([i - 0.2 for i in x], summary["ifl_paper"], marker="_", s=300, c="k", label="paper")
        ax.scatter([i + 0.2 for i in x], summary["ifl_remedy_paper"], marker="_", s=300, c="k")
    ax.axhline(0, c="0.5", lw=0.8)
    ax.set_xticks(list(x), summary["model"], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig


def layer_sweep_plot(sweep: pd.DataFrame, *, model: str, n_layers: int, default_layer: int):
    """IFL + remedy against the steered layer, one line per scale and one panel per fidelity
    measure; the unsteered IFL dashed, the default layer grey."""
    columns = sorted(sweep["fidelity"].unique())
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.5), squeeze=False, sharey=True)
    for ax, col in zip(axes[0], columns):
        part = sweep[sweep["fidelity"] == col]
        for s, by_scale in part.groupby("scale"):
            ax.plot(by_scale["layer"], by_scale["ifl_remedy"], marker="o", label=f"IFL + remedy, scale {s:g}")
        ax.axhline(part["ifl"].iloc[0], ls="--", lw=0.8, c="k", label="IFL (no steering)")
        ax.axvline(default_layer, c="0.6", lw=0.8)
        ax.set_xticks(sorted(sweep["layer"].unique()))
        ax.set_xlabel(f"steered layer of {model} ({n_layers} layers; grey: default)")
        ax.set_title(col, fontsize=9)
    axes[0][0].set_ylabel("fidelity: image - text")
    axes[0][-1].legend(fontsize=7)
    return fig
