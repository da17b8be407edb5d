"""Representations for §5.1-5.2: token states out of a LLaVA, CKA between two sets of them, UMAP.

    reps = extract(model, processor, tasks, template="llava_hf", indices=[0], seed=0)
    xy = umap_embed(reps.states[0], seed=0)                     # Figure 2, left
    a = extract(model_a, ..., kinds=("image",)); b = extract(model_b, ..., kinds=("image",))
    m = cka_matrix([a.states[i] for i in a.indices], [b.states[i] for i in b.indices])

Site indices follow ifl.hooks: 0 is the LLM's input (projector output at image tokens, the
embedding table at text tokens), l + 1 the output of decoder layer l.

CKA (Kornblith et al. 2019, and google-research's representation_similarity demo): centred
Gram matrices K~ = HKH, CKA = <K~, L~>_F / (|K~|_F |L~|_F), in float64. The RBF kernel is
exp(-|x_i - x_j|^2 / (2 sigma^2)) with sigma = threshold * sqrt(median of all squared distances,
the zero diagonal included), as the demo. `debiased=True` replaces HSIC by the unbiased estimator
of Song et al. (2012) (Kornblith's `center_gram(unbiased=True)`, used by Nguyen et al. 2021):
biased CKA of independent data tends to 1 when n << d, the debiased one stays near 0.

>>> import numpy as np
>>> np.random.seed(1337); X = np.random.randn(100, 10); Y = np.random.randn(100, 10) + X
>>> round(cka(X, Y), 5), round(cka(X, Y, kernel="rbf"), 5), round(cka(X, Y, debiased=True), 5)
(0.55761, 0.65483, 0.51346)
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ifl.collect.engine import decode_image
from ifl.compat import decoder_layers
from ifl.hooks import SITE, capture
from ifl.prompts import ChatTemplate, query
from ifl.prompts import template as get_template

KINDS = ("image", "text")

# ---------------------------------------------------------------- CKA


def gram(X: np.ndarray, kernel: str = "linear", threshold: float = 0.5) -> np.ndarray:
    """Gram matrix [n, n] of rows X [n, d], float64."""
    X = np.asarray(X, dtype=np.float64)
    dots = X @ X.T
    if kernel == "linear":
        return dots
    if kernel != "rbf":
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    sq = np.diag(dots)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * dots, 0.0)
    return np.exp(-dist2 / (2 * threshold ** 2 * np.median(dist2)))


def center_gram(K: np.ndarray, debiased: bool = False) -> np.ndarray:
    """HKH (biased), or the U-centred Gram whose inner products are the unbiased HSIC estimator
    up to a factor that cancels in CKA (diagonal zeroed; needs n > 3)."""
    K = np.array(K, dtype=np.float64)
    n = K.shape[0]
    if not debiased:
        means = K.mean(0)
        means -= means.mean() / 2
    else:
        if n < 4:
            raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
        np.fill_diagonal(K, 0)
        means = K.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    K -= means[:, None]
    K -= means[None, :]
    if debiased:
        np.fill_diagonal(K, 0)
    return K


def _unit_centered(X, kernel, threshold, debiased) -> np.ndarray:
    G = center_gram(gram(X, kernel, threshold), debiased)
    return G / np.linalg.norm(G)


def cka(X: np.ndarray, Y: np.ndarray, kernel: str = "linear", threshold: float = 0.5,
        debiased: bool = False) -> float:
    """CKA between X [n, d1] and Y [n, d2] (row i of both = the same example)."""
    if len(X) != len(Y):
        raise ValueError(f"CKA needs the same examples in both: {len(X)} vs {len(Y)} rows")
    return float(np.sum(_unit_centered(X, kernel, threshold, debiased)
                        * _unit_centered(Y, kernel, threshold, debiased)))


def cka_matrix(reps_a: list[np.ndarray], reps_b: list[np.ndarray], kernel: str = "linear",
               threshold: float = 0.5, debiased: bool = False) -> np.ndarray:
    """[len(reps_a), len(reps_b)] CKA of every pair (e.g. layers of model A x layers of model B).
    Holds len(reps_b) centred n x n Grams in memory (n = 2000: 32 MB each)."""
    grams_b = [_unit_centered(Y, kernel, threshold, debiased) for Y in reps_b]
    out = np.empty((len(reps_a), len(reps_b)))
    for i, X in enumerate(reps_a):
        gx = _unit_centered(X, kernel, threshold, debiased)
        out[i] = [np.sum(gx * gy) for gy in grams_b]
    return out


# ---------------------------------------------------------------- extraction


@dataclass
class Representations:
    """Token states of one model. meta: one row per token (task_id, parallel_id, lang, kind
    "image" | "text", position: patch index or token index in the text, token: the text piece
    or ""); states: {site index: float32 [n_rows, hidden]}, rows aligned with meta."""
    meta: pd.DataFrame
    states: dict[int, np.ndarray]
    convention: dict = field(default_factory=dict)

    @property
    def indices(self) -> list[int]:
        return sorted(self.states)


def _pick(n: int, k: int | None, seed: int, key: str) -> np.ndarray:
    """k of n positions, sorted, from a generator seeded by (seed, key): the same positions for
    the same item in every model and every batch composition (CKA needs that)."""
    if k is None or k >= n:
        return np.arange(n)
    digest = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big")
    return np.sort(np.random.default_rng([seed, digest]).choice(n, size=k, replace=False))


def _image_items(tasks: pd.DataFrame, unique_images: bool) -> pd.DataFrame:
    with_image = tasks[tasks["image"].notna()]
    if not unique_images:
        return with_image
    digest = with_image["image"].map(lambda b: hashlib.sha1(bytes(b)).hexdigest())
    return with_image.loc[~digest.duplicated()]


def extract(model, processor, tasks: pd.DataFrame, *, template: str | ChatTemplate,
            indices: list[int] | None = None, kinds=KINDS, image_tokens: int | None = 64,
            text_tokens: int | None = None, unique_images: bool = True, seed: int = 0,
            batch_size: int = 8, progress: bool = False) -> Representations:
    """States at site `indices` (default all: 0 .. n_layers) of image and text tokens of `tasks`.

    image: each task's image behind its question in `template` (image condition of notebook
      03); states at `image_tokens` of the image-token positions (None = all), chosen by
      `seed` and the image. unique_images: each distinct image once (with an image-first
      template the image tokens see only the template's prefix, so every language gives the
      same states).
    text: the task's question as raw text (tokenizer's BOS, which is dropped, no template, no
      image), i.e. the same pass that reads steering vectors (ifl.steer); `text_tokens` of its
      tokens (None = all). At index 0 a text token's state is its embedding-table row.
    Streams in batches of `batch_size`; only the chosen rows leave the device, in float32."""
    t = get_template(template) if isinstance(template, str) else template
    n_layers = len(decoder_layers(model))
    indices = list(range(n_layers + 1)) if indices is None else list(indices)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; use a subset of {KINDS}")
    metas, chunks = [], {i: [] for i in indices}
    work = []
    if "image" in kinds:
        items = _image_items(tasks, unique_images)
        work += [("image", items.iloc[s:s + batch_size]) for s in range(0, len(items), batch_size)]
    if "text" in kinds:
        work += [("text", tasks.iloc[s:s + batch_size]) for s in range(0, len(tasks), batch_size)]
    for kind, batch in tqdm(work, desc="representations", disable=not progress):
        run = _image_batch if kind == "image" else _text_batch
        meta, states = run(model, processor, batch, t, indices,
                           image_tokens if kind == "image" else text_tokens, seed)
        metas.append(meta)
        for i in indices:
            chunks[i].append(states[i])
    meta = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame()
    states = {i: np.concatenate(chunks[i]) if chunks[i] else np.zeros((0, 0), np.float32)
              for i in indices}
    return Representations(meta, states, {"site": SITE, "n_layers": n_layers, "index_0": "LLM input",
                                          "index_l+1": "output of decoder layer l"})


def _forward(model, inputs, indices, rows, cols) -> dict[int, np.ndarray]:
    """One forward; at each site keep the (row, column) pairs given, as float32 numpy."""
    r, c = torch.as_tensor(rows), torch.as_tensor(cols)
    # positions counted from the mask, as generate() does: a left-padded row then gets the
    # same states as on its own (a plain forward would count the pads)
    mask = inputs["attention_mask"]
    inputs = {**inputs, "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}
    with torch.inference_mode(), capture(model, indices,
                                         select=lambda h: h[r.to(h.device), c.to(h.device)]) as got:
        model(**inputs)
    return {i: got[i][0].numpy() for i in indices}


def _base_meta(row, kind, positions, tokens=None) -> list[dict]:
    return [dict(task_id=row.task_id, parallel_id=getattr(row, "parallel_id", None), lang=row.lang,
                 kind=kind, position=int(p), token="" if tokens is None else tokens[k])
            for k, p in enumerate(positions)]


def _image_batch(model, processor, batch, t, indices, k, seed):
    prompts = [query(t, q, image=True) for q in batch["question"]]
    images = [decode_image(bytes(b)) for b in batch["image"]]
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    inputs = inputs.to(model.device, dtype=model.dtype)
    is_image = (inputs["input_ids"] == model.config.image_token_id).cpu()
    rows, cols, meta = [], [], []
    for b, row in enumerate(batch.itertuples(index=False)):
        columns = torch.nonzero(is_image[b]).flatten().numpy()  # patch order
        chosen = _pick(len(columns), k, seed, hashlib.sha1(bytes(row.image)).hexdigest())
        rows += [b] * len(chosen)
        cols += columns[chosen].tolist()
        meta += _base_meta(row, "image", chosen)
    return pd.DataFrame(meta), _forward(model, inputs, indices, rows, cols)


def _text_batch(model, processor, batch, t, indices, k, seed):
    tok = processor.tokenizer
    if tok.pad_token is None:  # as ifl.collect does: pad with end-of-sequence (masked anyway)
        tok.pad_token = tok.eos_token
    inputs = tok(list(batch["question"]), return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    mask = inputs["attention_mask"].cpu()
    ids = inputs["input_ids"].cpu()
    rows, cols, meta = [], [], []
    for b, row in enumerate(batch.itertuples(index=False)):
        columns = torch.nonzero(mask[b]).flatten().numpy()
        if tok.bos_token_id is not None and ids[b, columns[0]] == tok.bos_token_id:
            columns = columns[1:]  # BOS: an attention sink with massive activations
        chosen = _pick(len(columns), k, seed, f"text:{row.task_id}")
        rows += [b] * len(chosen)
        cols += columns[chosen].tolist()
        pieces = tok.convert_ids_to_tokens(ids[b, columns[chosen]].tolist())
        meta += _base_meta(row, "text", chosen, pieces)
    return pd.DataFrame(meta), _forward(model, inputs, indices, rows, cols)


# ---------------------------------------------------------------- UMAP


def umap_embed(X: np.ndarray, seed: int, n_neighbors: int = 15, min_dist: float = 0.1,
               metric: str = "cosine") -> np.ndarray:
    """2-D UMAP coordinates [n, 2] of rows X, one joint fit. A seed makes umap-learn run on one
    thread and the result bit-identical across runs (its reproducibility notes)."""
    import umap

    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, n_components=2,
                        random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random_state.*")
        return reducer.fit_transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
