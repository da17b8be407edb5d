"""Did 4-bit move the result? The same seeded sample of tasks collected in NF4 and in bf16, and
the image-induced fidelity loss (IFL = fidelity with the image - fidelity with the text) for
each precision and their difference, with cluster-bootstrap intervals (clusters = parallel items,
so an item's languages and conditions are resampled together, as they are correlated).

    sample = precision_sample(tasks, n_items=50, seed=0)
    responses = collect_precisions(load, sample, model_name="llava-1.5-7b", template=t, ...)
    table = ifl_by_precision(responses, sample, identifier.predict, seed=0)

Fidelity here is the language identifier's surrogate (notebook 04 scores the full run, with DSL
over human labels); the check asks only whether the two precisions differ.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ifl.collect.runner import collect_responses
from ifl.langid import fidelity, parse_glotlid

PRECISIONS = {"nf4": "4bit", "bf16": None}   # name -> quantization passed to load_llava


def precision_sample(tasks: pd.DataFrame, *, n_items: int, seed: int) -> pd.DataFrame:
    """Every language's tasks of `n_items` parallel items drawn with `seed` (tasks with an image
    only: the IFL needs both conditions)."""
    with_image = tasks[tasks["image"].notna()]
    ids = np.array(sorted(with_image["parallel_id"].unique()))
    chosen = np.random.default_rng(seed).permutation(ids)[:n_items]
    return with_image[with_image["parallel_id"].isin(chosen)].sort_values("task_id").reset_index(drop=True)


def collect_precisions(load: Callable[[str | None], tuple], tasks: pd.DataFrame, *, out_dir: Path,
                       model_name: str, batch_sizes: dict[str, int] | None = None,
                       **collect_kwargs) -> pd.DataFrame:
    """Responses of `tasks` in both conditions for each precision (column `precision`).
    load(quantization) -> (model, processor), e.g. a `load_llava` partial; each model is
    released before the next loads. batch_sizes: precision name -> its batch size, replacing
    collect_kwargs' batch_size for that pass (bf16 needs more memory than NF4). Stored under
    out_dir/<model_name>@<precision> (resumable)."""
    import gc

    import torch

    frames = []
    for name, quantization in PRECISIONS.items():
        kwargs = {**collect_kwargs, **({"batch_size": batch_sizes[name]}
                                       if batch_sizes and name in batch_sizes else {})}
        model, processor = load(quantization)
        df = collect_responses(model, processor, tasks, model_name=f"{model_name}@{name}",
                               conditions=("image", "text"), out_dir=out_dir, **kwargs)
        frames.append(df.assign(model=model_name, precision=name))
        del model, processor
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return pd.concat(frames, ignore_index=True)


def _ifl_per_item(scored: pd.DataFrame) -> pd.DataFrame:
    """[parallel item x precision] sums and counts of fidelity per condition, for the bootstrap."""
    return (scored.groupby(["parallel_id", "precision", "condition"])["fidelity"]
            .agg(["sum", "count"]).unstack(["precision", "condition"], fill_value=0))


def _ifl(sums: pd.DataFrame, precision: str) -> float:
    img, txt = sums[("sum", precision, "image")], sums[("sum", precision, "text")]
    n_img, n_txt = sums[("count", precision, "image")], sums[("count", precision, "text")]
    return float(img.sum() / n_img.sum() - txt.sum() / n_txt.sum())


def ifl_by_precision(responses: pd.DataFrame, tasks: pd.DataFrame,
                     predict: Callable[[list[str]], list[str]], *, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Rows nf4, bf16 and "nf4 - bf16": IFL (image - text fidelity), its cluster-bootstrap
    interval at `level` (parallel items resampled with `seed`), n responses.
    predict: texts -> GlotLID-form labels (an `ifl.langid.Identifier.predict`)."""
    scored = responses.merge(tasks[["task_id", "parallel_id", "lang"]], on="task_id",
                             validate="many_to_one")
    labels = predict(scored["response"].fillna("").tolist())
    scored["fidelity"] = [int(fidelity(parse_glotlid(lab), lang))
                          for lab, lang in zip(labels, scored["lang"])]
    sums = _ifl_per_item(scored)
    names = list(PRECISIONS)
    point = {p: _ifl(sums, p) for p in names}
    rng = np.random.default_rng(seed)
    values = sums.to_numpy(dtype=float)
    boot = {p: [] for p in names}
    for _ in range(n_boot):
        take = pd.DataFrame(values[rng.integers(0, len(values), len(values))], columns=sums.columns)
        for p in names:
            boot[p].append(_ifl(take, p))
    boot = {p: np.array(v) for p, v in boot.items()}
    boot["nf4 - bf16"] = boot["nf4"] - boot["bf16"]
    point["nf4 - bf16"] = point["nf4"] - point["bf16"]
    alpha = (1 - level) / 2
    n = scored.groupby("precision").size()
    return pd.DataFrame([{"precision": p, "ifl": point[p],
                          "ci_low": float(np.quantile(boot[p], alpha)),
                          "ci_high": float(np.quantile(boot[p], 1 - alpha)),
                          "n_responses": int(n.get(p, n.sum())), "n_items": len(sums),
                          "level": level} for p in [*names, "nf4 - bf16"]])


def run_check(models: pd.DataFrame, tasks: pd.DataFrame, out_dir: Path, *, n_items: int, seed: int,
              device: str, dtype: str, predict: Callable[[list[str]], list[str]],
              bf16_batch_size: int | None = None, **collect_kwargs) -> pd.DataFrame:
    """Notebook 03's precision check for every model of a models table (rows of
    `ifl.stages.collect_responses.models_table`, each loaded by `ifl.runtime.load_model`): one
    table, rows model x (nf4, bf16, nf4 - bf16). bf16_batch_size: the bf16 pass's batch
    (None: collect_kwargs' batch_size, NF4's)."""
    from ifl.runtime import load_model, run_template

    sample = precision_sample(tasks, n_items=n_items, seed=seed)
    batch_sizes = None if bf16_batch_size is None else {"bf16": bf16_batch_size}
    frames = []
    for row in models.itertuples():
        def load(quantization, row=row):  # PRECISIONS' None = no quantization = load_model's "none"
            return load_model(row, dtype=dtype, quantization=quantization or "none", device=device)
        responses = collect_precisions(load, sample, out_dir=Path(out_dir), model_name=row.model,
                                       template=run_template(row), batch_sizes=batch_sizes,
                                       **collect_kwargs)
        frames.append(ifl_by_precision(responses, sample, predict, seed=seed).assign(model=row.model))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
