"""The miniature world's data generator: language purity, determinism, schema, images, rerendering."""
import doctest
import io
import itertools
import json
import random

import numpy as np
import pytest
from PIL import Image

from ifl.data.miniature import (available_langs, concepts, gold_language, make_tasks,
                                pretraining_corpus, rerender_file, rerender_record,
                                rerender_records, word_language, write_training_data)
from ifl.data import miniature
from ifl.data.miniature import content, lexicon, render, rerender, scenes, tasks, training
from ifl.data.miniature.lexicon import ACTS, lexicon_words, load, segment
from ifl.data.miniature.render import render_act, render_turn
from ifl.data.miniature.scenes import COLORS, POSITIONS, SHAPES
from ifl.data.miniature.training import caption_record, instruct_record
from ifl.data.schema import read_tasks, validate_tasks, write_tasks

LANGS = ("en", "de", "zh", "ru", "hi", "ar")


@pytest.fixture(scope="module")
def df():
    return make_tasks(40, LANGS, seed=7)


def test_docstring_examples():
    for module in (miniature, scenes, lexicon, render, content, tasks, training, rerender):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_required_languages_have_lexicons():
    assert set(LANGS) <= set(available_langs())


def test_no_surface_word_shared_between_languages():
    words = {lang: lexicon_words(lang) for lang in available_langs()}
    for a, b in itertools.combinations(words, 2):
        assert not words[a] & words[b], (a, b, sorted(words[a] & words[b]))


def _acts_covering_every_template():
    """Every act with every variant index and every value of its slots."""
    pairs = [{"color": c, "shape": s} for c, s in zip(COLORS, SHAPES)]   # every shape once
    objects = [pairs[:k] for k in (1, 2, 3)] + [pairs[1:4], [pairs[3]]]
    for name, fields in ACTS.items():
        domains = [{"color": list(COLORS), "shape": list(SHAPES), "pos": list(POSITIONS),
                    "n": [1, 2, 3], "value": ["yes", "no"], "objects": objects}[f] for f in fields]
        for values in itertools.product(*domains):
            for v in range(4):
                yield {"act": name, "v": v, **dict(zip(fields, values))}


@pytest.mark.parametrize("lang", LANGS)
def test_every_template_renders_pure(lang):
    for act in _acts_covering_every_template():
        text = render_act(act, lang)
        words = segment(text)
        assert words and all(w_lang == lang for _, w_lang in words), (act, text, words)
        assert gold_language(text) == lang


def test_generated_tasks_gold_label_as_their_language(df):
    for column, lang_column in (("question", "lang"), ("reference", "lang"),
                                ("description", "description_lang")):
        labels = df[column].map(gold_language)
        assert (labels == df[lang_column]).all(), df.loc[labels != df[lang_column], column].head()


def test_training_and_pretraining_text_gold_labels():
    records = [caption_record(i, 0) for i in range(20)] + [instruct_record(i, 0) for i in range(40)]
    for lang in LANGS:
        for rec in rerender_records(records, lang):
            for turn in rec["conversations"]:
                assert gold_language(turn["value"]) == lang, turn
    for item in pretraining_corpus({lang: 1 for lang in LANGS}, 120, seed=0):
        assert gold_language(item["prompt"]) == gold_language(item["answer"]) == item["lang"]
        assert item["text"] == item["prompt"] + item["answer"] and item["prompt"].endswith("\n")


def test_gold_language_rules():
    assert gold_language("Der Kreis ist rot, the circle") == "de"   # 4 German words vs 2 English
    assert gold_language("red Kreis") == "en" and gold_language("Kreis red") == "de"   # ties: first
    assert gold_language("42 ??? xyzzy") == "none"
    assert gold_language("<image>\nWo ist der Kreis?") == "de"   # the image token is not a word
    assert gold_language("红色的圆形 red") == "zh"   # Chinese without spaces: 3 words
    assert segment("مربع ودائرة") == [("مربع", "ar"), ("و", "ar"), ("دائرة", "ar")]
    assert word_language("ЖЕЛТЫЙ") == "ru" and word_language("zebra") is None


def test_concepts_find_answer_key_in_every_language(df):
    vqa = df[df.benchmark == "shapes_vqa"]
    for ref, key in zip(vqa.reference, vqa.answer_key):
        assert key in concepts(ref), (ref, key)


def test_tasks_schema_and_parquet_roundtrip(df, tmp_path):
    validate_tasks(df)
    assert set(df.benchmark) == {"shapes_vqa", "shapes_describe"}
    assert len(df) == 2 * 40 * len(LANGS)
    back = read_tasks(write_tasks(df, tmp_path / "t.parquet"))
    assert back.equals(df)


def test_parallel_tasks_share_item(df):
    for _, group in df.groupby("parallel_id"):
        assert sorted(group.lang) == sorted(LANGS)
        for column in ("image", "scene", "question_type", "answer_key", "benchmark"):
            assert group[column].map(repr).nunique() == 1, column
    assert (df.description_lang == df.lang).all()
    vqa = df[df.benchmark == "shapes_vqa"]
    assert set(vqa.question_type) == set(content.QUESTION_TYPES)


def test_description_language_parameter():
    fixed = make_tasks(5, ["de", "zh"], seed=1, description_lang="en")
    assert (fixed.description_lang == "en").all()
    assert fixed.groupby("parallel_id").description.nunique().eq(1).all()
    assert fixed.description.map(gold_language).eq("en").all()
    with pytest.raises(ValueError, match="lexicon"):
        make_tasks(1, ["fr"], seed=0)
    with pytest.raises(ValueError, match="description_lang"):
        make_tasks(1, ["en"], seed=0, description_lang="xx")


def test_short_hint_only_on_vqa():
    hinted = make_tasks(3, ["en"], seed=0, short_hint=True)
    single = "Answer the question using a single word or phrase."
    assert hinted[hinted.benchmark == "shapes_vqa"].question.str.endswith("\n" + single).all()
    assert not hinted[hinted.benchmark == "shapes_describe"].question.str.contains(single).any()


def test_tasks_deterministic_and_seeded(tmp_path):
    a, b, c = (make_tasks(6, ["en", "hi"], seed=s) for s in (3, 3, 4))
    assert a.equals(b) and not a.equals(c)
    pa, pb = write_tasks(a, tmp_path / "a.parquet"), write_tasks(b, tmp_path / "b.parquet")
    assert pa.read_bytes() == pb.read_bytes()
    longer = make_tasks(9, ["en", "hi"], seed=3)   # item i depends on (seed, i) only
    assert longer[longer.parallel_id.isin(a.parallel_id)].reset_index(drop=True).equals(a)


def test_images_decode_and_match_scene(df):
    for png, scene_json in zip(df.image[::len(LANGS)], df.scene[::len(LANGS)]):
        scene = json.loads(scene_json)
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert img.shape == (32, 32, 3)
        for o in scene["objects"]:
            assert tuple(img[o["y"], o["x"]]) == COLORS[o["color"]]
            third = POSITIONS[min(int(3 * o["x"] / 32), 2)]
            assert third == o["pos"]
        covered = np.zeros((32, 32), bool)
        for o in scene["objects"]:
            covered[o["y"] - o["r"]:o["y"] + o["r"] + 1, o["x"] - o["r"]:o["x"] + o["r"] + 1] = True
        assert (img[~covered] == scenes.BACKGROUND).all()
        assert len({o["shape"] for o in scene["objects"]}) == len(scene["objects"])


def test_write_training_data_layout_and_determinism(tmp_path):
    p1 = write_training_data(tmp_path / "a", 6, 10, seed=0)
    p2 = write_training_data(tmp_path / "b", 6, 10, seed=0)
    p3 = write_training_data(tmp_path / "c", 6, 10, seed=1)
    assert p1["captions"].read_bytes() == p2["captions"].read_bytes()
    assert p1["instruct"].read_bytes() == p2["instruct"].read_bytes()
    assert p1["instruct"].read_bytes() != p3["instruct"].read_bytes()
    for name in ("captions", "instruct"):
        for rec in json.loads(p1[name].read_text()):
            png = (p1["images"] / rec["image"]).read_bytes()
            assert png == (p2["images"] / rec["image"]).read_bytes()
            Image.open(io.BytesIO(png)).verify()
            turns = rec["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert len(rec["content"]) == len(turns) and rec["lang"] == "en" and rec["scene"]
            text = "".join(t["value"] for t in turns)
            assert text.count("<image>") == 1
            if name == "captions":
                assert turns[0]["value"].endswith("\n<image>") and len(turns) == 2
            else:
                assert turns[0]["value"].startswith("<image>\n")


def test_rerender_keeps_structure_and_translates_exactly():
    records = [caption_record(i, 2) for i in range(10)] + [instruct_record(i, 2) for i in range(30)]
    for lang in LANGS:
        for rec in records:
            out = rerender_record(rec, lang)
            assert [t["from"] for t in out["conversations"]] == [t["from"] for t in rec["conversations"]]
            assert [t["value"].count("<image>") for t in out["conversations"]] == \
                   [t["value"].count("<image>") for t in rec["conversations"]]
            assert out["conversations"][0]["value"].replace("<image>", "").strip("\n") != ""
            assert out["content"] == rec["content"] and out["scene"] == rec["scene"]
            assert out["translation"]["corruptions"] == [] and out["lang"] == lang
            assert [t["value"] for t in out["conversations"]] == \
                   [render_turn(acts, lang) for acts in rec["content"]]
            back = rerender_record(out, "en")
            assert back["conversations"] == rec["conversations"]


def test_error_rate_corrupts_about_that_share(tmp_path):
    records = [instruct_record(i, 5) for i in range(300)]
    rate = 0.3
    noisy = rerender_records(records, "de", error_rate=rate, seed=1)
    clean = rerender_records(records, "de")
    n_text = sum(a["act"] != "image" for r in records for acts in r["content"] for a in acts)
    corruptions = [c for r in noisy for c in r["translation"]["corruptions"]]
    assert abs(len(corruptions) / n_text - rate) < 0.05
    assert {c["kind"] for c in corruptions} == set(rerender.CORRUPTIONS)
    changed = sum(n["conversations"] != c["conversations"] for n, c in zip(noisy, clean))
    assert changed == sum(bool(r["translation"]["corruptions"]) for r in noisy)
    for rec in noisy:   # noise, not a language switch; a one-word answer left English is English
        english = {c["turn"] for c in rec["translation"]["corruptions"] if c["kind"] == "untranslated"}
        for t, turn in enumerate(rec["conversations"]):
            assert gold_language(turn["value"]) == "de" or t in english
    again = rerender_records(records, "de", error_rate=rate, seed=1)
    other = rerender_records(records, "de", error_rate=rate, seed=2)
    assert again == noisy and other != noisy
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(records[:20]))
    out = rerender_file(path, tmp_path / "de" / "captions.json", "de", error_rate=rate, seed=1)
    assert json.loads(out.read_text()) == noisy[:20]


@pytest.mark.parametrize("lang", LANGS)
def test_each_corruption_kind_changes_the_sentence(lang):
    act = {"act": "say_pos", "color": "green", "shape": "star", "pos": "right"}
    seen = set()
    for k in range(60):
        text, what = rerender.corrupt(act, lang, random.Random(k))
        assert text != render_act(act, lang) and what["kind"] in rerender.CORRUPTIONS
        seen.add(what["kind"])
        if what["kind"] == "untranslated":
            assert "green" in text.lower() or "star" in text.lower()
    assert seen == set(rerender.CORRUPTIONS) - ({"untranslated"} if lang == "en" else set())


def test_pretraining_mix_is_exact_and_checked():
    items = pretraining_corpus({"en": 0.5, "zh": 0.3, "de": 0.2, "ar": 0.0}, 101, seed=0)
    counts = {lang: sum(i["lang"] == lang for i in items) for lang in ("en", "zh", "de", "ar")}
    assert counts == {"en": 51, "zh": 30, "de": 20, "ar": 0}
    assert pretraining_corpus({"en": 1}, 5, seed=0) == pretraining_corpus({"en": 1}, 5, seed=0)
    assert pretraining_corpus({"en": 1}, 5, seed=0) != pretraining_corpus({"en": 1}, 5, seed=1)
    short = [i for i in items if i["answer_key"] is not None]
    assert all(i["answer_key"] in concepts(i["answer"]) for i in short)
    with pytest.raises(ValueError):
        pretraining_corpus({"en": -1}, 5, seed=0)
    with pytest.raises(ValueError, match="lexicon"):
        pretraining_corpus({"xx": 1}, 5, seed=0)


def test_lexicon_errors_name_the_file():
    with pytest.raises(KeyError, match="lexicon/xx.yaml"):
        load("xx")
