"""Random-weight LLaVA-1.5 models built from configs, offline: for tests and the throughput benchmark.

Nothing is downloaded. The configs are written by hand from the published architecture of
llava-hf/llava-1.5-{7b,13b}-hf (Llama-2 text model, CLIP ViT-L/14-336 tower, 2-layer GELU
projector), and the tokenizer is a character-level `tokenizers` model with the real special-token
layout (`<unk>` 0, `<s>` 1, `</s>` 2, `<image>` and `<pad>` appended after the base vocabulary,
embedding rows padded to 32064). Weights are random: outputs are gibberish, but every tensor has
the real shape, so timings and memory are those of the real models.

| size | text (hidden / layers / heads / ffn) | vision (CLIP)                 | image tokens |
|------|--------------------------------------|-------------------------------|--------------|
| 7b   | 4096 / 32 / 32 / 11008, vocab 32064  | 1024 / 24 / 16 / 4096, 336/14 | 576          |
| 13b  | 5120 / 40 / 40 / 13824, vocab 32064  | same                          | 576          |
| tiny | 64 / 2 / 4 / 128, vocab = tokenizer  | 64 / 2 / 4 / 128, 32/8        | 16           |

Materialising (`random_llava`): the module tree is built on the meta device (no memory, no slow
CPU init), a random state dict is drawn directly on the target device, and
`from_pretrained(None, config=..., state_dict=..., quantization_config=...)` loads it. That is
transformers' own loading path, so 4-bit NF4 quantises exactly the modules a real checkpoint
load quantises (checked on transformers 5.24: state_dict loading with a quantizer works with no
checkpoint on disk).

>>> model, processor = tiny_llava()  # doctest: +SKIP
>>> processor(text=["USER: <image>\\nHi ASSISTANT:"], images=[blank_image(32)],
...           return_tensors="pt")["input_ids"].shape  # doctest: +SKIP
torch.Size([1, 37])
"""
from __future__ import annotations

import string

import torch

TINY_IMAGE, TINY_PATCH = 32, 8       # 4 x 4 = 16 patches -> 16 image tokens
REAL_IMAGE, REAL_PATCH = 336, 14     # 24 x 24 = 576 image tokens
LLAVA_VOCAB_ROWS = 32064             # llava-hf: 32002 tokens, embedding padded to a multiple of 64
_TEXT = {  # hidden, layers, heads, ffn  (Llama-2 7B / 13B, i.e. Vicuna-1.5)
    "7b": (4096, 32, 32, 11008),
    "13b": (5120, 40, 40, 13824),
    "tiny": (64, 2, 4, 128),
}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def offline_tokenizer(n_base: int | None = None):
    """A character-level fast tokenizer with LLaVA-1.5's special tokens.

    Ids: `<unk>` 0, `<s>` 1, `</s>` 2, then one token per printable ASCII character, then filler
    tokens `<wN>` up to `n_base` (None: no fillers), then `<image>` and `<pad>` (32000 and 32001
    when n_base=32000, as in llava-hf). `<s>` is prepended to every encoding, as Llama does.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *chars])}
    for i in range(len(vocab), n_base or 0):
        vocab[f"<w{i}>"] = i  # never produced by encoding; a random model may generate them
    for special in ("<image>", "<pad>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one char each
    backend.decoder = decoders.Fuse()  # join characters without separators
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>",
                                  model_input_names=["input_ids", "attention_mask"])
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def llava_config(size: str, tokenizer):
    """The LlavaConfig of llava-1.5-{7b,13b}-hf (or the tiny stand-in), written by hand."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    hidden, layers, heads, ffn = _TEXT[size]
    tiny = size == "tiny"
    image_id, pad_id = tokenizer.convert_tokens_to_ids(["<image>", "<pad>"])
    text = LlamaConfig(
        vocab_size=len(tokenizer) if tiny else LLAVA_VOCAB_ROWS, hidden_size=hidden,
        intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=pad_id,
        # tiny: a wider init than 0.02 so different prompts give clearly different argmaxes
        initializer_range=0.1 if tiny else 0.02)
    vision = CLIPVisionConfig(
        hidden_size=64 if tiny else 1024, intermediate_size=128 if tiny else 4096,
        num_hidden_layers=2 if tiny else 24, num_attention_heads=4 if tiny else 16,
        image_size=TINY_IMAGE if tiny else REAL_IMAGE, patch_size=TINY_PATCH if tiny else REAL_PATCH,
        projection_dim=64 if tiny else 768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    n_image = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id,
                       image_seq_length=n_image, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", projector_hidden_act="gelu",
                       pad_token_id=pad_id, tie_word_embeddings=False)


def offline_processor(config, tokenizer):
    """LlavaProcessor with CLIP's PIL image processor; `<image>` expands to one token per patch
    (CLS counted by num_additional_image_tokens=1, then dropped by the "default" strategy)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    size = config.vision_config.image_size
    images = CLIPImageProcessorPil(size={"shortest_edge": size}, image_mean=CLIP_MEAN,
                                   crop_size={"height": size, "width": size}, image_std=CLIP_STD)
    tokenizer.padding_side = "left"
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer,
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def random_state_dict(config, *, device, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """Random tensors for every parameter of LlavaForConditionalGeneration(config), drawn on
    `device` (on GPU: seconds for 13B; CPU init of the real module would take minutes).
    Norm weights 1, biases 0, the rest N(0, initializer_range^2), as the models' own init."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        skeleton = LlavaForConditionalGeneration(config)  # shapes only, no memory
    std = config.text_config.initializer_range
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, p in skeleton.state_dict().items():
        if name.endswith("bias"):
            out[name] = torch.zeros(p.shape, device=device, dtype=dtype)
        elif "norm" in name.split(".")[-2]:
            out[name] = torch.ones(p.shape, device=device, dtype=dtype)
        else:
            out[name] = torch.empty(p.shape, device=device, dtype=dtype).normal_(0, std, generator=gen)
    return out


def random_llava(config, *, precision: str = "bf16", device: str = "cpu", seed: int = 0):
    """A random-weight LlavaForConditionalGeneration on `device`, in `precision`:
    "fp32", "bf16", or "4bit" (NF4, double quantisation, bf16 compute: what the pipeline loads)."""
    from transformers import LlavaForConditionalGeneration

    from ifl.compat import nf4_config

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    quant = None
    if precision == "4bit":  # the pipeline's own config: tower, projector, lm_head unquantised
        quant = nf4_config(dtype)
    elif precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32, bf16 or 4bit, got {precision!r}")
    state = random_state_dict(config, device=device, dtype=dtype, seed=seed)
    model = LlavaForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state, dtype=dtype, quantization_config=quant,
        device_map=device)
    del state
    return model.eval()


def tiny_llava(seed: int = 0, *, eos_boost: float = 3.0):
    """(model, processor): the tiny stand-in in float32 on CPU, deterministic for a seed.

    Generation is made useful for tests: `<image>`, `<pad>`, `<s>`, `<unk>` are suppressed (a
    random model would otherwise emit tokens that decode to nothing), and the `</s>` row of the
    output layer is scaled by `eos_boost` so that some answers end early, exercising the
    rows-finish-at-different-steps path of batched generation."""
    tok = offline_tokenizer()
    config = llava_config("tiny", tok)
    model = random_llava(config, precision="fp32", seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight[tok.eos_token_id] *= eos_boost
    g = model.generation_config
    g.bos_token_id, g.eos_token_id, g.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    g.suppress_tokens = sorted(tok.convert_tokens_to_ids(["<image>", "<pad>", "<s>", "<unk>"]))
    return model, offline_processor(config, tok)


def blank_image(size: int, seed: int = 0):
    """A random RGB PIL image of size x size (noise, so different seeds give different features)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
