"""Calibration targets of the miniature backbones' text-only reply language, from real chat LLMs.

The figures are MultiQ's (Holtermann et al. 2024): the share of a model's replies to 200 text-only
prompts per language that are in the prompt's language and in English (calibration/
multiq_text_fidelity.csv holds the rows used, with their source). The backbones map onto them by
what they are, not by what the findings need:
- vicuna: Vicuna-7B-v1.5 is not in MultiQ. It is Llama-2-7B fine-tuned on ShareGPT conversations
  (some non-English), so Llama-2-7b-chat (RLHF'd towards English) bounds it from below and the
  Mistral-7B-Instruct-v0.1 / zephyr-7b-beta class (SFT on mixed chat data) from above; the target
  is the midpoint of the two bounds (`vicuna_bounds` gives both).
- yi: Yi-6B-Chat, measured directly.
- leo: LeoLM-7B-chat is not in MultiQ. It is Llama-2-7B continued on German text and chat-tuned in
  German and English: in German the target is Yi-6B-Chat's fidelity in its own second
  pretraining language (Chinese), the one measured bilingual model in its second language; in
  every other language it is Vicuna's (the same Llama-2 base and English chat data).
English is the prompt language of no calibration: every backbone answers English in English.

>>> t = targets()
>>> round(float(t.query("backbone == 'yi' and lang == 'zh'")["target_in_english"].iloc[0]), 3)
0.002
>>> sorted(t["backbone"].unique())
['leo', 'vicuna', 'yi']
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

SOURCE = "MultiQ, Holtermann et al. (2024)"
LOWER = "Llama-2-7b-chat-hf"                              # Vicuna's class, English-tuned bound
UPPER = ("Mistral-7B-Instruct-v0.1", "zephyr-7b-beta")    # Vicuna's class, faithful bound
YI = "Yi-6B-Chat"


@lru_cache(maxsize=1)
def multiq() -> pd.DataFrame:
    """The MultiQ rows shipped with the package (percent columns as shares in [0, 1])."""
    path = resources.files("ifl.data.miniature") / "calibration" / "multiq_text_fidelity.csv"
    with resources.as_file(path) as p:
        table = pd.read_csv(p, comment="#")
    for col in ("pct_replies_in_prompt_language", "pct_replies_in_english"):
        table[col.replace("pct_", "share_")] = table.pop(col) / 100
    return table


def _model(name: str | tuple[str, ...]) -> pd.DataFrame:
    names = (name,) if isinstance(name, str) else name
    rows = multiq()[multiq()["model"].isin(names)]
    return rows.groupby("lang")[["share_replies_in_prompt_language", "share_replies_in_english"]].mean()


def vicuna_bounds() -> pd.DataFrame:
    """Per language: the lower (Llama-2-7b-chat) and upper (Mistral-v0.1 / zephyr mean) bound of
    Vicuna's class, columns lower_in_lang, lower_in_english, upper_in_lang, upper_in_english."""
    lo, hi = _model(LOWER), _model(UPPER)
    return pd.DataFrame({"lower_in_lang": lo.iloc[:, 0], "lower_in_english": lo.iloc[:, 1],
                         "upper_in_lang": hi.iloc[:, 0], "upper_in_english": hi.iloc[:, 1]})


def targets(langs: list[str] | None = None) -> pd.DataFrame:
    """One row per backbone x non-English language: target_in_lang, target_in_english (shares),
    rule (where the figure comes from), source."""
    bounds = vicuna_bounds()
    vicuna = pd.DataFrame({"in_lang": (bounds["lower_in_lang"] + bounds["upper_in_lang"]) / 2,
                           "in_english": (bounds["lower_in_english"] + bounds["upper_in_english"]) / 2})
    yi = _model(YI).set_axis(["in_lang", "in_english"], axis=1)
    rows = []
    for lang in sorted(vicuna.index):
        if lang == "en" or (langs is not None and lang not in langs):
            continue
        mid = f"midpoint of {LOWER} and mean({', '.join(UPPER)})"
        rows.append(("vicuna", lang, *vicuna.loc[lang], mid))
        rows.append(("yi", lang, *yi.loc[lang], YI))
        if lang == "de":
            rows.append(("leo", lang, *yi.loc["zh"], f"{YI} in its second language (zh)"))
        else:
            rows.append(("leo", lang, *vicuna.loc[lang], mid + " (Llama-2 base, as vicuna)"))
    return pd.DataFrame(rows, columns=["backbone", "lang", "target_in_lang", "target_in_english",
                                       "rule"]).assign(source=SOURCE)


def english_reply_shares(backbone: str) -> dict[str, float]:
    """Share of `backbone`'s non-English pretraining questions to answer in English: its target
    share of English replies (the corpus then shows the LM the reply languages the real model
    gives). Unknown backbone: {} (every question answered in its own language).

    >>> english_reply_shares("yi")["zh"]
    0.002
    """
    t = targets()
    mine = t[t["backbone"] == backbone]
    return {lang: round(float(v), 4) for lang, v in zip(mine["lang"], mine["target_in_english"])}
