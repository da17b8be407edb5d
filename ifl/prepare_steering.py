"""Notebook 07: steer each model towards the query's language (ifl.steer) on the image condition,
score the steered responses as notebook 04 scored the rest, and set IFL beside IFL + remedy.

    IFL          = fidelity(image) - fidelity(text)            (notebook 04's responses)
    IFL + remedy = fidelity(image, steered) - fidelity(text)   (the text condition is not steered)

per model x benchmark x language; a model's average is the unweighted mean over its cells, as
the paper's Table 5 is the mean of the cells of its Tables 6-9.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from ifl.collect import collect_responses
from ifl.params_schema import ScoreLanguages, Steering
from ifl.prepare_collect import run_template
from ifl.score import join_tasks, score_language
from ifl.steer import LanguageSteering, steering_vector

# the paper's model and benchmark names (Tables 5-9) -> ours
PAPER_MODELS = {"llava7b": "llava-1.5-7b", "llava13b": "llava-1.5-13b", "bakllava": "bakllava",
                "llava-gemma2b": "llava-gemma-2b", "llavagemma2b": "llava-gemma-2b"}
PAPER_BENCHMARKS = {"llavaw": "llavaw", "maxm": "maxm", "visitazure": "visit"}


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
    if per_cell is not None:
        rng, keep = np.random.default_rng(seed), []
        for _, part in done.groupby("benchmark", sort=True):
            keep += rng.permutation(sorted(part["parallel_id"].unique()))[:per_cell].tolist()
        done = done[done["parallel_id"].isin(keep)]
    return tasks[tasks["task_id"].isin(set(done["task_id"]))].sort_values("task_id").reset_index(drop=True)


def load(row, p: Steering, device: str):
    from ifl.models import load_llava

    revision = None if pd.isna(row.revision) else row.revision
    return load_llava(row.source, revision=revision, dtype=p.dtype, device=device,
                      quantization=None if p.quantization == "none" else p.quantization)


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
                    out_dir: Path, progress: bool = True) -> pd.DataFrame:
    """Steered image-condition responses for each language's tasks; `model` column = the
    unsteered model's name, `steered_as` = the run's folder name."""
    frames = []
    for lang, vec in vecs.items():
        part = tasks[tasks["lang"] == lang]
        if part.empty:
            continue
        name = steered_name(row.model, vec, p)
        df = collect_responses(model, processor, part, model_name=name, template=run_template(row),
                               conditions=("image",), max_new_tokens=p.max_new_tokens,
                               batch_size=p.batch_size, out_dir=out_dir, progress=progress,
                               steering=LanguageSteering.of(vec, p.scale, p.positions))
        frames.append(df.assign(model=row.model, steered_as=name, layer=vec.settings["layer"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def check_generation_matches_03(run_dir: Path, p: Steering) -> None:
    """IFL + remedy compares steered answers with notebook 03's unsteered ones: both must be
    generated alike. Raise naming the keys that differ from runs/<run>/03_collect_responses/."""
    from ifl.params import load_params

    path = run_dir / "03_collect_responses" / "params.yaml"
    if not path.exists():
        return
    collected = load_params(path).collect_responses
    differ = [f"{key}: 07_steering has {getattr(p, key)!r}, notebook 03 ran with "
              f"{getattr(collected, key)!r}" for key in ("max_new_tokens", "dtype", "quantization")
              if getattr(p, key) != getattr(collected, key)]
    if differ:
        raise ValueError(f"07_steering must generate as notebook 03 did ({path}): " + "; ".join(differ))


def identifier_as_in_04(run_dir: Path):
    """The language identifier notebook 04 used: `prepare_score.identifier_for` with 04's settings
    from runs/<run>/04_score_languages/params.yaml (written by the runner), else the defaults."""
    from ifl.params import load_params
    from ifl.prepare_score import identifier_for

    path = run_dir / "04_score_languages" / "params.yaml"
    return identifier_for(load_params(path).score_languages if path.exists() else ScoreLanguages())


def score(responses: pd.DataFrame, tasks: pd.DataFrame, identifier, world: str) -> pd.DataFrame:
    """fidelity_lid as notebook 04 computes it; in the miniature also `fidelity_exact` (the
    world's exact word rule, no simulated annotator)."""
    out = score_language(join_tasks(responses, tasks), identifier)
    if world == "miniature":
        out["fidelity_exact"] = exact_fidelity(out)
    return out


def exact_fidelity(scored: pd.DataFrame) -> np.ndarray:
    from ifl.data.miniature import gold_language

    return np.array([float(gold_language(r or "") == lang)
                     for r, lang in zip(scored["response"].fillna(""), scored["lang"])])


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
    """The paper's Table 5 and Tables 6-9 (ifl/paper/), with our model and benchmark names."""
    def read(name):
        return pd.read_csv(resources.files("ifl.paper").joinpath(name).open(encoding="utf-8"))

    t5 = read("table5_steering_summary.csv").assign(model=lambda d: d["model"].map(PAPER_MODELS))
    t69 = read("table6-9_steering_by_language.csv")
    t69 = t69.assign(model=t69["model"].map(PAPER_MODELS),
                     benchmark=t69["dataset"].map(PAPER_BENCHMARKS).fillna(t69["dataset"]))
    return t5, t69.drop(columns="dataset")


def beside_paper(ours: pd.DataFrame, paper_cells: pd.DataFrame) -> pd.DataFrame:
    """Our cells (and averages) joined with the paper's, where the paper has that cell."""
    cols = ["model", "benchmark", "lang", "ifl", "ifl_remedy", "diff"]
    return ours[cols + ["n"]].merge(paper_cells[cols], on=["model", "benchmark", "lang"], how="inner",
                                    suffixes=("", "_paper"))


def sweep_layers(depths: list[float], n_layers: int) -> list[int]:
    """floor(f x n_layers) for each fraction, without repeats, in order."""
    return sorted({int(f * n_layers) for f in depths})
