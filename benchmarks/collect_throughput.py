"""How fast is `ifl.collect.collect_responses` against one query at a time, at the paper's shape?

    python benchmarks/collect_throughput.py --device cuda                     # 7b+13b, bf16+4bit, 1/16/64
    python benchmarks/collect_throughput.py --device cuda --sizes 7b --precisions 4bit
    python benchmarks/collect_throughput.py --tiny --check                   # CPU, < 1 minute

Models: LLaVA-1.5-7b and -13b with RANDOM weights, built from hand-written configs
(ifl/collect/synthetic.py: Llama-2 7B/13B + CLIP ViT-L/14-336 + 2-layer GELU projector); no
download. Each is materialised on the device from a random state dict drawn there, through
`from_pretrained(None, config=, state_dict=, quantization_config=)`: transformers' own loading
path, so NF4 4-bit quantises the same modules as loading llava-hf/llava-1.5-*-hf does.

Workload (the paper's, appendix A: ~4.4 s per completion): one 336 px image (576 image tokens)
plus ~40 text tokens of prompt, greedy, exactly `--max-new-tokens` (128) new tokens
(min_new_tokens = max_new_tokens, so random weights cannot stop early).
* one at a time: a plain loop, processor -> generate -> decode per query (`--n-single` queries);
* collect bs=B: `collect_responses(batch_size=B)` on max(B, n-single) queries (one full batch
  for B >= n-single), all its overheads (image decoding, parquet parts) included.
Every mode gets one warm-up generate first; peak GPU memory is reset before each mode. Speedup
is against one-at-a-time of the same model and precision in the same run (runs on different
machines differ by up to 2x: docs/reference_figures.md). `agree`: share of the one-at-a-time responses that the
batched run reproduced exactly (in bf16, kernels differ by batch shape, so < 1 is expected).

--check: on the tiny model in float32 on CPU, prompts of different lengths (so left padding is
exercised), asserts that collect_responses (batch 8) equals the one-at-a-time loop.

--speedups: the options of ifl.collect.options.Speedups against the plain collector, in one run:
    python benchmarks/collect_throughput.py --speedups                          # CPU, tiny, fp32
    python benchmarks/collect_throughput.py --speedups --device cuda --sizes 7b --precisions bf16
Workload: `--images` images, each asked in `--langs` languages (questions of different lengths),
greedy, exactly `--max-new-tokens` new tokens, `collect_responses(batch_size=B)`. Each mode runs
twice, the first run as warm-up (compilation), the second timed; `speedup` = plain seconds /
mode seconds (same model, same run); `same_rows`: the mode's rows equal the plain rows. On CPU
the tiny model gets `--image-tokens` (576 as LLaVA-1.5) so the prefix has the real share of the
prompt. Also printed: the fraction of prefill tokens prefix sharing saves on the paper's task
mix (Table 1 of the paper: tasks and languages per dataset; see prefill_saved).
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from ifl.collect import collect_responses
from ifl.collect.synthetic import (blank_image, llava_config, offline_processor, offline_tokenizer,
                                   random_llava, tiny_llava)
from ifl.prompts import query, template

PAPER_SECONDS = 4.4  # per completion, appendix A (~900 GPU h / ~730k completions)
TEMPLATE = template("llava_hf")


def make_tasks(n: int, image_size: int, *, vary: bool = False, seed: int = 0) -> pd.DataFrame:
    """n image tasks. The question is 21 characters: with the template and <s>, 40 text tokens
    for the character-level tokenizer (576 + 40 = 616 prompt tokens at 336 px). vary=True makes
    questions and descriptions of different lengths (for --check)."""
    rows = []
    for k in range(n):
        buf = io.BytesIO()
        blank_image(image_size, seed + k).save(buf, format="PNG")
        question = f"What is in image {k:03d}?" + (" Why?" * (k % 4) if vary else "")
        rows.append(dict(task_id=f"q{k:04d}", question=question, image=buf.getvalue(),
                         description="A photo." * (1 + k % 3)))
    return pd.DataFrame(rows)


def one_at_a_time(model, processor, tasks, max_new_tokens, *, exact=True,
                  conditions=("image",)) -> pd.DataFrame:
    """The baseline: each query alone, the way a first script would do it. exact: force
    max_new_tokens new tokens (min_new_tokens), as the timed runs do."""
    from ifl.collect.engine import decode_image

    tok, rows = processor.tokenizer, []
    for r in tasks.itertuples():
        for cond in conditions:
            image = cond == "image"
            prompt = query(TEMPLATE, r.question, image=image, description=r.description)
            inputs = processor(text=[prompt], images=[decode_image(r.image)] if image else None,
                               return_tensors="pt").to(model.device, dtype=model.dtype)
            with torch.inference_mode():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                     min_new_tokens=max_new_tokens if exact else None,
                                     pad_token_id=tok.pad_token_id)
            new = out[0, inputs["input_ids"].shape[1]:].tolist()
            ends = [k + 1 for k, t in enumerate(new) if t == tok.eos_token_id]
            new = new[:ends[0]] if ends else new
            rows.append(dict(task_id=r.task_id, condition=cond,
                             response=tok.decode(new, skip_special_tokens=True).strip(),
                             n_new_tokens=len(new)))
    return pd.DataFrame(rows).sort_values(["task_id", "condition"]).reset_index(drop=True)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(label, fn, device, n_done):
    """Run fn() once (after caller's warm-up); wall seconds, and peak GPU GiB (None on CPU)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return result, dict(mode=label, completions=n_done, seconds_per_completion=wall / n_done,
                        peak_gib=peak)


def bench_model(size, precision, args, tiny):
    device = args.device
    tok = offline_tokenizer(None if tiny else 32000)  # llava-hf layout: <image> 32000, <pad> 32001
    config = llava_config("tiny" if tiny else size, tok)
    gc.collect()  # the previous model's modules hold reference cycles
    if device == "cuda":
        torch.cuda.empty_cache()
    start = time.perf_counter()
    model = random_llava(config, precision=precision, device=device)
    sync(device)
    build = time.perf_counter() - start
    processor = offline_processor(config, tok)
    image_size = config.vision_config.image_size
    n_max = max(max(args.batch_sizes), args.n_single)
    tasks = make_tasks(n_max, image_size)
    name = f"{size}/{precision}"
    # warm-up: CUDA context, kernels, bitsandbytes' first-call setup
    one_at_a_time(model, processor, tasks.head(1), 2)
    single, row = measure("one at a time", lambda: one_at_a_time(
        model, processor, tasks.head(args.n_single), args.max_new_tokens), device, args.n_single)
    results = [dict(model=name, batch=1, **row, agree=1.0, build_s=build)]
    for bs in args.batch_sizes:
        n = max(bs, args.n_single)  # bs=1 times the same queries as the loop: its overhead
        with tempfile.TemporaryDirectory() as out_dir:
            df, row = measure(f"collect bs={bs}", lambda: collect_responses(
                model, processor, tasks.head(n), model_name=name, template=TEMPLATE,
                conditions=("image",), max_new_tokens=args.max_new_tokens,
                min_new_tokens=args.max_new_tokens, batch_size=bs, out_dir=out_dir,
                progress=False), device, n)
        both = single.merge(df, on=["task_id", "condition"], suffixes=("", "_b"))
        agree = (both.response == both.response_b).mean() if len(both) else float("nan")
        results.append(dict(model=name, batch=int(df.batch_size.min()), **row, agree=agree,
                            build_s=build))
        assert (df.n_new_tokens == args.max_new_tokens).all(), "min_new_tokens not honoured"
    del model
    return results


# Images per dataset and how many tasks ask each one (parallel items: the same item in every
# language). From the paper's Table 1 (ifl/paper/table1_datasets.csv: languages and tasks per
# dataset): LLaVAW and ViSIT translate every item into all their languages (ifl/data/llavaw.py,
# visit.py: parallel_id); MaXM has its own images per language (ifl/data/maxm.py), 1 task each.
PARALLEL = {"PALO-LLaVAW": True, "MaXM": False, "ViSIT": True}


def prefill_saved(prefix_tokens: int, suffix_tokens: int) -> pd.DataFrame:
    """Prefill tokens of the image condition with and without prefix sharing, per dataset of the
    paper's mix: tasks x (prefix + suffix) plainly; images x prefix + tasks x suffix shared.
    prefix_tokens: <s>, "USER: ", 576 image tokens; suffix_tokens: "\n{question} ASSISTANT:"
    (an assumed mean, stated in the output)."""
    from importlib import resources

    table = pd.read_csv(resources.files("ifl.paper").joinpath("table1_datasets.csv"))
    rows = []
    for r in table.itertuples():
        if r.dataset not in PARALLEL:
            continue  # MultiQ: text only, no image prefix
        per_image = r.n_languages if PARALLEL[r.dataset] else 1
        images = r.size // per_image
        plain = r.size * (prefix_tokens + suffix_tokens)
        shared = images * prefix_tokens + r.size * suffix_tokens
        rows.append(dict(dataset=r.dataset, tasks=r.size, tasks_per_image=per_image, images=images,
                         prefill_plain=plain, prefill_shared=shared, saved=1 - shared / plain))
    df = pd.DataFrame(rows)
    total = dict(dataset="all three", tasks=df.tasks.sum(), tasks_per_image=float("nan"),
                 images=df.images.sum(), prefill_plain=df.prefill_plain.sum(),
                 prefill_shared=df.prefill_shared.sum())
    total["saved"] = 1 - total["prefill_shared"] / total["prefill_plain"]
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def parallel_tasks(images: int, langs: int, image_size: int) -> pd.DataFrame:
    """images x langs image tasks: every image asked in `langs` languages (questions of
    different lengths, as translations are)."""
    words = ["What is in this image?", "Was ist auf diesem Bild zu sehen?", "Qu'y a-t-il ?",
             "Ce este in aceasta imagine, exact?", "Que hay en la imagen?", "Wat?"]
    rows = []
    for k in range(images):
        buf = io.BytesIO()
        blank_image(image_size, k).save(buf, format="PNG")
        for j in range(langs):
            rows.append(dict(task_id=f"i{k:04d}-l{j:02d}", question=words[j % len(words)],
                             image=buf.getvalue(), description="A photo."))
    return pd.DataFrame(rows)


SPEEDUP_MODES = {"plain": {}, "share_prefix": {"share_prefix": True},
                 "static": {"static_cache": True},
                 "compile": {"static_cache": True, "compile": True},
                 "share_prefix+compile": {"share_prefix": True, "static_cache": True, "compile": True}}


def bench_speedups(args) -> list[dict]:
    """Every mode of SPEEDUP_MODES on one model per size x precision; rows for print_speedups."""
    device, results = args.device, []
    tiny = device == "cpu"
    sizes = ["tiny"] if tiny else args.sizes.split(",")
    precisions = ["fp32"] if tiny else args.precisions.split(",")
    modes = [m for m in args.modes.split(",")]
    for size in sizes:
        for precision in precisions:
            tok = offline_tokenizer(None if tiny else 32000)
            config = llava_config(size, tok)
            if tiny:  # the real number of image tokens, tiny widths
                side = int(args.image_tokens ** 0.5)
                config.vision_config.image_size = side * config.vision_config.patch_size
                config.image_seq_length = side * side
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            model = random_llava(config, precision=precision, device=device)
            processor = offline_processor(config, tok)
            tasks = parallel_tasks(args.images, args.langs, config.vision_config.image_size)
            plain = None
            for bs in args.batch_sizes:  # all modes of one batch size first (a timeout cuts the rest)
                for mode in modes:
                    def run():
                        with tempfile.TemporaryDirectory() as out_dir:
                            return collect_responses(
                                model, processor, tasks, model_name=mode, template=TEMPLATE,
                                conditions=("image",), max_new_tokens=args.max_new_tokens,
                                min_new_tokens=args.max_new_tokens, batch_size=bs,
                                out_dir=out_dir, progress=False, speedups=SPEEDUP_MODES[mode])
                    try:
                        _, warm = measure(mode, run, device, len(tasks))  # warm-up / compilation
                        df, row = measure(mode, run, device, len(tasks))
                    except Exception as exc:  # e.g. a compiler missing on the machine: say so
                        print(f"{size}/{precision} {mode} bs={bs} failed: {type(exc).__name__}: "
                              f"{str(exc)[:300]}")
                        continue
                    # agreement with plain at the same batch size; for plain itself, with plain
                    # at the first batch size: the noise floor of batch composition in this
                    # precision (random weights give near-tied logits, so bf16 reductions that
                    # differ by batch shape flip greedy tokens without any bug)
                    first_plain = next(iter((plain or {}).values()), None)
                    if mode == "plain":
                        plain = plain or {}
                        plain[bs] = (df, row["seconds_per_completion"])
                    base = (plain or {}).get(bs)
                    ref = first_plain if mode == "plain" else base
                    results.append(dict(
                        model=f"{size}/{precision}", mode=mode, batch=bs, completions=len(tasks),
                        seconds_per_completion=row["seconds_per_completion"],
                        first_run_s=warm["seconds_per_completion"] * len(tasks),
                        speedup=base[1] / row["seconds_per_completion"] if base else float("nan"),
                        same_rows=_same_rows(ref[0], df) if ref else None,
                        same_prefix=_shared_prefix(ref[0], df) if ref else None,
                        peak_gib=row["peak_gib"]))
                    print("row", json.dumps(results[-1], default=str), flush=True)  # kept on timeout
            del model
    return results


def _same_rows(ref: pd.DataFrame, df: pd.DataFrame) -> float:
    """Fraction of tasks whose greedy response is exactly the reference's."""
    m = ref.merge(df, on="task_id", suffixes=("_ref", ""))
    return float((m.response_ref == m.response).mean())


def _shared_prefix(ref: pd.DataFrame, df: pd.DataFrame) -> float:
    """Mean share of each reference response (characters) reproduced before the first
    difference: 1.0 = identical, small = diverged early."""
    m = ref.merge(df, on="task_id", suffixes=("_ref", ""))
    shares = [len(os.path.commonprefix([a, b])) / max(len(a), 1)
              for a, b in zip(m.response_ref, m.response)]
    return float(np.mean(shares))


def print_speedups(rows, args) -> None:
    df = pd.DataFrame(rows)
    df["peak_gib"] = df.peak_gib.map(lambda v: "-" if v is None or pd.isna(v) else f"{v:.1f}")
    print(f"\nspeedups, {args.device}: {args.images} images x {args.langs} languages, "
          f"{args.max_new_tokens} new tokens, greedy (second run of each mode timed)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    prefix = 1 + 3 + 576  # <s>, "USER: " (3 tokens in Llama's tokenizer [assumed]), 576 image tokens
    suffix = args.suffix_tokens
    print(f"\nprefill saved by prefix sharing on the paper's task mix (image condition; prefix "
          f"{prefix} tokens, suffix {suffix} tokens assumed per prompt):")
    print(prefill_saved(prefix, suffix).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def check(max_new_tokens=12) -> None:
    """Batched collect_responses == one at a time, tiny model, float32, CPU, varied lengths."""
    model, processor = tiny_llava()
    tasks = make_tasks(10, 40, vary=True)
    single = one_at_a_time(model, processor, tasks, max_new_tokens, exact=False,
                           conditions=("image", "text"))
    with tempfile.TemporaryDirectory() as out_dir:
        batched = collect_responses(model, processor, tasks, model_name="tiny", template=TEMPLATE,
                                    max_new_tokens=max_new_tokens, batch_size=8, out_dir=out_dir,
                                    progress=False)
    cols = ["task_id", "condition", "response", "n_new_tokens"]
    pd.testing.assert_frame_equal(batched[cols], single[cols])
    assert (batched.n_new_tokens < max_new_tokens).any(), "no answer ended early: eos path untested"
    print(f"check passed: {len(single)} batched completions equal one-at-a-time "
          f"({(batched.n_new_tokens < max_new_tokens).sum()} ended at </s>)")


def print_table(rows, tiny, max_new_tokens) -> None:
    df = pd.DataFrame(rows)
    base = df[df["mode"] == "one at a time"].set_index("model")["seconds_per_completion"]
    df["speedup"] = base.reindex(df.model).to_numpy() / df.seconds_per_completion
    df["tok_per_s"] = max_new_tokens / df.seconds_per_completion  # generated tokens per second
    if not tiny:
        df["x_paper"] = PAPER_SECONDS / df.seconds_per_completion
    df["peak_gib"] = df.peak_gib.map(lambda v: "-" if v is None or pd.isna(v) else f"{v:.1f}")
    cols = ["model", "mode", "batch", "completions", "seconds_per_completion", "tok_per_s",
            "speedup"] + ([] if tiny else ["x_paper"]) + ["peak_gib", "agree", "build_s"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, choices=["cuda", "cpu"])
    p.add_argument("--sizes", default="7b,13b")
    p.add_argument("--precisions", default="bf16,4bit")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n-single", type=int, default=None,
                   help="queries timed one at a time (default 3; --tiny 4)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (16 image tokens)")
    p.add_argument("--check", action="store_true", help="assert batched == one at a time (tiny)")
    p.add_argument("--json", default=None, help="also write the table's rows to this file")
    p.add_argument("--speedups", action="store_true",
                   help="time ifl.collect's Speedups against the plain collector")
    p.add_argument("--modes", default=",".join(SPEEDUP_MODES), help="--speedups: modes to time")
    p.add_argument("--images", type=int, default=None, help="--speedups: images (CPU 4, GPU 16)")
    p.add_argument("--langs", type=int, default=8, help="--speedups: languages per image")
    p.add_argument("--image-tokens", type=int, default=576, help="--speedups on CPU: per image")
    p.add_argument("--suffix-tokens", type=int, default=40,
                   help="--speedups: assumed prompt tokens after the image, for prefill_saved")
    a = p.parse_args(argv)
    a.device = a.device or ("cpu" if a.tiny or a.speedups or not torch.cuda.is_available() else "cuda")
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    a.n_single = a.n_single or (4 if a.tiny else 3)
    if a.speedups:
        a.device = a.device or "cpu"
        a.images = a.images or (4 if a.device == "cpu" else 16)
        if a.batch_sizes == [1, 16, 64]:  # the default of the other mode
            a.batch_sizes = [16] if a.device == "cpu" else [64]
        return a
    if a.device == "cpu" and not a.tiny:
        p.error("7b/13b shapes on CPU would take hours; use --device cuda, or --tiny")
    return a


def main(argv=None) -> None:
    args = parse(argv)
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(1)  # shared machine; the tiny shapes gain nothing from threads
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    if args.check:
        check()
    if args.speedups:
        rows = bench_speedups(args)
        print_speedups(rows, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=str)
        return
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    rows = []
    for size in sizes:
        for precision in args.precisions.split(","):
            rows += bench_model(size, precision, args, args.tiny)
    print(f"\n{args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"prompt {'16' if args.tiny else '576'} image + ~40 text tokens, "
          f"{args.max_new_tokens} new tokens, greedy")
    print_table(rows, args.tiny, args.max_new_tokens)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
