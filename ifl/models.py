"""The paper's models as data (`models.yaml`), and loading them: one `from_pretrained` path for a
hub id or a local folder laid out like the hub repo (what `hf download --local-dir` writes, or
the tiny stand-ins of `ifl.smoke.tiny_llava`).

>>> model_info("llava-gemma-2b").hub_id
'Intel/llava-gemma-2b'
>>> template_for("llava-1.5-7b").name
'llava_hf'
>>> template_for("smoke_assets/models/tiny-llava-gemma").name   # a local copy, by folder name
'gemma'
>>> download_command("llava-hf/llava-1.5-7b-hf", "abc123", "models/llava-1.5-7b-hf")
'hf download llava-hf/llava-1.5-7b-hf --revision abc123 --local-dir models/llava-1.5-7b-hf'

Loading (float32 on CPU for the tiny stand-ins; bfloat16 or 4-bit on a GPU for the real ones):

>>> model, processor = load_llava("smoke_assets/models/tiny-llava-1.5", dtype="float32")  # doctest: +SKIP
>>> model, processor = load_llava("llava-1.5-7b", quantization="4bit", device="cuda")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from ifl.prompts import ChatTemplate, template, templates

DTYPES = ("float32", "bfloat16", "float16", "auto")
KINDS = ("llava", "llm", "vision")


@dataclass(frozen=True)
class ModelInfo:
    """One row of ifl/models.yaml (the file's header explains the fields)."""
    name: str
    kind: str                      # llava | llm | vision
    paper_name: str
    hub_id: str
    revision: str | None
    smoke: str                     # stand-in folder under <smoke root>/models/
    template: str | None = None    # ifl/prompts.yaml name
    image_first: bool = True
    llm: str | None = None         # row name of the base LLM (llava rows)
    vision: str | None = None      # row name of the vision tower (llava rows)
    architecture: str | None = None
    image_processor: str | None = None
    hidden_size: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    vision_feature_layer: int | None = None
    vision_feature_select_strategy: str | None = None
    n_image_tokens: int | None = None


class ModelUnavailableError(OSError):
    """A model could not be loaded from the local folder, the hub cache or the hub; the message
    says how to get it."""


@cache
def model_table() -> dict[str, ModelInfo]:
    """Every row of ifl/models.yaml, checked: known kind, known chat template, known fields."""
    raw = yaml.safe_load(resources.files("ifl").joinpath("models.yaml").read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(ModelInfo)}
    table = {}
    for name, row in raw.items():
        where = f"ifl/models.yaml, model {name!r}"
        if unknown := sorted(set(row) - fields):
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields - {'name'})}")
        info = ModelInfo(name=name, **row)
        if info.kind not in KINDS:
            raise ValueError(f"{where}: kind {info.kind!r} is not one of {KINDS}")
        if info.kind != "vision":
            template(info.template)  # raises KeyError naming ifl/prompts.yaml if unknown
        table[name] = info
    return table


def model_info(name: str) -> ModelInfo:
    """The models.yaml row `name` (e.g. 'llava-1.5-7b', 'vicuna', 'clip')."""
    try:
        return model_table()[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_table())} "
                       "(ifl/models.yaml)") from None


def find_model(source: str | os.PathLike) -> ModelInfo | None:
    """The row a source refers to: a row name, a hub id, or a local folder named like the hub
    repo (`llava-1.5-7b-hf`) or like its stand-in (`tiny-llava-gemma`). None if no row matches.
    A stand-in shared by several rows (7b/13b) gives the first, which has the same template."""
    source = str(source)
    if source in model_table():
        return model_table()[source]
    folder = Path(source.rstrip("/")).name
    for info in model_table().values():
        if source == info.hub_id or folder in (info.smoke, info.hub_id.split("/")[-1]):
            return info
    return None


def template_for(model, override: str | None = None) -> ChatTemplate:
    """The chat template to prompt `model` with: `override` (a prompts.yaml name, e.g. from
    params) if given, else the models.yaml row's. `model`: a row name, hub id, local folder,
    or a loaded model (its `name_or_path`). Its `image_first` is the row's (True if no row)."""
    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "")
    info = find_model(source)
    if override is not None:
        found = template(override)
        return found if info is None else dataclasses.replace(found, image_first=info.image_first)
    if info is None or info.template is None:
        raise KeyError(f"no chat template known for {str(source)!r}: it matches no row of "
                       "ifl/models.yaml; pass a template name from ifl/prompts.yaml "
                       f"({', '.join(templates())})")
    return dataclasses.replace(template(info.template), image_first=info.image_first)


def is_local(source: str | os.PathLike) -> bool:
    """A folder rather than a hub id ("owner/name"): it exists, starts with . / ~, or has 2+ '/'."""
    s = str(source)
    return Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") > 1


def resolve(source: str | os.PathLike, revision: str | None = None) -> tuple[str, str | None]:
    """(what from_pretrained gets, revision): a row name becomes its hub id and pinned revision
    (an explicit `revision` wins); a local folder is expanded and takes no revision."""
    source = str(source)
    if is_local(source):
        return str(Path(source).expanduser()), None
    if source in model_table():
        info = model_table()[source]
        return info.hub_id, revision or info.revision
    return source, revision


def download_command(hub_id: str, revision: str | None = None, local_dir: str | None = None) -> str:
    """The `hf download` command that fetches a model (into the hub cache, or `local_dir`)."""
    parts = [f"hf download {hub_id}"]
    if revision:
        parts.append(f"--revision {revision}")
    if local_dir:
        parts.append(f"--local-dir {local_dir}")
    return " ".join(parts)


def provenance(source: str | os.PathLike, revision: str | None = None) -> dict[str, str | None]:
    """What a load reads, to save beside results: {source, revision, commit}. `commit` is the
    hub snapshot's SHA (looked up in the local hub cache, so it works offline and names what
    `revision=None`, i.e. main, meant on the day of download); None for a local folder."""
    path, revision = resolve(source, revision)
    if is_local(path):
        return {"source": path, "revision": None, "commit": None}
    from transformers.utils import cached_file
    try:
        config_path = cached_file(path, "config.json", revision=revision)
    except OSError as exc:
        raise _unavailable(path, revision, exc) from exc
    # hub cache layout: <cache>/models--owner--name/snapshots/<commit>/config.json
    return {"source": path, "revision": revision, "commit": Path(config_path).parent.name}


def _unavailable(source: str, revision: str | None, exc: Exception) -> ModelUnavailableError:
    why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if is_local(source):
        return ModelUnavailableError(
            f"cannot load a model from the folder {source!r} ({why}). It needs config.json, the "
            "weights (*.safetensors), tokenizer and processor files as in the hub repo, e.g. from "
            f"`{download_command('<hub id>', '<revision>', source)}`; for tests "
            "`ifl.smoke.tiny_llava.write_tiny_llava_models(root)` writes stand-ins.")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    where = ("with HF_HUB_OFFLINE=1 it is not in the hub cache" if offline
             else "it is neither in the hub cache nor reachable on the hub")
    return ModelUnavailableError(
        f"cannot load {source!r} at revision {revision or 'main'}: {where} ({why}). Pre-download "
        "it where the hub is reachable:\n"
        f"    {download_command(source, revision)}\n"
        f"or `{download_command(source, revision, 'DIR')}` and pass DIR as the source.")


def _torch_dtype(dtype):
    import torch
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def load_llava(source: str | os.PathLike, *, revision: str | None = None, dtype: str = "bfloat16",
               quantization: str | None = None, device: str = "cpu"):
    """(model, processor) of a LLaVA-style model (`model_type: llava`): a hub id, a models.yaml
    row name, or a local folder, all through the same `from_pretrained` calls.

    dtype: float32 | bfloat16 | float16 | auto (or a torch.dtype). quantization: None | "4bit"
    (`ifl.compat.nf4_config`: NF4, double quantisation, `dtype` compute; "auto": bf16) |
    "8bit" (bitsandbytes; on CPU every quantised linear layer needs input width >= 64); either
    way the vision tower, projector and lm_head stay unquantised, as in LLaVA's own loader. device: "cpu", "cuda", "cuda:1" (whole model there) or "auto"
    (accelerate spreads it over the GPUs). The processor's tokenizer pads on the left, as
    batched generation needs. `provenance(source, revision)` gives the commit that was read.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from ifl.compat import bnb_config, complete_processor

    path, revision = resolve(source, revision)
    torch_dtype = _torch_dtype(dtype)
    compute = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.bfloat16  # "auto": bf16
    quantization_config = bnb_config(quantization, compute)  # raises on an unknown kind
    device_map = "auto" if device == "auto" else {"": device}
    try:
        if is_local(path) and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        config = AutoConfig.from_pretrained(path, revision=revision)
        if config.model_type != "llava":
            raise ValueError(f"{path} is model_type {config.model_type!r}, not 'llava': load_llava "
                             "loads LlavaForConditionalGeneration checkpoints only")
        # PIL image processing, as LLaVA's own (and training, which loads through here too)
        processor = AutoProcessor.from_pretrained(path, revision=revision, backend="pil")
        model = LlavaForConditionalGeneration.from_pretrained(
            path, revision=revision, dtype=torch_dtype, quantization_config=quantization_config,
            device_map=device_map)
    except OSError as exc:  # transformers reports missing files and offline misses as OSError
        raise _unavailable(path, revision, exc) from exc
    complete_processor(processor, model.config)
    processor.tokenizer.padding_side = "left"  # generation continues at the right end
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.eval(), processor


def load_tokenizer(source: str | os.PathLike, *, revision: str | None = None,
                   padding_side: str = "left"):
    """The tokenizer of a model (e.g. a base LLM row: 'vicuna', 'yi', 'leo', or a folder), with
    the same error handling as `load_llava`. Left padding for generation; a trainer that pads
    labels on the right passes padding_side="right"."""
    from transformers import AutoTokenizer

    path, revision = resolve(source, revision)
    try:
        if is_local(path) and not Path(path).is_dir():
            raise FileNotFoundError(f"no folder {path}")
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise _unavailable(path, revision, exc) from exc
    tokenizer.padding_side = padding_side
    return tokenizer
