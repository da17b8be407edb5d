"""The miniature's mechanisms for the paper's story: cross-lingual pretraining items, calibrated
English replies, the LLaVA-1.5-like stage-2 mix, MT-style translation noise, the reply-language
probe, the findings table and the component-metric tables."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from ifl.data.miniature import BACKBONE_MIXES, concepts, gold_language
from ifl.data.miniature.calibration import english_reply_shares, multiq, targets, vicuna_bounds
from ifl.data.miniature.scenes import COLORS, SHAPES
from ifl.data.miniature.rerender import corrupt, rerender_record
from ifl.data.miniature.training import (CROSSLINGUAL_KINDS, MIX665K_TEXT_ONLY_SHARE, pretraining_corpus,
                                         text_only_record, write_training_data)
from ifl.findings import read_findings, write_finding
from ifl.mini.metrics import retention
from ifl.mini.probe import probe_sites

MIX = BACKBONE_MIXES["yi"]


def _context_and_question(item: dict) -> tuple[str, str]:
    context, question = item["prompt"].split("\n", 1)
    return context, question.rstrip("\n")


@pytest.fixture(scope="module")
def corpus():
    return pretraining_corpus(MIX, 600, seed=3, crosslingual_share=0.5)


def test_crosslingual_items_are_language_correct(corpus):
    cross = [i for i in corpus if i["kind"] != "monolingual"]
    assert {i["kind"] for i in cross} == set(CROSSLINGUAL_KINDS)
    assert 0.4 < len(cross) / len(corpus) < 0.6
    for item in corpus:
        context, question = _context_and_question(item)
        assert gold_language(context) == item["context_lang"], item
        assert gold_language(question) == item["lang"], item
        assert gold_language(item["answer"]) == item["reply_lang"] == item["lang"], item
    assert all(i["context_lang"] != i["lang"] for i in cross)
    # the other language follows the mix: English is the most common partner of Chinese
    partners = pd.Series([i["context_lang"] for i in cross if i["lang"] == "zh"]).value_counts()
    assert partners.index[0] == "en"


def test_crosslingual_items_are_parallel(corpus):
    """Bitext and parallel paragraphs say the same in both languages; cross-lingual QA answers
    from the facts given in the other language."""
    for item in corpus:
        context, _ = _context_and_question(item)
        if item["kind"] in ("translation_pair", "parallel_paragraph"):
            # the objects (counts hide in number words and Arabic duals, which concepts() skips)
            objects = set(COLORS) | set(SHAPES)
            assert concepts(context) & objects == concepts(item["answer"]) & objects != set(), item
            assert context != item["answer"]
        if item["kind"] == "crosslingual_qa" and item["question_type"] in ("color", "shape", "count"):
            assert item["answer_key"] in concepts(item["answer"]), item
            assert item["answer_key"] in concepts(context) | {"1", "2", "3"}, item


def test_monolingual_corpus_unchanged_by_the_new_arguments():
    old = pretraining_corpus(MIX, 50, seed=1)
    assert old == pretraining_corpus(MIX, 50, seed=1, crosslingual_share=0.0, english_reply={})
    assert all(i["kind"] == "monolingual" and i["context_lang"] == i["lang"] for i in old)


def test_english_reply_share_follows_the_setting():
    items = pretraining_corpus({"en": 1, "de": 1}, 2000, seed=0, english_reply={"de": 0.3})
    german = [i for i in items if i["lang"] == "de"]
    share = np.mean([i["reply_lang"] == "en" for i in german])
    assert 0.25 < share < 0.35
    assert all(gold_language(i["answer"]) == i["reply_lang"] for i in items)
    assert all(i["reply_lang"] == "en" for i in items if i["lang"] == "en")
    with pytest.raises(ValueError, match="english_reply"):
        pretraining_corpus({"en": 1}, 2, seed=0, english_reply={"de": 1.5})


def test_calibration_targets_come_from_multiq():
    t = targets().set_index(["backbone", "lang"])
    yi = multiq().query("model == 'Yi-6B-Chat'").set_index("lang")
    for lang in ("de", "zh", "ru", "hi", "ar"):
        assert t.loc[("yi", lang), "target_in_lang"] == pytest.approx(yi.loc[lang, "share_replies_in_prompt_language"])
        lo, hi = vicuna_bounds().loc[lang, ["lower_in_lang", "upper_in_lang"]]
        assert lo <= t.loc[("vicuna", lang), "target_in_lang"] <= hi
    assert t.loc[("leo", "de"), "target_in_lang"] > t.loc[("vicuna", "de"), "target_in_lang"]
    assert "en" not in t.index.get_level_values("lang")
    assert english_reply_shares("vicuna")["zh"] > english_reply_shares("yi")["zh"]
    assert english_reply_shares("unknown") == {}


def test_stage2_mix_has_the_configured_text_only_share(tmp_path):
    paths = write_training_data(tmp_path, 2, 200, seed=0, text_only_share=0.06,
                                text_only_non_english=0.5, text_only_langs=["en", "de", "zh"])
    records = json.loads(paths["instruct"].read_text())
    text_only = [r for r in records if "image" not in r]
    assert len(records) == 200 and len(text_only) == 12
    assert sorted(r["lang"] for r in text_only).count("en") == 6
    assert {r["lang"] for r in text_only} == {"en", "de", "zh"}
    for r in text_only:
        assert all("<image>" not in t["value"] for t in r["conversations"])
        assert all(gold_language(t["value"]) == r["lang"] for t in r["conversations"])
        # description, then the question on its own line, as in the text-only condition
        assert "\n" in r["conversations"][0]["value"]
    assert len(list((paths["images"] / "ins").iterdir())) == 188
    assert round(MIX665K_TEXT_ONLY_SHARE, 3) == 0.06


def test_text_only_records_translate_like_the_others():
    rec = text_only_record(1, seed=0, lang="en")
    zh = rerender_record(rec, "zh")
    assert "image" not in zh and all(gold_language(t["value"]) == "zh" for t in zh["conversations"])
    assert rerender_record(zh, "en")["conversations"] == rec["conversations"]


@pytest.mark.parametrize("lang", ["de", "zh", "ru"])
def test_mt_noise_kinds_do_what_mt_does(lang):
    act = {"act": "say_pos", "color": "red", "shape": "star", "pos": "left"}
    seen = {}
    for s in range(200):
        text, info = corrupt(act, lang, random.Random(s), noise="mt")
        seen[info["kind"]] = text
    assert set(seen) == ({"wrong_word", "copy_through", "truncate"}
                         | ({"script_mix"} if lang in ("zh", "ru") else set()))
    assert gold_language(seen["copy_through"]) == "en"
    assert len(seen["truncate"]) < len(render(act, lang))
    if "script_mix" in seen:
        assert any(w in seen["script_mix"].lower() for w in ("red", "star"))
        assert gold_language(seen["script_mix"]) == lang
    with pytest.raises(ValueError, match="noise model"):
        corrupt(act, lang, random.Random(0), noise="other")


def render(act, lang):
    from ifl.data.miniature.render import render_act
    return render_act(act, lang)


def test_probe_finds_the_layer_that_holds_the_language():
    rng = np.random.default_rng(1)
    labels = np.array(["en", "de", "zh"] * 80)
    codes = {"en": 0, "de": 1, "zh": 2}
    signal = np.eye(3)[[codes[y] for y in labels]] * 3.0
    states = [rng.normal(size=(240, 6)),                                   # no language
              np.hstack([signal, rng.normal(size=(240, 3))]) + rng.normal(size=(240, 6)) * 0.3]
    table = probe_sites(states, labels, seed=0)
    assert table.loc[0, "accuracy"] < 0.5 < 0.95 < table.loc[1, "accuracy"]
    assert table.loc[0, "majority"] < 0.5 and set(table["n_classes"]) == {3}
    one = probe_sites(states, ["en"] * 240)
    assert one["accuracy"].tolist() == [1.0, 1.0] and one["n_classes"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="one per label"):
        probe_sites([np.zeros((3, 2))], ["en", "de"])


def test_findings_table_adds_and_replaces_rows(tmp_path):
    write_finding(tmp_path, "IFL exists (§3)", "-0.06 to -0.14", -0.5, -0.6, -0.4, True)
    write_finding(tmp_path, "Data: translated training data", "zh -0.16, de -0.37", 0.2, None, None, False)
    write_finding(tmp_path, "IFL exists (§3)", "-0.06 to -0.14", -0.1, -0.2, 0.0, None)
    table = read_findings(tmp_path)
    assert list(table.columns)[:6] == ["finding", "paper", "run", "ci_low", "ci_high", "agrees"]
    assert table["finding"].tolist() == ["IFL exists (§3)", "Data: translated training data"]
    assert table.loc[0, "run"] == -0.1 and table.loc[0, "agrees"] is None
    assert table.loc[1, "agrees"] is False and np.isnan(table.loc[1, "ci_low"])
    with pytest.raises(ValueError, match="ci_low"):
        write_finding(tmp_path, "x", "", 0.0, 1.0, 0.0, None)
    assert len(read_findings(tmp_path)) == 2    # a refused row leaves the table as it was


def test_retention_pairs_each_variant_with_its_backbone():
    before = pd.DataFrame({"component": ["vicuna", "yi"], "metric": "fidelity", "lang": "de",
                           "context_lang": "de", "value": [0.9, 1.0]})
    after = pd.DataFrame({"component": ["vicuna-clip-en", "yi-clip-zh"], "backbone": ["vicuna", "yi"],
                          "metric": "fidelity", "lang": "de", "context_lang": "de", "value": [0.6, 1.0]})
    out = retention(before, after).set_index("variant")
    assert out.loc["vicuna-clip-en", "change"] == pytest.approx(-0.3)
    assert out.loc["yi-clip-zh", "before"] == 1.0


def test_doctests():
    import doctest

    import ifl.data.miniature.calibration as calibration
    import ifl.data.miniature.training as training
    import ifl.findings as findings
    import ifl.mini.probe as probe
    for module in (calibration, training, findings, probe):
        assert doctest.testmod(module).failed == 0, module.__name__
