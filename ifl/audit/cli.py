"""The command line: python -m ifl.audit MODEL [options] (see ifl/audit/__init__.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ifl.audit.inputs import BENCHMARKS, AuditInputError, check_model, check_processor, load_benchmark
from ifl.collect.store import ResponseConflictError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifl.audit",
                                description="Measure image-induced fidelity loss of a vision-language model.")
    p.add_argument("model", help="hub id or local folder (AutoModelForImageTextToText + AutoProcessor)")
    p.add_argument("--languages", help="comma-separated ISO codes (default: the benchmark's)")
    p.add_argument("--benchmark", default="shapes", help=f"one of {BENCHMARKS} or a task parquet")
    p.add_argument("--n-per-language", type=int, default=20)
    p.add_argument("--precision", choices=("bf16", "4bit", "fp32"), default="bf16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--remedy", action="store_true", help="also collect steered replies")
    p.add_argument("--layer", type=int, help="steering layer (default: one third of the depth)")
    p.add_argument("--labels", help="annotated sheet (csv/parquet: task_id, condition, fidelity)")
    p.add_argument("--out", help="output folder (default audits/<model-name>/)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return p


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def run_audit(model: str, *, languages=None, benchmark="shapes", n_per_language=20, precision="bf16",
              batch_size=8, max_new_tokens=64, remedy=False, layer=None, labels=None, out=None,
              device="cpu", identifier=None) -> Path:
    """Run the audit; returns the output folder. Every input is checked before generation."""
    from ifl.audit.generate import collect, stop_tokens
    from ifl.audit.measure import dsl_table, fidelity_table, score
    from ifl.audit.report import write_report
    from ifl.compat import complete_processor, decoder_layers
    from ifl.steer import default_layer, steering_prompts

    name = Path(model.rstrip("/")).name
    out = Path(out or Path("audits") / name)
    tasks = load_benchmark(benchmark, languages, n_per_language)
    config = check_model(model)
    processor = check_processor(model)
    sheet = _read_labels(labels) if labels else None
    if remedy:
        try:
            steering_prompts(sorted(set(tasks["lang"])))
        except KeyError as exc:
            raise AuditInputError(f"--remedy: {exc.args[0]}") from None
    net = load_model(model, config, precision, device)
    if hasattr(processor, "num_additional_image_tokens") and hasattr(net.config, "vision_config"):
        # older llava-hf processor configs lack CLIP's CLS count: transformers 5 would insert
        # one placeholder fewer than the tower gives features
        complete_processor(processor, net.config)
    try:
        decoder_layers(net)
    except ValueError as exc:
        raise AuditInputError(f"unsupported architecture: {exc}") from None
    layer = (default_layer(net) if layer is None else layer) if remedy else None
    stops = stop_tokens(processor, net.generation_config)
    settings = dict(model=model, benchmark=benchmark, languages=sorted(set(tasks["lang"])),
                    n_per_language=n_per_language, precision=precision, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, remedy=remedy, steering_layer=layer,
                    labels=labels, model_class=type(net).__name__,
                    processor_class=type(processor).__name__, n_tasks=len(tasks),
                    stop_tokens=stops)
    responses = collect(net, processor, tasks, out, model_name=name, remedy=remedy, layer=layer,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, precision=precision,
                        stops=stops)
    scored, lid_name = score(responses, tasks, identifier)
    settings["language_identifier"] = lid_name
    table = fidelity_table(scored)
    ifl = dsl_table(scored, sheet) if sheet is not None else table
    table.to_csv(out / "fidelity.csv", index=False)
    scored.drop(columns=["model"]).to_parquet(out / "responses.parquet", index=False)
    (out / "settings.json").write_text(json.dumps(settings, indent=1, default=str), encoding="utf-8")
    write_report(out / "report.html", model_name=name, settings=settings, table=table,
                 ifl_table=ifl, scored=scored, tasks=tasks)
    return out


def load_model(source: str, config, precision: str, device: str):
    """The model at `precision`: bf16 or fp32 weights, or "4bit" (NF4, bf16 compute) with the
    vision tower, projector/connector and lm_head of whatever class it is kept in bf16, as
    LLaVA's own 4-bit loader keeps LLaVA's (ifl.compat.unquantised_modules)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from ifl.compat import bnb_config, unquantised_modules

    dtype = {"bf16": torch.bfloat16, "4bit": torch.bfloat16, "fp32": torch.float32}[precision]
    quantization = (bnb_config("4bit", skip=unquantised_modules(config, AutoModelForImageTextToText))
                    if precision == "4bit" else None)
    return AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype, quantization_config=quantization, device_map={"": device}).eval()


def _read_labels(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise AuditInputError(f"--labels: no file {p}")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        out = run_audit(args.model, languages=args.languages.split(",") if args.languages else None,
                        benchmark=args.benchmark, n_per_language=args.n_per_language,
                        precision=args.precision, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, remedy=args.remedy, layer=args.layer,
                        labels=args.labels, out=args.out, device=args.device)
    except (AuditInputError, ResponseConflictError) as exc:  # bad input; stored rows of other settings
        print(f"ifl.audit: {exc}")
        return 2
    print(f"wrote {out / 'report.html'}")
    return 0
