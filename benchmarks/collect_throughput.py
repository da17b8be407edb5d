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
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import tempfile
import time

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
    a = p.parse_args(argv)
    a.device = a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    a.n_single = a.n_single or (4 if a.tiny else 3)
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
