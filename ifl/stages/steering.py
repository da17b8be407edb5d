"""Notebook 07 (§5.3-5.4, Tables 5-9): steer each model towards the query's language (ifl.steer) on the image condition,
score the steered responses as notebook 04 scored the rest, and set IFL beside IFL + remedy.

    IFL          = fidelity(image) - fidelity(text)            (notebook 04's responses)
    IFL + remedy = fidelity(image, steered) - fidelity(text)   (the text condition is not steered)

per model x benchmark x language; a model's average is the unweighted mean over its cells, as
the paper's Table 5 is the mean of the cells of its Tables 6-9.

The steered collection runs in `processes` ranks through `accelerate launch` when that is > 1
(or `machines` > 1: the ranks of every node together; one launch per language; the steering
vector is handed to the ranks), with `speedups` either way; the layer sweep, a few items per
cell, stays in this process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ifl import paper
from ifl.findings import agrees_with
from ifl.collect import collect_responses
from ifl.params_schema import Steering
from ifl.runtime import (collect_in_ranks, cpu_threads, free_memory, launches, load_model,
                         machine_options, run_template, sample_parallel_items)
from ifl.score import exact_fidelity, join_tasks, load_identifier_from, score_language
from ifl.steer import LanguageSteering, default_layer, default_layer_of, steering_vector

GENERATION_KEYS = ("max_new_tokens", "dtype", "quantization")  # must match notebook 03's


def steer_models(models: pd.DataFrame, p: Steering) -> pd.DataFrame:
    """Rows of notebook 03's models.csv to steer; 'variants' = every variant there."""
    names = []
    for name in p.models:
        names += models.loc[models["kind"] == "variant", "model"].tolist() if name == "variants" else [name]
    unknown = sorted(set(names) - set(models["model"]))
    if unknown:
        raise KeyError(f"07_steering.models: {unknown} are not in notebook 03's models.csv "
                       f"(there: {', '.join(models['model'])})")
    return models.set_index("model").loc[list(dict.fromkeys(names))].reset_index()


def languages(p: Steering, common_languages: list[str]) -> list[str]:
    """Query languages to steer: English is left out (a_en = x_en - x_en = 0)."""
    return [lang for lang in (p.steer_languages or common_languages) if lang != "en"]


def steer_tasks(scored: pd.DataFrame, tasks: pd.DataFrame, model: str, langs: list[str],
                benchmarks: list[str] | None, per_cell: int | None, seed: int) -> pd.DataFrame:
    """The image-condition tasks notebook 04 scored for `model` in `langs` (and `benchmarks`),
    at most `per_cell` parallel items per benchmark (seeded, the same items in every language)."""
    done = scored[(scored["model"] == model) & (scored["image"] == 1) & scored["lang"].isin(langs)]
    if benchmarks is not None:
        done = done[done["benchmark"].isin(benchmarks)]
    done = sample_parallel_items(done, per_cell, seed)
    return tasks[tasks["task_id"].isin(set(done["task_id"]))].sort_values("task_id").reset_index(drop=True)


def vectors(model, processor, prompts: dict[str, str], layer: int, p: Steering, template: str):
    """{lang: SteeringVector} for every non-English prompt, and their diagnostics table."""
    out = {lang: steering_vector(model, processor.tokenizer, text, prompts["en"], layer, lang=lang,
                                 pool=p.pooling, template=template if p.prompt_template else None,
                                 massive_factor=p.massive_factor)
           for lang, text in prompts.items() if lang != "en"}
    table = pd.DataFrame([{"lang": lang, "layer": layer, "x_lang": v.settings["x_lang"],
                           "digest": v.digest, **v.diagnostics} for lang, v in out.items()])
    return out, table


def steered_name(model: str, vec, p: Steering) -> str:
    """Folder name of a steered run: settings and the vector's digest, so a changed setting gets
    its own folder (and a rerun with the same ones resumes)."""
    return (f"{model}+steer-{vec.lang}-L{vec.settings['layer']}-{p.positions}-x{p.scale:g}-"
            f"{vec.digest[:8]}")


def collect_steered(model, processor, row, tasks: pd.DataFrame, vecs: dict, p: Steering,
                    out_dir: Path, progress: bool = True, *, in_ranks: bool = False,
                    device: str = "cpu") -> pd.DataFrame:
    """Steered image-condition responses for each language's tasks; `model` column = the
    unsteered model's name, `steered_as` = the run's folder name. With `in_ranks` each
    language's run is collected by p.processes ranks per node on p.machines nodes (`accelerate
    launch`), each loading the model itself and steering with the vector handed to it (`model`
    may then be None)."""
    frames = []
    for lang, vec in vecs.items():
        part = tasks[tasks["lang"] == lang]
        if part.empty:
            continue
        name = steered_name(row.model, vec, p)
        steering = LanguageSteering.of(vec, p.scale, p.positions)
        collect = dict(model_name=name, template=run_template(row), conditions=["image"],
                       max_new_tokens=p.max_new_tokens, batch_size=p.batch_size,
                       speedups=p.speedups.model_dump())
        if in_ranks:
            df = collect_in_ranks(row, part, processes=p.processes, out_dir=out_dir, dtype=p.dtype,
                                  quantization=p.quantization, device=device, threads=p.threads,
                                  collect=collect, steering=steering, key="07_steering.processes",
                                  **machine_options(p))
        else:
            df = collect_responses(model, processor, part, out_dir=out_dir, progress=progress,
                                   steering=steering, **collect)
        frames.append(df.assign(model=row.model, steered_as=name, layer=vec.settings["layer"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def check_generation_matches_03(generation: dict, p: Steering) -> None:
    """IFL + remedy compares steered answers with notebook 03's unsteered ones: both must be
    generated alike. `generation` is what notebook 03 recorded (generation.json); raise naming
    the keys that differ."""
    differ = [f"{key}: 07_steering has {getattr(p, key)!r}, notebook 03 ran with {generation[key]!r}"
              for key in GENERATION_KEYS if getattr(p, key) != generation[key]]
    if differ:
        raise ValueError("07_steering must generate as notebook 03 did (its generation.json): "
                         + "; ".join(differ))


def identifier_as_in_04(record: dict):
    """The language identifier notebook 04 used, rebuilt from its identifier.json."""
    return load_identifier_from(record)


def score(responses: pd.DataFrame, tasks: pd.DataFrame, identifier, world: str) -> pd.DataFrame:
    """fidelity_lid as notebook 04 computes it; in the miniature also `fidelity_exact` (the
    world's exact word rule, no simulated annotator)."""
    out = score_language(join_tasks(responses, tasks), identifier)
    if world == "miniature":
        out["fidelity_exact"] = exact_fidelity(out)
    return out


def ifl_table(base: pd.DataFrame, steered: pd.DataFrame, column: str = "fidelity_lid") -> pd.DataFrame:
    """One row per model x benchmark x lang with image, text, steered fidelity (cells restricted
    to the parallel items that were steered), ifl, ifl_remedy, diff; plus an 'average' row per
    model (unweighted over its cells, as the paper)."""
    key = ["model", "benchmark", "lang"]
    items = steered[["model", "parallel_id", "lang"]].drop_duplicates()
    base = base.merge(items, on=["model", "parallel_id", "lang"])
    cond = base.assign(condition=np.where(base["image"] == 1, "image", "text"))
    table = cond.pivot_table(index=key, columns="condition", values=column, aggfunc="mean")
    table.columns.name = None
    table["steered"] = steered.groupby(key)[column].mean()
    table["n"] = steered.groupby(key).size()
    table["ifl"] = table["image"] - table["text"]
    table["ifl_remedy"] = table["steered"] - table["text"]
    table["diff"] = table["ifl_remedy"] - table["ifl"]
    table = table.reset_index()
    avg = table.groupby("model")[["image", "text", "steered", "ifl", "ifl_remedy", "diff"]].mean()
    avg = avg.assign(benchmark="average", lang="-", n=table.groupby("model")["n"].sum()).reset_index()
    out = pd.concat([table, avg], ignore_index=True)
    out["relative_pct"] = 100 * out["diff"] / out["ifl"].abs().replace(0, np.nan)  # no IFL: undefined
    return out[key + ["n", "image", "text", "steered", "ifl", "ifl_remedy", "diff", "relative_pct"]]


def paper_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's Table 5 and Tables 6-9, with our model and benchmark names."""
    return paper.table5(), paper.tables6_9()


def beside_paper(ours: pd.DataFrame, paper_cells: pd.DataFrame) -> pd.DataFrame:
    """Our cells (and averages) joined with the paper's, where the paper has that cell."""
    cols = ["model", "benchmark", "lang", "ifl", "ifl_remedy", "diff"]
    return ours[cols + ["n"]].merge(paper_cells[cols], on=["model", "benchmark", "lang"], how="inner",
                                    suffixes=("", "_paper"))


def sweep_layers(depths: list[float], n_layers: int) -> list[int]:
    """floor(f x n_layers) for each fraction, without repeats, in order."""
    return sorted({int(f * n_layers) for f in depths})


def steer_all(models: pd.DataFrame, scored: pd.DataFrame, tasks: pd.DataFrame, prompts: dict[str, str],
              langs: list[str], p: Steering, *, responses_dir: Path, vectors_dir: Path, device: str,
              seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Every model of `models` steered on its image-condition tasks: (steered responses,
    vector diagnostics, the steering convention per model). Vectors are saved as
    `vectors_dir/<model>.pt`; each model is loaded, steered and released in turn."""
    import torch

    runs, diagnostics, conventions = [], [], {}
    with cpu_threads(p.threads, device):
        for row in models.itertuples():
            model, processor = load_model(row, dtype=p.dtype, quantization=p.quantization, device=device)
            layer = default_layer(model) if p.layer is None else p.layer
            vecs, diag = vectors(model, processor, prompts, layer, p, row.template)
            diagnostics.append(diag.assign(model=row.model))
            conventions[row.model] = {k: v for k, v in next(iter(vecs.values())).settings.items()
                                      if k != "x_lang"}
            vectors_dir.mkdir(parents=True, exist_ok=True)
            torch.save({lang: v.vector for lang, v in vecs.items()}, vectors_dir / f"{row.model}.pt")
            todo = steer_tasks(scored, tasks, row.model, langs, p.benchmarks, p.max_tasks_per_cell, seed)
            if launches(p):  # the ranks load their own copies: free this one's device first
                del model, processor
                free_memory()
                model = processor = None
            runs.append(collect_steered(model, processor, row, todo, vecs, p, responses_dir,
                                        in_ranks=launches(p), device=device))
            del model, processor
            free_memory()
    return pd.concat(runs, ignore_index=True), pd.concat(diagnostics, ignore_index=True), conventions


def layer_sweep(row, scored: pd.DataFrame, tasks: pd.DataFrame, prompts: dict[str, str], langs: list[str],
                p: Steering, *, identifier, world: str, fidelity_columns: list[str], responses_dir: Path,
                device: str, seed: int) -> tuple[pd.DataFrame, int, int]:
    """One model (`row` of notebook 03's models), a few items per cell (`sweep_tasks_per_cell`),
    the same vectors' recipe at each layer of `sweep_depths` and each scale of `sweep_scales`:
    (one 'average' row of `ifl_table` per layer x scale x fidelity column, the model's number
    of layers, its default layer)."""
    from ifl.compat import decoder_layers

    parts = []
    with cpu_threads(p.threads, device):
        model, processor = load_model(row, dtype=p.dtype, quantization=p.quantization, device=device)
        n_layers = len(decoder_layers(model))
        todo = steer_tasks(scored, tasks, row.model, langs, p.benchmarks, p.sweep_tasks_per_cell, seed)
        for layer in sweep_layers(p.sweep_depths, n_layers):
            vecs, _ = vectors(model, processor, prompts, layer, p, row.template)
            for scale in p.sweep_scales:
                at_scale = p.model_copy(update={"scale": scale})
                got = score(collect_steered(model, processor, row, todo, vecs, at_scale, responses_dir,
                                            progress=False), tasks, identifier, world)
                for col in fidelity_columns:
                    t = ifl_table(scored, got, col)
                    parts.append(t[t["benchmark"] == "average"].assign(layer=layer, scale=scale, fidelity=col))
        default = default_layer(model) if p.layer is None else p.layer
        del model, processor
        free_memory()
    return pd.concat(parts, ignore_index=True), n_layers, default


def summary(table: pd.DataFrame, paper5: pd.DataFrame | None) -> pd.DataFrame:
    """Table 5: each model's 'average' row (beside the paper's where `paper5` is given)."""
    out = table[table["benchmark"] == "average"].drop(columns=["benchmark", "lang"])
    if paper5 is not None:
        out = out.merge(paper5.drop(columns="relative_increase_pct"), on="model", how="left",
                        suffixes=("", "_paper"))
    return out


def headline(summary_table: pd.DataFrame) -> str:
    avg = summary_table.set_index("model")
    return "IFL -> IFL + remedy (LID): " + "; ".join(
        f"{m} {r.ifl:+.3f} -> {r.ifl_remedy:+.3f}" for m, r in avg.iterrows())


# --- the findings table (runs/<run>/findings.csv, ifl/findings.py) ---------------------------

STEERING = "Steering at one third of the depth, scale 1, reduces IFL (Tables 5-9)"


def _cell_sums(frame: pd.DataFrame, column: str, cells: pd.MultiIndex, ids: pd.Index):
    """Per cell (rows) x parallel item (columns): the sum and the count of `column`."""
    key = list(cells.names)
    g = frame.groupby(key + ["parallel_id"])[column].agg(["sum", "count"])
    wide = {stat: g[stat].unstack("parallel_id").reindex(index=cells, columns=ids).fillna(0.0).to_numpy()
            for stat in ("sum", "count")}
    return wide["sum"], wide["count"]


def steering_effect(base: pd.DataFrame, steered: pd.DataFrame, column: str = "fidelity_lid", *,
                    n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """What steering does to the image's fidelity, averaged as Table 5 averages: per model x
    benchmark x language cell, steered minus unsteered image-condition fidelity on the steered
    items (= `ifl_table`'s diff, IFL + remedy - IFL: the text condition cancels), the unweighted
    mean over a model's cells, then over the models. Its interval: a percentile bootstrap that
    resamples parallel items (one item = the same image and question in every language and
    model, so its responses are not independent). Returns estimate, ci_low, ci_high, n_models,
    n_items."""
    key = ["model", "benchmark", "lang"]
    items = steered[["model", "parallel_id", "lang"]].drop_duplicates()
    image = base[base["image"] == 1].merge(items, on=["model", "parallel_id", "lang"])
    cells = pd.MultiIndex.from_frame(steered[key].drop_duplicates().sort_values(key))
    ids = pd.Index(sorted(set(steered["parallel_id"])), name="parallel_id")
    s_sum, s_n = _cell_sums(steered, column, cells, ids)
    i_sum, i_n = _cell_sums(image, column, cells, ids)
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(len(ids)), rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)),
                                                             size=n_boot)])  # row 0: the data as is
    with np.errstate(invalid="ignore", divide="ignore"):  # a cell whose items were all left out: NaN
        diff = weights @ s_sum.T / (weights @ s_n.T) - weights @ i_sum.T / (weights @ i_n.T)
    models = cells.get_level_values("model")
    per_model = np.column_stack([np.nanmean(diff[:, models == m], axis=1) for m in models.unique()])
    overall = np.nanmean(per_model, axis=1)
    boot = overall[1:][~np.isnan(overall[1:])]
    alpha = (1 - level) / 2
    return {"estimate": float(overall[0]), "ci_low": float(np.quantile(boot, alpha)),
            "ci_high": float(np.quantile(boot, 1 - alpha)), "n_models": int(models.nunique()),
            "n_items": len(ids)}


def steering_finding(base: pd.DataFrame, steered: pd.DataFrame, p: Steering, column: str = "fidelity_lid",
                     *, seed: int = 0, n_boot: int = 2000) -> dict:
    """The findings row 'steering reduces IFL': `steering_effect` on `column` beside the paper's
    mean improvement over its four models (Table 5's diff); agrees = positive, interval above 0."""
    paper_value = float(paper.table5()["diff"].mean())
    row = {"finding": STEERING, "paper": f"{paper_value:.3f}"}
    paper_note = f"paper: mean over Table 5's {len(paper.table5())} models of IFL + remedy - IFL"
    if steered.empty:
        return {**row, "run": None, "ci_low": None, "ci_high": None, "agrees": False,
                "note": f"not estimated: no steered responses; {paper_note}"}
    got = steering_effect(base, steered, column, n_boot=n_boot, seed=seed)
    setting = (f"layer {'n_layers // 3' if p.layer is None else p.layer}, scale {p.scale:g}"
               + ("" if p.layer is None and p.scale == 1 else " (not the paper's setting)"))
    note = (f"steered - unsteered image-condition fidelity ({column}), mean over {got['n_models']} "
            f"model(s) of their cells' mean, {setting}; 95% interval: bootstrap over "
            f"{got['n_items']} parallel items; {paper_note}")
    return {**row, "run": got["estimate"], "ci_low": got["ci_low"], "ci_high": got["ci_high"],
            "agrees": agrees_with(paper_value, got["estimate"], got["ci_low"], got["ci_high"]), "note": note}


def probe_at_steering_layer(component_metrics: pd.DataFrame | None, layer: int | None) -> pd.DataFrame:
    """Miniature: notebook 02's linear probe of the reply language (kind lm_probe) per backbone
    and site, with the site where steering writes marked: the output of decoder layer l is
    site l + 1 (hidden_states index; sites run 0 = embeddings .. n_layers). `layer` None: the
    default, one third of the depth. Where the probe sits at its majority baseline, no linear
    'which language' variable exists there for a vector to move. Empty without the probes.

    >>> rows = [{"component": "vicuna", "kind": "lm_probe", "metric": m, "site": s, "value": v}
    ...         for s in range(7) for m, v in (("probe_accuracy", 0.5 + s / 20), ("probe_majority", 0.5))]
    >>> t = probe_at_steering_layer(pd.DataFrame(rows), None)
    >>> t.loc[t["steering_site"], "site"].tolist()
    [3]
    """
    if component_metrics is None or "kind" not in component_metrics:
        return pd.DataFrame()
    probe = component_metrics[component_metrics["kind"] == "lm_probe"]
    if probe.empty:
        return pd.DataFrame()
    table = probe.pivot_table(index=["component", "site"], columns="metric", values="value").reset_index()
    n_layers = int(table["site"].max())
    table["steering_site"] = table["site"] == (default_layer_of(n_layers) if layer is None else layer) + 1
    table.columns.name = None
    return table.rename(columns={"component": "backbone"})
