"""The miniature's pretrained components (ifl/mini): tokenizer, tiny LMs, vision towers.

Tiny sizes and a few steps each: these check the mechanics (formats, masking, loading as hub
models, caching, determinism); the quality of full-size builds is in their metrics.json.
"""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ifl.data.miniature import available_langs, make_tasks
from ifl.data.miniature.scenes import render_array
from ifl.mini import lm as lm_mod
from ifl.mini.common import DONE
from ifl.mini.components import build_components, tokenizer_id
from ifl.mini.lm import IGNORE, answer_loss, collate, encode_chat, pretrain_lm, qa_pieces
from ifl.mini.tokenizer import IMAGE, tokenizer_texts, train_tokenizer
from ifl.mini.towers import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, pixels, scenes,
                             train_clip_tower, train_dino_tower)
from ifl.prompts import query, template

LANGS = ("en", "de", "zh", "ru", "hi", "ar")
TINY_LM = dict(hidden=32, layers=1, steps=12, batch=8, lr=3e-3, seed=0, eval_scenes=2, progress=False)
TINY_TOWER = dict(hidden=32, layers=1, steps=3, batch=8, seed=0, probe_scenes=200, progress=False)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "tokenizer"
    train_tokenizer(out, tokenizer_texts(LANGS, n_per_lang=40, seed=0), vocab_size=2048)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def tiny_lm(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "lm"
    return pretrain_lm("leo", {"en": 0.5, "de": 0.5}, tok, out, **TINY_LM)


# --- tokenizer -----------------------------------------------------------------------------------

def test_tokenizer_round_trips_every_language_and_keeps_image_one_token(tok):
    assert set(LANGS) <= set(available_langs())
    tasks = make_tasks(3, LANGS, seed=1)
    for row in tasks.itertuples():
        text = query(template("llava_hf"), row.question, image=False, description=row.description)
        ids = tok(text + " " + row.reference + "</s>")["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text + " " + row.reference
    ids = tok("USER: <image>\nWas ist das?")["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(IMAGE)) == 1
    assert tok.convert_ids_to_tokens(tok(IMAGE)["input_ids"]) == [tok.bos_token, IMAGE]


def test_tokenizer_loads_with_autotokenizer_and_has_special_tokens(tok_dir, tok):
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id,
                tok.convert_tokens_to_ids(IMAGE)}) == 5
    assert tok("</s>", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]


def test_tokenizer_is_cached(tok_dir, monkeypatch):
    import tokenizers
    monkeypatch.setattr(tokenizers.Tokenizer, "train_from_iterator",
                        lambda *a, **k: pytest.fail("retrained a finished tokenizer"))
    train_tokenizer(tok_dir, tokenizer_texts(LANGS, n_per_lang=40, seed=0), vocab_size=2048)


# --- LM ------------------------------------------------------------------------------------------

def test_encode_chat_trains_only_the_answer_and_matches_the_query_tokens(tok):
    t = template("llava_hf")
    description, question, answer = "Der rote Stern ist links.", "Wo ist der Stern?", "links"
    ids, labels = encode_chat(tok, qa_pieces(t, description, question, answer))
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(trained) == " links</s>"
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    prompt = tok(query(t, question, image=False, description=description))["input_ids"]
    assert ids[:len(prompt)] == prompt and all(lab == IGNORE for lab in labels[:len(prompt)])


def test_answer_loss_equals_the_model_loss(tok):
    from transformers import LlamaForCausalLM
    t = template("llava_hf")
    batch = collate([encode_chat(tok, qa_pieces(t, "A red star.", "What color?", "red")),
                     encode_chat(tok, qa_pieces(t, "Ein Kreis.", "Welche Form?", "Kreis"))],
                    tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(lm_mod.lm_config(tok, 32, 1))
    assert torch.allclose(answer_loss(model, batch), model(**batch).loss, atol=1e-5)


def test_pretraining_reduces_answer_loss_and_saves_a_hub_style_model(tiny_lm, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    path, metrics = tiny_lm
    assert metrics["loss_last"] < metrics["loss_first"]
    assert set(metrics["eval"]) == {"en", "de"}
    assert {"accuracy", "fidelity", "n"} <= set(metrics["eval"]["de"])
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    assert AutoTokenizer.from_pretrained(path)("ja")["input_ids"] == tok("ja")["input_ids"]
    assert (path / DONE).is_file() and json.loads((path / "metrics.json").read_text()) == metrics


def test_pretrain_lm_is_cached_and_rebuilds_on_other_settings(tiny_lm, tok, monkeypatch):
    path, metrics = tiny_lm
    calls = []
    real = lm_mod.corpus_examples
    monkeypatch.setattr(lm_mod, "corpus_examples", lambda *a: calls.append(1) or real(*a))
    again = pretrain_lm("leo", {"en": 0.5, "de": 0.5}, tok, path, **TINY_LM)
    assert again == (path, metrics) and calls == []
    pretrain_lm("leo", {"en": 0.5, "de": 0.5}, tok, path, **{**TINY_LM, "steps": 2})
    assert calls == [1]


def test_lm_pretraining_is_deterministic(tok, tmp_path):
    from transformers import AutoModelForCausalLM
    settings = {**TINY_LM, "steps": 4, "eval_scenes": 1}
    a, _ = pretrain_lm("x", {"en": 1.0}, tok, tmp_path / "a", **settings)
    b, _ = pretrain_lm("x", {"en": 1.0}, tok, tmp_path / "b", **settings)
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# --- vision towers -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,train,cls_name,mean,std", [
    ("clip", train_clip_tower, "CLIPVisionModel", CLIP_MEAN, CLIP_STD),
    ("dino", train_dino_tower, "Dinov2Model", IMAGENET_MEAN, IMAGENET_STD),
])
def test_tower_loads_as_hub_model_with_its_processor(kind, train, cls_name, mean, std, tmp_path):
    from transformers import AutoImageProcessor, AutoModel
    path, metrics = train(tmp_path / kind, **TINY_TOWER)
    assert {"probe_color", "probe_shape_mlp", "probe_count", "probe_color_untrained", "loss_last"} <= set(metrics)
    model = AutoModel.from_pretrained(path)
    assert type(model).__name__ == cls_name
    processor = AutoImageProcessor.from_pretrained(path)
    scene = scenes(1, seed=0, tag="t")
    image = Image.fromarray(render_array(scene[0]))
    pv = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pv.shape == (1, 3, 32, 32)
    assert torch.allclose(pv, pixels(scene, mean, std), atol=1e-5)   # training saw the same inputs
    with torch.no_grad():
        out = model(pixel_values=pv)
    assert out.last_hidden_state.shape == (1, 1 + 16, 32)   # CLS + (32 / 8) ** 2 patches


def test_towers_are_deterministic_and_cached(tmp_path, monkeypatch):
    from transformers import AutoModel
    a, _ = train_dino_tower(tmp_path / "a", **TINY_TOWER)
    b, _ = train_dino_tower(tmp_path / "b", **TINY_TOWER)
    wa, wb = AutoModel.from_pretrained(a).state_dict(), AutoModel.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    from ifl.mini import towers
    monkeypatch.setattr(towers, "scenes", lambda *a, **k: pytest.fail("retrained a finished tower"))
    assert train_dino_tower(tmp_path / "a", **TINY_TOWER)[0] == a


def test_shape_twins_are_hard_negatives():
    import random

    from ifl.mini.towers import shape_twin, with_twins
    batch = scenes(20, 0, "twins")
    mixed = with_twins(batch, 0.25, random.Random(0))
    assert len(mixed) == 20 and mixed[:15] == batch[:15]
    for twin, scene in zip(mixed[15:], batch[:5]):
        keep = lambda s: [(o["color"], o["x"], o["y"], o["r"], o["pos"]) for o in s["objects"]]
        assert keep(twin) == keep(scene)
        shapes = [o["shape"] for o in twin["objects"]]
        assert shapes != [o["shape"] for o in scene["objects"]] and len(set(shapes)) == len(shapes)
    assert with_twins(batch, 0.0, random.Random(0)) == batch
    assert shape_twin(batch[0], random.Random(1))["objects"] != batch[0]["objects"]


# --- everything ----------------------------------------------------------------------------------

def test_build_components_returns_paths_and_long_metrics(tmp_path, monkeypatch):
    settings = dict(tokenizer_items_per_lang=20, lm_hidden=32, lm_layers=1, lm_steps=3, lm_batch=4,
                    lm_eval_scenes=1, tower_hidden=32, tower_layers=1, tower_steps=2, clip_steps=3,
                    tower_batch=8, tower_probe_scenes=200,
                    backbones={"vicuna": {"en": 0.8, "de": 0.2}, "leo": {"en": 0.5, "de": 0.5}})
    result = build_components(tmp_path, seed=0, progress=False, **settings)
    assert set(result["paths"]) == {"tokenizer", "vicuna", "leo", "clip", "dino"}
    rows = result["metrics"]
    assert {"component", "kind", "metric", "lang", "value"} == set(rows[0])
    assert any(r["component"] == "vicuna" and r["metric"] == "fidelity" and r["lang"] == "de" for r in rows)
    assert json.loads((tmp_path / "components.json").read_text())["paths"] == result["paths"]
    # CLIP has its own steps and the shape twins; DINO the shared tower steps and no twins
    clip = json.loads((tmp_path / "tower-clip" / DONE).read_text())
    dino = json.loads((tmp_path / "tower-dino" / DONE).read_text())
    assert (clip["steps"], clip["twins"], dino["steps"], dino["twins"]) == (3, 0.25, 2, 0.0)
    with pytest.raises(TypeError, match="lm_hidden"):
        build_components(tmp_path, lm_hiden=8)
    # a second build with the same settings trains nothing
    import tokenizers

    from ifl.mini import towers
    monkeypatch.setattr(tokenizers.Tokenizer, "train_from_iterator", lambda *a, **k: pytest.fail("tokenizer"))
    monkeypatch.setattr(lm_mod, "corpus_examples", lambda *a: pytest.fail("retrained an LM"))
    monkeypatch.setattr(towers, "scenes", lambda *a, **k: pytest.fail("retrained a tower"))
    again = build_components(tmp_path, seed=0, progress=False, **settings)["metrics"]
    # the tokenizer's wall time is measured afresh (loading it back): compare everything else
    timeless = lambda metrics: [r for r in metrics if r["metric"] != "wall_s" or r["component"] != "tokenizer"]
    assert timeless(again) == timeless(rows)


def test_tokenizer_id_changes_with_the_vocabulary_not_with_padding(tok, tmp_path):
    other = train_tokenizer(tmp_path, tokenizer_texts(["en"], n_per_lang=10, seed=0), 300)
    before = tokenizer_id(tok)
    tok(["a", "b c"], padding=True)   # switches padding on in the backend tokenizer
    assert tokenizer_id(tok) == before != tokenizer_id(other)


def test_doctests():
    import doctest

    from ifl.mini import common, components, lm, tokenizer, towers
    for module in (common, components, lm, tokenizer, towers):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_clip_tower_can_read_captions_through_the_lm(tiny_lm, tmp_path, monkeypatch):
    """clip_text='lm': captions go through the LM's tokenizer and frozen input embeddings; the
    LM's build settings are part of the tower's cache key."""
    from ifl.mini.towers import LMCaptionEncoder
    lm_dir, _ = tiny_lm
    encoder = LMCaptionEncoder(lm_dir, hidden=32)
    out = encoder(["a red star", "two shapes: a blue circle and a green square"])
    assert out.shape == (2, 32) and not encoder.table.requires_grad
    path, metrics = train_clip_tower(tmp_path / "clip", text_lm=lm_dir, **TINY_TOWER)
    assert "retrieval_top1" in metrics
    assert json.loads((path / DONE).read_text())["text_lm"]["name"] == "leo"
    with pytest.raises(ValueError, match="vicuna"):
        build_components(tmp_path / "c", clip_text="lm", backbones={"yi": {"en": 1.0}}, progress=False)


def test_component_report_has_every_table(tiny_lm):
    """Text fidelity beside the calibration target, the cross-lingual probe over language pairs,
    and the reply-language probe at every site (embeddings + each layer)."""
    from ifl.mini.metrics import component_report, crosslingual_summary
    lm_dir, _ = tiny_lm
    rows = component_report({"leo": str(lm_dir)}, ["leo"], ["en", "de"], n_scenes=4, probe_scenes=2, seed=0)
    assert set(rows["kind"]) == {"lm_text", "lm_crosslingual", "lm_probe"}
    text = rows[rows["kind"] == "lm_text"]
    assert set(text["metric"]) == {"accuracy", "fidelity", "in_english", "target_in_lang", "target_in_english"}
    assert text.query("metric == 'target_in_lang'")["lang"].tolist() == ["de"]
    pairs = rows[rows["kind"] == "lm_crosslingual"][["lang", "context_lang"]].drop_duplicates()
    assert len(pairs) == 4
    assert set(crosslingual_summary(rows[rows["kind"] == "lm_crosslingual"]).columns) >= {
        "accuracy_same", "accuracy_cross", "fidelity_cross"}
    probe = rows[rows["kind"] == "lm_probe"]
    assert sorted(probe["site"].unique()) == [0, 1]      # TINY_LM has one layer
