"""Notebook 08 (Beyond LLaVA): the paper's measurement applied to any vision-language model,
through the very code of `python -m ifl.audit` (ifl.audit.run_audit), one model at a time.

Each model's audit is written under the stage's folder as the CLI writes it (report.html,
fidelity.csv, responses.parquet, settings.json, resumable parts); this module chooses the
models and the tasks, and gathers one IFL per model (with and without the remedy).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ifl.audit import run_audit
from ifl.audit.inputs import AuditInputError
from ifl.audit.measure import overall_ifl
from ifl.data.schema import read_tasks, write_tasks
from ifl.params_schema import BeyondLlava
from ifl.runtime import cpu_threads, free_memory

AUDIT_BENCHMARK = "shapes"  # the CLI's own generated benchmark; any other name: notebook 01's tasks


def resolve_models(p: BeyondLlava, variants: pd.DataFrame | None) -> list[dict]:
    """[{model, source}] of every name in `p.models`: a key of `p.model_sources` (hub id or local
    folder) or a variant of notebook 02 (its saved model folder)."""
    trained = {} if variants is None else dict(zip(variants["variant"], variants["model_dir"]))
    rows = []
    for name in p.models:
        source = p.model_sources.get(name, trained.get(name))
        if source is None:
            known = sorted(set(p.model_sources) | set(trained))
            raise KeyError(f"08_beyond_llava: model {name!r} is neither a key of "
                           f"08_beyond_llava.model_sources nor a variant of notebook 02 "
                           f"(known: {', '.join(known) or 'none'})")
        rows.append(dict(model=name, source=str(source)))
    return rows


def benchmark_for_audit(p: BeyondLlava, tasks_path: Path | None, folder: Path) -> str:
    """The --benchmark argument: 'shapes', or notebook 01's tasks of `p.benchmark` saved as a
    task parquet in `folder` (the CLI's path form)."""
    if p.benchmark == AUDIT_BENCHMARK:
        return AUDIT_BENCHMARK
    if tasks_path is None:
        raise FileNotFoundError(f"08_beyond_llava.benchmark {p.benchmark!r} is read from notebook "
                                "01's tasks, which this run does not have: run ./run_all.sh "
                                "<params> --only 01 first (or use benchmark: shapes)")
    tasks = read_tasks(tasks_path)
    chosen = tasks[tasks["benchmark"] == p.benchmark]
    if chosen.empty:
        raise ValueError(f"08_beyond_llava.benchmark {p.benchmark!r} is not among notebook 01's "
                         f"benchmarks {sorted(set(tasks['benchmark']))} (or use 'shapes')")
    return str(write_tasks(chosen.reset_index(drop=True), folder / f"tasks_{p.benchmark}.parquet"))


def audit_languages(p: BeyondLlava, common_languages: list[str], benchmark: str) -> list[str]:
    """p.audit_languages, else the run's languages that the benchmark has."""
    if p.audit_languages:
        return list(p.audit_languages)
    if benchmark == AUDIT_BENCHMARK:
        from ifl.data.miniature.tasks import DEFAULT_LANGS
        have = set(DEFAULT_LANGS)
    else:
        have = set(read_tasks(benchmark)["lang"])
    langs = [x for x in common_languages if x in have]
    if not langs:
        raise ValueError(f"08_beyond_llava: none of common.languages {common_languages} is in the "
                         f"benchmark (it has {sorted(have)}); set 08_beyond_llava.audit_languages")
    return langs


def identifier(kind: str):
    """The language identifier of the audits (the same for every model)."""
    from ifl.langid import load_fallback, load_identifier

    if kind == "fallback":
        return load_fallback()
    return load_identifier(allow_fallback=kind == "auto")


def audit_all(models: list[dict], p: BeyondLlava, *, benchmark: str, languages: list[str],
              folder: Path, device: str, lid) -> pd.DataFrame:
    """Audit every model into folder/<model>/ with run_audit (the CLI's code); one row per
    model: its folder, or why it could not be audited (a clear error before generation:
    e.g. a processor without a chat template). Finished audits are resumed, not redone."""
    rows = []
    for m in models:
        out = folder / m["model"]
        try:
            with cpu_threads(p.threads, device):
                run_audit(m["source"], languages=languages, benchmark=benchmark,
                          n_per_language=p.n_per_language, precision=p.precision,
                          batch_size=p.batch_size, max_new_tokens=p.max_new_tokens,
                          remedy=p.remedy, layer=p.layer, labels=p.labels, out=out,
                          device=device, identifier=lid)
            rows.append(dict(model=m["model"], source=m["source"], audited=True, error=""))
        except AuditInputError as exc:
            rows.append(dict(model=m["model"], source=m["source"], audited=False, error=str(exc)))
        free_memory()
    return pd.DataFrame(rows)


def summary_table(status: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """One row per model: IFL over all its audited items (cluster bootstrap 95% CI by item),
    and after the remedy; models that could not be audited keep their reason."""
    rows = []
    for r in status.itertuples(index=False):
        row = dict(model=r.model, source=r.source, audited=r.audited, error=r.error)
        if r.audited:
            out = folder / r.model
            scored = pd.read_parquet(out / "responses.parquet")
            settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
            row.update(model_class=settings["model_class"], steering_layer=settings["steering_layer"],
                       **overall_ifl(scored), report=f"{r.model}/report.html")
        rows.append(row)
    return pd.DataFrame(rows)


def plot_ifl(table: pd.DataFrame, ax) -> None:
    """IFL per model (bars with 95% CIs), and after the remedy where collected."""
    done = table[table["audited"]].reset_index(drop=True)
    x = np.arange(len(done))
    pairs = [("ifl", "image vs description")]
    if "ifl_steered" in done and done["ifl_steered"].notna().any():
        pairs.append(("ifl_steered", "steered image vs description"))
    width = 0.8 / len(pairs)
    for k, (col, label) in enumerate(pairs):
        err = np.vstack([done[col] - done[f"{col}_lo"], done[f"{col}_hi"] - done[col]]).clip(0)
        ax.bar(x + k * width, done[col], width, yerr=np.nan_to_num(err), capsize=2, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x + 0.4 - width / 2, done["model"], rotation=30, ha="right")
    ax.set_ylabel("IFL (fidelity: image - description)")
    ax.legend(fontsize=8)


def summary(table: pd.DataFrame, benchmark: str, languages: list[str]) -> tuple[str, dict]:
    """(headline, metrics) of the stage."""
    done = table[table["audited"]]
    parts = [f"{r.model} {r.ifl:+.2f}" + (f" -> {r.ifl_steered:+.2f}" if pd.notna(r.get("ifl_steered")) else "")
             for _, r in done.iterrows()]
    skipped = table[~table["audited"]]
    headline = (f"IFL (image vs description) of {len(done)} model(s) on {Path(benchmark).stem}, "
                f"{len(languages)} languages: " + "; ".join(parts)
                + (" (-> after the remedy)" if any("->" in x for x in parts) else "")
                + (f"; {len(skipped)} not auditable: {', '.join(skipped['model'])}" if len(skipped) else ""))
    metrics = dict(benchmark=Path(benchmark).stem, languages=languages,
                   ifl={r.model: float(r.ifl) for r in done.itertuples()},
                   not_audited=dict(zip(skipped["model"], skipped["error"])))
    if "ifl_steered" in done:
        metrics["ifl_steered"] = {r.model: float(r.ifl_steered) for r in done.itertuples()
                                  if pd.notna(r.ifl_steered)}
    return headline, metrics
