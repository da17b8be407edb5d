"""Notebook 06 (§5.1-5.2, Figure 2): which tokens to embed, UMAP of image vs text tokens, and CKA
of two variants' image tokens across layers. The plots are ifl/figures.py.

Site indices follow ifl.hooks (0 = the LLM's input, l + 1 = output of decoder layer l).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ifl.models import model_info, model_table, template_for
from ifl.params_schema import UmapCka
from ifl.represent import Representations, cka, cka_matrix, extract, umap_embed
from ifl.runtime import cpu_threads, free_memory, load_model, variant_template


def resolve_model(name: str, p: UmapCka, world: str, variants: pd.DataFrame | None) -> dict:
    """{model, source, revision, template} of a variant of notebook 02 or a `model_sources` entry."""
    if variants is not None and name in set(variants["variant"]):
        v = variants.set_index("variant").loc[name]
        return dict(model=name, source=v["model_dir"], revision=None,
                    template=variant_template(v["llm"], world))
    if name in p.model_sources:
        revision = model_info(name).revision if name in model_table() else None
        return dict(model=name, source=p.model_sources[name], revision=revision,
                    template=template_for(name).name)
    known = sorted(set(p.model_sources) | set([] if variants is None else variants["variant"]))
    raise KeyError(f"06_umap_cka: model {name!r} is neither a variant of notebook 02 nor a key of "
                   f"06_umap_cka.model_sources (known: {', '.join(known) or 'none'})")


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


def umap_of(name: str, tasks: pd.DataFrame, p: UmapCka, *, world: str, languages: list[str],
            variants: pd.DataFrame | None, device: str, seed: int) -> tuple[pd.DataFrame, int]:
    """Figure 2 left for model `name`: (UMAP points of its image and text tokens, its number of
    decoder layers). The model is loaded, read and released."""
    from ifl.compat import decoder_layers

    row = resolve_model(name, p, world, variants)
    images = pick_items(tasks, p.umap_images, seed)
    questions = pick_questions(tasks, p.umap_questions, seed, languages)
    with cpu_threads(p.threads, device):
        model, processor = load_model(row, dtype=p.dtype, quantization=p.quantization, device=device)
        points = umap_points(model, processor, images, questions, row["template"], p, seed)
        n_layers = len(decoder_layers(model))
        del model, processor
        free_memory()
    return points, n_layers


def cka_of_pair(tasks: pd.DataFrame, p: UmapCka, *, world: str, variants: pd.DataFrame | None,
                device: str, seed: int) -> tuple[pd.DataFrame, int]:
    """Figure 2 centre/right: (CKA results of `p.cka_pair`'s image tokens, number of images).
    The same images, positions and question go through both models, loaded one at a time."""
    items = pick_items(tasks, p.cka_images, seed + 1, lang=p.cka_prompt_lang)
    states = {}
    with cpu_threads(p.threads, device):
        for name in p.cka_pair:
            row = resolve_model(name, p, world, variants)
            model, processor = load_model(row, dtype=p.dtype, quantization=p.quantization, device=device)
            states[name] = image_states(model, processor, items, row["template"], p, seed)
            del model, processor
            free_memory()
    a, b = (states[name] for name in p.cka_pair)
    return cka_results(a, b, p.cka_threshold, seed), len(items)


def same_site(results: pd.DataFrame) -> pd.DataFrame:
    """CKA at matching sites (site_a == site_b), per kernel and debiasing."""
    main = results[results["control"].isna()]
    return main[main["site_a"] == main["site_b"]].pivot_table(
        index="site_a", columns=["kernel", "debiased"], values="cka")


def summary(points: pd.DataFrame, results: pd.DataFrame, p: UmapCka, n_layers: int) -> tuple[str, dict]:
    """(headline, metrics) of the stage."""
    diag = same_site(results)[("linear", False)]
    chance = results[results["control"].notna() & ~results["debiased"].astype(bool)]["cka"].max()
    n, d = int(results["n"].iloc[0]), int(results["d_a"].iloc[0])
    headline = (f"UMAP of {len(points)} tokens at site {p.umap_site} of {p.umap_model}; linear CKA of "
                f"{p.cka_pair[0]} vs {p.cka_pair[1]} image tokens at matching sites "
                f"{diag.min():.2f}-{diag.max():.2f} (chance {chance:.2f}; n={n}, d={d})")
    return headline, dict(umap_tokens=len(points), umap_layers=n_layers, cka_n=n, cka_d=d,
                          cka_linear_same_site=dict(zip(map(int, diag.index), map(float, diag))),
                          cka_pair=p.cka_pair)
