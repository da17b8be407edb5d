"""The paper's design space (§4.1, Table 3) as data, and training one variant end to end.

LLM {vicuna, yi, leo} x vision {clip, dinov2} x training-data language {en, zh, de}, where Yi is
only combined with en/zh and Leo only with en/de: 6 + 4 + 4 = 14 variants.

>>> [v.name for v in design_space()][:3]
['vicuna-clip-en', 'vicuna-clip-zh', 'vicuna-clip-de']
>>> len(design_space())
14

    spec = variant("leo-dinov2-de")
    res = train_variant(spec, llm_path, vision_path, manifest, template("chatml"),
                        StageSettings.llava_stage1(), StageSettings.llava_stage2(), "runs/x/02")
    res.model_dir   # runs/x/02/leo-dinov2-de/stage2/model, loads with from_pretrained

Layout: out_dir/<name>/stage1/, stage2/ (each as `train_stage` writes it) and DONE, written last.
A variant whose DONE holds the same recipe (spec, stage settings, QLoRA, and the identity of its
LLM and vision tower) is skipped; one trained with another recipe (say, notebook 02 rebuilt a
miniature LM with more steps) is trained again from scratch; an interrupted one resumes in the
stage it stopped in.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ifl.models import model_info
from ifl.prompts import ChatTemplate, template as get_template
from ifl.stage import write_json_atomic
from ifl.train.lora import LoraSettings
from ifl.train.loop import TrainResult, train_stage
from ifl.train.memory import release_memory
from ifl.train.preflight import check_images
from ifl.train.settings import StageSettings

# Components of docs/sources.md §8b, read from the one model table (ifl/models.yaml);
# "template" is each LLM's chat format in ifl/prompts.yaml.
LLMS = {name: {"hub": model_info(name).hub_id, "template": model_info(name).template}
        for name in ("vicuna", "yi", "leo")}
VISIONS = {name: model_info(name).hub_id for name in ("clip", "dinov2")}
DATA_LANGS = ("en", "zh", "de")
# Table 3: which data languages each LLM is trained with (absent: all of them)
PAPER_RULES: dict[str, tuple[str, ...]] = {"yi": ("en", "zh"), "leo": ("en", "de")}
DONE = "DONE"
IMAGES = "images.json"  # the pre-flight image check of a variant's data (skipped records)


@dataclass(frozen=True)
class VariantSpec:
    name: str
    llm: str
    vision: str
    data_lang: str


def design_space(llms=tuple(LLMS), visions=tuple(VISIONS), data_langs=DATA_LANGS,
                 rules: dict[str, tuple[str, ...]] | None = None) -> list[VariantSpec]:
    """All allowed (llm, vision, data language) combinations, in the given order.
    rules: {llm: allowed data languages}; default PAPER_RULES; {} allows every combination."""
    rules = PAPER_RULES if rules is None else rules
    return [VariantSpec(f"{llm}-{vision}-{lang}", llm, vision, lang)
            for llm in llms for vision in visions for lang in data_langs
            if lang in rules.get(llm, data_langs)]


def variant(name: str, **kwargs) -> VariantSpec:
    """The spec called `name` (e.g. "yi-clip-zh") in design_space(**kwargs)."""
    for spec in design_space(**kwargs):
        if spec.name == name:
            return spec
    raise KeyError(f"no variant {name!r} in the design space; known: "
                   f"{', '.join(s.name for s in design_space(**kwargs))}")


@dataclass
class VariantResult:
    spec: VariantSpec
    model_dir: Path
    stage1: TrainResult | None
    stage2: TrainResult | None
    cached: bool = False
    images: list[dict] | None = None  # pre-flight report per part (see ifl.train.preflight)

    @property
    def skipped_records(self) -> int:
        """Records left out because their image is missing (skip_missing_images)."""
        return sum(part["skipped_records"] for part in self.images or [])


def component_id(path: str | Path) -> str:
    """What a component is, for the cache key: a local folder with a build marker (the
    miniature's DONE) is named by the marker's hash, so a retrained LM or tower gives another id;
    anything else (a hub id, a folder without marker) by its path as given.

    >>> component_id("lmsys/vicuna-7b-v1.5")
    'lmsys/vicuna-7b-v1.5'
    """
    marker = Path(path) / DONE
    if marker.is_file():
        return f"{path}#{hashlib.sha256(marker.read_bytes()).hexdigest()[:16]}"
    return str(path)


def recipe(spec: VariantSpec, llm_path, vision_path, stage1: StageSettings, stage2: StageSettings,
           qlora: LoraSettings | None) -> dict:
    """Everything that decides a trained variant, JSON-plain: DONE holds it. Callables in a
    stage's `extra` (a progress callback) do not change what is trained and are left out."""
    def plain(settings: StageSettings) -> dict:
        d = asdict(settings)
        d["extra"] = {k: v for k, v in d["extra"].items() if not callable(v)}
        if d["adam_eps"] == StageSettings.adam_eps:  # recorded only when changed, so variants
            del d["adam_eps"]                         # trained before it was a setting stay done
        return d
    return json.loads(json.dumps(
        {"spec": asdict(spec), "llm": component_id(llm_path), "vision": component_id(vision_path),
         "stage1": plain(stage1), "stage2": plain(stage2),
         "qlora": qlora.as_dict() if qlora else None}, default=str))


def is_trained(spec: VariantSpec, out_dir: str | Path, llm_path, vision_path, stage1: StageSettings,
               stage2: StageSettings, qlora: LoraSettings | None) -> bool:
    """Whether out_dir/<variant> holds this variant finished with this recipe (what
    `train_variant` reads back instead of training)."""
    done = Path(out_dir) / spec.name / DONE
    return done.exists() and _same_recipe(done, recipe(spec, llm_path, vision_path, stage1, stage2, qlora))


def _same_recipe(done: Path, wanted: dict) -> bool:
    saved = json.loads(done.read_text())
    return {k: saved.get(k) for k in wanted} == wanted


def _losses(out: Path) -> TrainResult | None:
    import pandas as pd
    if not (out / "losses.csv").exists():
        return None
    saved = json.loads((out / "result.json").read_text())
    return TrainResult(losses=pd.read_csv(out / "losses.csv"), model_dir=out / "model",
                       steps=saved["steps"], seconds=saved["seconds"], cached=True, summary=saved)


def train_variant(spec: VariantSpec, llm_path: str | Path, vision_path: str | Path,
                  manifest: dict | str | Path, template: ChatTemplate | str | None,
                  stage1: StageSettings, stage2: StageSettings, out_dir: str | Path, *,
                  tokenizer=None, dtype: torch.dtype = torch.float32, device: str | None = None,
                  qlora: LoraSettings | None = None, seed: int = 0,
                  skip_missing_images: bool = False, progress: bool = True) -> VariantResult:
    """Stage 1 on manifest[data_lang]["pretrain"], stage 2 on manifest[data_lang]["instruct"].

    manifest: notebook 01's training/manifest.json (or its dict); template: the chat template
    (None: the LLM's from LLMS). qlora: stage 2 as QLoRA (4-bit LLM + LoRA) on one GPU.
    Stage 2 starts from the saved stage-1 model, so a resumed and an uninterrupted run start it
    from identical weights. Before anything trains, every image the records name must exist
    (ifl.train.preflight); skip_missing_images drops the records whose image is missing
    instead, counted in out_dir/<name>/images.json."""
    from accelerate import Accelerator

    from ifl.train.assemble import assemble_llava, load_llava
    from ifl.train.loop import RESULT, load_records
    out = Path(out_dir) / spec.name
    accelerator = Accelerator()
    device = device or accelerator.device  # this process's GPU under `accelerate launch`
    wanted = recipe(spec, llm_path, vision_path, stage1, stage2, qlora)
    if (out / DONE).exists():
        if _same_recipe(out / DONE, wanted):
            images = json.loads((out / IMAGES).read_text()) if (out / IMAGES).exists() else None
            return VariantResult(spec, out / "stage2" / "model", _losses(out / "stage1"),
                                 _losses(out / "stage2"), cached=True, images=images)
        if accelerator.is_main_process:   # another recipe: its stages would refuse to resume
            shutil.rmtree(out)
        accelerator.wait_for_everyone()
    if not isinstance(manifest, dict):
        manifest = json.loads(Path(manifest).read_text(encoding="utf-8"))
    if spec.data_lang not in manifest:
        raise KeyError(f"training manifest has no {spec.data_lang!r} data (languages: "
                       f"{[k for k in manifest if k != 'image_folder']}); add it to "
                       "training_languages in the params file and rerun notebook 01")
    chat = get_template(template or LLMS[spec.llm]["template"]) if not isinstance(
        template, ChatTemplate) else template
    # one image folder for both parts (miniature), or one per part (paper: LCS-558K's images
    # and LLaVA's playground/data differ)
    folders = manifest.get("image_folders") or {}
    data, images = {}, []
    for part in ("pretrain", "instruct"):  # both parts checked before stage 1 starts
        data[part], report = check_images(
            load_records(manifest[spec.data_lang][part]), folders.get(part, manifest.get("image_folder")),
            skip_missing=skip_missing_images, name=f"{spec.data_lang} {part}")
        images.append(report)
    if accelerator.is_main_process:
        write_json_atomic(out / IMAGES, images)

    def run(load, settings: StageSettings, stage: str, part: str) -> TrainResult:
        """One stage; `load()` gives (model, processor), None when the stage is finished. The
        model lives only in here: the result keeps paths, and its memory is given back before
        the caller loads the next stage's model."""
        fmt = "plain" if settings.format == "plain" else chat
        folder = folders.get(part, manifest.get("image_folder"))
        stage_dir = out / f"stage{1 if stage == 'projector' else 2}"
        model, processor = load() if not (stage_dir / RESULT).exists() else (None, None)
        res = train_stage(model, processor, data[part], folder, fmt, settings,
                          stage=stage, out_dir=stage_dir,
                          seed=seed, qlora=qlora if stage == "full" else None,
                          progress=progress, **settings.extra)
        res.model = model = processor = None
        release_memory()
        return res

    res1 = run(lambda: assemble_llava(llm_path, vision_path, tokenizer=tokenizer, dtype=dtype,
                                      device=device, seed=seed),
               stage1, "projector", "pretrain")
    res2 = run(lambda: load_llava(res1.model_dir, dtype=dtype, device=device,
                                  quantization="4bit" if qlora else None),
               stage2, "full", "instruct")
    if accelerator.is_main_process:
        write_json_atomic(out / DONE, {**wanted, "stage1_steps": res1.steps,
                                       "stage2_steps": res2.steps})
    accelerator.wait_for_everyone()
    return VariantResult(spec, res2.model_dir, res1, res2, images=images)
