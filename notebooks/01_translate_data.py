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
# # 01 · Translate data
#
# *Companion to Hinck et al. (2024), §3.1, §4.1 and appendix D.*
#
# The paper needs two kinds of data in many languages:
#
# 1. **Evaluation tasks** (§3.1, Tables 1-2): queries in 14 languages, each with an image *and*
#    a text description that can replace it. The experiment compares the language of the answer
#    when the model sees the image with the answer when it reads the description instead.
#    MaXM and PALO's LLaVA-Bench-in-the-Wild come multilingual; VisIT-Bench comes in English
#    (the 525 items whose GPT-4 answer raters marked correct) and was machine-translated into
#    nine languages (the paper used Azure Translator; here the translator is a parameter).
# 2. **Training data** for the design-space variants (§4.1): LLaVA-v1.5's stage-1 captions
#    (LCS-558K) and stage-2 conversations (mix665k), machine-translated into Chinese and German
#    with NLLB-200. The paper says "NLLB-1.7-distilled", which does not exist on the hub; the
#    checkpoint is a parameter, by default `facebook/nllb-200-distilled-1.3B`.
#
# **Which description replaces the image** is not fully specified by the paper. By default it
# is the description in the query's own language (PALO's translated captions, MaXM's captions,
# the translated VisIT captions); `description_lang: en` keeps English descriptions instead, as a
# sensitivity check, because the answer language follows the language of the context.
#
# In the **miniature world** (the default) the same steps run at toy scale: scenes of coloured
# shapes, parallel tasks in six languages, and training data "translated" by re-rendering each
# record's meaning in the target language, with an error rate standing in for NLLB's noise.

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
mini_scenes = 240
mini_caption_records = 4000
mini_instruct_records = 4000
mini_image_size = 32
mini_error_rate = 0.05
mini_noise_model = "mt"
mini_text_only_share = 0.0601
mini_text_only_non_english = 0.1
description_lang = "query"
benchmarks = ["maxm", "llavaw", "visit"]
maxm_source = "floschne/maxm"
maxm_revision = None
maxm_description = "maxm_captions"
xm3600_source = "floschne/xm3600"
xm3600_revision = None
llavaw_source = "floschne/multilingual-llava-bench-in-the-wild"
llavaw_revision = None
visit_source = "mlfoundations/VisIT-Bench"
visit_revision = None
multiq_source = "caro-holt/MultiQ"
multiq_revision = None
visit_languages = ["ar", "bn", "zh", "de", "he", "hi", "ja", "es", "th"]
pretrain_source = "liuhaotian/LLaVA-Pretrain"
pretrain_revision = None
instruct_source = "liuhaotian/LLaVA-Instruct-150K"
instruct_revision = None
training_languages = ["zh", "de"]
max_training_records = None
translator = "nllb"
visit_translator = "nllb"
nllb_model = "facebook/nllb-200-distilled-1.3B"
nllb_revision = None
translate_batch_size = 32
translate_max_new_tokens = 256
translate_num_beams = 1

# %%
import io

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
from PIL import Image

from ifl.data.schema import write_tasks
from ifl.runtime import begin
from ifl.stage import write_json_atomic
from ifl.stages import translate_data as stage01
from ifl.translate import TranslationStore

common, p, stage, device = begin(globals(), "01_translate_data")
print(f"world={common.world}, languages={common.languages}, outputs in {stage.dir}")

# %% [markdown]
# ## Evaluation tasks
#
# One table for both worlds (`ifl/data/schema.py`): `task_id, parallel_id, benchmark, lang,
# question, image, description, description_lang, reference`. Parallel tasks (the same item in
# several languages) share `parallel_id`. Images are stored as encoded bytes, so the saved table
# is self-contained and nothing is downloaded twice.

# %%
store = TranslationStore(stage.path("translations"))  # resumable: a rerun translates only what is missing
translators = stage01.translator_factory(p, device)  # built on first use (the paper world's only)
tasks = stage01.build_tasks(p, common.world, common.languages, seed=common.seed,
                            translators=translators, store=store)
write_tasks(tasks, stage.output("tasks"))
counts = stage01.task_counts(tasks)
display(counts)

# %% [markdown]
# In the paper world, this run's counts stand beside the paper's Table 2 (tasks per language
# over MaXM, LLaVAW and VisIT). A partial download, another revision or a translation that
# failed shows up here as a difference.

# %%
if common.world == "paper":
    display(stage01.paper_counts(tasks))

fig, ax = plt.subplots(figsize=(7, 3))
counts.drop(columns="total").plot.bar(stacked=True, ax=ax)
ax.set_ylabel("tasks")
ax.set_title(f"Evaluation tasks per language ({common.world} world)")
stage.save_figure(fig, "01_tasks_per_language")
plt.show()

# %% [markdown]
# ### One item in every language
# The same `parallel_id` across languages: the question and the description that replaces the
# image in the text-only condition.

# %%
example = stage01.example_item(tasks)
display(Image.open(io.BytesIO(example["image"].iloc[0])).resize((128, 128), Image.NEAREST))
with pd.option_context("display.max_colwidth", 120):
    display(example[["lang", "question", "description", "description_lang", "reference"]])

# %% [markdown]
# ## Training data, translated
# English stage-1 captions and stage-2 conversations, and one translated copy per training
# language, in LLaVA's own JSON format (`{"id", "image", "conversations": [...]}`), so that
# notebook 02 reads both worlds with the same code. The `<image>` token and the conversation
# structure are kept; only the text of each turn is translated.

# %%
manifest = stage01.build_training_data(p, common.world, stage.output("training_manifest").parent,
                                       seed=common.seed, translators=translators, store=store)
records = stage01.read_training_records(manifest)
display(pd.DataFrame({lang: {part: len(recs) for part, recs in parts.items()} for lang, parts in records.items()}))

# %%
with pd.option_context("display.max_colwidth", 100):
    display(stage01.first_conversation_side_by_side(records))

# %% [markdown]
# ### What the translation error rate does (miniature)
# The paper notes that errors of the machine translation may explain why translated training
# data did not reduce IFL (§6.1). The miniature makes that testable: with probability
# `mini_error_rate` a re-rendered sentence gets a wrong colour or shape word, loses a word, or
# keeps an English word. The table shows the share of corrupted sentences by kind, and how many
# answers are still wholly in the target language by the exact word-level rule that later gives
# the gold labels.

# %%
if common.world == "miniature":
    effect = stage01.error_rate_effect(records["en"]["instruct"][:1000], p.training_languages[0],
                                       stage01.ERROR_RATES, common.seed)
    stage.write_table(effect, "error_rate_effect")
    display(effect.round(3))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(effect["error_rate"], effect["corrupted_share"], marker="o", label="sentences corrupted")
    ax.plot(effect["error_rate"], 1 - effect["answers_in_target_language"], marker="s",
            label="answers not purely in target language")
    ax.set_xlabel("error rate"); ax.set_ylabel("share"); ax.legend()
    stage.save_figure(fig, "01_translation_error_rate")
    plt.show()

# %% [markdown]
# ## Summary

# %%
headline, summary = stage01.summary(tasks, records)
write_json_atomic(stage.output("summary"), summary)
stage.finish(headline, **summary)
print(headline)

