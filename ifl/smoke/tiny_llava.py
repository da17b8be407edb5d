"""Tiny random stand-ins of the paper's LLaVA models and of the design space's parts, built offline.

`write_tiny_llava_models(root)` writes, under `root/models/`, folders laid out like the hub repos
(what `hf download <id> --local-dir` makes), with the real classes and random weights:

| folder             | stands in for                                   | classes                                  |
|--------------------|-------------------------------------------------|------------------------------------------|
| tiny-llava-1.5     | llava-hf/llava-1.5-7b-hf and -13b-hf            | Llava(CLIPVisionModel + LlamaForCausalLM) |
| tiny-bakllava      | llava-hf/bakLlava-v1-hf (processor config of an older revision: no num_additional_image_tokens) | Llava(CLIPVisionModel + MistralForCausalLM)|
| tiny-llava-gemma   | Intel/llava-gemma-2b                            | Llava(CLIPVisionModel + GemmaForCausalLM) |
| tiny-vicuna        | lmsys/vicuna-7b-v1.5 (tokenizer.model only)     | LlamaForCausalLM, LlamaTokenizer          |
| tiny-yi            | 01-ai/Yi-6B-Chat (llama arch, ChatML tokens)    | LlamaForCausalLM, LlamaTokenizer          |
| tiny-leo           | LeoLM/leo-hessianai-7b-chat (ChatML tokens)     | LlamaForCausalLM, LlamaTokenizer          |
| tiny-clip-vit      | openai/clip-vit-large-patch14-336               | CLIPVisionModel, CLIPImageProcessor(Pil)  |
| tiny-dinov2        | facebook/dinov2-large                           | Dinov2Model, BitImageProcessor(Pil)       |

Sizes: every linear layer is >= 64 wide in and a multiple of 32 wide out (what bitsandbytes'
4-bit CPU kernels need), 2 layers, 4 heads of 16 (Gemma: of 32, one key/value head). Images are 56 px with the real patch size 14, so a tower sees 4 x 4 = 16 patches:
CLIP adds a CLS token (17 positions) that LLaVA's "default" strategy drops, giving 16 image tokens
per `<image>` (576 for the real 336 px / 14). Tokenizers are byte-fallback BPEs (as Llama's and
Gemma's) trained here on `ifl.smoke.tiny_models.tiny_corpus()` (the 14 paper languages' scripts)
plus a few chat lines, with each model's real special tokens: `<image>` and `<pad>` appended after
the base vocabulary for the LLaVA models, `<|im_start|>`/`<|im_end|>` for Yi and LeoLM,
`<start_of_turn>`/`<end_of_turn>` for Gemma. The LLaVA-1.5 and BakLLaVA embeddings are padded to a
multiple of 64 rows like the real ones (32064 rows for 32002 tokens): logits are wider than the
tokenizer there, as in the real models. Outputs are gibberish; they prove the code path runs.

>>> paths = write_tiny_llava_models(Path("/tmp/ifl-smoke"))  # doctest: +SKIP
>>> sorted(paths)[:3]  # doctest: +SKIP
['tiny-bakllava', 'tiny-clip-vit', 'tiny-dinov2']
"""
from __future__ import annotations

import json
import string
import zlib
from functools import cache
from pathlib import Path
from typing import Callable

from ifl.smoke.atomic import write_folder_atomically

WIDTH, FFN, LAYERS, HEADS = 64, 128, 2, 4
IMAGE_SIZE, PATCH_SIZE = 56, 14              # 16 patches -> 16 image tokens per <image>
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
PIECES = 800                                 # BPE pieces learned besides bytes and specials
INIT_STD = 0.1  # larger than the usual 0.02, so different inputs give clearly different argmaxes
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # dinov2's processor

# Chat templates as the real repos ship them (Jinja). llava-hf/llava-1.5-*-hf chat_template.json
# (verbatim as quoted in public code); BakLLaVA: llava-hf's Mistral-style template [I: SOURCES §8
# shows its output]; Gemma: gemma-2b-it's tokenizer template, which Intel/llava-gemma-2b inherits
# [I]; ChatML: Yi-6B-Chat's tokenizer_config [I], LeoLM chat [U].
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] "
    "!= 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr("
    "'type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{% for "
    "content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] }}"
    "{% endgeneration %}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/"
    "user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}")
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")

# Tokenizer families: (base special tokens at ids 0.., tokens appended after the BPE pieces,
# bos, eos, pad, tokenizer class). Ids follow the real order (Llama: unk 0, <s> 1, </s> 2; Gemma:
# pad 0, eos 1, bos 2, unk 3; Yi: unk 0, <|startoftext|> 1, <|endoftext|> 2, as 01-ai/Yi-6B's
# tokenizer_config) but not the real values. The LeoLM layout is [U] (not read here).
_FAMILIES = {
    "llama": (["<unk>", "<s>", "</s>"], [], "<s>", "</s>", None, "llama"),
    "llava": (["<unk>", "<s>", "</s>"], ["<image>", "<pad>"], "<s>", "</s>", "<pad>", "llama"),
    "yi": (["<unk>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>"],
           [], "<|startoftext|>", "<|endoftext|>", "<unk>", "llama"),
    "leo": (["<unk>", "<s>", "</s>"], ["<|im_start|>", "<|im_end|>"], "<s>", "</s>", None, "llama"),
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"],
              ["<image>"], "<bos>", "<eos>", "<pad>", "gemma"),
}
_CHAT_LINES = ["USER: What is in the image? ASSISTANT: A dog.", "ASSISTANT: The bus is red.",
               "A chat between a curious user and an artificial intelligence assistant.",
               "[INST] Describe the image. [/INST] user model assistant system"]


def write_tiny_llava_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write (once) every stand-in under root/models/; returns {folder name: path}."""
    builders: dict[str, Callable[[Path, int], None]] = {
        "tiny-llava-1.5": lambda d, s: _write_llava(d, s, "llama", "llava", LLAVA_CHAT_TEMPLATE),
        "tiny-bakllava": lambda d, s: _write_llava(d, s, "mistral", "llava", MISTRAL_CHAT_TEMPLATE,
                                                   cls_field=False),
        "tiny-llava-gemma": lambda d, s: _write_llava(d, s, "gemma", "gemma", None),
        "tiny-vicuna": lambda d, s: _write_llm(d, s, "llama", None, sentencepiece=True),
        # Yi-6B-Chat's generation_config stops at <|im_end|> (id 7), its tokenizer's eos is
        # <|endoftext|>; Yi-6B (base) stops at <|endoftext|>
        "tiny-yi": lambda d, s: _write_llm(d, s, "yi", CHATML_CHAT_TEMPLATE, "<|im_end|>"),
        "tiny-leo": lambda d, s: _write_llm(d, s, "leo", CHATML_CHAT_TEMPLATE),
        "tiny-clip-vit": lambda d, s: _write_tower(d, s, "clip"),
        "tiny-dinov2": lambda d, s: _write_tower(d, s, "dinov2"),
    }
    models_dir = Path(root) / "models"
    # a seed per folder, from its name: adding a stand-in never changes the others' weights
    return {name: _build_once(models_dir / name, build, seed + zlib.crc32(name.encode()) % 10_000)
            for name, build in builders.items()}


def _build_once(target: Path, build: Callable[[Path, int], None], seed: int) -> Path:
    """Build in a temporary sibling and rename: a killed build never looks finished."""
    if (target / "config.json").exists():
        return target  # idempotent: the atomic rename makes any existing folder a finished one
    return write_folder_atomically(target, lambda tmp: build(tmp, seed))


@cache
def _bpe_pieces() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """BPE pieces (in learned order) and merges, trained once per process on the tiny corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from ifl.smoke.tiny_models import tiny_corpus

    bpe = Tokenizer(models.BPE())
    # Metaspace as SentencePiece: pieces start at a word's "▁" and never span two words
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = list(string.ascii_letters + string.digits + string.punctuation)  # no byte pieces for ASCII
    bpe.train_from_iterator(tiny_corpus() + _CHAT_LINES, trainers.BpeTrainer(
        vocab_size=PIECES, initial_alphabet=alphabet, show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    pieces = sorted(trained["vocab"], key=trained["vocab"].get)
    return tuple(pieces), tuple(tuple(m) for m in trained["merges"])


def tiny_tokenizer(family: str):
    """A tokenizer of one family in `_FAMILIES` (llama, llava, yi, leo, gemma): specials, then the
    256 byte-fallback pieces <0x00>..<0xFF> (as Llama/Gemma), then the BPE pieces, then the
    appended tokens."""
    from transformers import GemmaTokenizer, LlamaTokenizer

    base, appended, bos, eos, pad, cls = _FAMILIES[family]
    pieces, merges = _bpe_pieces()
    vocab = {token: i for i, token in enumerate(base)}
    for token in [f"<0x{b:02X}>" for b in range(256)] + list(pieces):
        vocab.setdefault(token, len(vocab))
    # Llama and Gemma prepend <s>/<bos>; Yi-6B-Chat prompts start at <|im_start|> [U]
    kwargs = dict(vocab=vocab, merges=list(merges), bos_token=bos, eos_token=eos, unk_token="<unk>",
                  add_bos_token=family != "yi", model_max_length=2048)
    if cls == "gemma":
        tok = GemmaTokenizer(**kwargs, pad_token=pad)
    else:
        tok = LlamaTokenizer(**kwargs, **({"pad_token": pad} if pad in vocab else {}))
    # base tokens beyond bos/eos/unk/pad (chat markers) must never be split: mark them special
    extra = [t for t in base if t not in (bos, eos, pad, "<unk>", "<mask>")] + appended
    if extra:
        tok.add_special_tokens({"additional_special_tokens": [t for t in extra if t != pad]})
    if pad is not None and pad not in vocab:  # llava-hf appends <pad> after <image>
        tok.add_special_tokens({"pad_token": pad})
    return tok


def _text_config(arch: str, tok, vocab_rows: int):
    from transformers import GemmaConfig, LlamaConfig, MistralConfig

    common = dict(vocab_size=vocab_rows, hidden_size=WIDTH, intermediate_size=FFN,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=2048,
                  initializer_range=INIT_STD, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "llama":  # Llama-2 / Vicuna: full multi-head attention, untied output layer
        return LlamaConfig(**common, num_key_value_heads=HEADS, tie_word_embeddings=False)
    if arch == "mistral":  # grouped-query attention (32 heads / 8 kv in Mistral-7B)
        return MistralConfig(**common, num_key_value_heads=2, sliding_window=4096,
                             tie_word_embeddings=False)
    if arch == "gemma":  # multi-query attention, tied embeddings, GeLU (gemma-2b); head_dim 32
        # so the one key/value head is 32 wide: bitsandbytes' CPU kernel packs output rows in 32s
        return GemmaConfig(**common, num_key_value_heads=1, head_dim=32,
                           hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    raise ValueError(f"unknown text architecture {arch!r}")


def _vision_config(kind: str):
    from transformers import CLIPVisionConfig, Dinov2Config

    common = dict(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    if kind == "clip":
        return CLIPVisionConfig(**common, intermediate_size=FFN, projection_dim=WIDTH)
    # dinov2-large's config says 518 px but its processor crops 224: the position table is
    # interpolated. Keep that mismatch (9 x 9 table, 4 x 4 patches) so code that counts tokens
    # from config.image_size fails here as it would on the real tower.
    return Dinov2Config(**{**common, "image_size": PATCH_SIZE * 9}, mlp_ratio=FFN // WIDTH)


def _image_processor(kind: str):
    """The PIL processors: transformers 5 picks them when torchvision is missing; they save the
    hub's type names (CLIPImageProcessor, BitImageProcessor), so the folders read like the hub."""
    from transformers import BitImageProcessorPil, CLIPImageProcessorPil

    if kind == "clip":  # CLIP: shortest edge to 336, centre crop 336 (here 56)
        return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, image_mean=CLIP_MEAN,
                                     crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                     image_std=CLIP_STD)
    # dinov2-large: shortest edge 256, centre crop 224, ImageNet statistics (here 64 -> 56)
    return BitImageProcessorPil(size={"shortest_edge": IMAGE_SIZE * 8 // 7}, image_mean=IMAGENET_MEAN,
                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                image_std=IMAGENET_STD)


def _finish_generation_config(model, tok, eos: str | None = None) -> None:
    """Keep random models from emitting what decodes to nothing (bos/pad/unk/<image>, the rows
    beyond the tokenizer, an immediate end), so a smoke run has text to carry on; the real
    models' generation configs have no such settings.

    eos: the generation config's one stop token as the real repo has it (None: the tokenizer's
    eos). The real configs name no end-of-turn token besides it (Intel/llava-gemma-2b: `<eos>`
    only, though its answers end with `<end_of_turn>`; LeoLM: `</s>` only, though chat models
    built on it end with `<|im_end|>`), so the stand-ins do not either: the pipeline must add
    the chat template's end-of-turn itself (ifl.prompts.stop_token_ids)."""
    never = {tok.bos_token_id, tok.pad_token_id, tok.unk_token_id,
             tok.convert_tokens_to_ids("<image>") if "<image>" in tok.get_vocab() else None}
    never |= set(range(len(tok), model.get_output_embeddings().weight.shape[0]))
    model.generation_config.suppress_tokens = sorted(t for t in never if t is not None)
    model.generation_config.min_new_tokens = 4  # an answer of only "</s>" would be empty text
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = (tok.eos_token_id if eos is None
                                            else tok.convert_tokens_to_ids(eos))


def _write_llava(out: Path, seed: int, arch: str, family: str, chat_template: str | None,
                 cls_field: bool = True) -> None:
    """cls_field=False: the processor config has patch_size but no num_additional_image_tokens,
    as older llava-hf revisions and mirrors (unsloth/llava-1.5-7b-hf) have; transformers 5 then
    counts 0 for CLIP's CLS unless ifl.compat.complete_processor says otherwise."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_tokenizer(family)
    # llava-hf pads the embedding rows to a multiple of 64 (32064 for 32002 tokens); Gemma: none
    rows = len(tok) if arch == "gemma" else -(-len(tok) // 64) * 64
    config = LlavaConfig(vision_config=_vision_config("clip"),
                         text_config=_text_config(arch, tok, rows),
                         image_token_id=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=N_IMAGE_TOKENS, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if arch == "gemma":
        # Gemma multiplies input embeddings by sqrt(width) and ties them to the output layer, so
        # a random Gemma only ever repeats its last input token; undo the factor at init.
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(WIDTH ** -0.5)
    _finish_generation_config(model, tok)
    if arch == "gemma":  # Intel/llava-gemma-2b keeps gemma-2b-it's template on the tokenizer
        tok.chat_template = GEMMA_CHAT_TEMPLATE
    # num_additional_image_tokens=1: CLIP's CLS, which the "default" strategy then removes again
    processor = LlavaProcessor(image_processor=_image_processor("clip"), tokenizer=tok,
                               patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=chat_template)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if not cls_field:
        _drop_processor_field(out, "num_additional_image_tokens")


def _drop_processor_field(out: Path, key: str) -> None:
    path = out / "processor_config.json"
    saved = json.loads(path.read_text())
    saved.pop(key)
    path.write_text(json.dumps(saved, indent=2) + "\n")


def _write_llm(out: Path, seed: int, family: str, chat_template: str | None,
               eos: str | None = None, sentencepiece: bool = False) -> None:
    """sentencepiece: the tokenizer as tokenizer.model only (lmsys/vicuna-7b-v1.5's files)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    if sentencepiece:
        from ifl.smoke.sentencepiece_tokenizer import write_sentencepiece_tokenizer
        from ifl.smoke.tiny_models import tiny_corpus
        write_sentencepiece_tokenizer(out, tiny_corpus() + _CHAT_LINES)
        tok = AutoTokenizer.from_pretrained(out)  # converted via protobuf, as the real repo
    else:
        tok = tiny_tokenizer(family)
    tok.chat_template = chat_template
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config("llama", tok, len(tok))).eval()
    _finish_generation_config(model, tok, eos)
    model.save_pretrained(out)
    if not sentencepiece:  # else the folder keeps tokenizer.model as its only tokenizer file
        tok.save_pretrained(out)


def _write_tower(out: Path, seed: int, kind: str) -> None:
    import torch
    from transformers import CLIPVisionModel, Dinov2Model

    torch.manual_seed(seed)
    config = _vision_config(kind)
    model = (CLIPVisionModel if kind == "clip" else Dinov2Model)(config).eval()
    model.save_pretrained(out)
    _image_processor(kind).save_pretrained(out)
