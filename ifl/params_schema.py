"""The one typed schema of params files: `common` plus one block per notebook.

Each block is a pydantic model that forbids unknown keys. A key's type, range and meaning live
here once; `params/*.yaml` only set values. Later notebooks add their block to `SECTIONS`.

Sources (`*_source`) are either a Hugging Face hub id (`owner/name`, fetched at the pinned
`*_revision`) or a local folder laid out like that hub repo. A value starting with `/`, `./`,
`../` or `~` is local and must exist before the run starts.
"""
from __future__ import annotations

from typing import Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ifl.data.hub import SOURCES
from ifl.data.languages import LANGUAGES


class _Source:
    """Marker in `Annotated[...]`: this string names a hub id or a local path."""


def _known_language(code: str) -> str:
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {code!r}; known: {', '.join(LANGUAGES)}")
    return code


def is_local(value: str) -> bool:
    """Local path (checked to exist) rather than a hub id."""
    return value.startswith(("/", "./", "../", "~"))


def _query_or_language(code: str) -> str:
    return code if code == "query" else _known_language(code)


Lang = Annotated[str, AfterValidator(_known_language)]
Source = Annotated[str, _Source()]
SourceMap = Annotated[dict[str, str], _Source()]  # name -> hub id or local path
Revision = Annotated[str | None, Field(description=(
    "commit SHA on the hub; null = the pin in ifl/data/sources.yaml (recorded with the outputs)"))]


def _hub(name: str) -> str:
    """Default source: the hub id of `name` in ifl/data/sources.yaml (one place for hub ids)."""
    return SOURCES[name].hub_id


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Common(Block):
    run_name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$",
                          description="outputs go to runs/<run_name>/, rendered/<run_name>/ ...")
    seed: int = Field(0, ge=0)
    world: Literal["miniature", "paper"] = "miniature"
    languages: list[Lang] = Field(default_factory=lambda: ["en", "de", "zh", "ru", "hi", "ar"],
                                  min_length=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    output_root: str = Field(".", description="folder holding runs/, rendered/, paper_figures/")
    make_smoke_assets: bool = Field(
        False, description="paper-smoke only: build local tiny stand-ins of the hub models and "
                           "datasets (smoke_assets/) before the run")


class TranslateData(Block):
    """01_translate_data: evaluation tasks for both worlds and translated training data."""
    # --- miniature world ---
    mini_scenes: int = Field(240, ge=1, le=100_000, description="scenes behind the evaluation tasks")
    mini_caption_records: int = Field(4000, ge=1, le=1_000_000)
    mini_instruct_records: int = Field(4000, ge=1, le=1_000_000)
    mini_image_size: int = Field(32, ge=8, le=256)
    mini_error_rate: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of re-rendered training sentences corrupted, standing in for MT noise"))
    description_lang: Annotated[str, AfterValidator(_query_or_language)] = Field("query", description=(
        "language of the text that replaces the image: 'query' (the task's own language) or a "
        "fixed ISO code such as 'en' (sensitivity check)"))
    # --- paper world: evaluation benchmarks ---
    benchmarks: list[Literal["maxm", "llavaw", "visit", "multiq"]] = ["maxm", "llavaw", "visit"]
    maxm_source: Source = _hub("maxm")
    maxm_revision: Revision = None
    maxm_description: Literal["maxm_captions", "xm3600"] = "maxm_captions"
    xm3600_source: Source = _hub("xm3600")
    xm3600_revision: Revision = None
    llavaw_source: Source = _hub("llavaw")
    llavaw_revision: Revision = None
    visit_source: Source = _hub("visit")
    visit_revision: Revision = None
    multiq_source: Source = _hub("multiq")
    multiq_revision: Revision = None
    visit_languages: list[Lang] = ["ar", "bn", "zh", "de", "he", "hi", "ja", "es", "th"]
    # --- paper world: LLaVA-v1.5 training data ---
    pretrain_source: Source = _hub("llava_pretrain")
    pretrain_revision: Revision = None
    instruct_source: Source = _hub("llava_instruct")
    instruct_revision: Revision = None
    training_languages: list[Lang] = ["zh", "de"]
    max_training_records: int | None = Field(None, ge=1, description=(
        "translate only the first N records of each training file (null = all ~1.2M)"))
    # --- translator ---
    translator: Literal["nllb", "azure"] = "nllb"
    visit_translator: Literal["nllb", "azure"] = Field("nllb", description=(
        "the paper used Azure for VisIT-Bench; 'azure' needs AZURE_TRANSLATOR_KEY"))
    nllb_model: Source = "facebook/nllb-200-distilled-1.3B"
    nllb_revision: Revision = None
    translate_batch_size: int = Field(32, ge=1, le=4096)
    translate_max_new_tokens: int = Field(256, ge=1, le=4096)
    translate_num_beams: int = Field(1, ge=1, le=16)


def _default_sources(names: tuple[str, ...]) -> dict[str, str]:
    from ifl.models import model_info  # the one model table (ifl/models.yaml)
    return {name: model_info(name).hub_id for name in names}


class TrainVariants(Block):
    """02_train_variants: the design space of Table 3, for real and in miniature."""
    llms: list[Literal["vicuna", "yi", "leo"]] = ["vicuna", "yi", "leo"]
    visions: list[Literal["clip", "dinov2"]] = ["clip", "dinov2"]
    data_languages: list[Lang] = Field(["en", "zh", "de"], min_length=1, description=(
        "training-data languages; the paper's rules still apply (Yi: en/zh, Leo: en/de)"))
    # --- miniature world: the pretrained components (stand-ins for Vicuna/Yi/Leo, CLIP/DINOv2)
    mini_vocab_size: int = Field(2048, ge=256, le=65536)
    mini_lm_hidden: int = Field(96, ge=16, le=4096)
    mini_lm_layers: int = Field(3, ge=1, le=48)
    mini_lm_steps: int = Field(600, ge=1, le=1_000_000)
    mini_lm_batch: int = Field(48, ge=1, le=4096)
    mini_tower_hidden: int = Field(64, ge=16, le=4096)
    mini_tower_layers: int = Field(3, ge=1, le=48)
    mini_tower_steps: int = Field(300, ge=1, le=1_000_000)
    mini_lm_eval_scenes: int = Field(60, ge=1, le=100_000, description=(
        "held-out scenes per language for each LM's text-only check"))
    mini_tower_probe_scenes: int = Field(2000, ge=8, le=1_000_000, description=(
        "held-out scenes for the towers' probe check"))
    # --- miniature world: LLaVA training of each variant
    mini_stage1_steps: int = Field(100, ge=1, le=1_000_000)
    mini_stage2_steps: int = Field(150, ge=1, le=1_000_000)
    mini_stage1_lr: float = Field(1e-3, gt=0, le=1)
    mini_stage2_lr: float = Field(5e-4, gt=0, le=1, description=(
        "5e-4 kept more of the LM's text-only ability than 1e-3 in a prototype"))
    mini_micro_batch: int = Field(16, ge=1, le=4096)
    mini_eval_scenes: int = Field(40, ge=1, le=100_000, description=(
        "held-out shapes_vqa scenes for each variant's sanity check in its training language"))
    threads: int = Field(2, ge=1, le=256, description=(
        "CPU threads for miniature training (1 can be faster on a busy machine)"))
    # --- paper world
    llm_sources: SourceMap = Field(default_factory=lambda: _default_sources(("vicuna", "yi", "leo")))
    vision_sources: SourceMap = Field(default_factory=lambda: _default_sources(("clip", "dinov2")))
    pretrain_image_folder: Source = Field("./data/LLaVA-Pretrain/images", description=(
        "LCS-558K images (images.zip of liuhaotian/LLaVA-Pretrain, unpacked)"))
    instruct_image_folder: Source = Field("./data/playground/data", description=(
        "LLaVA's playground/data: coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, vg/"))
    training: Literal["full", "qlora"] = Field("qlora", description=(
        "full: LLaVA's recipe (several GPUs, accelerate/DeepSpeed); qlora: one 24 GB GPU"))
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    stage1_lr: float = Field(1e-3, gt=0, le=1)
    stage1_global_batch: int = Field(256, ge=1)
    stage1_micro_batch: int = Field(16, ge=1)
    stage1_max_steps: int | None = Field(None, ge=1, description="null = one epoch")
    stage2_lr: float = Field(2e-5, gt=0, le=1, description="LLaVA-1.5; QLoRA usually wants ~2e-4")
    stage2_global_batch: int = Field(128, ge=1)
    stage2_micro_batch: int = Field(4, ge=1)
    stage2_max_steps: int | None = Field(None, ge=1, description="null = one epoch")
    max_length: int = Field(2048, ge=16)
    save_every: int = Field(200, ge=1, description="optimizer steps between resumable checkpoints")
    lora_r: int = Field(128, ge=1)
    lora_alpha: int = Field(256, ge=1)
    gradient_checkpointing: bool = True


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    common: Common = Field(default_factory=Common)
    translate_data: TranslateData = Field(default_factory=TranslateData, alias="01_translate_data")
    train_variants: TrainVariants = Field(default_factory=TrainVariants, alias="02_train_variants")


# section name in params files -> its model (runner and error messages use these names)
SECTIONS: dict[str, type[Block]] = {
    (info.alias or name): info.annotation for name, info in Params.model_fields.items()
}


def section(params: Params, name: str) -> Block:
    """A block by its params-file name, e.g. section(p, '01_translate_data')."""
    for field, info in Params.model_fields.items():
        if (info.alias or field) == name:
            return getattr(params, field)
    raise KeyError(name)


def local_path_fields(params: Params) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) of every Source field that names a local path."""
    for name in SECTIONS:
        block = section(params, name)
        for key, info in type(block).model_fields.items():
            value: Any = getattr(block, key)
            if not any(isinstance(m, _Source) for m in info.metadata):
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, item in items:
                if isinstance(item, str) and is_local(item):
                    yield name, key if sub is None else f"{key}.{sub}", item
