"""The one adapter for transformers-version drift in LLaVA models. Nothing else in `ifl` may reach
into a model's module tree or a layer's output type; everything goes through these functions.

What drifted (docs/steering_cka_umap.md §1.2, checked on transformers 5.24):

| thing                   | transformers >= 4.52 / 5.x                     | before 4.52 / 4.x                    |
|-------------------------|------------------------------------------------|--------------------------------------|
| decoder layers          | `model.model.language_model.layers`            | `model.language_model.model.layers`  |
| decoder layer output    | a Tensor [batch, seq, hidden] (5.x)            | a tuple whose [0] is that Tensor     |
| `get_image_features`    | BaseModelOutputWithPooling, `.pooler_output` a list of [n_tokens, hidden] (5.x) | a Tensor [n_images, n_tokens, hidden] |
| 4-bit flags             | `quantization_config=BitsAndBytesConfig(...)`, `dtype=` | `load_in_4bit=True`, `torch_dtype=` |

Processor classes (what `processor_classes` records beside results):
* llava-hf repos name `CLIPImageProcessor`; without torchvision transformers 5 instantiates
  `CLIPImageProcessorPil` (same numbers, PIL resizing); with torchvision the torch version.
* For `model_type: llava` transformers 5 loads the tokenizer as the generic `TokenizersBackend`
  (tokenizer.json as is), not `LlamaTokenizer`/`GemmaTokenizer`, and its padding side is
  "right": set "left" for batched generation (ifl.models.load_llava does).
* LlavaProcessor needs `patch_size`, `vision_feature_select_strategy` and
  `num_additional_image_tokens` to expand `<image>` into one token per patch (fields added to the
  llava-hf repos in 2024, >= 4.46; `num_additional_image_tokens` came later and defaults to 0);
  `complete_processor` fills them from the model config for older repo revisions.
  Intel/llava-gemma-2b needed its own `LlavaGemmaProcessor` before 4.41.1.

>>> import torch
>>> untuple((torch.zeros(1, 2, 3), None)).shape
torch.Size([1, 2, 3])
>>> retuple(torch.zeros(1), torch.ones(1))
tensor([1.])
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Where the module holding `layers`, `embed_tokens` and the final `norm` lives, newest first.
_LANGUAGE_MODEL_PATHS = (
    "model.language_model",  # LLaVA, transformers >= 4.52 (LlavaModel.language_model)
    "language_model.model",  # LLaVA, transformers < 4.52 (LlavaForConditionalGeneration.language_model)
    "model",                 # a plain causal LM (LlamaForCausalLM.model), e.g. a design-space base LLM
    "model.text_model",      # Idefics3 / SmolVLM (Idefics3Model.text_model)
)


def _get(root: nn.Module, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def language_model(model: nn.Module) -> nn.Module:
    """The decoder stack (e.g. LlamaModel): `.layers`, `.embed_tokens`, `.norm`. Raises if not
    exactly one known path leads to a module with a `layers` ModuleList."""
    found = {path: module for path in _LANGUAGE_MODEL_PATHS
             if isinstance(module := _get(model, path), nn.Module)
             and isinstance(getattr(module, "layers", None), nn.ModuleList)}
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__}: expected exactly one decoder stack at "
            f"{' / '.join(p + '.layers' for p in _LANGUAGE_MODEL_PATHS)}, found "
            f"{sorted(p + '.layers' for p in found) or 'none'} (ifl/compat.py knows these "
            "transformers layouts; add the new one there)")
    return next(iter(found.values()))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The LLM's decoder blocks. `layer=l` everywhere in ifl means `decoder_layers(model)[l]`
    (0-based); its output is `hidden_states[l + 1]` for l < N-1 (the last entry is post-norm)."""
    return language_model(model).layers


def untuple(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder layer's hidden states [batch, seq, hidden] from its forward output: the Tensor
    itself (transformers 5.x) or the first element of the tuple (4.x)."""
    return output[0] if isinstance(output, tuple) else output


def retuple(original: torch.Tensor | tuple, tensor: torch.Tensor) -> torch.Tensor | tuple:
    """`tensor` in the shape of container `original` had, for a forward hook to return: a tuple
    keeps its other elements (attention weights, cache) unchanged."""
    return (tensor, *original[1:]) if isinstance(original, tuple) else tensor


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features, as the LLM receives them at the `<image>` positions.

    pixel_values [n_images, 3, H, W] -> [n_images, n_tokens, text_hidden], with the model's own
    `vision_feature_layer` (-2 for LLaVA-1.5) and select strategy ("default" drops CLS: 576 tokens
    at 336 px / patch 14)."""
    cfg = model.config
    out = model.get_image_features(pixel_values=pixel_values,
                                   vision_feature_layer=cfg.vision_feature_layer,
                                   vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    if hasattr(out, "pooler_output"):  # 5.x: BaseModelOutputWithPooling, list per image
        out = out.pooler_output
    if isinstance(out, (list, tuple)):
        out = torch.stack(list(out))  # every image has the same token count in LLaVA-1.5
    if out.dim() != 3:
        raise ValueError(f"image features of shape {tuple(out.shape)}; expected "
                         "[n_images, n_tokens, hidden]")
    return out


# Kept in full precision under 4-/8-bit loading, as LLaVA's own 4-bit loader does (only the LLM's
# linear layers are quantised): quantising the CLIP tower and the projector changes the image
# features for no memory worth having. transformers 5 matches a pattern from the start of the
# module path ("model.vision_tower...") or as its suffix, and by default skips only the output
# embeddings; 4.x matched substrings of top-level paths ("vision_tower..."). Both spellings here.
# Other classes name their vision side otherwise (Qwen2-VL `visual`, Idefics3 `vision_model` +
# `connector`): `unquantised_modules` reads the list off any class's module tree.
LLAVA_UNQUANTISED = ("model.vision_tower", "model.multi_modal_projector", "vision_tower",
                     "multi_modal_projector", "lm_head")


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16, skip=LLAVA_UNQUANTISED):
    """The one NF4 config of the package (inference, QLoRA training, the synthetic models): NF4
    with double quantisation (QLoRA, Dettmers et al. 2023), `compute_dtype` compute, the modules
    in `skip` left unquantised (None: transformers' default)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=list(skip) if skip else None)


def bnb_config(kind: str | None, compute_dtype: torch.dtype = torch.bfloat16, skip=LLAVA_UNQUANTISED):
    """BitsAndBytesConfig of a LLaVA model for `quantization` = "4bit" (`nf4_config`) or "8bit"
    (LLM.int8); None -> None. The modules in `skip` stay unquantised: by default LLaVA's tower,
    projector and lm_head (`LLAVA_UNQUANTISED`); another class's from `unquantised_modules`.
    Pass as `quantization_config=` (5.x)."""
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return nf4_config(compute_dtype, skip)
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip))
    raise ValueError(f"quantization must be None, '4bit' or '8bit', got {kind!r}")


def unquantised_modules(config, auto_class=None) -> tuple[str, ...]:
    """What to keep in full precision under 4-/8-bit loading for a model of `config`'s class,
    as LLaVA's own loader does for LLaVA: every module beside the language model in the
    multimodal wrapper (the vision tower and the projector or connector, whatever the class
    names them: LLaVA's `vision_tower`/`multi_modal_projector`, Qwen2-VL's `visual`, Idefics3's
    `vision_model`/`connector`) and the output head. Read off the class's own module tree, built
    on the meta device (no weights), so a new class needs no entry here.

    auto_class: the Auto class that loads the model (default AutoModelForImageTextToText)."""
    if auto_class is None:
        from transformers import AutoModelForImageTextToText as auto_class
    with torch.device("meta"):
        model = auto_class.from_config(config)
    decoder = language_model(model)
    path = next(name for name, module in model.named_modules() if module is decoder)
    # every module beside the path from the root to the decoder stack: the wrapper's tower and
    # projector, the head (Llama 4 nests its head in `language_model`, beside the stack)
    skip, parts = [], path.split(".")
    for depth in range(len(parts)):
        above = ".".join(parts[:depth])
        for name, _ in (model.get_submodule(above) if above else model).named_children():
            if name != parts[depth]:
                skip.append(f"{above}.{name}" if above else name)
    return tuple(skip)


# Tokens a vision tower puts before its patches (CLS, registers): what LlavaProcessor's
# `num_additional_image_tokens` must say. Towers not listed are left as their processor says.
def tower_extra_tokens(vision_config) -> int | None:
    """CLS (+ registers) of a CLIP or DINOv2 tower; 0 for SigLIP (no CLS); None if unknown.

    >>> from transformers import CLIPVisionConfig
    >>> tower_extra_tokens(CLIPVisionConfig())
    1
    """
    kind = vision_config.model_type
    if kind in ("clip_vision_model", "clip", "dinov2", "dinov2_with_registers"):
        return 1 + getattr(vision_config, "num_register_tokens", 0)
    if kind in ("siglip_vision_model", "siglip"):
        return 0
    return None


def complete_processor(processor, config) -> None:
    """Make `<image>` expand to exactly one token per image feature, from the model config:
    * patch_size and select strategy, which llava-hf processor configs lacked before 2024;
    * num_additional_image_tokens from the tower (CLIP: its CLS), which configs written between
      those two changes lack (older llava-hf revisions, mirrors such as unsloth/llava-1.5-7b-hf):
      transformers 5 then defaults it to 0 and inserts 575 placeholders for 576 features
      ("Image features and image tokens do not match"). A loaded processor cannot tell an
      absent field from an explicit 0, so the tower decides whenever its type is known."""
    vision = config.vision_config
    if getattr(processor, "patch_size", None) is None:
        processor.patch_size = vision.patch_size
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    extra = tower_extra_tokens(vision)
    if extra is not None:
        processor.num_additional_image_tokens = extra


def processor_classes(processor) -> dict[str, str]:
    """Class names of a processor and its parts, to save beside results (they change numbers:
    PIL vs torchvision resizing, tokenizer backends)."""
    out = {"processor": type(processor).__name__}
    for part in ("tokenizer", "image_processor"):
        if getattr(processor, part, None) is not None:
            out[part] = type(getattr(processor, part)).__name__
    return out


# --- KV caches (ifl.collect.prefix) -------------------------------------------------------------
# transformers 5.x holds a cache's tensors per layer (`cache.layers[i].keys/values`; 4.x had
# `cache.key_cache[i]`), returns it as `past_key_values` on model outputs (renamed `cache` in
# 5.2x, with `past_key_values` kept as a deprecated alias on inputs), and a StaticLayer's
# `update` writes at `cache_kwargs["cache_position"]` (<= 5.1x) or after its own running length
# (5.2x). Each function below reads whichever this version has.

def generate_cache_kwarg() -> str:
    """The name under which generate() takes a ready KV cache ("cache" since 5.2x)."""
    import inspect

    from transformers import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_cache(output) -> Any:
    """The KV cache a forward pass with use_cache=True returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cache_layer_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) [batch, kv_heads, seq, head_dim] of every layer of a DynamicCache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep (and repeat) batch rows of a DynamicCache in place: row i becomes old row rows[i]."""
    cache.batch_select_indices(rows)


def static_cache_from(model, cache, rows: torch.Tensor, *, max_cache_len: int):
    """A StaticCache of `max_cache_len` positions holding `cache`'s rows `rows` at positions
    0..len-1 (what a compiled decode step needs: fixed shapes)."""
    from transformers import StaticCache

    static = StaticCache(config=model.config, max_cache_len=max_cache_len)
    for i, (k, v) in enumerate(cache_layer_tensors(cache)):
        positions = torch.arange(k.shape[-2], device=k.device)
        static.update(k[rows], v[rows], i, {"cache_position": positions})
    return static


def compile_config(device: torch.device):
    """generate()'s settings for compiling the decode step. transformers compiles only on
    accelerators unless `_compile_all_devices` is set (CPU: for tests)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False)
    if torch.device(device).type == "cpu":
        config._compile_all_devices = True
    return config
