# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (ifl)
#     language: python
#     name: ifl
# ---

# %% [markdown]
# # 04 · Score languages
#
# *Companion to Hinck et al. (2024), §3.2 and appendices B-C.*
#
# **Fidelity** is whether a response is in the language of its query. The paper measures it
# with GlotLID v3 (a fastText language identifier covering 2,102 languages) and a small rule that
# maps GlotLID's `iso639-3_Script` labels to the paper's language names (appendix C,
# `ifl.langid.parse_glotlid`): fidelity = 1 if the parsed label is the query's language.
#
# The identifier is a **surrogate**: the paper observed "non-random errors in the GlotLID
# predictions, such as having a lower accuracy on shorter texts". Averages of a biased surrogate
# give biased effects, so the authors hand-labelled a stratified random sample of 1,000 responses
# and used design-based supervised learning (DSL, notebook 05) to debias every estimate. The
# sample weights (appendix B): each response's weight is the inverse share of its benchmark,
# times 4 for German, 2 for Chinese and Hindi, ½ for Romanian, Russian and Urdu; 1,000 drawn
# without replacement. We draw with exact, recorded inclusion probabilities (`sample_prob`,
# randomised systematic PPS; `ifl/annotate.py`), which DSL needs for every row.
#
# The sample is exported as a sheet for annotators (answer language, matches gold, correct:
# true / false / NA) and imported back with validation. **In the miniature** an exact annotator
# fills it: the generator knows every word's language (`gold_language`), optionally with an
# error rate; it also knows the truth on every row (`fidelity_true`), which notebook 05 uses to
# check DSL against the truth, something the paper could not do. **In the paper world** the sheet
# goes to people; set `annotation_sheet` to the filled file and rerun this notebook (in either
# world: a reader may label the miniature's sample by hand too). Filling the exported sheet in
# place is fine: a sheet holding labels is never written over (a fresh blank one goes beside it,
# `annotation_sheet.blank.csv`), and a given sheet without a single label stops the notebook.
# Simulated annotators fill their own copy, `annotation_sheet.simulated.csv`.
#
# Answer **accuracy** (for Table 4's right half) has a surrogate too: the reference answer appears
# in the response (the paper used GPT-4o as the judge; an OpenAI-compatible judge can be set in
# params, off by default), debiased by the annotated `correct` column.

# %% tags=["parameters"]
# Defaults = params/default.yaml; the runner injects the params file's values below this cell.
run_name = "default"
seed = 0
world = "miniature"
languages = ["en", "de", "zh", "ru", "hi", "ar"]
device = "cpu"
output_root = "."
make_smoke_assets = False
glotlid_source = "cis-lmu/glotlid"
glotlid_revision = None
identifier = "fallback"
annotation_n = 1000
annotation_sheet = None
simulate_annotations = False
mini_annotator_error_rate = 0.02
judge_endpoint = None
judge_model = None

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display

from ifl import prepare_score
from ifl.data.schema import read_tasks
from ifl.params import from_notebook
from ifl.score import fidelity_table
from ifl.stage import open_stage

common, p = from_notebook(globals(), "04_score_languages")
stage = open_stage("04_score_languages", output_root=common.output_root, run_name=common.run_name)
collected = stage.require("03_collect_responses", "responses.parquet", "models.csv")
tasks = read_tasks(stage.require("01_translate_data", "tasks.parquet") / "tasks.parquet")
responses = pd.read_parquet(collected / "responses.parquet")
models = pd.read_csv(collected / "models.csv")

# %% [markdown]
# ## Language identification (the surrogate)

# %%
lid = prepare_score.identifier_for(p)
print("identifier:", lid.name)
scored = prepare_score.score_responses(responses, tasks, models, lid)
if p.judge_endpoint:
    from ifl.judge import judge_accuracy
    scored["correct_surrogate"] = judge_accuracy(scored, endpoint=p.judge_endpoint, model=p.judge_model,
                                                 cache=stage.path("judge_cache.jsonl"))
empty = scored["response"].fillna("").str.strip() == ""
print(f"{len(scored):,} responses scored; {int(empty.sum())} empty (label {scored.loc[empty, 'lid_label'].iloc[0] if empty.any() else '-'})")

# %% [markdown]
# ## The annotation sample
# Drawn from all responses with the paper's weights; the blank sheet is written to
# `runs/<run>/04_score_languages/annotation_sheet.csv` (or beside it, if that one holds labels).

# %%
sheet = stage.path("annotation_sheet.csv")
scored = prepare_score.annotate(scored, p, world=common.world, seed=common.seed, sheet_path=sheet)
scored.to_parquet(stage.path("scored.parquet"), index=False)
labeled = scored[scored["labeled"] == 1]
print(f"{len(labeled)} of {len(scored):,} responses labeled"
      + (" (stand-in annotator: smoke test only)" if p.simulate_annotations and common.world == "paper" else ""))
display(labeled.pivot_table(index="lang", columns="benchmark", values="labeled", aggfunc="size",
                            fill_value=0))

# %% [markdown]
# ## Surrogate fidelity by model, benchmark, language and condition
# The naive view: mean surrogate fidelity with the image and with the text description, and
# their difference (naive IFL). Notebook 05 replaces these by DSL estimates with confidence
# intervals.

# %%
table = fidelity_table(scored)
table.round(3).to_csv(stage.path("surrogate_fidelity.csv"))
by_model = fidelity_table(scored.assign(lang="all", benchmark="all")).droplevel(["benchmark", "lang"])
display(by_model.round(3))

by_lang = table.reset_index().groupby(["lang", "benchmark"])[["image", "text"]].mean()
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, bench in zip(axes, sorted(scored["benchmark"].unique())[:2]):
    part = by_lang.xs(bench, level="benchmark") if bench in by_lang.index.get_level_values(1) else by_lang
    part.plot.bar(ax=ax, rot=0)
    ax.set_title(f"{bench}: mean surrogate fidelity over models"); ax.set_ylim(0, 1.05)
    ax.set_xlabel("query language")
stage.save_figure(fig, "04_surrogate_fidelity_by_language")
plt.show()

# %% [markdown]
# ## Where the identifier fails
# Identifier against the annotators (the labeled rows): the confusion matrix, and disagreement on
# fidelity by benchmark and by response length. The paper's observation was lower accuracy on
# shorter texts; `shapes_vqa`'s one-to-three-word answers are the miniature's short texts.

# %%
display(prepare_score.confusion(scored))
lengths = scored["response"].fillna("").str.split().str.len()
scored["length_bin"] = pd.cut(lengths, [-1, 0, 2, 5, 10, 1000], labels=["0", "1-2", "3-5", "6-10", ">10"])
errors = prepare_score.surrogate_errors(scored, ["benchmark", "length_bin"])
display(errors[errors["labeled"] > 0].round(3))
errors_by_lang = prepare_score.surrogate_errors(scored, ["lang"])
display(errors_by_lang.round(3))

if "fidelity_true" in scored:
    # miniature: the same check against the truth on every row
    truth_gap = (scored.assign(wrong=(scored["fidelity_lid"] != scored["fidelity_true"]).astype(float))
                 .groupby(["benchmark", "length_bin"], observed=True)["wrong"].mean().unstack())
    fig, ax = plt.subplots(figsize=(6, 2.8))
    sns.heatmap(truth_gap, annot=True, fmt=".2f", cmap="Reds", vmin=0, vmax=1, ax=ax)
    ax.set_title("identifier wrong about fidelity (all rows, vs truth)")
    ax.set_xlabel("response length (words)")
    stage.save_figure(fig, "04_identifier_errors_by_length")
    plt.show()

# %% [markdown]
# ## Summary

# %%
naive_ifl = by_model["ifl"].mean() if "ifl" in by_model else float("nan")
agreement = float((labeled["fidelity_lid"] == labeled["fidelity_gold"]).mean()) if len(labeled) else float("nan")
headline = (f"{len(scored):,} responses scored with {lid.name.split(' (')[0]}; "
            f"{len(labeled)} labeled; identifier agrees with gold fidelity on {agreement:.0%}; "
            f"naive IFL (mean over models) {naive_ifl:+.3f}")
stage.finish(headline, identifier=lid.name, n_scored=len(scored), n_labeled=int(len(labeled)),
             agreement=agreement, naive_ifl=float(naive_ifl))
print(headline)
