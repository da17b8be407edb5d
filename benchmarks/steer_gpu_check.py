"""GPU check of ifl.steer / ifl.represent on tiny random LLaVAs (llava-1.5, llava-gemma), bf16 and
NF4 4-bit on CUDA: steering with KV cache == without, left-padded batch == one at a time, zero
vector is a no-op, no hooks left after an exception, extraction batch == single, the
collect_responses adapter. Prints (and writes to $OUT/gpu_steer.json) one JSON report."""
import io, json, os, sys, time, traceback
from pathlib import Path
import numpy as np, pandas as pd, torch
from PIL import Image
from ifl.smoke.tiny_llava import write_tiny_llava_models
from ifl.models import load_llava
from ifl.compat import decoder_layers
from ifl.prompts import query, template
from ifl.steer import steering, steering_vector, LanguageSteering, DESCRIBE_EN, default_layer
from ifl.represent import extract
from ifl.collect import collect_responses
from ifl.data.miniature import make_tasks

DEV = os.environ.get("DEV", "cuda"); QUANTS = [None, "4bit"] if DEV == "cuda" else [None]
out = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"}
import transformers; out["transformers"] = transformers.__version__
paths = write_tiny_llava_models(Path("/tmp/tiny"))
rng = np.random.RandomState(0)
img = Image.fromarray((rng.rand(56, 56, 3) * 255).astype("uint8"))
t = template("llava_hf")
texts = [query(t, "What is in the image? Tell me about every shape you see.", image=True), query(t, "Colour?", image=True)]

def gen(model, enc, use_cache=True, n=6):
    o = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache,
                       output_logits=True, return_dict_in_generate=True)
    return o.sequences[:, enc["input_ids"].shape[1]:].cpu(), torch.stack(o.logits, 1).float().cpu()

def one(enc, i):
    keep = enc["attention_mask"][i].bool()
    return {"input_ids": enc["input_ids"][i:i+1, keep], "attention_mask": enc["attention_mask"][i:i+1, keep],
            "pixel_values": enc["pixel_values"][i:i+1]}

for name in ["tiny-llava-1.5", "tiny-llava-gemma"]:
  for quant in QUANTS:
    key = f"{name}/{quant or 'bf16'}"
    r = out[key] = {}
    try:
        model, proc = load_llava(paths[name], dtype="bfloat16", quantization=quant, device=DEV)
        dtypes_before = sorted({str(p.dtype) for p in model.parameters()})
        L = default_layer(model)
        enc = proc(text=texts, images=[img, img], return_tensors="pt", padding=True).to(DEV, dtype=model.dtype)
        vec = steering_vector(model, proc.tokenizer, "Beschreibe dieses Bild ausführlich.", DESCRIBE_EN, L, lang="de")
        r["vector"] = {"device": str(vec.vector.device), "dtype": str(vec.vector.dtype), **{k: round(v, 4) if isinstance(v, float) else v for k, v in vec.diagnostics.items()}}
        v = vec.vector * 20
        e0 = one(enc, 0)
        base, _ = gen(model, e0)
        for pos in ["generated", "all"]:
            with steering(model, v, L, positions=pos, prompt_length=int(e0["attention_mask"].sum())):
                c, lc = gen(model, e0, True); u, lu = gen(model, e0, False)
            r[f"cache_eq_nocache_{pos}"] = bool(torch.equal(c, u)); r[f"max_logit_diff_{pos}"] = float((lc - lu).abs().max())
            r[f"steer_changes_{pos}"] = not bool(torch.equal(c, base))
        with steering(model, torch.zeros_like(v), L, prompt_length=int(e0["attention_mask"].sum())):
            z, _ = gen(model, e0)
        r["zero_noop"] = bool(torch.equal(z, base))
        with steering(model, v, L, prompt_length=enc["attention_mask"].sum(1)):
            b, bl = gen(model, enc)
        eq = []
        for i in range(2):
            ei = one(enc, i)
            with steering(model, v, L, prompt_length=int(ei["attention_mask"].sum())):
                a, al = gen(model, ei)
            eq.append((bool(torch.equal(b[i], a[0])), float((bl[i] - al[0]).abs().max())))
        r["batch_eq_single(tokens, max_logit_diff)"] = eq
        try:
            with steering(model, v, L, positions="all"):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        r["hooks_left"] = sum(len(l._forward_hooks) + len(l._forward_pre_hooks) for l in decoder_layers(model))
        tasks = make_tasks(3, ["en", "de"], seed=0, benchmarks=["shapes_vqa"])
        reps = extract(model, proc, tasks, template="llava_hf", image_tokens=5, batch_size=4)
        r["extract"] = {i: [list(s.shape), str(s.dtype), bool(np.isfinite(s).all())] for i, s in reps.states.items()}
        one_ = extract(model, proc, tasks, template="llava_hf", image_tokens=5, batch_size=1)
        r["extract_batch_vs_single_maxdiff"] = max(float(np.abs(one_.states[i] - reps.states[i]).max()) for i in reps.states)
        png = io.BytesIO(); img.save(png, format="PNG")
        tk = pd.DataFrame([dict(task_id=f"t{i}", question=q, image=png.getvalue(), description="A star.")
                           for i, q in enumerate(["Colour?", "What is in the image? Tell me about every shape."])])
        vec.vector = v.cpu()
        ad = LanguageSteering.of(vec)
        kw = dict(model_name="m", template="llava_hf", conditions=("image",), max_new_tokens=5, progress=False)
        rb = collect_responses(model, proc, tk, batch_size=2, out_dir=f"/tmp/cr/{key}/b", steering=ad, **kw)
        rs = collect_responses(model, proc, tk, batch_size=1, out_dir=f"/tmp/cr/{key}/s", steering=ad, **kw)
        rp = collect_responses(model, proc, tk, batch_size=2, out_dir=f"/tmp/cr/{key}/p", **kw)
        r["adapter_batch_eq_single"] = rb.response.tolist() == rs.response.tolist()
        r["adapter_changes"] = rb.response.tolist() != rp.response.tolist()
        r["param_dtypes_unchanged"] = sorted({str(p.dtype) for p in model.parameters()}) == dtypes_before
        r["param_dtypes"] = dtypes_before
        r["max_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        del model, proc; torch.cuda.empty_cache()
    except Exception:
        r["error"] = traceback.format_exc()[-2500:]
print(json.dumps(out, indent=1, default=str))
Path(os.environ.get("OUT", "/tmp")).joinpath("gpu_steer.json").write_text(json.dumps(out, indent=1, default=str))
