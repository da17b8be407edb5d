"""Join a pretrained LLM and a pretrained vision tower into one `LlavaForConditionalGeneration`.

LLaVA-1.5's recipe (docs/sources.md §5): features of the tower's penultimate layer
(`vision_feature_layer=-2`), CLS dropped (`"default"`), a randomly initialised 2-layer GELU MLP
(`mlp2x_gelu`) into the LLM's embedding space, `<image>` as one added token that the processor
expands to one placeholder per image feature. Everything lives in the stock transformers
classes, so a trained model loads with `LlavaForConditionalGeneration.from_pretrained` and
`AutoProcessor.from_pretrained` like the llava-hf checkpoints.

    model, processor = assemble_llava("lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336",
                                      dtype=torch.bfloat16, device="cuda")
    model.config.image_seq_length     # 576 = (336/14)**2 patches, CLS dropped

Towers: CLIP (a `CLIPModel` or `CLIPVisionModel` checkpoint; only the vision half is loaded) and
DINOv2 (`Dinov2Model`, or `Dinov2WithRegistersModel`). Token layout of the tower's hidden states:
[CLS, registers..., patches...]. "default" drops the CLS only, so register tokens (if any) stay
as extra image tokens: removing them would need a model class of our own, and the saved model
would no longer load with the stock `LlavaForConditionalGeneration`.

Version drift (transformers 5: `dtype=`, `BitsAndBytesConfig`, PIL image processors since
torchvision is absent) is kept in this file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

IMAGE_TOKEN = "<image>"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's full-precision weights come from, so that a 4-bit model can be rebuilt in
    full precision for the final export (`rebuild`). kind: "parts" (assemble_llava) or "llava"
    (load_llava)."""
    kind: str
    paths: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def rebuild(self, dtype: torch.dtype, device: str | torch.device = "cpu"):
        """(model, processor) in `dtype`, unquantized, with the same seeded initial weights."""
        if self.kind == "parts":
            return assemble_llava(self.paths["llm"], self.paths["vision"],
                                  tokenizer=self.paths.get("tokenizer"), dtype=dtype, device=device,
                                  **self.options)
        return load_llava(self.paths["llava"], dtype=dtype, device=device)


def _bnb_4bit(compute_dtype: torch.dtype, skip: list[str] | None = None):
    from ifl.compat import nf4_config  # the package's one NF4 config
    return nf4_config(compute_dtype, skip)


def _check_quantization(quantization: str | None) -> None:
    if quantization not in (None, "4bit"):
        raise ValueError(f"quantization must be None or '4bit', got {quantization!r}")


def load_tokenizer(path_or_tokenizer):
    """A fast tokenizer with `<image>` as a special token, a pad token, left padding.

    `<image>` must be one token that never merges with its neighbours; the pad token is the unk
    token where there is one (LLaVA's choice for Vicuna), else eos."""
    from transformers import AddedToken, AutoTokenizer
    tok = path_or_tokenizer
    if isinstance(tok, (str, Path)):
        tok = AutoTokenizer.from_pretrained(str(tok))
    if not tok.is_fast:
        raise TypeError(f"{type(tok).__name__} is not a fast tokenizer; answer-only labels need "
                        "offset mappings (save the tokenizer as tokenizer.json)")
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = "left"  # as llava-hf: batched generation; training pads on its own
    return tok


def load_vision_tower(vision: str | Path, dtype: torch.dtype) -> nn.Module:
    """The vision encoder alone: CLIPVisionModel from a CLIP or CLIP-vision checkpoint, else
    AutoModel (Dinov2Model, Dinov2WithRegistersModel)."""
    from transformers import AutoConfig, AutoModel, CLIPVisionModel
    model_type = AutoConfig.from_pretrained(str(vision)).model_type
    if model_type in ("clip", "clip_vision_model"):
        return CLIPVisionModel.from_pretrained(str(vision), dtype=dtype)
    if model_type in ("dinov2", "dinov2_with_registers"):
        return AutoModel.from_pretrained(str(vision), dtype=dtype)
    raise ValueError(f"{vision}: vision tower type {model_type!r} is not supported "
                     "(CLIP or DINOv2 expected)")


def load_image_processor(vision: str | Path, tower_config):
    """The tower's own image processor (PIL backend); a default sized to the tower's
    `image_size` when the checkpoint has no preprocessor_config.json."""
    from transformers import AutoImageProcessor, BitImageProcessorPil, CLIPImageProcessorPil
    try:
        return AutoImageProcessor.from_pretrained(str(vision), backend="pil")
    except OSError:
        side = tower_config.image_size
        log.warning("%s has no preprocessor_config.json; using a default %dx%d processor",
                    vision, side, side)
        kind = CLIPImageProcessorPil if "clip" in tower_config.model_type else BitImageProcessorPil
        # DINOv2 checkpoints use BitImageProcessor with ImageNet statistics
        stats = {} if kind is CLIPImageProcessorPil else {
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
        return kind(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, **stats)


def processed_side(image_processor) -> tuple[int, int]:
    """(height, width) of the pixel_values the image processor produces."""
    if getattr(image_processor, "do_center_crop", False) and image_processor.crop_size:
        crop = image_processor.crop_size
        return crop["height"], crop["width"]
    size = image_processor.size
    if "height" in size:
        return size["height"], size["width"]
    raise ValueError(f"cannot tell the output size of {type(image_processor).__name__} "
                     f"(size={size}); give it a crop_size or a height/width size")


def image_token_count(tower_config, side: tuple[int, int], select_strategy: str) -> tuple[int, int]:
    """(image tokens per image, extra non-patch tokens of the tower).

    >>> from transformers import CLIPVisionConfig
    >>> image_token_count(CLIPVisionConfig(image_size=336, patch_size=14), (336, 336), "default")
    (576, 1)
    """
    patch = tower_config.patch_size
    n_patches = (side[0] // patch) * (side[1] // patch)
    extra = 1 + getattr(tower_config, "num_register_tokens", 0)  # CLS + registers
    return n_patches + extra - (1 if select_strategy == "default" else 0), extra


def processor_image_tokens(processor) -> int:
    """How many `<image>` placeholders a LlavaProcessor inserts per image (its own formula)."""
    h, w = processed_side(processor.image_processor)
    n = (h // processor.patch_size) * (w // processor.patch_size) + processor.num_additional_image_tokens
    return n - (1 if processor.vision_feature_select_strategy == "default" else 0)


def _verify_feature_count(model, pixel_side: tuple[int, int], expected: int) -> None:
    """One forward of the tower on a blank image: the feature count must equal the processor's
    placeholder count, or every training step would fail inside LLaVA's masked_scatter."""
    tower = model.model.vision_tower
    param = next(tower.parameters())
    blank = torch.zeros(1, 3, *pixel_side, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=blank).pooler_output
    if feats[0].shape[0] != expected:
        raise ValueError(f"the vision tower yields {feats[0].shape[0]} features per image but the "
                         f"processor would insert {expected} <image> tokens; check the image "
                         f"processor's crop size against the tower's image_size/patch_size")


def _add_embedding_rows(lm, n: int) -> None:
    """Grow input and output embeddings to `n` rows, new rows = mean of the old ones (LLaVA's
    smart_tokenizer_and_embedding_resize): deterministic on every device, no RNG involved."""
    old = lm.get_input_embeddings().weight.shape[0]
    if n <= old:
        return
    lm.resize_token_embeddings(n, mean_resizing=False)
    with torch.no_grad():
        for emb in (lm.get_input_embeddings(), lm.get_output_embeddings()):
            if emb is not None and emb.weight.shape[0] == n:
                emb.weight[old:] = emb.weight[:old].mean(0, keepdim=True)


def build_processor(tokenizer, image_processor, tower_config, select_strategy: str):
    from transformers import LlavaProcessor
    _, extra = image_token_count(tower_config, processed_side(image_processor), select_strategy)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=tower_config.patch_size,
                          vision_feature_select_strategy=select_strategy,
                          num_additional_image_tokens=extra)


def assemble_llava(llm: str | Path, vision: str | Path, *, tokenizer=None,
                   vision_feature_layer: int = -2, select_strategy: str = "default",
                   dtype: torch.dtype = torch.float32, quantization: str | None = None,
                   device: str | torch.device = "cpu", seed: int = 0):
    """(LlavaForConditionalGeneration, LlavaProcessor) from a pretrained LLM and vision tower.

    llm: AutoModelForCausalLM directory or hub id; vision: CLIP/DINOv2 directory or hub id;
    tokenizer: path, tokenizer object, or None (the LLM's). quantization="4bit" loads the LLM in
    NF4 (QLoRA; tower and projector stay in `dtype`). `seed` fixes the projector's random init
    (the new `<image>` embedding row is the mean row), so the same call builds the same model.
    """
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
    _check_quantization(quantization)
    if select_strategy not in ("default", "full"):
        raise ValueError(f"select_strategy must be 'default' or 'full', got {select_strategy!r}")
    tok = load_tokenizer(tokenizer if tokenizer is not None else llm)
    tower = load_vision_tower(vision, dtype)
    image_processor = load_image_processor(vision, tower.config)
    side = processed_side(image_processor)
    n_image_tokens, _ = image_token_count(tower.config, side, select_strategy)

    # device_map: weights go straight to the device, never through a full copy in CPU memory
    load_kwargs: dict = {"dtype": dtype, "device_map": {"": str(device)}}
    if quantization == "4bit":
        load_kwargs["quantization_config"] = _bnb_4bit(dtype)
    lm = AutoModelForCausalLM.from_pretrained(str(llm), **load_kwargs)
    _add_embedding_rows(lm, len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the projector is built on the CPU: same weights on any device
        config = LlavaConfig(
            vision_config=tower.config, text_config=lm.config,
            image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=n_image_tokens, projector_hidden_act="gelu",
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=select_strategy)
        # PyTorch's default Linear init, as LLaVA's own `mlp2x_gelu` builder
        projector = LlavaMultiModalProjector(config).to(dtype)
    # The shell is built on the meta device (no memory, no init), then the pretrained modules
    # are moved in: nothing of the 7B LLM is copied or allocated twice.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.language_model = getattr(lm, lm.base_model_prefix)
    model.lm_head = lm.get_output_embeddings()
    model.model.multi_modal_projector = projector
    model.generation_config = lm.generation_config
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"assembly left tensors on the meta device: {meta[:5]}")
    if quantization == "4bit":
        model.is_loaded_in_4bit = True  # read by peft to wrap Linear4bit layers
        tower.to(device)
        projector.to(device)
    else:
        model.to(device)
    # a tokenizer object (not a path) is kept as it is: the rebuild needs the same vocabulary
    model.ifl_source = ModelSource("parts", {"llm": str(llm), "vision": str(vision),
                                             "tokenizer": tokenizer},
                                   {"vision_feature_layer": vision_feature_layer,
                                    "select_strategy": select_strategy, "seed": seed})
    _verify_feature_count(model, side, n_image_tokens)
    processor = build_processor(tok, image_processor, tower.config, select_strategy)
    return model, processor


def load_llava(path: str | Path, *, dtype: torch.dtype = torch.float32,
               quantization: str | None = None, device: str | torch.device = "cpu"):
    """(model, processor) saved by `train_stage` (or any llava-hf checkpoint), through the
    package's one loader (`ifl.models.load_llava`), with `model.ifl_source` recorded.

    quantization="4bit": the LLM in NF4, the tower, projector and lm_head unquantized (QLoRA
    for stage 2 on a single 24 GB GPU)."""
    from ifl.models import load_llava as load
    _check_quantization(quantization)
    model, processor = load(str(path), dtype=dtype, quantization=quantization, device=str(device))
    model.ifl_source = ModelSource("llava", {"llava": str(path)})
    return model, processor
