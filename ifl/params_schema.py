"""The one typed schema of params files: `common` plus one block per notebook.

Each block is a pydantic model that forbids unknown keys. A key's type, range and meaning live
here once; `params/*.yaml` only set values. Later notebooks add their block to `SECTIONS`.

Sources (`*_source`) are either a Hugging Face hub id (`owner/name`, fetched at the pinned
`*_revision`) or a local folder laid out like that hub repo. A value that exists locally, or
that looks like a path (`/`, `./`, `../`, `~` in front, or two or more `/`), is local and must
exist before the run starts (`ifl.data.hub.is_path_like`, the same rule the loaders use).
`annotation_sheet` is a local file in both worlds and is checked the same way.
"""
from __future__ import annotations

from typing import Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ifl.data.hub import SOURCES, is_path_like
from ifl.data.languages import LANGUAGES


class _Source:
    """Marker in `Annotated[...]`: this string names a hub id or a local path."""


class _LocalFile:
    """Marker in `Annotated[...]`: this string (when set) names a local file, in any world."""


def _known_language(code: str) -> str:
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {code!r}; known: {', '.join(LANGUAGES)}")
    return code


def is_local(value: str) -> bool:
    """Local path (checked to exist) rather than a hub id: see `ifl.data.hub.is_path_like`."""
    return is_path_like(value)


def _plain_run_name(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("a run name is one plain folder name, not '.' or '..' (it becomes "
                         "runs/<run_name>/)")
    return name


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
    run_name: Annotated[str, AfterValidator(_plain_run_name)] = Field(
        "default", pattern=r"^[A-Za-z0-9_.-]+$",
        description="one folder name: outputs go to runs/<run_name>/, rendered/<run_name>/ ...")
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
    mini_noise_model: Literal["word", "mt"] = Field("word", description=(
        "kinds of translation noise: 'word' (wrong / dropped / untranslated word) or 'mt' (how "
        "machine translation fails: source copied through, output truncated, script mixing, "
        "wrong content word)"))
    mini_text_only_share: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of stage-2 records that are text-only conversations; LLaVA-1.5's mix665k: "
        "40k ShareGPT of 665k = 0.06"))
    mini_text_only_non_english: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of those text-only conversations in a non-English language (spread evenly over "
        "the lexicon's languages), standing in for ShareGPT's non-English conversations"))
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
    mini_lm_steps: int = Field(500, ge=1, le=1_000_000)
    mini_lm_batch: int = Field(48, ge=1, le=4096)
    mini_tower_hidden: int = Field(64, ge=16, le=4096)
    mini_tower_layers: int = Field(3, ge=1, le=48)
    mini_tower_steps: int = Field(300, ge=1, le=1_000_000, description=(
        "DINO-style tower steps (and the CLIP-style tower's when mini_clip_steps is null)"))
    mini_clip_steps: int | None = Field(800, ge=1, le=1_000_000, description=(
        "CLIP-style tower steps: its patch features learn shape only after several hundred"))
    mini_tower_twins: float = Field(0.25, ge=0, le=0.5, description=(
        "share of each CLIP batch replaced by shape twins (same colours and places, other "
        "shapes): hard negatives that reward shape"))
    mini_lm_eval_scenes: int = Field(60, ge=1, le=100_000, description=(
        "held-out scenes per language for each LM's text-only check"))
    mini_tower_probe_scenes: int = Field(2000, ge=8, le=1_000_000, description=(
        "held-out scenes for the towers' probe check"))
    mini_lm_crosslingual_share: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of LM pretraining items that are cross-lingual (bitext sentence pairs, parallel "
        "paragraphs, a scene described in one language and asked about in another)"))
    mini_lm_reply_calibration: Literal["none", "multiq"] = Field("none", description=(
        "'multiq': each backbone answers the share of its non-English pretraining questions in "
        "English that its real counterpart does in MultiQ (Holtermann et al. 2024); 'none': "
        "every question answered in its own language"))
    mini_clip_text: Literal["own", "lm"] = Field("own", description=(
        "'lm': the CLIP-style tower learns from English captions read through the English-"
        "dominant LM's tokenizer and input embeddings (aligned with English as the LM has it); "
        "'own': through a separate text model over its own word list"))
    mini_component_probes: bool = Field(False, description=(
        "add the cross-lingual probe, fidelity vs calibration target, reply-language probe by "
        "layer and stage-2 retention to component_metrics.csv"))
    # --- miniature world: LLaVA training of each variant
    mini_stage1_steps: int = Field(100, ge=1, le=1_000_000)
    mini_stage2_steps: int = Field(250, ge=1, le=1_000_000)
    mini_stage1_lr: float = Field(1e-3, gt=0, le=1)
    mini_stage2_lr: float = Field(5e-4, gt=0, le=1, description=(
        "5e-4 kept more of the LM's text-only ability than 1e-3 in a prototype"))
    mini_micro_batch: int = Field(16, ge=1, le=4096)
    mini_eval_scenes: int = Field(80, ge=1, le=100_000, description=(
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
    stage1_lr: float | None = Field(None, gt=0, le=1, description=(
        "null = the recipe's (LLaVA-1.5 pretrain.sh: 1e-3)"))
    stage1_global_batch: int = Field(256, ge=1)
    stage1_micro_batch: int = Field(16, ge=1)
    stage1_max_steps: int | None = Field(None, ge=1, description="null = one epoch")
    stage2_lr: float | None = Field(None, gt=0, le=1, description=(
        "null = the recipe of `training`: full 2e-5 (finetune.sh), qlora 2e-4 for LoRA "
        "(finetune_lora.sh); see ifl/train/recipes.py"))
    stage2_projector_lr: float | None = Field(None, gt=0, le=1, description=(
        "qlora only: the projector's stage-2 lr; null = finetune_lora.sh's mm_projector_lr 2e-5"))
    stage2_global_batch: int = Field(128, ge=1)
    stage2_micro_batch: int = Field(4, ge=1)
    stage2_max_steps: int | None = Field(None, ge=1, description="null = one epoch")
    max_length: int = Field(2048, ge=16)
    save_every: int = Field(200, ge=1, description="optimizer steps between resumable checkpoints")
    lora_r: int = Field(128, ge=1)
    lora_alpha: int = Field(256, ge=1)
    gradient_checkpointing: bool = True
    skip_missing_images: bool = Field(False, description=(
        "false: training stops before it starts when a record's image is missing (count and "
        "first paths named); true: such records are left out, counted in images.json and "
        "the variants table"))
    processes: int = Field(1, ge=1, le=1024, description=(
        "paper world: ranks per variant (one per GPU). > 1 trains each variant with `accelerate "
        "launch --num_processes N -m ifl.train` (DeepSpeed ZeRO-2, ifl/train/deepspeed_zero2.yaml, "
        "when training is full on CUDA; DDP otherwise), its log in <variant>/launch.log; "
        "global batches stay by accumulation (global = micro x accumulation x N); "
        "1 = in this process"))


def _default_llava_sources() -> dict[str, str]:
    return _default_sources(("llava-1.5-7b", "llava-1.5-13b", "bakllava", "llava-gemma-2b"))


class CollectSpeedups(Block):
    """How collection may compute faster (ifl.collect.options.Speedups; docs/collect_at_scale.md).
    In float32 the rows are those of the plain path (tests/test_collect_fast.py); in bf16 they
    differ only as any change of batch composition (e.g. another batch_size) moves them."""
    share_prefix: bool = Field(False, description=(
        "the prompt up to and including the image tokens once per image, its KV cache reused "
        "for every language of the item (image-first templates; others fall back to plain)"))
    static_cache: bool = Field(False, description="fixed-shape KV cache (needed by compile)")
    compile: bool = Field(False, description=(
        "torch.compile'd decode step on the static cache; pays a compilation per batch shape "
        "(skipped by transformers for bitsandbytes models)"))

    @model_validator(mode="after")
    def _compile_needs_static_cache(self):
        if self.compile and not self.static_cache:
            raise ValueError("speedups.compile needs speedups.static_cache: true (the compiled "
                             "decode step runs on a fixed-shape KV cache)")
        return self


def _machines_field():
    return Field(1, ge=1, le=1024, description=(
        "nodes that collect together (accelerate launch --num_machines): run the same command "
        "on each with its own machine_rank, on a shared output folder (docs/collect_at_scale.md)"))


def _machine_rank_field():
    return Field(0, ge=0, le=1023, description=(
        "this node's rank among `machines` (--machine_rank): 0 on the main node; under SLURM "
        "$SLURM_NODEID"))


def _main_address_field():
    return Field(None, description=(
        "the main node's (machine_rank 0) address, IP or hostname (--main_process_ip); needed "
        "when machines > 1"))


def _main_port_field():
    return Field(29500, ge=1, le=65535, description="a free port on the main node (--main_process_port)")


# Every node runs the whole notebook; a collection that stays in the notebook's process would
# then be written by every node at once into the same unsharded folder
_IN_PROCESS_ON_NODES = (
    "machines > 1 and the {what} ({key}): the {what} collects in the notebook's own process, "
    "so every node would write the same responses folder at once. Set {key}={off} for the "
    "multi-node run, and run the {what} on one node (machines: 1) before or after it "
    "(docs/collect_at_scale.md)")


def _check_machines(block: BaseModel, section: str) -> None:
    """machine_rank within machines, and an address to meet at when there are several."""
    if block.machine_rank >= block.machines:
        raise ValueError(f"{section}.machine_rank={block.machine_rank} must be below "
                         f"{section}.machines={block.machines} (ranks count from 0)")
    if block.machines > 1 and not block.main_address:
        raise ValueError(f"{section}.machines={block.machines} needs {section}.main_address: "
                         "the address of the node with machine_rank 0")


class CollectResponses(Block):
    """03_collect_responses: every model x task x condition, greedy, batched, resumable."""
    models: list[str] = Field(["variants"], min_length=1, description=(
        "models to evaluate: names in `model_sources` (off-the-shelf LLaVAs, Figure 1) and/or "
        "'variants' = every variant notebook 02 trained (Table 4)"))
    model_sources: SourceMap = Field(default_factory=_default_llava_sources, description=(
        "off-the-shelf model name (a row of ifl/models.yaml) -> hub id or local folder"))
    model_revisions: dict[str, str] = Field(default_factory=dict, description=(
        "model name -> commit SHA; absent = the pin in ifl/models.yaml"))
    conditions: list[Literal["image", "text"]] = Field(["image", "text"], min_length=1, description=(
        "image: the image with the question; text: its description replaces the image"))
    benchmarks: list[str] | None = Field(None, description="null = every benchmark in notebook 01's tasks")
    max_tasks_per_cell: int | None = Field(None, ge=1, description=(
        "at most N tasks per benchmark x language (the same parallel items in every language); "
        "null = all"))
    max_new_tokens: int = Field(256, ge=1, le=8192)
    batch_size: int = Field(16, ge=1, le=4096, description="halved on CUDA out-of-memory")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    quantization: Literal["none", "4bit", "8bit"] = Field("4bit", description=(
        "4bit = NF4 via bitsandbytes (one 24 GB GPU); none = dtype as is"))
    threads: int = Field(2, ge=1, le=256, description="CPU threads (miniature; per rank)")
    processes: int = Field(1, ge=1, le=1024, description=(
        "ranks per machine: > 1 starts the collection with `accelerate launch`, one shard per "
        "rank on cuda:<local rank> (on the CPU where the device is cpu), merged when all are "
        "done; 1 = in this process (docs/collect_at_scale.md)"))
    machines: int = _machines_field()
    machine_rank: int = _machine_rank_field()
    main_address: str | None = _main_address_field()
    main_port: int = _main_port_field()
    speedups: CollectSpeedups = Field(default_factory=CollectSpeedups)
    precision_check: bool = Field(False, description=(
        "also collect a seeded sample of tasks in both NF4 and bf16 and report each one's IFL "
        "and their difference with a cluster-bootstrap CI (precision_check.csv): did 4-bit "
        "move the result?"))
    precision_check_items: int = Field(50, ge=2, description=(
        "parallel items in the precision check's sample (all languages of each)"))
    precision_check_models: list[str] | None = Field(None, description=(
        "off-the-shelf models (names in `models`) the precision check collects in NF4 and "
        "bf16; null = every one. A model whose bf16 weights do not fit the GPU cannot be "
        "checked (llava-1.5-13b needs ~26 GB in bf16)"))
    precision_check_batch_size: int | None = Field(None, ge=1, le=4096, description=(
        "batch of the check's bf16 pass (bf16 activations and weights need more memory than "
        "NF4's); null = batch_size. Halved on CUDA out-of-memory as any batch"))
    precision_check_identifier: Literal["auto", "glotlid", "fallback"] = Field("auto", description=(
        "the check's language identifier, chosen by notebook 04's rule "
        "(04_score_languages.identifier): glotlid = GlotLID v3 or an error, auto = GlotLID "
        "else lid.176 with a warning, fallback = lid.176"))
    precision_check_glotlid_source: Source = Field("cis-lmu/glotlid", description=(
        "GlotLID v3 of the check: hub repo (file model_v3.bin) or a local model_v3.bin, as "
        "04_score_languages.glotlid_source"))
    precision_check_glotlid_revision: Revision = None

    @model_validator(mode="after")
    def _checked_models_are_collected(self):
        listed = [m for m in self.models if m != "variants"]
        unknown = [m for m in self.precision_check_models or [] if m not in listed]
        if unknown:
            raise ValueError(f"precision_check_models names {unknown}, which are not off-the-shelf "
                             f"models of `models` ({listed or 'none'}): the check re-collects "
                             "models that notebook 03 collects")
        return self

    @model_validator(mode="after")
    def _machines_agree(self):
        _check_machines(self, "03_collect_responses")
        if self.machines > 1 and self.precision_check:
            raise ValueError(_IN_PROCESS_ON_NODES.format(
                key="03_collect_responses.precision_check", what="precision check", off="false"))
        return self


class ScoreLanguages(Block):
    """04_score_languages: response language (GlotLID), fidelity, the annotation sample."""
    glotlid_source: Source = Field("cis-lmu/glotlid", description=(
        "GlotLID v3: hub repo (file model_v3.bin) or a local model_v3.bin"))
    glotlid_revision: Revision = None
    identifier: Literal["auto", "glotlid", "fallback"] = Field("auto", description=(
        "glotlid: GlotLID v3 or an error saying how to get it (the paper); auto: GlotLID v3 if it "
        "can be had, else fastText lid.176 with a warning (said in the outputs); fallback: lid.176"))
    annotation_n: int = Field(1000, ge=1, description="size of the stratified annotation sample")
    annotation_sheet: Annotated[str | None, _LocalFile()] = Field(None, description=(
        "a filled annotation sheet (CSV) to import, in either world (it may be the exported "
        "runs/<run>/04_score_languages/annotation_sheet.csv, filled in place: a sheet holding "
        "labels is never written over); null = export the sheet for annotators"))
    simulate_annotations: bool = Field(False, description=(
        "paper-smoke only: fill the exported sheet with a stand-in annotator (the fallback "
        "identifier) so that the import and DSL paths run; its labels mean nothing"))
    mini_annotator_error_rate: float = Field(0.0, ge=0.0, le=1.0, description=(
        "miniature: chance that the simulated annotator names a wrong language"))
    judge_endpoint: str | None = Field(None, description=(
        "optional OpenAI-compatible endpoint of an accuracy judge (paper: GPT-4o); off by default"))
    judge_model: str | None = None


class DslRegressions(Block):
    """05_dsl_regressions: Figure 1 and Table 4 with design-based supervised learning."""
    learner: Literal["forest", "forest-sklearn", "linear", "logistic"] = Field("forest", description=(
        "DSL's learner g of gold from the surrogate, condition, language, benchmark, length and "
        "model (forest: an honest forest with grf's defaults, the R package's learner; "
        "forest-sklearn: scikit-learn's forest, no honesty)"))
    cross_fit: int = Field(5, ge=2, le=50, description="folds K of the cross-fitting (R: 5)")
    sample_split: int = Field(10, ge=1, le=100, description=(
        "repeated fold draws S, combined by the median rule (R: 10)"))
    level: float = Field(0.95, gt=0.5, lt=1.0, description="confidence level of every interval")
    pooled: bool = Field(True, description=(
        "one saturated DSL fit per figure (y ~ 0 + group + group:image: the same per-group "
        "effects, but g learns from all labeled rows) instead of one fit per model x benchmark"))
    cluster: Literal["parallel_id", "task_id", "none"] = Field("parallel_id", description=(
        "cluster of the SEs and of the folds: the parallel item (same image and question in both "
        "conditions and every language), the task (one language), or none (rows)"))
    min_clusters: int = Field(20, ge=2, description=(
        "with fewer clusters, fall back to the next finer clustering (parallel_id -> task_id -> rows)"))
    min_labeled: int = Field(5, ge=1, description=(
        "groups (and Table 4 factor levels) with fewer labeled rows in either condition are "
        "reported as skipped, not estimated"))
    main_effects: bool = Field(True, description=(
        "Table 4 with the factors' main effects (text-condition differences between models); the "
        "paper's equation lists only Image and the Image x factor interactions"))
    figure1_exclude_english: bool = Field(True, description=(
        "Figure 1 leaves English queries out: an English answer to an English query is faithful "
        "whatever the image does, so English rows only dilute the image effect (the paper's "
        "steering tables list non-English languages only)"))


class UmapCka(Block):
    """06_umap_cka: where image tokens sit among text tokens (UMAP, Fig. 2 left), and how alike
    two variants embed the same images, layer by layer (CKA, Fig. 2 centre and right)."""
    umap_model: str = Field("vicuna-clip-en", description=(
        "model whose LLM-input embeddings are embedded: a variant of notebook 02 or a name in "
        "`model_sources`"))
    model_sources: SourceMap = Field(default_factory=dict, description=(
        "off-the-shelf model name (a row of ifl/models.yaml) -> hub id or local folder"))
    umap_site: int = Field(0, ge=0, description=(
        "0 = the LLM's input (projector output / embedding table); l + 1 = output of decoder layer l"))
    umap_images: int = Field(50, ge=2, le=100_000, description="distinct images whose tokens are embedded")
    umap_image_tokens: int = Field(32, ge=1, description="image tokens drawn per image (seeded)")
    umap_questions: int = Field(50, ge=1, le=100_000, description="questions per language")
    umap_text_tokens: int | None = Field(None, ge=1, description="text tokens per question; null = all")
    umap_n_neighbors: int = Field(15, ge=2, le=200)
    umap_min_dist: float = Field(0.1, ge=0.0, le=1.0)
    umap_metric: Literal["cosine", "euclidean"] = Field("cosine", description=(
        "cosine: image and text tokens differ a lot in norm; euclidean is the robustness check"))
    cka_pair: list[str] = Field(["yi-clip-zh", "leo-clip-de"], min_length=2, max_length=2, description=(
        "two variants of notebook 02 (the paper: LLaVA-Yi trained in Chinese, LLaVA-Leo in German)"))
    cka_images: int = Field(50, ge=4, le=100_000, description="images fed to both models")
    cka_image_tokens: int = Field(32, ge=1, description=(
        "image-token positions per image (the same in both models); examples n = images x tokens"))
    cka_threshold: float = Field(0.5, gt=0, description=(
        "RBF bandwidth: sigma = threshold x sqrt(median squared distance) (Kornblith's demo: 0.5)"))
    cka_prompt_lang: Lang = Field("en", description="language of the question beside each image")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    batch_size: int = Field(8, ge=1, le=4096)
    threads: int = Field(2, ge=1, le=256, description="CPU threads (miniature)")


class Steering(Block):
    """07_steering: the training-free remedy (§5.3): a_lang = LLM_l(x_lang) - LLM_l(x_en) added
    to decoder layer l's output at every generated token, image condition only."""
    models: list[str] = Field(["variants"], min_length=1, description=(
        "models of notebook 03's models.csv to steer; 'variants' = all its variants"))
    steer_languages: list[Lang] | None = Field(None, description=(
        "query languages to steer; null = common.languages without English (a_en = 0)"))
    benchmarks: list[str] | None = Field(None, description="null = every benchmark notebook 03 answered")
    max_tasks_per_cell: int | None = Field(None, ge=1, description=(
        "at most N of notebook 03's tasks per benchmark x language (seeded); null = all"))
    prompt_source: Literal["table", "miniature"] = Field("table", description=(
        "x_lang: ifl/data/steering_prompts.csv, or the miniature's own 'describe in detail' "
        "sentence (its LMs know only their lexicon)"))
    prompt_version: int | None = Field(None, ge=1, description="row version in the table; null = newest")
    prompt_template: bool = Field(False, description=(
        "read LLM_l(x) on x wrapped in the model's chat turn instead of the raw sentence"))
    layer: int | None = Field(None, ge=0, description=(
        "0-based decoder layer whose output is steered (== hidden_states[layer + 1]); null = n_layers // 3"))
    scale: float = Field(1.0, description="multiplier of a_lang (the paper's formula has none)")
    pooling: Literal["mean", "last"] = Field("mean", description=(
        "mean over x's tokens without BOS, or its last token"))
    massive_factor: float | None = Field(None, gt=1, description=(
        "also leave out tokens whose norm exceeds this many times the median (massive activations)"))
    positions: Literal["generated", "all"] = Field("generated", description=(
        "generated: absolute positions >= P - 1 (every generated token); all: the prompt too"))
    max_new_tokens: int = Field(256, ge=1, le=8192, description="keep equal to notebook 03's")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="as notebook 03")
    quantization: Literal["none", "4bit", "8bit"] = Field("4bit", description="as notebook 03")
    batch_size: int = Field(16, ge=1, le=4096)
    sweep_depths: list[Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=list, description=(
        "layer sweep as fractions of the depth: layer = floor(f x n_layers), so one list fits "
        "models of any depth (empty = no sweep)"))
    sweep_scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1, description=(
        "scales of the sweep: every sweep layer is steered at each (the paper's formula is scale 1; "
        "a larger one shows how far the direction can push a small model)"))
    sweep_model: str | None = Field(None, description="model of the sweep; null = the first steered model")
    sweep_tasks_per_cell: int = Field(10, ge=1, description="tasks per benchmark x language in the sweep")
    threads: int = Field(2, ge=1, le=256, description="CPU threads (miniature; per rank)")
    processes: int = Field(1, ge=1, le=1024, description=(
        "ranks per machine for the steered collection (as 03_collect_responses.processes; the "
        "layer sweep stays in this process)"))
    machines: int = _machines_field()
    machine_rank: int = _machine_rank_field()
    main_address: str | None = _main_address_field()
    main_port: int = _main_port_field()
    speedups: CollectSpeedups = Field(default_factory=CollectSpeedups)

    @model_validator(mode="after")
    def _machines_agree(self):
        _check_machines(self, "07_steering")
        if self.machines > 1 and self.sweep_depths:
            raise ValueError(_IN_PROCESS_ON_NODES.format(
                key="07_steering.sweep_depths", what="layer sweep", off="[]"))
        return self


# Current open VLMs beside the paper's four LLaVAs (notebook 08): short name -> hub id
_AUDIT_MODELS = {
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "idefics3-8b": "HuggingFaceM4/Idefics3-8B-Llama3",
    "gemma-3-4b": "google/gemma-3-4b-it",
    "smolvlm": "HuggingFaceTB/SmolVLM-Instruct",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "bakllava": "llava-hf/bakLlava-v1-hf",
    "llava-gemma-2b": "Intel/llava-gemma-2b",
}


class BeyondLlava(Block):
    """08_beyond_llava: `python -m ifl.audit` (ifl.audit.run_audit) on each model: IFL with the
    image vs its description per language, and with `remedy` after ifl.remedy.answer_in."""
    models: list[str] = Field(default_factory=lambda: list(_AUDIT_MODELS), min_length=1, description=(
        "models to audit: keys of `model_sources`, or (miniature) variants of notebook 02 by name"))
    model_sources: SourceMap = Field(default_factory=lambda: dict(_AUDIT_MODELS), description=(
        "model name -> hub id or local folder loadable by AutoModelForImageTextToText + "
        "AutoProcessor with a chat template"))
    benchmark: str = Field("maxm", description=(
        "'shapes' = the audit's own miniature benchmark (python -m ifl.audit --benchmark shapes); "
        "else a benchmark of notebook 01's tasks (maxm, llavaw, visit; shapes_vqa, shapes_describe)"))
    audit_languages: list[Lang] | None = Field(None, description=(
        "query languages (--languages); null = common.languages that the benchmark has"))
    n_per_language: int = Field(50, ge=1, description="tasks per language (the first parallel items)")
    precision: Literal["bf16", "4bit", "fp32"] = Field("bf16", description="as --precision")
    batch_size: int = Field(8, ge=1, le=4096)
    max_new_tokens: int = Field(64, ge=1, le=8192)
    remedy: bool = Field(True, description="also collect replies steered by answer_in(query language)")
    layer: int | None = Field(None, ge=0, description="steering layer; null = one third of the depth")
    labels: Annotated[str | None, _LocalFile()] = Field(None, description=(
        "an annotated sheet (task_id, condition, fidelity) for DSL estimates; null = the "
        "language-ID surrogate with a cluster bootstrap"))
    identifier: Literal["auto", "glotlid", "fallback"] = Field("auto", description=(
        "language identifier: GlotLID v3 (glotlid), GlotLID else lid.176 (auto), lid.176 (fallback)"))
    threads: int = Field(2, ge=1, le=256, description="CPU threads (miniature)")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    common: Common = Field(default_factory=Common)
    translate_data: TranslateData = Field(default_factory=TranslateData, alias="01_translate_data")
    train_variants: TrainVariants = Field(default_factory=TrainVariants, alias="02_train_variants")
    collect_responses: CollectResponses = Field(default_factory=CollectResponses,
                                                alias="03_collect_responses")
    score_languages: ScoreLanguages = Field(default_factory=ScoreLanguages, alias="04_score_languages")
    dsl_regressions: DslRegressions = Field(default_factory=DslRegressions, alias="05_dsl_regressions")
    umap_cka: UmapCka = Field(default_factory=UmapCka, alias="06_umap_cka")
    steering: Steering = Field(default_factory=Steering, alias="07_steering")
    beyond_llava: BeyondLlava = Field(default_factory=BeyondLlava, alias="08_beyond_llava")


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


def local_path_fields(params: Params, *, kind: type = _Source) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) of every Source field that names a local path (kind=_LocalFile:
    every set local-file field, such as the annotation sheet)."""
    for name in SECTIONS:
        block = section(params, name)
        for key, info in type(block).model_fields.items():
            value: Any = getattr(block, key)
            if not any(isinstance(m, kind) for m in info.metadata):
                continue
            if kind is _LocalFile:
                if value is not None:
                    yield name, key, value
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, item in items:
                if isinstance(item, str) and is_local(item):
                    yield name, key if sub is None else f"{key}.{sub}", item
