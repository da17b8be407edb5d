"""What the miniature's story mechanisms do, on a reduced run (CPU, minutes to tens of minutes).

Builds the miniature end to end at the default sizes for a few variants, once with the
mechanisms off (today's default) and once on, and prints per setting:
- the time of each component (data, tokenizer + LMs, towers, each variant);
- each backbone's text-only reply language per language beside its MultiQ calibration target,
  and the cross-lingual probe (facts in one language, question in another);
- each variant's stage-2 retention (text-only fidelity after stage 2 vs its backbone's);
- IFL per variant x language: share of replies in the query's language with the image minus with
  the description (exact gold labels; the paper's -0.06 to -0.14 for LLaVA-1.5-7B).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/miniature_mechanisms.py --out /tmp/mech \\
        --settings off on --variants vicuna-clip-en vicuna-clip-zh yi-clip-en

Timings are only comparable between settings run on the same, equally loaded machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ifl.data.miniature import gold_language, make_tasks, rerender_file, write_training_data
from ifl.data.miniature.calibration import targets
from ifl.data.miniature.training import MIX665K_TEXT_ONLY_SHARE
from ifl.mini import build_components
from ifl.mini.metrics import (component_report, crosslingual_summary, fidelity_vs_target,
                              retention, variant_text_fidelity)
from ifl.params_schema import TrainVariants
from ifl.train import StageSettings, train_variant
from ifl.train.variants import variant

LANGS = ["en", "de", "zh", "ru", "hi", "ar"]
# the story mechanisms (text-only data, cross-lingual LMs, CLIP text, stage-2 rate), each value
# taken from the real systems (see the params' descriptions)
SETTINGS = {
    "off": {"data": {}, "components": {}, "stage2_lr": 5e-4},
    "on": {"data": {"text_only_share": MIX665K_TEXT_ONLY_SHARE, "text_only_non_english": 0.1,
                    "noise": "mt"},
           "components": {"lm_crosslingual_share": 0.2, "lm_reply_calibration": "multiq",
                          "clip_text": "lm"},
           # LLaVA stage 2 (2e-5) / Llama-2 pretraining peak (3e-4), times the miniature LM's 3e-3
           "stage2_lr": 3e-3 * 2e-5 / 3e-4},
}


def timed(log: dict, key: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    log[key] = round(time.perf_counter() - start, 1)
    return out


# --smoke: every size tiny, to check the code path in a minute (figures meaningless)
SMOKE = {"records": 40, "components": dict(lm_hidden=32, lm_layers=1, lm_steps=4, lm_batch=8, lm_eval_scenes=2,
                                           tower_hidden=32, tower_layers=1, tower_steps=2, clip_steps=2,
                                           tower_batch=8, tower_probe_scenes=40, tokenizer_items_per_lang=40),
         "stage_steps": 2}


def data(out: Path, setting: dict, seed: int, records: int = 4000) -> dict:
    d = dict(setting)
    noise = d.pop("noise", "word")
    english = write_training_data(out / "en", records, records, seed=seed, **d)
    manifest = {"image_folder": str(english["images"]),
                "en": {"pretrain": str(english["captions"]), "instruct": str(english["instruct"])}}
    for lang in ("zh", "de"):
        manifest[lang] = {part: str(rerender_file(src, out / lang / src.name, lang, 0.05, seed, noise=noise))
                          for part, src in (("pretrain", english["captions"]), ("instruct", english["instruct"]))}
    return manifest


def ifl_table(variants: pd.DataFrame, out: Path, n_scenes: int, seed: int) -> pd.DataFrame:
    from ifl.collect import collect_responses
    from ifl.models import load_llava
    tasks = make_tasks(n_scenes, LANGS, seed=seed, benchmarks=["shapes_vqa"])
    rows = []
    for row in variants.itertuples():
        model, processor = load_llava(row.model_dir, dtype="float32", device="cpu")
        got = collect_responses(model, processor, tasks, model_name=row.variant, template="llava_hf",
                                conditions=("image", "text"), max_new_tokens=8, batch_size=64,
                                out_dir=out / "collect" / row.variant, progress=False)
        got = got.merge(tasks[["task_id", "lang"]], on="task_id")
        got["faithful"] = [gold_language(r) == lang for r, lang in zip(got["response"], got["lang"])]
        fid = got.pivot_table(index="lang", columns="condition", values="faithful")
        for lang in LANGS:
            rows.append({"variant": row.variant, "lang": lang, "image": fid.loc[lang, "image"],
                         "text": fid.loc[lang, "text"], "ifl": fid.loc[lang, "image"] - fid.loc[lang, "text"]})
    return pd.DataFrame(rows)


def run(name: str, out: Path, names: list[str], seed: int, n_scenes: int, smoke: bool = False,
        lm_layers: int | None = None) -> dict:
    setting = SETTINGS[name]
    out = out / name
    log: dict = {}
    manifest = timed(log, "data_s", data, out / "data", setting["data"], seed,
                     SMOKE["records"] if smoke else 4000)
    p = TrainVariants()
    sizes = dict(lm_hidden=p.mini_lm_hidden, lm_layers=lm_layers or p.mini_lm_layers, lm_steps=p.mini_lm_steps,
                 clip_steps=p.mini_clip_steps, tower_twins=p.mini_tower_twins)
    sizes.update(SMOKE["components"] if smoke else {})
    built = timed(log, "components_s", build_components, out / "components", seed=seed, progress=False,
                  **sizes, **setting["components"])
    log.update({f"{r['component']}_wall_s": r["value"] for r in built["metrics"] if r["metric"] == "wall_s"})
    report = timed(log, "component_report_s", component_report, built["paths"], ["vicuna", "yi", "leo"],
                   LANGS, n_scenes=n_scenes, probe_scenes=max(1, n_scenes // 4), seed=seed)
    paths = dict(built["paths"], dinov2=built["paths"]["dino"])
    common = dict(global_batch=16, micro_batch=16, max_length=160, save_every=50)
    steps1, steps2 = (SMOKE["stage_steps"],) * 2 if smoke else (p.mini_stage1_steps, p.mini_stage2_steps)
    stage1 = StageSettings(lr=p.mini_stage1_lr, max_steps=steps1, format="plain", **common)
    stage2 = StageSettings(lr=setting["stage2_lr"], max_steps=steps2, **common)
    rows = []
    for v in names:
        spec = variant(v)
        res = timed(log, f"{v}_s", train_variant, spec, paths[spec.llm], paths[spec.vision], manifest,
                    "llava_hf", stage1, stage2, out / "variants", seed=seed, progress=False)
        rows.append({"variant": v, "llm": spec.llm, "model_dir": str(res.model_dir)})
    variants = pd.DataFrame(rows)
    after = timed(log, "retention_s", variant_text_fidelity, variants, LANGS, n_scenes=n_scenes // 2, seed=seed)
    ifl = timed(log, "ifl_s", ifl_table, variants, out, n_scenes, seed)
    return {"log": log, "report": report, "after": after, "ifl": ifl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--settings", nargs="+", default=["off", "on"], choices=sorted(SETTINGS))
    ap.add_argument("--variants", nargs="+", default=["vicuna-clip-en", "vicuna-clip-zh", "yi-clip-en"])
    ap.add_argument("--scenes", type=int, default=40, help="held-out scenes per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lm-layers", type=int, default=None, help="LM depth (default: the params default)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the code path only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    for name in args.settings:
        got = run(name, args.out, args.variants, args.seed, args.scenes, args.smoke, args.lm_layers)
        text = got["report"][got["report"]["kind"] == "lm_text"]
        print(f"\n=== {name}: {json.dumps(SETTINGS[name])}\ntimes (s): {got['log']}")
        print("text-only reply language vs MultiQ target:")
        vs = fidelity_vs_target(text[text["metric"].isin(["accuracy", "fidelity", "in_english"])], targets())
        print(vs.round(2).to_string(index=False))
        print("cross-lingual probe:")
        print(crosslingual_summary(got["report"][got["report"]["kind"] == "lm_crosslingual"]).round(2).to_string(index=False))
        probe = got["report"][got["report"]["kind"] == "lm_probe"]
        print("reply-language probe by site:")
        print(probe.pivot_table(index="component", columns=["metric", "site"], values="value").round(2).to_string())
        kept = retention(text, got["after"])
        print("stage-2 retention (fidelity):")
        print(kept[kept["metric"] == "fidelity"].pivot_table(index="variant", columns="lang",
                                                             values=["before", "after"]).round(2).to_string())
        print("IFL (image - text fidelity):")
        print(got["ifl"].pivot_table(index="variant", columns="lang", values="ifl").round(2).to_string())


if __name__ == "__main__":
    main()
