"""ifl.compat: every branch of the transformers-drift adapter, on tiny real models (the 5.x
branches) and on small fake module trees or outputs (the 4.x branches)."""
import doctest
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import ifl.compat
from ifl.compat import (bnb_config, complete_processor, decoder_layers, image_features,
                        language_model, processor_classes, retuple, untuple)
from ifl.models import load_llava
from ifl.smoke.tiny_llava import N_IMAGE_TOKENS, WIDTH, write_tiny_llava_models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llava_models(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def llava(tiny):
    return load_llava(tiny["tiny-llava-1.5"], dtype="float32")


def _tree(**paths: nn.Module) -> nn.Module:
    """A module tree with the given dotted attribute paths, each ending in a module."""
    root = nn.Module()
    for path, leaf in paths.items():
        node = root
        *parents, last = path.split(".")
        for part in parents:
            if not hasattr(node, part):
                setattr(node, part, nn.Module())
            node = getattr(node, part)
        setattr(node, last, leaf)
    return root


def test_doctests():
    assert doctest.testmod(ifl.compat).failed == 0


def test_decoder_layers_on_llava_5x_path(llava):
    model, _ = llava
    layers = decoder_layers(model)
    assert layers is model.model.language_model.layers and len(layers) == 2
    stack = language_model(model)
    assert hasattr(stack, "embed_tokens") and hasattr(stack, "norm")


def test_decoder_layers_on_plain_causal_lm(tiny):
    from transformers import AutoModelForCausalLM
    lm = AutoModelForCausalLM.from_pretrained(tiny["tiny-vicuna"])
    assert decoder_layers(lm) is lm.model.layers


def test_decoder_layers_on_pre_452_tree():
    layers = nn.ModuleList([nn.Linear(2, 2)])
    old = _tree(**{"language_model.model.layers": layers, "vision_tower": nn.Identity()})
    assert decoder_layers(old) is layers


def test_decoder_layers_refuses_none_or_several():
    with pytest.raises(ValueError, match="found none"):
        decoder_layers(_tree(vision_tower=nn.Identity()))
    both = _tree(**{"model.language_model.layers": nn.ModuleList(),
                    "language_model.model.layers": nn.ModuleList()})
    with pytest.raises(ValueError, match="language_model.model.layers.*model.language_model.layers"):
        decoder_layers(both)


def test_untuple_retuple_both_output_types():
    h, attn = torch.randn(1, 3, 4), torch.randn(1, 2, 3, 3)
    assert untuple(h) is h and untuple((h, attn)) is h
    new = h + 1
    assert retuple(h, new) is new
    out = retuple((h, attn), new)
    assert isinstance(out, tuple) and out[0] is new and out[1] is attn


@pytest.mark.parametrize("as_tuple", [False, True], ids=["5.x-tensor", "4.x-tuple"])
def test_steering_hook_round_trip(llava, as_tuple):
    """A hook written with untuple/retuple works whether layers return a tensor or a tuple."""
    model, processor = llava
    layer = decoder_layers(model)[0]
    ids = processor.tokenizer("The sky is blue.", return_tensors="pt").input_ids
    base = model(input_ids=ids).logits
    shift = torch.zeros(WIDTH)

    def as_old(module, args, output):  # make the layer look like transformers 4.x
        return (output, None)

    def steer(module, args, output):
        return retuple(output, untuple(output) + shift)

    def unwrap(module, args, output):  # the LLM's next layer wants a tensor again in 5.x
        return untuple(output)

    handles = [layer.register_forward_hook(as_old)] if as_tuple else []
    handles.append(layer.register_forward_hook(steer))
    if as_tuple:
        handles.append(layer.register_forward_hook(unwrap))
    try:
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, base)  # zero shift: no change
            shift += 3.0
            assert not torch.allclose(model(input_ids=ids).logits, base)
    finally:
        for handle in handles:
            handle.remove()


def test_image_features_5x_matches_reference_and_forward(llava):
    model, processor = llava
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 56, 56)
    feats = image_features(model, pixels)  # [n_images, n_tokens, text_hidden]
    assert feats.shape == (2, N_IMAGE_TOKENS, WIDTH)
    with torch.no_grad():  # by hand: layer -2 of the tower, CLS dropped, projected
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]
        reference = model.model.multi_modal_projector(hidden[:, 1:])
    torch.testing.assert_close(feats, reference)
    # ... and these are the vectors the LLM receives at the <image> positions
    from PIL import Image
    text = ["USER: <image>\nWhat? ASSISTANT:"] * 2
    enc = processor(images=[Image.new("RGB", (56, 56))] * 2, text=text, return_tensors="pt")
    enc["pixel_values"] = pixels
    seen = {}
    def capture(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = language_model(model).register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        hook.remove()
    at_images = seen["embeds"][enc.input_ids == model.config.image_token_id]
    torch.testing.assert_close(at_images.view(2, N_IMAGE_TOKENS, WIDTH), feats)


def test_image_features_4x_tensor_branch():
    expected = torch.randn(3, 5, 8)
    calls = {}

    def get_image_features(pixel_values, vision_feature_layer, vision_feature_select_strategy):
        calls.update(layer=vision_feature_layer, strategy=vision_feature_select_strategy)
        return expected  # transformers 4.x: a plain tensor

    old = SimpleNamespace(config=SimpleNamespace(vision_feature_layer=-2,
                                                 vision_feature_select_strategy="default"),
                          get_image_features=get_image_features)
    assert image_features(old, torch.zeros(3, 3, 4, 4)) is expected
    assert calls == {"layer": -2, "strategy": "default"}
    flat = SimpleNamespace(config=old.config, get_image_features=lambda **kw: torch.zeros(15, 8))
    with pytest.raises(ValueError, match="n_images, n_tokens, hidden"):
        image_features(flat, torch.zeros(3, 3, 4, 4))


def test_bnb_config():
    four = bnb_config("4bit")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_use_double_quant and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config("8bit").load_in_8bit
    assert bnb_config(None) is None
    with pytest.raises(ValueError, match="'4bit' or '8bit'"):
        bnb_config("3bit")


def test_complete_processor_fills_old_revisions(tiny, llava):
    from transformers import AutoProcessor
    model, _ = llava
    old = AutoProcessor.from_pretrained(tiny["tiny-llava-1.5"])
    old.patch_size = old.vision_feature_select_strategy = None  # as before the 2024 fields
    old.num_additional_image_tokens = 0
    complete_processor(old, model.config)
    assert (old.patch_size, old.vision_feature_select_strategy, old.num_additional_image_tokens) \
        == (14, "default", 1)
    from PIL import Image
    enc = old(images=Image.new("RGB", (60, 60)), text="USER: <image>\nHi ASSISTANT:",
              return_tensors="pt")
    assert (enc.input_ids == model.config.image_token_id).sum() == N_IMAGE_TOKENS
    current = AutoProcessor.from_pretrained(tiny["tiny-llava-1.5"])
    current.patch_size = 7  # a processor with patch_size keeps it
    complete_processor(current, model.config)
    assert (current.patch_size, current.num_additional_image_tokens) == (7, 1)


def test_vicuna_stand_in_ships_tokenizer_model_only(tiny):
    from transformers import AutoTokenizer
    files = {p.name for p in tiny["tiny-vicuna"].iterdir()}
    assert "tokenizer.model" in files and "tokenizer.json" not in files
    assert AutoTokenizer.from_pretrained(tiny["tiny-vicuna"]).is_fast


def test_processor_without_cls_count_generates_through_the_loader(tiny):
    """tiny-bakllava's processor config has patch_size but no num_additional_image_tokens (older
    llava-hf revisions, unsloth/llava-1.5-7b-hf): transformers 5 would insert 15 placeholders
    for 16 features; the loader completes it from the CLIP tower (1 CLS)."""
    import json

    from PIL import Image
    saved = json.loads((tiny["tiny-bakllava"] / "processor_config.json").read_text())
    assert "patch_size" in saved and "num_additional_image_tokens" not in saved
    model, processor = load_llava(tiny["tiny-bakllava"], dtype="float32")
    inputs = processor(images=Image.new("RGB", (60, 60)), text="[INST] <image>\nHi [/INST]",
                       return_tensors="pt")
    assert (inputs.input_ids == model.config.image_token_id).sum() == N_IMAGE_TOKENS
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs.input_ids.shape[1] + 2


def test_processor_classes(llava):
    _, processor = llava
    assert processor_classes(processor) == {
        "processor": "LlavaProcessor", "tokenizer": "TokenizersBackend",
        "image_processor": "CLIPImageProcessorPil"}


@pytest.mark.parametrize("kind, expected", [
    ("qwen2_vl", {"model.visual", "lm_head"}),
    ("smolvlm", {"model.vision_model", "model.connector", "lm_head"}),
    ("paligemma", {"model.vision_tower", "model.multi_modal_projector", "lm_head"}),
    ("internvl", {"model.vision_tower", "model.multi_modal_projector", "lm_head"}),
    # Llama 4 nests its head beside the decoder stack, inside language_model
    ("llama4", {"vision_model", "multi_modal_projector", "language_model.lm_head"})])
def test_unquantised_modules_are_each_classes_vision_side_and_head(kind, expected):
    from ifl.compat import unquantised_modules
    from ifl.smoke.tiny_vlms import model_only

    model, _ = model_only(kind)
    assert set(unquantised_modules(model.config)) == expected
