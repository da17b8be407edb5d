"""Facts copied from the paper (its tables as CSV in this folder), shown beside this run's numbers.

Every reader of these tables is here, and they all speak the package's names: the paper writes
its models and benchmarks several ways (`llava-v1.5-7b` in the text, `llava7b` in Tables 5-9;
`ViSIT`, `visitazure`), and `PAPER_NAMES` maps each spelling to the name of ifl/models.yaml or
of notebook 01's benchmark ids.

>>> table4().loc[0, ["language_set", "row"]].tolist()
['Chinese', 'LLM']
>>> sorted(set(table5()["model"]))
['bakllava', 'llava-1.5-13b', 'llava-1.5-7b', 'llava-gemma-2b']
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

# The paper's spellings -> ours. Models: text of §3.3 and Figure 1 / Tables 5-9.
PAPER_MODELS = {"llava-v1.5-7b": "llava-1.5-7b", "llava-v1.5-13b": "llava-1.5-13b",
                "llava7b": "llava-1.5-7b", "llava13b": "llava-1.5-13b", "bakllava": "bakllava",
                "llava-gemma-2b": "llava-gemma-2b", "llava-gemma2b": "llava-gemma-2b",
                "llavagemma2b": "llava-gemma-2b"}
PAPER_BENCHMARKS = {"ViSIT": "visit", "visitazure": "visit", "LLaVAW": "llavaw", "llavaw": "llavaw",
                    "MaXM": "maxm", "maxm": "maxm",
                    "average": "average"}  # Tables 6-9's per-model mean row, as notebook 07 names it
PAPER_NAMES = {**PAPER_MODELS, **PAPER_BENCHMARKS}
# The four off-the-shelf models the paper evaluates, in its order.
MODEL_ORDER = ["llava-1.5-7b", "llava-1.5-13b", "bakllava", "llava-gemma-2b"]


def read(name: str) -> pd.DataFrame:
    """One of the paper's tables in this folder, as written (the paper's names)."""
    with resources.files("ifl.paper").joinpath(name).open(encoding="utf-8") as handle:
        return pd.read_csv(handle)


def _ours(names: pd.Series, table: dict[str, str], what: str, source: str) -> pd.Series:
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise KeyError(f"ifl/paper/{source}: {what} {unknown} have no entry in ifl.paper's name map")
    return names.map(table)


def table2_tasks_per_language() -> pd.DataFrame:
    """Table 2: language, iso, n_tasks."""
    return read("table2_tasks_per_language.csv")


def figure1_reported() -> pd.DataFrame:
    """The IFL values the paper's text reports (the extremes per model; Figure 1 itself is an
    image), with our names and `paper` as a proportion (-5.9 pp -> -0.059)."""
    name = "figure1_ifl_text.csv"
    paper = read(name)
    return paper.assign(model=_ours(paper["model"], PAPER_MODELS, "models", name),
                        benchmark=_ours(paper["benchmark"], PAPER_BENCHMARKS, "benchmarks", name),
                        paper=paper["ifl_pp_reported"] / 100)


def table4() -> pd.DataFrame:
    """Table 4: per language set and row (LLM, VE, Data), the fidelity (`ifl_*`) and accuracy
    coefficients of Image x factor with their 95% CIs."""
    return read("table4_design_effects.csv").rename(columns={"term": "row"})


def table5() -> pd.DataFrame:
    """Table 5: IFL and IFL + remedy per model (our model names)."""
    name = "table5_steering_summary.csv"
    t5 = read(name)
    return t5.assign(model=_ours(t5["model"], PAPER_MODELS, "models", name))


def tables6_9() -> pd.DataFrame:
    """Tables 6-9: IFL and IFL + remedy per model x benchmark x language (our names)."""
    name = "table6-9_steering_by_language.csv"
    t = read(name)
    return t.assign(model=_ours(t["model"], PAPER_MODELS, "models", name),
                    benchmark=_ours(t["dataset"], PAPER_BENCHMARKS, "benchmarks", name)
                    ).drop(columns="dataset")
