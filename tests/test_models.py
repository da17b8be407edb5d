"""ifl.models and the tiny stand-ins of ifl.smoke.tiny_llava: the table, loading through the one
from_pretrained path (float32, 4-bit, 8-bit), generation from image and text-only queries, batched
left-padded generation, and the errors a user sees without the weights."""
import doctest
import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ifl.models
from ifl.compat import decoder_layers
from ifl.models import (ModelUnavailableError, find_model, load_llava, load_tokenizer,
                        model_info, model_table, provenance, template_for)
from ifl.prompts import query, template
from ifl.smoke.tiny_llava import N_IMAGE_TOKENS, write_tiny_llava_models
from ifl.smoke.tiny_models import tiny_corpus

torch.set_num_threads(1)
LLAVAS = {"tiny-llava-1.5": "llama", "tiny-bakllava": "mistral", "tiny-llava-gemma": "gemma"}
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    return write_tiny_llava_models(root)


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)  # two sizes: the processor resizes and crops both to 56 px
    return [Image.fromarray((rng.rand(80, 64, 3) * 255).astype("uint8")),
            Image.fromarray((rng.rand(40, 90, 3) * 255).astype("uint8"))]


def _new_tokens(model, enc, n=4):
    out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, enc["input_ids"].shape[1]:]


def test_doctests():
    assert doctest.testmod(ifl.models).failed == 0


def test_table_rows_are_consistent(tiny):
    table = model_table()
    assert {n for n, i in table.items() if i.kind == "llava"} == {
        "llava-1.5-7b", "llava-1.5-13b", "bakllava", "llava-gemma-2b"}
    for info in table.values():
        assert info.smoke in tiny, info.name
        if info.kind == "vision":
            assert info.n_image_tokens == (info.image_size // info.patch_size) ** 2
            assert info.vision_feature_layer == -2
        else:
            assert template(info.template).name == info.template
        for part in (info.llm, info.vision):
            assert part is None or part in table
    assert model_info("bakllava").template == "llava_hf"  # docs/sources.md §8a: trained with LLaVA's prompt
    with pytest.raises(KeyError, match="ifl/models.yaml"):
        model_info("llava-2")


def test_find_model_and_template_for(tiny):
    assert find_model("Intel/llava-gemma-2b").name == "llava-gemma-2b"
    assert find_model("/data/models/llava-1.5-13b-hf/").name == "llava-1.5-13b"  # hf download folder
    assert find_model(tiny["tiny-yi"]).name == "yi"
    assert find_model("someone/else") is None
    assert template_for(tiny["tiny-llava-gemma"]).name == "gemma"
    assert template_for(tiny["tiny-leo"]).name == "chatml"
    assert template_for("llava-1.5-7b", override="vicuna_v1").name == "vicuna_v1"
    with pytest.raises(KeyError, match="prompts.yaml"):
        template_for("someone/else")


@pytest.mark.parametrize("name", LLAVAS)
def test_load_llava_generates_from_image_and_text_queries(tiny, images, name):
    model, processor = load_llava(tiny[name], dtype="float32")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.dtype == torch.float32 and model.config.text_config.model_type == LLAVAS[name]
    assert processor.tokenizer.padding_side == "left"
    t = template_for(tiny[name])
    image_token = model.config.image_token_id

    enc = processor(images=images[0], text=query(t, "What is in the image?", image=True),
                    return_tensors="pt")
    assert enc.pixel_values.shape == (1, 3, 56, 56)
    assert (enc.input_ids == image_token).sum() == N_IMAGE_TOKENS == model.config.image_seq_length
    with_image = _new_tokens(model, enc)
    assert with_image.shape == (1, 4) and not (with_image == image_token).any()

    text_only = query(t, "What is in the image?", image=False, description="A red bus.")
    enc = processor(text=text_only, return_tensors="pt")
    assert not (enc.input_ids == image_token).any()
    assert _new_tokens(model, enc).shape == (1, 4)
    assert len(decoder_layers(model)) == 2


def test_saved_chat_templates_render_like_the_table(tiny):
    """The stand-ins' own chat templates (as in the hub repos) agree with ifl/prompts.yaml."""
    from transformers import AutoProcessor
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Why?"}]}]
    for name, expected in [("tiny-llava-1.5", "llava_hf"), ("tiny-bakllava", "mistral_inst")]:
        rendered = AutoProcessor.from_pretrained(tiny[name]).apply_chat_template(
            conv, add_generation_prompt=True)
        assert rendered == query(template(expected), "Why?", image=True), name
    gemma = load_tokenizer(tiny["tiny-llava-gemma"])  # docs/sources.md §8a: string content, bos in text
    rendered = gemma.apply_chat_template([{"role": "user", "content": "<image>\nWhy?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert rendered == "<bos>" + query(template("gemma"), "Why?", image=True)
    for name in ("tiny-yi", "tiny-leo"):
        rendered = load_tokenizer(tiny[name]).apply_chat_template(
            [{"role": "user", "content": "Why?"}], tokenize=False, add_generation_prompt=True)
        assert rendered == query(template("chatml"), "Why?", image=False), name


@pytest.mark.parametrize("name", LLAVAS)
def test_batched_left_padded_generation_equals_one_at_a_time(tiny, images, name):
    model, processor = load_llava(tiny[name], dtype="float32")
    t = template_for(tiny[name])
    questions = ["What?", "Why is the sky so blue in this picture today?"]
    prompts = [query(t, q, image=True) for q in questions]
    batch = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    assert (batch.attention_mask[0, 0], batch.attention_mask[0, -1]) == (0, 1)  # padded on the left
    batched = _new_tokens(model, batch)
    for i, prompt in enumerate(prompts):
        single = _new_tokens(model, processor(images=images[i], text=prompt, return_tensors="pt"))
        assert torch.equal(batched[i], single[0]), (name, i)
    texts = [query(t, q, image=False, description="A red bus.") for q in questions]
    batched = _new_tokens(model, processor(text=texts, return_tensors="pt", padding=True))
    for i, text in enumerate(texts):
        assert torch.equal(batched[i], _new_tokens(model, processor(text=text, return_tensors="pt"))[0])


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-gemma"])
def test_4bit_nf4_on_cpu(tiny, images, name):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    model, processor = load_llava(tiny[name], dtype="bfloat16", quantization="4bit")
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # 2 layers x 7 in the LLM only: as LLaVA's own 4-bit loader, the CLIP tower, the projector
    # and lm_head stay in full precision (transformers 5 alone would quantise tower and projector)
    assert len(quantised) == 14
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in decoder_layers(model)[0].modules()
               if isinstance(m, torch.nn.Linear))
    for part in (model.model.vision_tower, model.model.multi_modal_projector, model.lm_head):
        linears = [m for m in part.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and not any(isinstance(m, bnb.nn.Linear4bit) for m in linears)
        assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert quantised[0].weight.quant_state.quant_type == "nf4"
    assert model.config.quantization_config.bnb_4bit_use_double_quant
    enc = processor(images=images[0], text=query(template_for(tiny[name]), "What?", image=True),
                    return_tensors="pt")
    assert _new_tokens(model, enc.to(torch.bfloat16)).shape == (1, 4)


def test_8bit_on_cpu(tiny, images):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    model, processor = load_llava(tiny["tiny-llava-1.5"], dtype="float32", quantization="8bit")
    assert isinstance(decoder_layers(model)[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    enc = processor(images=images[0], text=query(template("llava_hf"), "What?", image=True),
                    return_tensors="pt")
    assert _new_tokens(model, enc).shape == (1, 4)


def test_hub_id_loads_from_the_hub_cache_offline(tiny, images, tmp_path, monkeypatch):
    """A hub id goes through the same from_pretrained call: here a hub cache laid out as
    `hf download` leaves it, holding the stand-in as llava-hf/llava-1.5-7b-hf at FAKE_SHA."""
    import huggingface_hub.constants
    repo = tmp_path / "models--llava-hf--llava-1.5-7b-hf"
    shutil.copytree(tiny["tiny-llava-1.5"], repo / "snapshots" / FAKE_SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_SHA)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load_llava("llava-1.5-7b", dtype="float32")  # row -> hub id, main
    enc = processor(images=images[0], text=query(template_for(model), "What?", image=True),
                    return_tensors="pt")
    assert _new_tokens(model, enc).shape == (1, 4)
    assert provenance("llava-1.5-7b") == {"source": "llava-hf/llava-1.5-7b-hf", "revision": None,
                                          "commit": FAKE_SHA}
    assert provenance("llava-hf/llava-1.5-7b-hf", FAKE_SHA)["commit"] == FAKE_SHA
    assert provenance(tiny["tiny-vicuna"])["commit"] is None
    load_llava("llava-hf/llava-1.5-7b-hf", revision=FAKE_SHA, dtype="float32")
    with pytest.raises(ModelUnavailableError, match="hf download llava-hf/llava-1.5-13b-hf"):
        provenance("llava-1.5-13b")


def test_offline_hub_error_names_id_revision_and_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        load_llava("llava-hf/llava-1.5-7b-hf", revision=FAKE_SHA)
    message = str(err.value)
    assert "'llava-hf/llava-1.5-7b-hf'" in message and "HF_HUB_OFFLINE=1" in message
    assert f"hf download llava-hf/llava-1.5-7b-hf --revision {FAKE_SHA}" in message
    with pytest.raises(ModelUnavailableError, match="Intel/llava-gemma-2b.*revision main"):
        load_llava("llava-gemma-2b")  # a table row resolves to its hub id
    with pytest.raises(ModelUnavailableError, match="hf download lmsys/vicuna-7b-v1.5"):
        load_tokenizer("vicuna")


def test_local_folder_errors(tiny, tmp_path):
    with pytest.raises(ModelUnavailableError, match="write_tiny_llava_models"):
        load_llava(tmp_path / "missing")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny["tiny-llava-1.5"] / "config.json", no_weights)
    with pytest.raises(ModelUnavailableError, match="no-weights"):
        load_llava(no_weights, dtype="float32")
    with pytest.raises(ValueError, match="model_type 'llama', not 'llava'"):
        load_llava(tiny["tiny-vicuna"], dtype="float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_llava(tiny["tiny-llava-1.5"], dtype="fp32")
    with pytest.raises(ValueError, match="quantization"):
        load_llava(tiny["tiny-llava-1.5"], quantization="3bit")


@pytest.mark.parametrize("name,special", [("tiny-vicuna", []),
                                          ("tiny-yi", ["<|im_start|>", "<|im_end|>"]),
                                          ("tiny-leo", ["<|im_start|>", "<|im_end|>"])])
def test_base_llms_load_with_auto_classes(tiny, name, special):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny[name])
    tokenizer = load_tokenizer(tiny[name])
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size >= 64
    for token in special:  # chat markers are single tokens, never split
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    enc = tokenizer([query(template_for(tiny[name]), "Was ist auf dem Bild?", image=False)],
                    return_tensors="pt")
    assert _new_tokens(model, enc).shape == (1, 4)


@pytest.mark.parametrize("name,cls", [("tiny-clip-vit", "CLIPVisionModel"),
                                      ("tiny-dinov2", "Dinov2Model")])
def test_vision_towers_load_with_auto_classes(tiny, images, name, cls):
    from transformers import AutoImageProcessor, AutoModel
    tower = AutoModel.from_pretrained(tiny[name])
    pixels = AutoImageProcessor.from_pretrained(tiny[name])(images, return_tensors="pt").pixel_values
    assert type(tower).__name__ == cls and pixels.shape == (2, 3, 56, 56)
    hidden = tower(pixels, output_hidden_states=True).hidden_states[-2]  # vision_feature_layer -2
    assert hidden[:, 1:].shape == (2, N_IMAGE_TOKENS, 64)  # CLS dropped: one token per patch


def test_tokenizers_cover_the_paper_languages(tiny):
    unseen = "Ünïcödé ✓ 🙂 ꦲꦏ"  # not in the training sentences: byte fallback, no <unk>
    for name in ("tiny-llava-1.5", "tiny-llava-gemma", "tiny-yi"):
        tokenizer = load_tokenizer(tiny[name])
        for text in tiny_corpus() + [unseen]:  # the 14 languages' training sentences
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text, (name, text)


def test_stand_ins_are_idempotent_and_deterministic(tiny, tmp_path):
    weights = tiny["tiny-llava-1.5"] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    root = tiny["tiny-llava-1.5"].parent.parent
    assert write_tiny_llava_models(root)["tiny-llava-1.5"] == weights.parent
    assert weights.stat().st_mtime_ns == before  # present: not rebuilt
    again = write_tiny_llava_models(tmp_path)
    for name in ("tiny-llava-gemma", "tiny-dinov2"):
        for file in ("model.safetensors", "config.json"):
            digest = [hashlib.sha256((p[name] / file).read_bytes()).hexdigest() for p in (tiny, again)]
            assert digest[0] == digest[1], (name, file)
    tokenizers = [(p["tiny-yi"] / "tokenizer.json").read_bytes() for p in (tiny, again)]
    assert tokenizers[0] == tokenizers[1]
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_cuda_load_and_batched_generation(tiny, images, quantization):
    """The real models' path: bfloat16 (or 4-bit) on the GPU, batched and one at a time agree."""
    model, processor = load_llava(tiny["tiny-llava-1.5"], dtype="bfloat16",
                                  quantization=quantization, device="cuda")
    assert model.device.type == "cuda"
    prompts = [query(template("llava_hf"), q, image=True) for q in ("What?", "Why is it blue?")]
    batch = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    batched = _new_tokens(model, batch.to("cuda", torch.bfloat16))
    assert batched.shape == (2, 4)
    single = _new_tokens(model, processor(images=images[0], text=prompts[0],
                                          return_tensors="pt").to("cuda", torch.bfloat16))
    # bf16 kernels differ with batch shape; the first greedy token is robust, later ones may not be
    assert batched[0, 0] == single[0, 0]
