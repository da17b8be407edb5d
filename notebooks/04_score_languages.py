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
# The values of params/default.yaml (the miniature world); the runner injects the chosen params
# file's values below this cell. A key a params file leaves out takes the schema default
# (ifl/params_schema.py), which is the paper's setting where the two differ: docs/params.md.
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
import pandas as pd
from IPython.display import display

from ifl.data.schema import read_tasks
from ifl.runtime import begin
from ifl.score import fidelity_table
from ifl.stage import write_json_atomic
from ifl.stages import score_languages as stage04

common, p, stage, device = begin(globals(), "04_score_languages")
tasks = read_tasks(stage.input("tasks"))
responses = pd.read_parquet(stage.input("responses"))
models = pd.read_csv(stage.input("models"))

# %% [markdown]
# ## Language identification (the surrogate)

# %%
lid, lid_settings = stage04.identifier_for(p)
write_json_atomic(stage.output("identifier"), lid_settings)  # notebook 07 rescores with the same
print("identifier:", lid.name)
scored = stage04.score_responses(responses, tasks, models, lid)
if p.judge_endpoint:
    from ifl.judge import judge_accuracy
    scored["correct_surrogate"] = judge_accuracy(scored, endpoint=p.judge_endpoint, model=p.judge_model,
                                                 cache=stage.path("judge_cache.jsonl"))
print(stage04.empty_note(scored))

# %% [markdown]
# ## The annotation sample
# Drawn from all responses with the paper's weights; the blank sheet is written to
# `runs/<run>/04_score_languages/annotation_sheet.csv` (or beside it, if that one holds labels).

# %%
scored = stage04.annotate(scored, p, world=common.world, seed=common.seed,
                          sheet_path=stage.output("annotation_sheet"))
stage.write_table(scored, "scored")
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
stage.write_table(table.round(3), "surrogate_fidelity", index=True)
by_model = fidelity_table(scored.assign(lang="all", benchmark="all")).droplevel(["benchmark", "lang"])
display(by_model.round(3))
stage.save_figure(stage04.plot_fidelity_by_language(table, list(scored["benchmark"].unique())),
                  "04_surrogate_fidelity_by_language")
plt.show()

# %% [markdown]
# ## Where the identifier fails
# Identifier against the annotators (the labeled rows): the confusion matrix, and disagreement on
# fidelity by benchmark and by response length. The paper's observation was lower accuracy on
# shorter texts; `shapes_vqa`'s one-to-three-word answers are the miniature's short texts.

# %%
display(stage04.confusion(scored))
scored["length_bin"] = stage04.length_bin(scored)
errors = stage04.surrogate_errors(scored, ["benchmark", "length_bin"])
display(errors[errors["labeled"] > 0].round(3))
display(stage04.surrogate_errors(scored, ["lang"]).round(3))
if "fidelity_true" in scored:  # miniature: the same check against the truth on every row
    stage.save_figure(stage04.plot_identifier_errors_by_length(scored), "04_identifier_errors_by_length")
    plt.show()

# %% [markdown]
# ## Summary

# %%
headline, metrics = stage04.summary(scored, by_model, lid)
stage.finish(headline, **metrics)
print(headline)

