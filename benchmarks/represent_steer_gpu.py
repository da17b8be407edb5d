"""Notebooks 06 and 07 at the real shape: LLaVA-1.5-7b (random weights, NF4 4-bit) on one GPU.

    python benchmarks/represent_steer_gpu.py                 # CUDA; ~1.5 min on an H100
    python benchmarks/represent_steer_gpu.py --tiny          # CPU, tiny shapes, seconds

Prints, with peak GPU memory (reset before each step):
* extraction (ifl.represent.extract) of image-token states at every site (33 for 7B) for
  `--images` images (32 of 576 image tokens each, as notebook 06's CKA takes) and the text
  tokens of their questions, streamed in batches of 8: the "7B in 4-bit within 24 GB" question;
* one steering vector (ifl.steer.steering_vector) at layer n_layers // 3;
* collect_responses at batch `--batch` with 128 new tokens, without and with LanguageSteering
  (a forward hook on one decoder layer), seconds per completion: the steering hook's cost.
Random weights say nothing about outputs; the figures are time and memory.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect_throughput import TEMPLATE, make_tasks  # noqa: E402

from ifl.collect import collect_responses  # noqa: E402
from ifl.collect.synthetic import llava_config, offline_processor, offline_tokenizer, random_llava  # noqa: E402
from ifl.compat import decoder_layers  # noqa: E402
from ifl.represent import extract  # noqa: E402
from ifl.steer import DESCRIBE_EN, LanguageSteering, default_layer, steering_vector  # noqa: E402


def timed(device, fn):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return out, time.perf_counter() - start, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    device = "cpu" if a.tiny else "cuda"
    tok = offline_tokenizer(None if a.tiny else 32000)
    config = llava_config("tiny" if a.tiny else "7b", tok)
    model, build_s, _ = timed(device, lambda: random_llava(
        config, precision="fp32" if a.tiny else "4bit", device=device))
    processor = offline_processor(config, tok)
    tasks = make_tasks(max(a.images, a.batch), config.vision_config.image_size)
    tasks["lang"] = "en"
    tasks["parallel_id"] = tasks["task_id"]
    rows = [dict(step="build", seconds=build_s)]
    reps, s, peak = timed(device, lambda: extract(model, processor, tasks.head(a.images), template=TEMPLATE,
                                                  image_tokens=32, batch_size=8))
    n_sites = len(reps.states)
    rows.append(dict(step=f"extract {a.images} images x 32 tokens + text, {n_sites} sites",
                     seconds=s, peak_gib=peak, rows=len(reps.meta)))
    layer = default_layer(model)
    vec, s, peak = timed(device, lambda: steering_vector(model, tok, "Beschreibe dieses Bild ausführlich.",
                                                         DESCRIBE_EN, layer, lang="de"))
    rows.append(dict(step=f"steering vector, layer {layer} of {len(decoder_layers(model))}",
                     seconds=s, peak_gib=peak))
    batch = tasks.head(a.batch)
    for label, steer in (("collect", None), ("collect + steering", LanguageSteering.of(vec))):
        with tempfile.TemporaryDirectory() as out_dir:
            _, s, peak = timed(device, lambda: collect_responses(
                model, processor, batch, model_name="m", template=TEMPLATE, conditions=("image",),
                max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens,
                batch_size=a.batch, out_dir=out_dir, progress=False, steering=steer))
        rows.append(dict(step=f"{label} bs={a.batch}", seconds=s, peak_gib=peak,
                         s_per_completion=s / len(batch)))
    for r in rows:
        print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
