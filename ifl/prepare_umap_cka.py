"""Notebook 06: which tokens to embed, UMAP of image vs text tokens, CKA of two variants' image
tokens across layers, and the two figures.

Site indices follow ifl.hooks (0 = the LLM's input, l + 1 = output of decoder layer l).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ifl.models import model_info, model_table, template_for
from ifl.params_schema import UmapCka
from ifl.prepare_variants import MINI_TEMPLATE
from ifl.represent import Representations, cka, cka_matrix, extract, umap_embed


def resolve_model(name: str, p: UmapCka, world: str, variants: pd.DataFrame | None) -> dict:
    """{model, source, revision, template} of a variant of notebook 02 or a `model_sources` entry."""
    if variants is not None and name in set(variants["variant"]):
        v = variants.set_index("variant").loc[name]
        tmpl = MINI_TEMPLATE if world == "miniature" else template_for(v["llm"]).name
        return dict(model=name, source=v["model_dir"], revision=None, template=tmpl)
    if name in p.model_sources:
        revision = model_info(name).revision if name in model_table() else None
        return dict(model=name, source=p.model_sources[name], revision=revision,
                    template=template_for(name).name)
    known = sorted(set(p.model_sources) | set([] if variants is None else variants["variant"]))
    raise KeyError(f"06_umap_cka: model {name!r} is neither a variant of notebook 02 nor a key of "
                   f"06_umap_cka.model_sources (known: {', '.join(known) or 'none'})")


def load(row: dict, p: UmapCka, device: str):
    from ifl.models import load_llava

    return load_llava(row["source"], revision=row["revision"], dtype=p.dtype, device=device,
                      quantization=None if p.quantization == "none" else p.quantization)


def pick_items(tasks: pd.DataFrame, n: int, seed: int, lang: str | None = None) -> pd.DataFrame:
    """n tasks with distinct images (one per parallel item, in `lang` if given), drawn with `seed`."""
    pool = tasks[tasks["image"].notna()]
    if lang is not None:
        pool = pool[pool["lang"] == lang]
    pool = pool.drop_duplicates("parallel_id").sort_values("task_id")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return pool.iloc[np.sort(order)].reset_index(drop=True)


def pick_questions(tasks: pd.DataFrame, n: int, seed: int, languages: list[str]) -> pd.DataFrame:
    """n questions per language (seeded), for the text tokens."""
    parts = [part.sort_values("task_id").sample(min(n, len(part)), random_state=seed)
             for lang, part in tasks.groupby("lang") if lang in languages]
    return pd.concat(parts).sort_values("task_id").reset_index(drop=True)


def umap_points(model, processor, images: pd.DataFrame, questions: pd.DataFrame, template: str,
                p: UmapCka, seed: int) -> pd.DataFrame:
    """One joint UMAP of image tokens (of `images`) and text tokens (of `questions`) at site
    `p.umap_site`: token metadata plus norm, x, y."""
    kw = dict(template=template, indices=[p.umap_site], seed=seed, batch_size=p.batch_size)
    img = extract(model, processor, images, kinds=("image",), image_tokens=p.umap_image_tokens, **kw)
    txt = extract(model, processor, questions, kinds=("text",), text_tokens=p.umap_text_tokens, **kw)
    X = np.concatenate([img.states[p.umap_site], txt.states[p.umap_site]])
    points = pd.concat([img.meta, txt.meta], ignore_index=True)
    points["norm"] = np.linalg.norm(X, axis=1)
    xy = umap_embed(X, seed=seed, n_neighbors=p.umap_n_neighbors, min_dist=p.umap_min_dist,
                    metric=p.umap_metric)
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    return points


def image_states(model, processor, items: pd.DataFrame, template: str, p: UmapCka,
                 seed: int) -> Representations:
    """Image-token states at every site (0 .. n_layers) for the CKA, the same positions in any model."""
    return extract(model, processor, items, template=template, kinds=("image",),
                   image_tokens=p.cka_image_tokens, unique_images=True, seed=seed,
                   batch_size=p.batch_size)


def cka_results(a: Representations, b: Representations, threshold: float, seed: int) -> pd.DataFrame:
    """Long table: site_a, site_b, kernel, debiased, cka, n, d_a, d_b; rows of a and b must be the
    same (task, image position) pairs. A `shuffled` control (rows of b permuted) gives chance."""
    key = ["task_id", "position"]
    if not a.meta[key].equals(b.meta[key]):
        raise ValueError("the two models' image tokens are not the same examples: extract both "
                         "from the same tasks with the same seed and image_tokens")
    reps_a, reps_b = [a.states[i] for i in a.indices], [b.states[i] for i in b.indices]
    rows = []
    for kernel in ("linear", "rbf"):
        for debiased in (False, True):
            m = cka_matrix(reps_a, reps_b, kernel=kernel, threshold=threshold, debiased=debiased)
            rows += [dict(site_a=i, site_b=j, kernel=kernel, debiased=debiased, cka=m[x, y])
                     for x, i in enumerate(a.indices) for y, j in enumerate(b.indices)]
    shuffle = np.random.default_rng(seed).permutation(len(b.meta))
    for site in (0, a.indices[-1]):
        for debiased in (False, True):
            rows.append(dict(site_a=site, site_b=site, kernel="linear", debiased=debiased,
                             cka=cka(a.states[site], b.states[site][shuffle], debiased=debiased),
                             control="rows of b shuffled"))
    out = pd.DataFrame(rows)
    out["n"], out["d_a"], out["d_b"] = len(a.meta), reps_a[0].shape[1], reps_b[0].shape[1]
    return out


def cka_square(results: pd.DataFrame, debiased: bool) -> np.ndarray:
    """The paper's layout: linear CKA on and below the diagonal, RBF above (square grids only)."""
    main = results[results["control"].isna()] if "control" in results.columns else results
    pick = main[main["debiased"] == debiased]
    lin = pick[pick.kernel == "linear"].pivot(index="site_a", columns="site_b", values="cka").to_numpy()
    rbf = pick[pick.kernel == "rbf"].pivot(index="site_a", columns="site_b", values="cka").to_numpy()
    if lin.shape[0] != lin.shape[1]:
        raise ValueError(f"the two models have different depths {lin.shape}: plot the kernels apart")
    return np.where(np.tril(np.ones_like(lin, dtype=bool)), lin, rbf)


def plot_umap(points: pd.DataFrame, ax, title: str) -> None:
    """Image tokens in grey, text tokens coloured by the question's language."""
    import matplotlib.pyplot as plt

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
