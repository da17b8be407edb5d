"""Tiny random vision-language models beyond LLaVA-1.5, built offline, for the audit's tests.

`write_tiny_vlms(root)` writes under `root/vlms/` one folder per class, laid out like a hub repo
(config.json, safetensors, tokenizer and processor files with the chat template) and loadable by
`AutoModelForImageTextToText` + `AutoProcessor`:

| folder            | stands in for                          | model / processor classes                      |
|-------------------|----------------------------------------|------------------------------------------------|
| tiny-llava-1.5    | llava-hf/llava-1.5-7b-hf               | Llava / LlavaProcessor (CLIP Pil)              |
| tiny-llava-next   | llava-hf/llava-v1.6-mistral-7b-hf      | LlavaNext / LlavaNextProcessor (Mistral turns) |
| tiny-idefics3     | HuggingFaceM4/Idefics3-8B-Llama3       | Idefics3 / Idefics3Processor                   |
| tiny-gemma3       | google/gemma-3-4b-it                   | Gemma3 / Gemma3Processor                       |
| tiny-aya-vision   | CohereForAI/aya-vision-8b              | AyaVision / AyaVisionProcessor (GotOcr2 Pil)   |

Processors with a video part (Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision, SmolVLM, InternVL) need
torchvision, which does not work beside the pinned CPU torch; `model_only(kind)` builds those
classes (and PaliGemma, Llama 4) from config without a processor, for model-level checks
(decoder layers found, steering hooks placed and removed, the modules 4-bit loading keeps).

Chat templates: LLaVA-1.5 and the Mistral [INST] turns as in ifl.smoke.tiny_llava; Idefics3's
renders exactly what transformers' processor test expects from the real repo ("<|begin_of_text|>User:
...<end_of_utterance>\\nAssistant:"); Gemma 3's is the template transformers' processor test
carries for gemma-3 (image part `<start_of_image>`, turns `<start_of_turn>` / `<end_of_turn>`);
Aya Vision's is the Cohere turn layout (`<|START_OF_TURN_TOKEN|><|USER_TOKEN|>` ...
`<|END_OF_TURN_TOKEN|>`), shortened: the real one adds a long default system preamble [U].
Sizes: width 64, 2 layers, 56 px images with patch 14. Tokenizers are byte-fallback BPEs trained
on the package's tiny multilingual corpus, with each model's special tokens. Outputs are gibberish.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

from ifl.smoke.tiny_llava import (CLIP_MEAN, CLIP_STD, FFN, HEADS, IMAGE_SIZE, INIT_STD, LAYERS,
                                  LLAVA_CHAT_TEMPLATE, MISTRAL_CHAT_TEMPLATE, N_IMAGE_TOKENS,
                                  PATCH_SIZE, WIDTH, _bpe_pieces, _build_once, _vision_config,
                                  tiny_tokenizer)

END_TO_END = ("tiny-llava-1.5", "tiny-llava-next", "tiny-idefics3", "tiny-gemma3", "tiny-aya-vision")
MODEL_ONLY = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "smolvlm", "paligemma", "llama4", "internvl")

IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}{% if "
    "message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in "
    "message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == "
    "'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if "
    "add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- set first_user_prefix = "
    "messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == "
    "'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = "
    "message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + "
    "(first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n"
    "    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    "
    "{{'<start_of_turn>model\n'}}\n{%- endif -%}\n")
AYA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' }}{% elif message['role'] == 'system' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' }}{% else %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == "
    "'image' %}{{ '<image>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|END_OF_TURN_TOKEN|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}")


def write_tiny_vlms(root: Path, seed: int = 0, names=END_TO_END) -> dict[str, Path]:
    """Write (once) the end-to-end stand-ins under root/vlms/; returns {folder name: path}."""
    builders: dict[str, Callable[[Path, int], None]] = {
        "tiny-llava-1.5": _write_llava15, "tiny-llava-next": _write_llava_next,
        "tiny-idefics3": _write_idefics3, "tiny-gemma3": _write_gemma3,
        "tiny-aya-vision": _write_aya_vision}
    unknown = set(names) - set(builders)
    if unknown:
        raise ValueError(f"no tiny builder for {sorted(unknown)}; known: {sorted(builders)}")
    base = Path(root) / "vlms"
    return {name: _build_once(base / name, builders[name], seed + zlib.crc32(name.encode()) % 10_000)
            for name in names}


def _tokenizer(base: list[str], specials: list[str], bos: str, eos: str, pad: str,
               gemma: bool = False, add_bos: bool = True, named: dict | None = None):
    """A byte-fallback BPE with `base` tokens at ids 0.. and `specials` appended (never split)."""
    from transformers import GemmaTokenizer, LlamaTokenizer

    pieces, merges = _bpe_pieces()
    vocab = {token: i for i, token in enumerate(base)}
    for token in [f"<0x{b:02X}>" for b in range(256)] + list(pieces):
        vocab.setdefault(token, len(vocab))
    cls = GemmaTokenizer if gemma else LlamaTokenizer
    tok = cls(vocab=vocab, merges=list(merges), bos_token=bos, eos_token=eos, unk_token=base[0],
              pad_token=pad, add_bos_token=add_bos, model_max_length=4096,
              **({"extra_special_tokens": named} if named else {}))
    extra = [t for t in base + specials if t not in (bos, eos, pad, base[0])]
    tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def _text(cls_name: str, tok, **extra):
    import transformers

    common = dict(vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=FFN,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                  max_position_embeddings=4096, initializer_range=INIT_STD,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    return getattr(transformers, cls_name)(**{**common, **extra})


def _siglip(**extra):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, image_size=IMAGE_SIZE,
                              patch_size=PATCH_SIZE, **extra)


def _finish(model, tok, eos: list[str], end_of_turn: str | None = None) -> None:
    """Generation config as the real repos' (eos: what their generation config lists) plus what
    keeps a random model's reply non-empty (no specials emitted, at least 4 tokens).

    end_of_turn: the template's end-of-turn token where the real config leaves it out of eos
    (Idefics3-8B-Llama3 lists Llama 3's ends, its answers end with `<end_of_utterance>`); it
    stays emittable, so generation stops there only if the caller adds it (ifl.audit.generate
    .stop_tokens)."""
    gc = model.generation_config
    ends = {tok.convert_tokens_to_ids(e) for e in eos + ([end_of_turn] if end_of_turn else [])}
    specials = set(tok.all_special_ids) - ends
    rows = model.get_output_embeddings().weight.shape[0]
    gc.suppress_tokens = sorted(specials | set(range(len(tok), rows)))
    gc.min_new_tokens = 4
    gc.pad_token_id = tok.pad_token_id
    gc.eos_token_id = sorted({tok.convert_tokens_to_ids(e) for e in eos})


def _save(out: Path, seed: int, model_cls: str, config, processor, eos: list[str],
          after_init: Callable | None = None, end_of_turn: str | None = None) -> None:
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    if after_init:
        after_init(model)
    _finish(model, processor.tokenizer, eos, end_of_turn)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _clip_pil(cls_name: str = "CLIPImageProcessorPil", **extra):
    import transformers

    return getattr(transformers, cls_name)(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN, image_std=CLIP_STD, **extra)


def _write_llava15(out: Path, seed: int) -> None:
    from transformers import LlavaConfig, LlavaProcessor

    tok = tiny_tokenizer("llava")
    config = LlavaConfig(vision_config=_vision_config("clip"), text_config=_text("LlamaConfig", tok),
                         image_token_id=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=N_IMAGE_TOKENS, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    processor = LlavaProcessor(image_processor=_clip_pil(), tokenizer=tok, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    _save(out, seed, "LlavaForConditionalGeneration", config, processor, ["</s>"])


def _write_llava_next(out: Path, seed: int) -> None:
    from transformers import LlavaNextConfig, LlavaNextProcessor

    tok = tiny_tokenizer("llava")
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE]]
    config = LlavaNextConfig(vision_config=_vision_config("clip"),
                             text_config=_text("MistralConfig", tok, num_key_value_heads=2),
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    processor = LlavaNextProcessor(
        image_processor=_clip_pil("LlavaNextImageProcessorPil", image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=MISTRAL_CHAT_TEMPLATE)
    _save(out, seed, "LlavaNextForConditionalGeneration", config, processor, ["</s>"])


def _write_idefics3(out: Path, seed: int) -> None:
    from transformers import (Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor,
                              Idefics3VisionConfig)

    tok = _tokenizer(["<unk>", "<|begin_of_text|>", "<|end_of_text|>"],
                     ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                      "<pad>"], "<|begin_of_text|>", "<|end_of_text|>", "<pad>")
    scale = 2  # pixel shuffle: 4 x 4 patches -> 4 image tokens
    vision = Idefics3VisionConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                  num_attention_heads=HEADS, image_size=IMAGE_SIZE,
                                  patch_size=PATCH_SIZE)
    config = Idefics3Config(vision_config=vision, text_config=_text("LlamaConfig", tok),
                            scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"),
                            pad_token_id=tok.pad_token_id)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                  image_seq_len=N_IMAGE_TOKENS // scale ** 2,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    # the real config's eos: Llama 3's ends (<|end_of_text|>, <|eom_id|>, <|eot_id|>; only the
    # first is in this vocabulary), not the template's <end_of_utterance>
    _save(out, seed, "Idefics3ForConditionalGeneration", config, processor, ["<|end_of_text|>"],
          end_of_turn="<end_of_utterance>")


def _write_gemma3(out: Path, seed: int) -> None:
    import torch
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    tok = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"],
                     ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                      "<image_soft_token>"], "<bos>", "<eos>", "<pad>", gemma=True,
                     named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                            "eoi_token": "<end_of_image>"})  # as google/gemma-3-*-it name them
    text = _text("Gemma3TextConfig", tok, num_key_value_heads=1, head_dim=32, sliding_window=512,
                 layer_types=["sliding_attention", "full_attention"])
    ids = tok.convert_tokens_to_ids
    config = Gemma3Config(text_config=text, vision_config=_siglip(), mm_tokens_per_image=4,
                          boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                          image_token_index=ids("<image_soft_token>"))
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                chat_template=GEMMA3_CHAT_TEMPLATE)

    def unscale(model):  # Gemma scales embeddings by sqrt(width): keep a random model varied
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(WIDTH ** -0.5)

    # google/gemma-3-*-it's generation config lists both: eos_token_id [1, 106]
    _save(out, seed, "Gemma3ForConditionalGeneration", config, processor,
          ["<end_of_turn>", "<eos>"], unscale)


def _write_aya_vision(out: Path, seed: int) -> None:
    from transformers import AyaVisionConfig, AyaVisionProcessor, GotOcr2ImageProcessorPil

    tok = _tokenizer(["<UNK>", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<PAD>"],
                     ["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
                      "<|SYSTEM_TOKEN|>", "<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>",
                      "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"],
                     "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<PAD>")
    text = _text("Cohere2Config", tok, layer_types=["sliding_attention", "full_attention"],
                 sliding_window=512)
    config = AyaVisionConfig(vision_config=_siglip(), text_config=text, downsample_factor=2,
                             image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"))
    image_processor = GotOcr2ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                               crop_to_patches=False, max_patches=1,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = AyaVisionProcessor(image_processor=image_processor, tokenizer=tok,
                                   patch_size=PATCH_SIZE, img_size=IMAGE_SIZE, downsample_factor=2,
                                   chat_template=AYA_CHAT_TEMPLATE)
    _save(out, seed, "AyaVisionForConditionalGeneration", config, processor,
          ["<|END_OF_TURN_TOKEN|>"])


def model_only(kind: str, seed: int = 0):
    """A tiny random model of a class whose processor cannot be built here (see module doc)."""
    import torch
    import transformers

    tok = tiny_tokenizer("llava")
    text = dict(vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=FFN,
                num_hidden_layers=3, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    clip = _vision_config("clip")
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        prefix = "Qwen2VL" if kind == "qwen2_vl" else "Qwen2_5_VL"
        vision = dict(depth=1, embed_dim=WIDTH, hidden_size=WIDTH, num_heads=HEADS, out_hidden_size=WIDTH,
                      intermediate_size=FFN)
        config = getattr(transformers, f"{prefix}Config")(
            text_config={**text, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
            vision_config=vision)
        cls = f"{prefix}ForConditionalGeneration"
    elif kind == "llava_onevision":
        config = transformers.LlavaOnevisionConfig(vision_config=_siglip(),
                                                   text_config=transformers.Qwen2Config(**text))
        cls = "LlavaOnevisionForConditionalGeneration"
    elif kind == "smolvlm":
        config = transformers.SmolVLMConfig(
            vision_config=dict(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=1,
                               num_attention_heads=HEADS, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
            text_config=transformers.LlamaConfig(**text), scale_factor=2)
        cls = "SmolVLMForConditionalGeneration"
    elif kind == "paligemma":
        config = transformers.PaliGemmaConfig(
            vision_config=_siglip(), text_config=transformers.GemmaConfig(**{**text, "num_key_value_heads": 1},
                                                                           head_dim=16),
            projection_dim=WIDTH)
        cls = "PaliGemmaForConditionalGeneration"
    elif kind == "llama4":
        config = transformers.Llama4Config(
            vision_config=dict(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=1,
                               num_attention_heads=HEADS, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                               vision_output_dim=WIDTH, projector_input_dim=WIDTH,
                               projector_output_dim=WIDTH),
            text_config=dict(**text, intermediate_size_mlp=FFN, num_local_experts=1, head_dim=16,
                             no_rope_layers=[1, 1, 1]))
        cls = "Llama4ForConditionalGeneration"
    elif kind == "internvl":  # OpenGVLab/InternVL3-*-hf: InternViT + pixel shuffle + Qwen2
        config = transformers.InternVLConfig(
            vision_config=dict(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=1,
                               num_attention_heads=HEADS, image_size=[IMAGE_SIZE, IMAGE_SIZE],
                               patch_size=[PATCH_SIZE, PATCH_SIZE]),
            text_config=transformers.Qwen2Config(**text),
            image_token_id=tok.convert_tokens_to_ids("<image>"), downsample_ratio=0.5)
        cls = "InternVLForConditionalGeneration"
    else:
        raise ValueError(f"model_only knows {MODEL_ONLY}, not {kind!r}")
    del clip
    torch.manual_seed(seed)
    return getattr(transformers, cls)(config).eval(), tok
