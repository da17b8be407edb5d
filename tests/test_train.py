"""LLaVA training engine on tiny models built here (Llama hidden 64, 2 layers; CLIP and DINOv2
towers with 32-pixel images and 8-pixel patches -> 16 image tokens; a word-level tokenizer)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ifl.prompts import template
from ifl.train import (LoraSettings, StageSettings, assemble_llava, design_space, load_llava,
                       train_stage, train_variant, variant)
from ifl.train.data import IGNORE, LlavaDataset, SamplePlan, encode_records, render

CHAT = template("llava_hf")
WORDS = ("USER ASSISTANT What colour is it shape the a an red blue green circle square star "
         "Describe image Short caption Hi Yes No and one two there are objects picture of in").split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", ":", "?", ".", ",", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs: predictable ids
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


def _llm_config(vocab: int, **kw):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       bos_token_id=1, eos_token_id=2, **kw)


def _vision_kw():
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=32, patch_size=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: extra threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Saved tiny LLM (+ one with dropout), CLIP and DINOv2 towers, tokenizer, records, images."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel,
                              Dinov2Config, Dinov2Model, LlamaForCausalLM)
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    tok = _tokenizer()
    tok.save_pretrained(root / "tok")
    LlamaForCausalLM(_llm_config(len(tok))).save_pretrained(root / "llm")
    LlamaForCausalLM(_llm_config(len(tok), attention_dropout=0.2)).save_pretrained(root / "llm_dropout")
    CLIPVisionModel(CLIPVisionConfig(**_vision_kw())).save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32},
                          crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(**_vision_kw())).save_pretrained(root / "dinov2")  # no processor file
    rng = np.random.default_rng(0)
    colours = ["red", "blue", "green"]
    captions, instruct = [], []
    (root / "images").mkdir()
    for i in range(12):
        c = colours[i % 3]
        Image.fromarray(np.full((32, 32, 3), (rng.integers(0, 255, 3)), dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
        captions.append({"id": f"c{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "Short caption .\n<image>"},
            {"from": "gpt", "value": f"a {c} circle ."}]})
        turns = [{"from": "human", "value": "<image>\nWhat colour is it ?"},
                 {"from": "gpt", "value": f"{c} ."}]
        if i % 2:
            turns += [{"from": "human", "value": "What shape ?"}, {"from": "gpt", "value": "circle ."}]
        instruct.append({"id": f"i{i}", "image": f"{i}.png", "conversations": turns})
    instruct.append({"id": "text-only", "conversations": [
        {"from": "human", "value": "Hi ?"}, {"from": "gpt", "value": "Yes ."}]})
    for name, recs in (("captions", captions), ("instruct", instruct)):
        (root / f"{name}.json").write_text(json.dumps(recs))
    manifest = {"image_folder": str(root / "images"),
                "en": {"pretrain": str(root / "captions.json"), "instruct": str(root / "instruct.json")}}
    return {"root": root, "captions": captions, "instruct": instruct, "manifest": manifest}


def _assemble(world, vision="clip", llm="llm", **kw):
    r = world["root"]
    return assemble_llava(r / llm, r / vision, tokenizer=r / "tok", **kw)


def _train(world, model, proc, out, stage="full", records="instruct", **kw):
    """train_stage with small settings; keywords that name a StageSettings field change it, the
    others (qlora, callback, resume, ...) go to train_stage."""
    fields = {f.name for f in dataclasses.fields(StageSettings)}
    settings = StageSettings(**({"lr": 1e-2, "global_batch": 4, "micro_batch": 2, "max_steps": 2,
                                 "max_length": 64} | {k: v for k, v in kw.items() if k in fields}))
    run = {k: v for k, v in kw.items() if k not in fields}
    return train_stage(model, proc, world[records], world["root"] / "images", CHAT, settings,
                       stage=stage, out_dir=out, **({"progress": False} | run))


# --- assembly -------------------------------------------------------------------------------

@pytest.mark.parametrize("vision", ["clip", "dinov2"])
def test_assembly_loads_weights_and_runs(world, vision):
    from transformers import AutoModel, LlamaForCausalLM
    from transformers.activations import GELUActivation
    model, proc = _assemble(world, vision)
    assert model.config.image_seq_length == 16  # (32/8)^2 patches, CLS dropped
    image = Image.open(world["root"] / "images" / "0.png")
    inputs = proc(images=image, text="USER: <image>\nWhat colour is it ? ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape

    mlp = model.model.multi_modal_projector  # LLaVA-1.5 mlp2x_gelu: Linear, GELU, Linear
    assert [type(m).__name__ for m in mlp.children()] == ["Linear", "GELUActivation", "Linear"]
    assert isinstance(mlp.act, GELUActivation) and mlp.linear_1.in_features == 64
    assert model.config.vision_feature_layer == -2
    lm = LlamaForCausalLM.from_pretrained(world["root"] / "llm")
    torch.testing.assert_close(model.model.language_model.layers[1].mlp.down_proj.weight,
                               lm.model.layers[1].mlp.down_proj.weight)
    n_old = lm.model.embed_tokens.weight.shape[0]  # <image> was added after these rows
    torch.testing.assert_close(model.model.language_model.embed_tokens.weight[:n_old],
                               lm.model.embed_tokens.weight)
    tower = AutoModel.from_pretrained(world["root"] / vision)
    for (name, a), b in zip(model.model.vision_tower.state_dict().items(), tower.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    again, _ = _assemble(world, vision)  # seeded: the random projector is reproducible
    torch.testing.assert_close(again.model.multi_modal_projector.linear_1.weight, mlp.linear_1.weight)


def test_full_strategy_keeps_cls_and_dinov2_registers_are_image_tokens(world, tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    model, _ = _assemble(world, "clip", select_strategy="full")
    assert model.config.image_seq_length == 17
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **_vision_kw())
                             ).save_pretrained(tmp_path / "reg")
    model, proc = assemble_llava(world["root"] / "llm", tmp_path / "reg", tokenizer=world["root"] / "tok")
    assert model.config.image_seq_length == 20  # 16 patches + 4 registers (CLS dropped)
    inputs = proc(images=Image.open(world["root"] / "images" / "1.png"), text="<image> Hi",
                  return_tensors="pt")
    assert model(**inputs).logits.shape[1] == 20 + 2  # BOS, image, "Hi"


# --- data -----------------------------------------------------------------------------------

def test_answer_only_labels_exact_positions(world):
    from ifl.train.assemble import load_tokenizer
    tok = load_tokenizer(_tokenizer())
    image_id = tok.convert_tokens_to_ids("<image>")
    rec = {"id": "x", "image": "0.png", "conversations": [
        {"from": "human", "value": "Hi ?\n<image>"}, {"from": "gpt", "value": "Yes ."}]}
    # "USER: <image>\nHi? ASSISTANT: Yes.</s>" after LLaVA moves <image> to the front
    ids, labels, kept = encode_records([rec], tok, CHAT, image_token_id=image_id, n_image_tokens=16,
                                       max_length=64)
    words = ["<s>", "USER", ":"] + ["<image>"] * 16 + ["Hi", "?", "ASSISTANT", ":", "Yes", ".", "</s>"]
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == words
    assert torch.nonzero(labels[0] != IGNORE).flatten().tolist() == [23, 24, 25]
    assert labels[0][23:].tolist() == ids[0][23:].tolist() and kept == [0]
    # plain (stage-1) format: only the caption and its newline are trained
    ids, labels, _ = encode_records([rec], tok, "plain", image_token_id=image_id,
                                    n_image_tokens=16, max_length=64)
    assert tok.convert_ids_to_tokens(ids[0][labels[0] != IGNORE].tolist()) == ["Yes", "."]


def test_multi_turn_text_only_and_batches(world):
    model, proc = _assemble(world)
    recs = world["instruct"][:2] + world["instruct"][-1:]  # 1 turn, 2 turns, text-only
    ds = LlavaDataset(recs, world["root"] / "images", proc, CHAT, max_length=64)
    tok = proc.tokenizer
    trained = [tok.decode(ds.input_ids[i][ds.labels[i] != IGNORE], skip_special_tokens=True)
               for i in range(3)]
    assert [t.split() for t in trained] == [["red", "."], ["blue", ".", "circle", "."], ["Yes", "."]]
    assert int((ds.input_ids[2] == proc.image_token_id).sum()) == 0 and ds.image_index[2] == -1
    assert [int(n) for n in ds.n_targets] == [3, 6, 3]  # answer words + "</s>" per answer
    batch = ds.batch([2, 0, 1])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)  # images of the two records that have one
    assert batch["attention_mask"].sum(1).tolist() == [len(ds.input_ids[i]) for i in (2, 0, 1)]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    ds.images.pixels = None  # the lazy (read from disk) path gives the same tensors
    torch.testing.assert_close(ds.batch([2, 0, 1])["pixel_values"], batch["pixel_values"])


def test_truncation_and_record_errors(world):
    _, proc = _assemble(world)
    recs = world["instruct"][1:2]  # 2 turns, 1 + 2 + 16 + ... tokens
    ds = LlavaDataset(recs, world["root"] / "images", proc, CHAT, max_length=25)
    assert len(ds.input_ids[0]) == 25
    with pytest.raises(ValueError, match="no record fits"):
        LlavaDataset(recs, world["root"] / "images", proc, CHAT, max_length=10)  # image cut
    bad = {"id": "b", "image": "0.png", "conversations": [{"from": "human", "value": "Hi"}]}
    with pytest.raises(ValueError, match="'b'.*0 <image>"):
        render(bad, CHAT)


def test_sample_plan_shards_each_global_batch():
    plan = SamplePlan(n=10, global_batch=4, seed=3)
    stream = [i for s in range(5) for i in plan.global_indices(s)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    parts = plan.micro_batches(1, 1, 0, 2) + plan.micro_batches(1, 1, 1, 2)
    assert sum(parts, []) == plan.global_indices(1)


# --- training -------------------------------------------------------------------------------

def _params(model, part):
    return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}


@pytest.mark.parametrize("stage", ["projector", "full"])
def test_stage_trains_only_its_parts(world, tmp_path, stage):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model, proc = _assemble(world)
    before = {part: _params(model, part) for part in ("multi_modal_projector", "language_model",
                                                       "lm_head", "vision_tower")}
    res = _train(world, model, proc, tmp_path / "s", stage=stage,
                 records="captions" if stage == "projector" else "instruct")
    changed = {part: any(not torch.equal(p, dict(model.named_parameters())[n].cpu())
                         for n, p in ps.items()) for part, ps in before.items()}
    llm_trained = stage == "full"
    assert changed == {"multi_modal_projector": True, "language_model": llm_trained,
                       "lm_head": llm_trained, "vision_tower": False}
    assert list(res.losses.step) == [1, 2] and np.isfinite(res.losses.loss).all()
    loaded = LlavaForConditionalGeneration.from_pretrained(res.model_dir).eval()
    processor = AutoProcessor.from_pretrained(res.model_dir)
    inputs = processor(images=Image.open(world["root"] / "images" / "3.png"),
                       text="USER: <image>\nWhat colour is it ? ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, res.model(**inputs).logits)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(world, tmp_path):
    kw = dict(max_steps=5, save_every=2, micro_batch=1, lr=3e-3)  # LLM with dropout: RNG matters
    whole = _train(world, *_assemble(world, llm="llm_dropout"), tmp_path / "whole", **kw)

    def stop_at_3(step, row):
        if step == 3:
            raise Interrupt
    with pytest.raises(Interrupt):
        _train(world, *_assemble(world, llm="llm_dropout"), tmp_path / "cut", callback=stop_at_3, **kw)
    assert (tmp_path / "cut/checkpoints/step-000002/state.json").exists()
    resumed = _train(world, *_assemble(world, llm="llm_dropout"), tmp_path / "cut", **kw)
    assert resumed.resumed_from == 2 and not (tmp_path / "cut/checkpoints").exists()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    np.testing.assert_allclose(whole.losses.loss, resumed.losses.loss, rtol=1e-6)
    again = _train(world, None, None, tmp_path / "cut", **kw)  # finished: read back, no training
    assert again.cached and again.steps == 5
    with pytest.raises(ValueError, match="other settings"):
        _train(world, None, None, tmp_path / "cut", **(kw | {"lr": 1e-3}))


def test_gradient_accumulation_equivalence(world, tmp_path):
    # Adam's first step is lr * g / (|g| + eps): with the usual eps=1e-8 it is lr * sign(g), so
    # rounding can flip near-zero gradients; with eps=1 the update is ~lr * g, comparing gradients
    results = []
    for micro in (4, 1):  # one micro-batch of 4 vs four accumulated micro-batches of 1
        model, proc = _assemble(world)
        res = _train(world, model, proc, tmp_path / f"m{micro}", micro_batch=micro, max_steps=1,
                     max_grad_norm=None, warmup_ratio=0.0, scheduler="constant", adam_eps=1.0,
                     lr=1.0)
        results.append(res)
    # compared on the CPU: on a GPU machine the engine trains on CUDA
    a, b = ({k: v.cpu() for k, v in r.model.state_dict().items()} for r in results)
    assert any(not torch.equal(a[n], v) for n, v in _assemble(world)[0].state_dict().items())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert results[0].losses.loss[0] == pytest.approx(results[1].losses.loss[0], rel=1e-5)
    # LLaVA's 2023 normalisation (mean of micro-batch means) agrees with one micro-batch of 4,
    # and differs once micro-batches hold different numbers of answer tokens
    for micro, same in ((4, True), (1, False)):
        res = _train(world, *_assemble(world), tmp_path / f"mb{micro}", micro_batch=micro,
                     max_steps=1, max_grad_norm=None, warmup_ratio=0.0, scheduler="constant",
                     adam_eps=1.0, lr=1.0, loss_norm="micro_batch")
        c = {k: v.cpu() for k, v in res.model.state_dict().items()}
        w = "model.multi_modal_projector.linear_2.weight"
        assert torch.allclose(a[w], c[w], rtol=0, atol=1e-6) == same
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        _train(world, *_assemble(world), tmp_path / "bad", global_batch=6, micro_batch=4)


def test_qlora_on_cpu(world, tmp_path):
    from transformers import LlavaForConditionalGeneration
    try:
        model, proc = _assemble(world, quantization="4bit")
    except Exception as e:  # bitsandbytes without a CPU backend
        pytest.skip(f"bitsandbytes 4-bit does not load on this machine: {e}")
    assert type(model.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    with pytest.raises(ValueError, match="qlora=LoraSettings"):
        _train(world, model, proc, tmp_path / "no-lora")
    res = _train(world, model, proc, tmp_path / "q", qlora=LoraSettings(r=4, alpha=8, dropout=0.0))
    s = res.summary
    assert s["trainable"] == s["lora"] + s["projector"] and s["lora"] > 0
    merged = LlavaForConditionalGeneration.from_pretrained(res.model_dir)
    keys = merged.state_dict().keys()
    assert not any("lora" in k or "absmax" in k for k in keys)
    base, _ = _assemble(world)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[q], base.state_dict()[q])  # LoRA merged in
    v = "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    torch.testing.assert_close(merged.state_dict()[v], base.state_dict()[v])
    # stage 2 of train_variant(qlora=...): a saved LLaVA reloaded with only its LLM in 4 bits
    model, proc = load_llava(res.model_dir, quantization="4bit")
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    assert kinds["model.language_model.layers.0.mlp.up_proj"] == "Linear4bit"
    assert {kinds[n] for n in ("lm_head", "model.multi_modal_projector.linear_1",
                               "model.vision_tower.encoder.layers.0.mlp.fc1")} == {"Linear"}
    again = _train(world, model, proc, tmp_path / "q2", qlora=LoraSettings(r=4, alpha=8), max_steps=1)
    assert LlavaForConditionalGeneration.from_pretrained(again.model_dir).config.image_seq_length == 16


# --- design space ---------------------------------------------------------------------------

def test_design_space_is_the_papers_fourteen():
    specs = design_space()
    assert len(specs) == 14 and len({s.name for s in specs}) == 14
    by_llm = {llm: sorted({s.data_lang for s in specs if s.llm == llm}) for llm in ("vicuna", "yi", "leo")}
    assert by_llm == {"vicuna": ["de", "en", "zh"], "yi": ["en", "zh"], "leo": ["de", "en"]}
    assert {s.vision for s in specs} == {"clip", "dinov2"}
    assert variant("leo-dinov2-de").llm == "leo"
    assert len(design_space(rules={})) == 18
    with pytest.raises(KeyError, match="yi-clip-de"):
        variant("yi-clip-de")


def test_train_variant_resumes_and_skips_when_done(world, tmp_path, monkeypatch):
    import ifl.train.assemble as assemble_mod
    import ifl.train.variants as variants_mod
    spec = variant("vicuna-clip-en")
    s1 = StageSettings(lr=1e-2, global_batch=4, micro_batch=4, max_steps=2, max_length=64,
                       format="plain")
    s2 = StageSettings(lr=1e-2, global_batch=4, micro_batch=4, max_steps=3, max_length=64,
                       save_every=1)
    args = (spec, world["root"] / "llm", world["root"] / "clip", world["manifest"], CHAT)

    def stop(step, row):
        if step == 2:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_variant(*args, s1, dataclasses.replace(s2, extra={"callback": stop}),
                      tmp_path, tokenizer=world["root"] / "tok", progress=False)
    out = tmp_path / spec.name
    assert (out / "stage1/result.json").exists() and not (out / "DONE").exists()
    monkeypatch.setattr(assemble_mod, "assemble_llava", None)  # stage 1 must not be rebuilt
    res = train_variant(*args, s1, s2, tmp_path, tokenizer=world["root"] / "tok", progress=False)
    assert res.stage1.cached and res.stage2.resumed_from == 2 and (out / "DONE").exists()
    assert list(res.stage2.losses.step) == [1, 2, 3]
    monkeypatch.setattr(variants_mod, "train_stage", None)  # done: nothing runs at all
    again = train_variant(*args, s1, s2, tmp_path, progress=False)
    assert again.cached and again.model_dir == res.model_dir and again.stage2.steps == 3


def test_train_variant_retrains_when_the_recipe_changes(world, tmp_path):
    spec = variant("vicuna-clip-en")
    s1 = StageSettings(lr=1e-2, global_batch=4, micro_batch=4, max_steps=1, max_length=64,
                       format="plain")
    s2 = StageSettings(lr=1e-2, global_batch=4, micro_batch=4, max_steps=1, max_length=64)
    args = (spec, world["root"] / "llm", world["root"] / "clip", world["manifest"], CHAT)
    first = train_variant(*args, s1, s2, tmp_path, tokenizer=world["root"] / "tok", progress=False)
    longer = dataclasses.replace(s2, max_steps=2)
    second = train_variant(*args, s1, longer, tmp_path, tokenizer=world["root"] / "tok", progress=False)
    assert not first.cached and not second.cached and second.stage2.steps == 2
    done = json.loads((tmp_path / spec.name / "DONE").read_text())
    assert done["stage2"]["max_steps"] == 2 and done["llm"] == str(world["root"] / "llm")
    assert train_variant(*args, s1, longer, tmp_path, progress=False).cached


def test_component_id_follows_the_build_marker(tmp_path):
    from ifl.train.variants import component_id
    (tmp_path / "DONE").write_text('{"steps": 1}')
    one = component_id(tmp_path)
    (tmp_path / "DONE").write_text('{"steps": 2}')   # the LM was rebuilt with other settings
    assert one != component_id(tmp_path) and one.startswith(str(tmp_path))
    assert component_id(tmp_path / "absent") == str(tmp_path / "absent")


def test_loss_matches_transformers_and_gradient_checkpointing(world, tmp_path):
    from ifl.train.loop import token_loss_sum
    model, proc = _assemble(world)
    ds = LlavaDataset(world["instruct"], world["root"] / "images", proc, CHAT, max_length=64)
    batch = ds.batch([0, 1, 12])  # two image records and the text-only one
    with torch.no_grad():
        ours, logits = token_loss_sum(model, batch)
        reference = model(**batch).loss  # HF's own shifted mean over labels != -100
    assert logits.shape[0] == int(ds.n_targets[[0, 1, 12]].sum())
    torch.testing.assert_close(ours / logits.shape[0], reference)
    plain = _train(world, *_assemble(world), tmp_path / "a", max_steps=2)
    ckpt = _train(world, *_assemble(world), tmp_path / "b", max_steps=2, gradient_checkpointing=True)
    np.testing.assert_allclose(plain.losses.loss, ckpt.losses.loss, rtol=1e-6)


def test_command_line(world, tmp_path):
    from ifl.train.__main__ import main
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(world["manifest"]))
    r = world["root"]
    small = ["global_batch=4", "micro_batch=4", "max_steps=1", "max_length=64"]
    main(["--variant", "vicuna-clip-en", "leo-dinov2-en", "--llm", str(r / "llm"),
          "--vision", str(r / "{vision}"), "--tokenizer", str(r / "tok"), "--manifest", str(manifest),
          "--out", str(tmp_path / "out"), "--stage1", *small, "--stage2", *small, "lr=5e-4"])
    for name in ("vicuna-clip-en", "leo-dinov2-en"):
        assert (tmp_path / "out" / name / "DONE").exists()
    done = json.loads((tmp_path / "out/leo-dinov2-en/DONE").read_text())
    assert done["stage1"]["format"] == "plain" and done["stage2"]["lr"] == 5e-4


def test_command_line_on_the_papers_manifest_takes_its_image_folders(world, tmp_path):
    """Notebook 01's paper manifest names records only (LCS-558K's images and playground/data
    are separate folders): the manual route is given them as options, as notebook 02 does."""
    from ifl.train.__main__ import main
    paper_manifest = {k: v for k, v in world["manifest"].items() if k != "image_folder"}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(paper_manifest))
    r = world["root"]
    small = ["global_batch=4", "micro_batch=4", "max_steps=1", "max_length=64"]
    args = ["--variant", "vicuna-clip-en", "--llm", str(r / "llm"), "--vision", str(r / "clip"),
            "--tokenizer", str(r / "tok"), "--manifest", str(manifest), "--out", str(tmp_path / "out"),
            "--stage1", *small, "--stage2", *small]
    with pytest.raises(ValueError, match="records have images but no image folder is given"):
        main(args)
    main(args + ["--pretrain-image-folder", str(r / "images"), "--instruct-image-folder", str(r / "images")])
    assert (tmp_path / "out/vicuna-clip-en/DONE").exists()


def test_notebook_02_trains_a_variant_with_two_processes(world, tmp_path, monkeypatch):
    """02_train_variants.processes: 2 ranks through `accelerate launch ... -m ifl.train` (DDP on
    the CPU, gloo: each rank takes half of every global batch) train the variant on a
    paper-style manifest (image folders given apart, as notebook 01 leaves them out); the
    weights match one process accumulating the same global batch, a rerun reads it back without
    launching, and a failed launch names its log."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file

    import ifl.train.launch as launch
    from ifl.params_schema import TrainVariants
    from ifl.stages import train_variants as stage02
    from ifl.train.launch import TrainLaunchError

    r = world["root"]
    llm = tmp_path / "vicuna"   # an LLM folder with its tokenizer, as a hub checkpoint has
    shutil.copytree(r / "llm", llm)
    for f in (r / "tok").iterdir():
        shutil.copy(f, llm / f.name)
    manifest = {"en": world["manifest"]["en"],
                "image_folders": {"pretrain": str(r / "images"), "instruct": str(r / "images")}}
    small = dict(llms=["vicuna"], visions=["clip"], data_languages=["en"], training="full",
                 dtype="float32", stage1_lr=1e-2, stage2_lr=1e-2, max_length=64, save_every=1,
                 gradient_checkpointing=False, threads=1,
                 **{f"stage{i}_{k}": v for i in (1, 2)
                    for k, v in (("global_batch", 4), ("micro_batch", 1), ("max_steps", 2))})

    def train(processes, out):
        return stage02.train_all(TrainVariants(processes=processes, **small), "paper",
                                 {"vicuna": str(llm)}, {"clip": str(r / "clip")}, manifest, out,
                                 device="cpu", seed=0)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    two = train(2, tmp_path / "two")
    assert len(two) == 1 and two["stage2_final_loss"].notna().all()
    log = tmp_path / "two/vicuna-clip-en/launch.log"
    assert "--num_processes 2" in log.read_text() and "--instruct-image-folder" in log.read_text()
    assert json.loads((tmp_path / "two/vicuna-clip-en/stage2/result.json").read_text())["processes"] == 2
    one = train(1, tmp_path / "one")
    a = load_file(Path(two["model_dir"].iloc[0]) / "model.safetensors")
    b = load_file(Path(one["model_dir"].iloc[0]) / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)

    def no_launch(*args, **kwargs):
        raise AssertionError("a trained variant was launched again")
    monkeypatch.setattr(launch, "launch_training", no_launch)
    again = train(2, tmp_path / "two")
    assert bool(again["cached"].iloc[0])
    monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    missing = tmp_path / "no-tower"
    with pytest.raises(TrainLaunchError, match="vicuna-clip-en/launch.log") as err:
        stage02.train_all(TrainVariants(processes=2, **small), "paper", {"vicuna": str(llm)},
                          {"clip": str(missing)}, manifest, tmp_path / "broken", device="cpu", seed=0)
    assert "A rerun resumes" in str(err.value)


@pytest.mark.parametrize("training, device, deepspeed", [("full", "cuda", True),
                                                       ("qlora", "cuda", False), ("full", "cpu", False)])
def test_launched_training_uses_deepspeed_for_the_full_fine_tune_on_cuda(tmp_path, monkeypatch,
                                                                        training, device, deepspeed):
    """paper.yaml (full, 8 GPUs): ZeRO-2 from ifl/train/deepspeed_zero2.yaml; QLoRA and the CPU: DDP."""
    import ifl.train.launch as launch
    from ifl.params_schema import TrainVariants
    from ifl.stages import train_variants as stage02
    from ifl.train.launch import DEEPSPEED_ZERO2, TrainLaunchError, accelerate_train_command

    seen = {}
    monkeypatch.setattr(launch, "launch_training", lambda cli, **kw: seen.update(kw, cli=cli))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    p = TrainVariants(processes=8, training=training, llms=["vicuna"], visions=["clip"],
                      data_languages=["en"])
    stage1, stage2 = stage02.stage_settings(p, "paper")
    spec = stage02.specs(p)[0]
    with pytest.raises(TrainLaunchError, match="ended without vicuna-clip-en trained"):
        stage02.launch_variant(spec, p, "llm", "clip", {"en": {}, "image_folders": {"pretrain": "a"}},
                               tmp_path, stage1, stage2, None, device=device, seed=0)
    assert (seen["processes"], seen["deepspeed"], seen["cpu"]) == (8, deepspeed, device == "cpu")
    assert seen["cli"][seen["cli"].index("--pretrain-image-folder") + 1] == "a"
    cmd = accelerate_train_command(["--variant", "x"], processes=8, deepspeed=deepspeed, port=1)
    assert cmd[cmd.index("--num_processes") + 1] == "8" and cmd[-4:] == ["-m", "ifl.train", "--variant", "x"]
    assert (str(DEEPSPEED_ZERO2) in cmd) == deepspeed and ("--multi_gpu" in cmd) != deepspeed


def test_a_stages_settings_survive_the_command_line():
    """The ranks rebuild both stages' settings from --stage1/--stage2 exactly: the variant's
    recipe (DONE) is the caller's, so the caller reads the launched variant back."""
    import ifl.train.__main__ as cli
    from ifl.train.launch import settings_pairs
    settings = StageSettings.llava_stage2(micro_batch=3, lr=2e-5, max_steps=None, save_every=None,
                                          gradient_checkpointing=True, max_grad_norm=None)
    pairs = cli._pairs(settings_pairs(settings))
    assert StageSettings.llava_stage2(**pairs) == settings


# --- what only a real checkpoint or launch shows: memory, batch fields, rates, images ------

def test_stage1_model_is_freed_before_stage2_loads(world, tmp_path, monkeypatch):
    """On a 24 GB card, stage 2 (NF4 7B + LoRA states) cannot start beside stage 1's bf16 7B:
    no reference to the stage-1 model may survive into stage 2's load, nor past the variant."""
    import gc
    import weakref

    import ifl.train.assemble as assemble_mod
    built, seen_at_stage2 = [], []
    real_assemble, real_load = assemble_mod.assemble_llava, assemble_mod.load_llava

    def assemble(*a, **kw):
        model, proc = real_assemble(*a, **kw)
        built.append(weakref.ref(model))
        return model, proc

    def load(*a, **kw):
        seen_at_stage2.append(built[0]() is None)
        model, proc = real_load(*a, **kw)
        built.append(weakref.ref(model))
        return model, proc
    monkeypatch.setattr(assemble_mod, "assemble_llava", assemble)
    monkeypatch.setattr(assemble_mod, "load_llava", load)
    gc.disable()  # only the engine's own collection may free the cycles
    try:
        s = StageSettings(lr=1e-2, global_batch=4, micro_batch=4, max_steps=1, max_length=64)
        res = train_variant(variant("vicuna-clip-en"), world["root"] / "llm", world["root"] / "clip",
                            world["manifest"], CHAT, dataclasses.replace(s, format="plain"), s,
                            tmp_path, tokenizer=world["root"] / "tok", progress=False)
    finally:
        gc.enable()
    assert seen_at_stage2 == [True]
    assert built[1]() is None and res.stage1.model is None and res.stage2.model is None


def test_deepspeed_batch_fields_are_set_per_stage():
    """accelerate hands every stage the same (singleton) DeepSpeed config dict, which stage 1
    resolved; DeepSpeed asserts train_batch_size == micro x accumulation x processes."""
    from ifl.train.loop import stage_deepspeed_config
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2}}
    for micro, accum, world_size in ((32, 1, 8), (16, 1, 8), (4, 4, 8)):  # stage 1, stage 2, ...
        stage_deepspeed_config(config, micro_batch=micro, accum=accum, world=world_size,
                               max_grad_norm=1.0)
        assert config["train_batch_size"] == (config["train_micro_batch_size_per_gpu"]
                                              * config["gradient_accumulation_steps"] * world_size)
        assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) \
            == (micro, accum)
    assert config["zero_optimization"] == {"stage": 2} and config["gradient_clipping"] == 1.0


def test_accelerator_writes_each_stages_batches_into_the_deepspeed_plugin(monkeypatch):
    """_accelerator (the trainer's real set-up, not a copy) writes each stage's batch fields and
    clipping into accelerate's DeepSpeed plugin config. DeepSpeed is not installed here: the
    Accelerator is replaced by one that reports DEEPSPEED on 8 processes and, like accelerate,
    keeps ONE process-wide state whose plugin config every stage shares."""
    import types

    import accelerate
    from ifl.train import loop

    plugin = types.SimpleNamespace(deepspeed_config={
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2}})
    shared_state = types.SimpleNamespace(deepspeed_plugin=plugin)

    class DeepSpeedAccelerator:
        num_processes = 8
        distributed_type = types.SimpleNamespace(name="DEEPSPEED")
        state = shared_state

        def __init__(self):
            self.gradient_accumulation_steps = 1

    monkeypatch.setattr(accelerate, "Accelerator", DeepSpeedAccelerator)
    config = plugin.deepspeed_config
    # stage 1 (pretrain.sh: 256 = 32 x 1 x 8), stage 2 (finetune.sh: 128 = 16 x 1 x 8), then
    # a stage that accumulates (128 = 4 x 4 x 8)
    for global_batch, micro, want_accum in ((256, 32, 1), (128, 16, 1), (128, 4, 4)):
        accelerator, accum, world_size, *_ = loop._accelerator(global_batch, micro, max_grad_norm=1.0)
        assert (accum, world_size, accelerator.gradient_accumulation_steps) == (want_accum, 8, want_accum)
        assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
                config["gradient_accumulation_steps"]) == (global_batch, micro, want_accum)
    assert config["gradient_clipping"] == 1.0 and config["zero_optimization"] == {"stage": 2}
    loop._accelerator(128, 16, max_grad_norm=None)
    assert config["gradient_clipping"] == 0.0   # no clipping: DeepSpeed's off value


def test_bf16_projector_moves_at_small_lr(world, tmp_path):
    """Adam moves each weight by ~lr: at 2e-5 a bf16 weight of ~0.05 (spacing ~2e-4) would not
    move; the fp32 master copy must, and the saved model is bf16 again."""
    from safetensors.torch import load_file
    model, proc = _assemble(world, dtype=torch.bfloat16)
    weight = model.model.multi_modal_projector.linear_1.weight
    before = weight.detach().float().clone()
    seen = {}

    def snapshot(step, row):
        seen[step] = weight.detach().float().cpu()
    res = _train(world, model, proc, tmp_path / "bf16", stage="projector", records="captions",
                 lr=2e-5, max_steps=3, warmup_ratio=0.0, scheduler="constant", callback=snapshot)
    moved = (seen[3] != before).float().mean().item()
    assert moved > 0.9, f"only {moved:.0%} of the projector's weights moved"
    saved = load_file(res.model_dir / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}


def test_learning_rates_follow_the_training_mode():
    """Switching `training` takes the other recipe's rates unless the user set one: QLoRA
    (finetune_lora.sh: LoRA 2e-4, projector 2e-5), full (finetune.sh: 2e-5), stage 1 1e-3."""
    from ifl.params_schema import TrainVariants
    from ifl.stages.train_variants import paper_learning_rates, stage_settings
    qlora = TrainVariants(training="qlora")
    full = TrainVariants(training="full")
    assert [s.lr for s in stage_settings(qlora, "paper")] == [1e-3, 2e-4]
    assert paper_learning_rates(qlora).projector == 2e-5
    assert [s.lr for s in stage_settings(full, "paper")] == [1e-3, 2e-5]
    assert paper_learning_rates(full).projector is None
    assert stage_settings(TrainVariants(training="full", stage2_lr=1e-5), "paper")[1].lr == 1e-5
    with pytest.raises(ValueError, match="only with training: qlora"):
        paper_learning_rates(TrainVariants(training="full", stage2_projector_lr=1e-4))


def test_command_line_rates_follow_the_mode(monkeypatch, tmp_path):
    import ifl.train.__main__ as cli
    seen = []
    monkeypatch.setattr(cli, "check_manifest", lambda *a, **k: [])
    monkeypatch.setattr(cli, "train_variant", lambda spec, llm, vision, manifest, template, s1, s2,
                        out, **kw: seen.append((s1.lr, s2.lr, kw["qlora"])) or
                        type("R", (), {"cached": True, "model_dir": out, "skipped_records": 0})())
    base = ["--variant", "vicuna-clip-en", "--llm", "x", "--vision", "y", "--manifest", "m",
            "--out", str(tmp_path)]
    cli.main(base)
    cli.main(base + ["--qlora", "r=8"])
    cli.main(base + ["--qlora", "projector_lr=1e-4", "--stage2", "lr=3e-4"])
    assert [(a, b, q and q.projector_lr) for a, b, q in seen] == [
        (1e-3, 2e-5, None), (1e-3, 2e-4, 2e-5), (1e-3, 3e-4, 1e-4)]


def test_missing_images_stop_before_training_or_are_skipped(world, tmp_path):
    """One missing image would stop stage 2 hours in: checked first, named, or skipped+counted."""
    import shutil

    from ifl.train.preflight import MissingImagesError
    images = tmp_path / "images"
    shutil.copytree(world["root"] / "images", images)
    (images / "5.png").unlink()
    manifest = dict(world["manifest"], image_folder=str(images))
    s = StageSettings(lr=1e-2, global_batch=4, micro_batch=4, max_steps=1, max_length=64)
    args = (variant("vicuna-clip-en"), world["root"] / "llm", world["root"] / "clip", manifest,
            CHAT, dataclasses.replace(s, format="plain"), s)
    with pytest.raises(MissingImagesError, match=r"en pretrain: 1 of 12 image files .*5\.png"):
        train_variant(*args, tmp_path / "out", tokenizer=world["root"] / "tok", progress=False)
    assert not (tmp_path / "out/vicuna-clip-en/stage1").exists()  # nothing trained
    res = train_variant(*args, tmp_path / "out", tokenizer=world["root"] / "tok", progress=False,
                        skip_missing_images=True)
    assert res.skipped_records == 2  # one caption and one instruction record use 5.png
    saved = json.loads((tmp_path / "out/vicuna-clip-en/images.json").read_text())
    assert [p["skipped_records"] for p in saved] == [1, 1] and saved[0]["missing_files"] == ["5.png"]
    assert json.loads((tmp_path / "out/vicuna-clip-en/stage2/result.json").read_text())[
        "records"] == len(world["instruct"]) - 1


def test_preflight_names_ocr_vqa_conversion(tmp_path):
    from ifl.train.preflight import MissingImagesError, check_images, check_manifest
    recs = [{"id": str(i), "image": f"ocr_vqa/images/{i}.jpg"} for i in range(8)]
    with pytest.raises(MissingImagesError, match=r"instruct: 8 of 8 image files .*first: .*0\.jpg, .*4\.jpg;"):
        check_images(recs, tmp_path, name="instruct")
    with pytest.raises(MissingImagesError, match="OCR-VQA"):
        check_images(recs, tmp_path)
    (tmp_path / "c.json").write_text(json.dumps(recs))
    manifest = {"image_folder": str(tmp_path), "de": {"pretrain": str(tmp_path / "c.json"),
                                                      "instruct": str(tmp_path / "c.json")}}
    with pytest.raises(MissingImagesError, match="de pretrain"):  # before any variant trains
        check_manifest(manifest, ["en", "de"])
    assert [r["skipped_records"] for r in check_manifest(manifest, ["de"], skip_missing=True)] == [8, 8]


def test_doctests_of_the_new_training_modules():
    import doctest

    import ifl.train.loop
    import ifl.train.precision
    import ifl.train.preflight
    import ifl.train.recipes
    for module in (ifl.train.loop, ifl.train.precision, ifl.train.preflight, ifl.train.recipes):
        assert doctest.testmod(module).failed == 0, module.__name__
