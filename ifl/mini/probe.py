"""A linear probe of the reply language at every layer: where does "which language will I answer
in" become a linear variable of the residual stream (and so where can steering act)?

For each prompt, the state at its last token (the position that produces the first reply token)
is taken at every site (0 = embeddings, l + 1 = output of decoder layer l); the label is the
language the model then replies in (`gold_language` of its greedy reply). A ridge classifier per
site is fitted on a split of the prompts and scored on the rest.

    table = reply_language_probe(model, tokenizer, prompts, seed=0)
    table[["site", "accuracy", "majority"]]

>>> import numpy as np
>>> rng = np.random.default_rng(0); y = np.array(["en", "de"] * 100)
>>> signal = np.where(y == "en", 1.0, -1.0)[:, None] * np.ones((1, 8))
>>> states = [rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 2 * signal]
>>> probe_sites(states, y, seed=0)["accuracy"].round(1).tolist()
[0.5, 1.0]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ifl.data.miniature import gold_language


def probe_sites(states: Sequence[np.ndarray], labels: Sequence[str], seed: int = 0,
                test_share: float = 0.5, alpha: float = 1.0) -> pd.DataFrame:
    """Held-out accuracy of a linear (ridge) probe of `labels` from each site's states.
    states: one [n, d] array per site; labels: n strings. Columns: site, accuracy, majority
    (accuracy of always guessing the most common training label), n_test, n_classes."""
    from sklearn.linear_model import RidgeClassifier

    y = np.asarray(labels)
    n = len(y)
    if any(len(s) != n for s in states):
        raise ValueError(f"probe_sites: every site needs {n} states, one per label")
    order = np.random.default_rng(seed).permutation(n)
    test = np.zeros(n, dtype=bool)
    test[order[:max(1, int(round(n * test_share)))]] = True
    values, counts = np.unique(y[~test], return_counts=True)
    majority = float((y[test] == values[counts.argmax()]).mean())
    rows = []
    for site, x in enumerate(states):
        x = np.asarray(x, dtype=np.float64)
        x = (x - x[~test].mean(0)) / (x[~test].std(0) + 1e-6)
        if len(values) < 2:   # one reply language only: nothing to separate
            accuracy = 1.0
        else:
            accuracy = float(RidgeClassifier(alpha=alpha).fit(x[~test], y[~test]).score(x[test], y[test]))
        rows.append({"site": site, "accuracy": accuracy, "majority": majority,
                     "n_test": int(test.sum()), "n_classes": int(len(values))})
    return pd.DataFrame(rows)


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: Sequence[str], batch: int = 64) -> list[np.ndarray]:
    """[n, hidden] state at each prompt's last token, per site (embeddings, then every layer)."""
    model.eval()
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"   # last token at -1
    per_site: list[list[np.ndarray]] = []
    try:
        for i in range(0, len(prompts), batch):
            enc = tokenizer(list(prompts[i:i + batch]), return_tensors="pt", padding=True)
            out = model(**enc, output_hidden_states=True)
            for site, h in enumerate(out.hidden_states):
                if site == len(per_site):
                    per_site.append([])
                per_site[site].append(h[:, -1].float().numpy())
    finally:
        tokenizer.padding_side = old_side
    return [np.concatenate(chunks) for chunks in per_site]


@torch.no_grad()
def greedy_replies(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8,
                   batch: int = 64) -> list[str]:
    """The model's greedy continuation of each prompt (left padding, special tokens dropped)."""
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for i in range(0, len(prompts), batch):
            enc = tokenizer(list(prompts[i:i + batch]), return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return [s.strip() for s in out]


def reply_language_probe(model, tokenizer, prompts: Sequence[str], seed: int = 0,
                         component: str = "", max_new_tokens: int = 8) -> pd.DataFrame:
    """Probe of the language each prompt is answered in, at every site of `model`.
    Adds `component`, `depth` (site / number of layers) and `reply_langs` (the label counts)."""
    replies = greedy_replies(model, tokenizer, prompts, max_new_tokens)
    labels = [gold_language(r) for r in replies]
    states = last_token_states(model, tokenizer, prompts)
    table = probe_sites(states, labels, seed=seed)
    counts = pd.Series(labels).value_counts()
    return table.assign(component=component, depth=table["site"] / (len(states) - 1),
                        reply_langs=", ".join(f"{k} {v}" for k, v in counts.items()))
