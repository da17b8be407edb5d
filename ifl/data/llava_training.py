"""LLaVA-v1.5 training data (the input of the zh/de translation stage), as lists of records.

* stage 1: `liuhaotian/LLaVA-Pretrain` `blip_laion_cc_sbu_558k.json` (558,128 caption pairs);
  images come from the repo's `images.zip`, unpacked to `images/` next to the json.
* stage 2: `liuhaotian/LLaVA-Instruct-150K` `llava_v1_5_mix665k.json` (multi-turn, text-only
  ShareGPT records have no `image`); image paths are relative to LLaVA's `playground/data`
  (coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, vg/VG_100K*).

A record: {"id": str, "image": "00453/004539375.jpg" (optional), "conversations":
[{"from": "human" | "gpt", "value": str}, ...]}; `<image>` marks where the image goes and must
survive translation. Files come from the huggingface_hub cache (fetched once, at the pinned
revision) or from a local copy of the repo (`source=<dir>`).

>>> import tempfile, pathlib; from ifl.smoke.fixtures import write_llava_training
>>> paths = write_llava_training(pathlib.Path(tempfile.mkdtemp()))
>>> records = load_llava_mix665k(paths["llava_instruct"])
>>> [image_path(r, paths["llava_images"]) is not None for r in records]
[True, True, False]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ifl.data import hub

PRETRAIN_FILE = "blip_laion_cc_sbu_558k.json"
MIX665K_FILE = "llava_v1_5_mix665k.json"


def load_llava_records(name: str, filename: str, source: str | os.PathLike | None = None, *,
                       revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                       token: str | None = None, check_counts: bool = True) -> list[dict]:
    """The records of `filename` in source `name` of sources.yaml, checked for the LLaVA
    conversation shape (ValueError naming the first bad record)."""
    spec = hub.source_spec(name)
    path = hub.hub_file(spec, filename, source, revision=revision, cache_dir=cache_dir, token=token)
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for i, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not turns or not all(isinstance(t, dict) and {"from", "value"} <= t.keys() for t in turns):
            raise ValueError(f"{path}: record {i} has no valid 'conversations' list of "
                             "{'from', 'value'} turns")
    if check_counts:
        hub.check_counts(spec, {"en": len(records)}, where=str(path))
    return records


def load_llava_pretrain(source: str | os.PathLike | None = None, **kwargs) -> list[dict]:
    """Stage-1 records (blip_laion_cc_sbu_558k.json); kwargs as in `load_llava_records`."""
    return load_llava_records("llava_pretrain", PRETRAIN_FILE, source, **kwargs)


def load_llava_mix665k(source: str | os.PathLike | None = None, **kwargs) -> list[dict]:
    """Stage-2 records (llava_v1_5_mix665k.json); kwargs as in `load_llava_records`."""
    return load_llava_records("llava_instruct", MIX665K_FILE, source, **kwargs)


def image_path(record: dict, image_folder: str | os.PathLike) -> Path | None:
    """Where a record's image lies under LLaVA's `--image_folder` (None for text-only records);
    for stage 1 the folder is `<LLaVA-Pretrain copy>/images`. Existence is not checked."""
    return Path(image_folder) / record["image"] if record.get("image") else None
