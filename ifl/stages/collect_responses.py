"""Notebook 03: which models answer which tasks, and collecting their responses (§3.1).

Both worlds run the same loop: every model of the run (off-the-shelf LLaVAs for Figure 1, the
variants notebook 02 trained for Table 4) answers every selected task in every condition through
`ifl.collect.collect_responses`, which resumes after any interruption. A model whose responses
are all stored is not even loaded again. With `processes` > 1 each model's missing responses
are collected by that many ranks through `accelerate launch` (`ifl.runtime.collect_in_ranks`),
merged, and read back the same way; with `machines` > 1 by the ranks of every node together.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ifl.collect import collect_responses, load_responses
from ifl.collect.store import model_dir
from ifl.models import model_info, template_for
from ifl.params_schema import CollectResponses
from ifl.runtime import (collect_in_ranks, cpu_threads, free_memory, launches, load_model,
                         machine_options, run_template, sample_parallel_items, variant_template)
from ifl.stage import write_json_atomic

log = logging.getLogger(__name__)
IDENTITY_FILE = "weights.json"
HASH_LIMIT = 256 * 2**20   # weight files up to this size are hashed; larger ones by size + mtime

MODEL_COLUMNS = ["model", "kind", "source", "revision", "template", "image_first", "llm", "vision",
                 "data_lang"]


def models_table(p: CollectResponses, world: str, variants: pd.DataFrame | None) -> pd.DataFrame:
    """One row per model to evaluate (MODEL_COLUMNS). 'variants' expands to notebook 02's
    variants (variants.csv), whose design facts (llm, vision, data_lang) Table 4 regresses on."""
    rows = []
    for name in p.models:
        if name == "variants":
            if variants is None:
                raise FileNotFoundError("03_collect_responses.models lists 'variants' but notebook 02 "
                                        "has no variants.csv: run notebook 02 first")
            for v in variants.itertuples():
                # trained with `<image>` first (ifl.train.data moves it there)
                rows.append(dict(model=v.variant, kind="variant", source=v.model_dir, revision=None,
                                 template=variant_template(v.llm, world), image_first=True, llm=v.llm,
                                 vision=v.vision, data_lang=v.data_lang))
            continue
        if name not in p.model_sources:
            raise KeyError(f"03_collect_responses.models names {name!r}, which has no entry in "
                           f"03_collect_responses.model_sources (known: {', '.join(p.model_sources)})")
        info = model_info(name)
        rows.append(dict(model=name, kind="llava", source=p.model_sources[name],
                         revision=p.model_revisions.get(name, info.revision),
                         template=template_for(name).name, image_first=info.image_first,
                         llm=info.llm, vision=info.vision,
                         data_lang="en"))  # the off-the-shelf models were trained on English data
    table = pd.DataFrame(rows, columns=MODEL_COLUMNS)
    dup = table["model"].duplicated()
    if dup.any():
        raise ValueError(f"model {table.loc[dup, 'model'].iloc[0]!r} is listed twice in "
                         "03_collect_responses.models")
    return table


def select_tasks(tasks: pd.DataFrame, *, benchmarks: list[str] | None, max_per_cell: int | None,
                 languages: list[str], seed: int) -> pd.DataFrame:
    """The tasks to answer: chosen benchmarks and languages; with `max_per_cell`, at most that many
    parallel items per benchmark, drawn with `seed` and the same in every language (so image and
    language effects are compared on the same content)."""
    if benchmarks is not None:
        unknown = sorted(set(benchmarks) - set(tasks["benchmark"]))
        if unknown:
            raise KeyError(f"03_collect_responses.benchmarks: {unknown} not in notebook 01's tasks "
                           f"(there: {sorted(tasks['benchmark'].unique())})")
        tasks = tasks[tasks["benchmark"].isin(benchmarks)]
    tasks = tasks[tasks["lang"].isin(languages)]
    tasks = sample_parallel_items(tasks, max_per_cell, seed)
    return tasks.sort_values("task_id").reset_index(drop=True)


def weights_id(source: str, revision: str | None) -> str:
    """What weights `source` names: a hub id by id@revision; a local folder (a trained variant)
    by a hash of its config and weight files, so a retrained variant gets another id."""
    folder = Path(source)
    if not folder.is_dir():
        return f"{source}@{revision or 'main'}"
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix not in (".json", ".safetensors", ".bin") or not path.is_file():
            continue
        stat = path.stat()
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if stat.st_size <= HASH_LIMIT
                      else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{source}#{digest.hexdigest()[:16]}"


def forget_stale(out_dir: Path, model: str, identity: str) -> bool:
    """Keep `model`'s stored responses unless they are proven to come from other weights than
    `identity` names (their `weights.json` says so: notebook 02 retrained the variant); those are
    moved aside to `<model>.stale-<timestamp>` (never deleted), with a message. Responses without
    `weights.json` (e.g. shards collected by hand on several GPUs) cannot be proven stale: they
    are kept and adopted. Records `identity` either way. True if responses were moved aside."""
    folder = model_dir(out_dir, model)
    marker = folder / IDENTITY_FILE
    stale = False
    if folder.exists() and marker.exists():
        try:
            stored = json.loads(marker.read_text(encoding="utf-8"))["weights"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{marker}: unreadable ({exc}); it should be {{\"weights\": ...}}. "
                             "Fix or delete that file (the responses beside it are kept)") from exc
        stale = stored != identity
    elif folder.exists() and any(folder.iterdir()):
        print(f"{model}: stored responses in {folder} have no {IDENTITY_FILE} (collected outside "
              f"this notebook?); kept as responses of {identity}. Move the folder away to "
              "collect them again.")
    if stale:
        aside = folder.with_name(f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        folder.rename(aside)
        log.warning("%s: stored responses came from %s, not %s; moved to %s", model, stored,
                    identity, aside)
        print(f"{model}: the stored responses came from other weights (retrained?); moved them "
              f"to {aside} and collecting again")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"weights": identity})
    return stale


def missing_pairs(out_dir: Path, model: str, tasks: pd.DataFrame, conditions) -> int:
    """How many (task, condition) responses of `model` are not stored yet."""
    have = load_responses(out_dir, model)
    done = set(zip(have["task_id"], have["condition"]))
    return sum((t, c) not in done for t in tasks["task_id"] for c in conditions)


def collect_all(models: pd.DataFrame, tasks: pd.DataFrame, out_dir: Path, p: CollectResponses, *,
                device: str, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(responses, timing): every model's responses (stored ones read back), one row per
    model x task x condition, and a per-model timing summary."""
    frames, timing = [], []
    with cpu_threads(p.threads, device):
        for row in models.itertuples():
            forget_stale(out_dir, row.model, weights_id(row.source, row.revision))
            todo = missing_pairs(out_dir, row.model, tasks, p.conditions)
            start = time.perf_counter()
            collect = dict(model_name=row.model, template=run_template(row),
                           conditions=list(p.conditions), max_new_tokens=p.max_new_tokens,
                           batch_size=p.batch_size, speedups=p.speedups.model_dump())
            if todo and launches(p):
                df = collect_in_ranks(row, tasks, processes=p.processes, out_dir=out_dir,
                                      dtype=p.dtype, quantization=p.quantization, device=device,
                                      threads=p.threads, collect=collect,
                                      key="03_collect_responses.processes", **machine_options(p))
            elif todo:
                model, processor = load_model(row, dtype=p.dtype, quantization=p.quantization,
                                              device=device)
                df = collect_responses(model, processor, tasks, out_dir=out_dir,
                                       progress=progress, **collect)
                del model, processor
                free_memory()
            else:
                df = load_responses(out_dir, row.model)
                df = df[df["task_id"].isin(set(tasks["task_id"])) & df["condition"].isin(p.conditions)]
            timing.append(dict(model=row.model, generated_now=todo, stored=len(df) - todo,
                               wall_s=round(time.perf_counter() - start, 1),
                               mean_new_tokens=float(df["n_new_tokens"].mean()) if len(df) else np.nan))
            frames.append(df)
    return pd.concat(frames, ignore_index=True), pd.DataFrame(timing)


def precision_checked(models: pd.DataFrame, p: CollectResponses) -> pd.DataFrame:
    """The rows of the models table that the precision check re-collects: the off-the-shelf
    models named in `precision_check_models` (null: every off-the-shelf model)."""
    llavas = models[models["kind"] == "llava"]
    if p.precision_check_models is None:
        return llavas
    return llavas[llavas["model"].isin(p.precision_check_models)]


def precision_identifier(p: CollectResponses):
    """The check's language identifier, by notebook 04's rule (`ifl.score.load_identifier_from`):
    'glotlid' is GlotLID v3 or an error, never a silent lid.176."""
    from ifl.score import identifier_settings, load_identifier_from

    return load_identifier_from(identifier_settings(p.precision_check_identifier,
                                                    p.precision_check_glotlid_source,
                                                    p.precision_check_glotlid_revision))


def precision_check(models: pd.DataFrame, tasks: pd.DataFrame, out_dir: Path, p: CollectResponses,
                    *, seed: int, device: str) -> pd.DataFrame:
    """Notebook 03's precision check (`ifl.collect.precision.run_check`) on the models
    `precision_checked` picks, with the identifier `precision_identifier` loads (column
    `identifier` names it); the bf16 pass at `precision_check_batch_size`."""
    from ifl.collect.precision import run_check

    identifier = precision_identifier(p)
    table = run_check(precision_checked(models, p), tasks, out_dir, n_items=p.precision_check_items,
                      seed=seed, device=device, dtype="bfloat16", predict=identifier.predict,
                      bf16_batch_size=p.precision_check_batch_size,
                      max_new_tokens=p.max_new_tokens, batch_size=p.batch_size, progress=False)
    return table.assign(identifier=identifier.name) if len(table) else table


def generation_settings(p: CollectResponses, device: str) -> dict:
    """How the responses were generated (generation.json): a later stage that generates more
    (notebook 07's steered runs) must generate alike to be comparable."""
    return {"max_new_tokens": p.max_new_tokens, "dtype": p.dtype, "quantization": p.quantization,
            "conditions": list(p.conditions), "batch_size": p.batch_size, "device": device,
            "processes": p.processes, "speedups": p.speedups.model_dump()}


def answer_lengths(responses: pd.DataFrame, tasks: pd.DataFrame, max_new_tokens: int) -> pd.DataFrame:
    """Per benchmark and condition: completions, mean new tokens, empty answers, the share that
    hit the token limit, seconds per completion."""
    return (responses.merge(tasks[["task_id", "benchmark"]], on="task_id")
            .groupby(["benchmark", "condition"])
            .agg(completions=("response", "size"), mean_new_tokens=("n_new_tokens", "mean"),
                 empty=("response", lambda s: int((s.str.strip() == "").sum())),
                 hit_limit=("n_new_tokens", lambda s: float((s >= max_new_tokens).mean())),
                 s_per_completion=("seconds", "mean")))


def example_answers(responses: pd.DataFrame, tasks: pd.DataFrame, model: str) -> pd.DataFrame:
    """The first parallel item answered by `model`, every language, with and without the image."""
    item = tasks["parallel_id"].iloc[0]
    return (responses[responses["model"] == model]
            .merge(tasks[["task_id", "parallel_id", "lang", "question"]], on="task_id")
            .query("parallel_id == @item")
            .pivot_table(index=["lang", "question"], columns="condition", values="response",
                         aggfunc="first"))


def headline(responses: pd.DataFrame, models: pd.DataFrame, timing: pd.DataFrame) -> str:
    generated = int(timing["generated_now"].sum())
    return (f"{len(responses):,} responses from {len(models)} models "
            f"({generated:,} generated now in {timing['wall_s'].sum() / 60:.1f} min)")
