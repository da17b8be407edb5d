"""What an audit reads, each checked before any generation: the benchmark's tasks, the model's
class, its processor's chat template, the languages."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ifl.data.languages import LANGUAGES

BENCHMARKS = ("maxm", "llavaw", "visit", "shapes")


class AuditInputError(ValueError):
    """A model, processor, benchmark or language the audit cannot use; says which and why."""


def load_benchmark(benchmark: str, languages: list[str] | None, n_per_language: int | None,
                   seed: int = 0) -> pd.DataFrame:
    """Task rows (ifl.data.schema) of `benchmark` (a name in BENCHMARKS or a parquet path),
    restricted to `languages` and to the first `n_per_language` items per language."""
    unknown = [x for x in languages or [] if x not in LANGUAGES]
    if unknown:
        raise AuditInputError(f"unknown language(s) {unknown}; known ISO codes: {', '.join(LANGUAGES)}")
    if benchmark == "shapes":
        from ifl.data.miniature.tasks import DEFAULT_LANGS, check_langs, make_tasks

        langs = languages or list(DEFAULT_LANGS)
        try:
            check_langs(langs, "--languages")
        except ValueError as exc:
            raise AuditInputError(str(exc)) from None
        tasks = make_tasks(n_per_language or 4, langs, seed=seed, benchmarks=("shapes_vqa",))
    elif benchmark in ("maxm", "llavaw", "visit"):
        tasks = _hub_benchmark(benchmark, languages)
    elif Path(benchmark).suffix == ".parquet" or Path(benchmark).exists():
        from ifl.data.schema import read_tasks

        tasks = read_tasks(benchmark)
    else:
        raise AuditInputError(f"--benchmark {benchmark!r} is neither one of {BENCHMARKS} nor a "
                              "parquet file in the task schema (ifl/data/schema.py)")
    if languages:
        missing = sorted(set(languages) - set(tasks["lang"]))
        if missing:
            raise AuditInputError(f"benchmark {benchmark!r} has no tasks in {missing}; it has "
                                  f"{sorted(set(tasks['lang']))}")
        tasks = tasks[tasks["lang"].isin(languages)]
    if n_per_language:
        tasks = tasks.sort_values(["lang", "parallel_id", "task_id"]).groupby("lang").head(n_per_language)
    if tasks.empty:
        raise AuditInputError(f"benchmark {benchmark!r} has no tasks"
                              f"{' in ' + str(languages) if languages else ''}: nothing to audit")
    if tasks["image"].isna().all():
        raise AuditInputError(f"benchmark {benchmark!r} has no images: IFL compares image and text")
    return tasks.reset_index(drop=True)


def _hub_benchmark(name: str, languages):
    if name == "maxm":
        from ifl.data.maxm import load_maxm
        return load_maxm(langs=languages)
    if name == "llavaw":
        from ifl.data.llavaw import load_llavaw
        return load_llavaw(langs=languages)
    from ifl.data.visit import load_visit
    return load_visit()


def check_model(source: str):
    """The config of `source`, if AutoModelForImageTextToText knows its class."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"cannot read a model config from {source!r} (a hub id in the cache "
                              f"or a local folder with config.json): {' '.join(str(exc).split())[:300]}") from None
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise AuditInputError(f"{source!r} is model_type {config.model_type!r}, which "
                              "AutoModelForImageTextToText does not load: the audit needs a "
                              "vision-language model with an image-text-to-text head")
    return config


def check_processor(source: str):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"cannot load a processor from {source!r}: {exc}") from None
    if not getattr(processor, "chat_template", None):
        raise AuditInputError(f"the processor of {source!r} ({type(processor).__name__}) has no chat "
                              "template (chat_template.jinja / chat_template.json): the audit builds "
                              "prompts with it; add one to the folder")
    if getattr(processor, "tokenizer", None) is None or not hasattr(processor, "image_processor"):
        raise AuditInputError(f"{type(processor).__name__} of {source!r} lacks a tokenizer or an "
                              "image processor")
    check_template_places_image(processor, source)
    return processor


def check_template_places_image(processor, source: str) -> None:
    """The chat template must write the processor's image token for an image part. A text-only
    template passes the first check but drops the image: transformers 5 saves a tokenizer's own
    template as chat_template.jinja beside the processor, which then reads it as its own (e.g. a
    LLaVA-Gemma folder re-saved with Gemma's text template)."""
    token = getattr(processor, "image_token", None)
    if not token:
        return  # a processor that names no image token: nothing to check against
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    try:
        rendered = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja raises its own errors (raise_exception, undefined names)
        raise AuditInputError(f"the chat template of {source!r} cannot render an image message "
                              f"({type(exc).__name__}: {exc})") from None
    if token not in rendered:
        raise AuditInputError(f"the chat template of {source!r} drops the image: an image message "
                              f"renders without the processor's image token {token!r} (a text-only "
                              "template, e.g. the tokenizer's); give the folder a chat_template.jinja "
                              "that places the image")
