"""Command line for training design variants, on one device or under `accelerate launch`.

One GPU (or CPU), miniature or 7B:
    python -m ifl.train --variant vicuna-clip-en --llm hub --vision hub \\
        --manifest runs/paper/01_translate_data/training/manifest.json --out runs/paper/02_train_variants \\
        --pretrain-image-folder ./data/LLaVA-Pretrain/images --instruct-image-folder ./data/playground/data
The paper's manifest (notebook 01) names the records, not their images: LCS-558K's images and
LLaVA's playground/data are separate folders, given here as notebook 02 gives them from
02_train_variants.pretrain_image_folder / instruct_image_folder.

Eight GPUs with DeepSpeed ZeRO-2 (the paper: 8 x A6000; global batch kept at 256 / 128 by
gradient accumulation = global_batch / (micro_batch x 8)):
    accelerate launch --config_file ifl/train/deepspeed_zero2.yaml -m ifl.train \\
        --variant all --llm ... --vision ... --manifest ... --out ... --dtype bfloat16 \\
        --stage1 micro_batch=32 --stage2 micro_batch=16 gradient_checkpointing=true
Plain DDP instead of DeepSpeed: --config_file ifl/train/ddp.yaml (the whole model on every GPU).

One 24 GB GPU: stage 1 in bf16 (frozen LLM, no optimizer state for it), stage 2 as QLoRA:
    python -m ifl.train --variant yi-clip-zh ... --dtype bfloat16 --qlora r=128 alpha=256 \\
        --stage1 micro_batch=8 gradient_checkpointing=true \\
        --stage2 micro_batch=4 gradient_checkpointing=true

--stage1/--stage2 take key=value overrides of StageSettings.llava_stage1()/llava_stage2()
(values: numbers, else YAML: lr=5e-4, max_steps=150, format=chat, save_every=null). Learning
rates not given come from the mode's recipe (ifl/train/recipes.py): full fine-tune stage 2 at
2e-5; with --qlora LoRA at 2e-4 and the projector at 2e-5 (--qlora projector_lr=...). Rerunning
the same command skips finished variants and resumes interrupted ones (set save_every to
checkpoint more often). Every image the records name is checked before anything trains;
--skip-missing-images leaves out records whose image is missing (counted in images.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from ifl.train.lora import LoraSettings
from ifl.train.memory import release_memory
from ifl.train.preflight import check_manifest
from ifl.train.recipes import learning_rates
from ifl.train.variants import LLMS, VISIONS, StageSettings, design_space, train_variant, variant


def _pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        out[key] = _value(value)
    return out


def _value(text: str):
    """int, float (YAML 1.1 reads '5e-4' as a string), else YAML (true, null, lists)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def with_image_folders(manifest_path: str, *, pretrain: str | None,
                       instruct: str | None) -> dict | str:
    """The manifest with the image folder of each part that was given (as notebook 02 adds
    them to the paper's manifest, which has none); its path as is when none was given."""
    given = {part: folder for part, folder in (("pretrain", pretrain), ("instruct", instruct)) if folder}
    if not given:
        return manifest_path
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    manifest["image_folders"] = {**(manifest.get("image_folders") or {}), **given}
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ifl.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", required=True,
                    help="variant names (e.g. vicuna-clip-en) or 'all' (the paper's 14)")
    ap.add_argument("--llm", required=True, help=f"LLM path or hub id (paper: {json.dumps({k: v['hub'] for k, v in LLMS.items()})}); "
                    "'hub' for the paper's; with several variants use {llm}, e.g. /models/{llm}")
    ap.add_argument("--vision", required=True, help=f"tower path or hub id (paper: {json.dumps(VISIONS)}); "
                    "'hub' for the paper's; {vision} is replaced by the variant's tower")
    ap.add_argument("--manifest", required=True, help="training/manifest.json of notebook 01")
    ap.add_argument("--pretrain-image-folder", default=None,
                    help="images of the stage-1 (pretrain) records; default: the manifest's")
    ap.add_argument("--instruct-image-folder", default=None,
                    help="images of the stage-2 (instruct) records; default: the manifest's")
    ap.add_argument("--out", required=True, help="output folder; one subfolder per variant")
    ap.add_argument("--template", default=None, help="chat template (default: the LLM's, see LLMS)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer path (default: the LLM's)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--stage1", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--stage2", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--qlora", nargs="*", default=None, metavar="KEY=VALUE",
                    help="stage 2 as QLoRA (4-bit LLM + LoRA); LoraSettings overrides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-missing-images", action="store_true",
                    help="leave out records whose image is missing (default: stop before training)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 on a small shared CPU: oversubscribed threads "
                         "made tiny-model steps 100x slower there)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = design_space() if args.variant == ["all"] else [variant(v) for v in args.variant]
    s1, s2 = _pairs(args.stage1), _pairs(args.stage2)
    lora = _pairs(args.qlora) if args.qlora is not None else None
    lr = learning_rates("full" if lora is None else "qlora", stage1=s1.pop("lr", None),
                        stage2=s2.pop("lr", None),
                        projector=None if lora is None else lora.pop("projector_lr", None))
    stage1 = StageSettings.llava_stage1(lr=lr.stage1, **s1)
    stage2 = StageSettings.llava_stage2(lr=lr.stage2, **s2)
    qlora = LoraSettings(**lora, projector_lr=lr.projector) if lora is not None else None
    manifest = with_image_folders(args.manifest, pretrain=args.pretrain_image_folder,
                                  instruct=args.instruct_image_folder)
    check_manifest(manifest, [s.data_lang for s in specs], skip_missing=args.skip_missing_images)
    for spec in specs:
        llm = LLMS[spec.llm]["hub"] if args.llm == "hub" else args.llm.format(llm=spec.llm)
        vision = VISIONS[spec.vision] if args.vision == "hub" else args.vision.format(vision=spec.vision)
        res = train_variant(spec, llm, vision,
                            manifest, args.template, stage1, stage2, args.out,
                            tokenizer=args.tokenizer, dtype=getattr(torch, args.dtype),
                            qlora=qlora, seed=args.seed,
                            skip_missing_images=args.skip_missing_images)
        skipped = f" ({res.skipped_records} records without image skipped)" if res.skipped_records else ""
        print(f"{spec.name}: {'already done' if res.cached else 'trained'} -> {res.model_dir}{skipped}",
              file=sys.stderr)
        del res  # holds no model; memory of the variant is given back before the next loads
        release_memory()


if __name__ == "__main__":
    main()
