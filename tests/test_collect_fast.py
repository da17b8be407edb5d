"""Speedups of ifl.collect (prefix sharing, static KV cache, compiled decoding): the same greedy
rows as the plain path, on the tiny stand-ins of the three hub classes (LLaVA-1.5 / Llama,
BakLLaVA / Mistral, LLaVA-Gemma / Gemma), float32 on CPU (compiled decoding on LLaVA-1.5's
stand-in only: compiling is slow on a CPU).

The task mix imitates the paper's: each image is asked in several languages (parallel tasks
share the image, so their prompts share the prefix up to the image tokens), questions of
different lengths (so the pads between prefix and suffix differ per row), one text-only task.
"""
from __future__ import annotations

import io
import logging

import pandas as pd
import pytest
import torch

from ifl.collect import collect_responses, engine
from ifl.collect.engine import Item, generate_batch, measure, order
from ifl.collect.options import Speedups
from ifl.collect.prefix import plan
from ifl.collect.store import CONTENT
from ifl.collect.synthetic import blank_image
from ifl.data.schema import tasks_frame
from ifl.models import load_llava, template_for
from ifl.smoke.tiny_llava import write_tiny_llava_models

torch.set_num_threads(1)
HUB_CLASSES = ["tiny-llava-1.5", "tiny-bakllava", "tiny-llava-gemma"]
QUESTIONS = {"en": "What is shown here?", "de": "Was ist auf dem Bild zu sehen, genau?",
             "fr": "Qu'y a-t-il ?", "ja": "画像には何がありますか？"}
MAX_NEW = 8


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    blank_image(60, seed).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return write_tiny_llava_models(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def tasks() -> pd.DataFrame:
    """3 images x 4 languages, plus a text-only task."""
    rows = [dict(task_id=f"i{k}-{lang}", parallel_id=f"i{k}", benchmark="mini", lang=lang,
                 question=q + " ?" * k, image=_png(k), reference="x",
                 description="A picture." * (1 + k), description_lang="en")
            for k in range(3) for lang, q in QUESTIONS.items()]
    rows.append(dict(task_id="z-text", parallel_id="z", benchmark="mini", lang="en",
                     question="Name a colour.", image=None, reference="x", description=None,
                     description_lang="en"))
    return tasks_frame(rows)


def _collect(model, processor, tasks, out_dir, name, **kw):
    kw = dict(model_name="m", template=template_for(name), max_new_tokens=MAX_NEW, batch_size=5,
              out_dir=out_dir, progress=False) | kw
    return collect_responses(model, processor, tasks, **kw)[CONTENT]


@pytest.mark.parametrize("name", HUB_CLASSES)
def test_speedups_equal_plain_path(stand_ins, tasks, tmp_path, name, caplog):
    model, processor = load_llava(stand_ins[name], dtype="float32")
    plain = _collect(model, processor, tasks, tmp_path / "plain", name)
    for speedups in (Speedups(share_prefix=True), Speedups(static_cache=True),
                     Speedups(share_prefix=True, static_cache=True)):
        with caplog.at_level(logging.WARNING, logger="ifl.collect.engine"):
            fast = _collect(model, processor, tasks, tmp_path / str(speedups), name,
                            speedups=speedups)
        pd.testing.assert_frame_equal(fast, plain, obj=f"{name} {speedups}")
    assert "prefix sharing off" not in caplog.text  # the image comes first: shared every time


def test_compiled_decoding_equals_plain_path(stand_ins, tasks, tmp_path):
    """`compile` (a torch.compile'd decode step on the static cache), alone and after a shared
    prefix, gives the plain path's rows, and really compiles (dynamo captured graphs; without
    `compile_config`'s CPU switch transformers would run it eagerly and this would pass vacuously).

    One hub class here: inductor compiles once per batch shape, ~10 s for tiny LLaVA-1.5 on a
    busy 2-core CPU but ~45 s for the Gemma stand-in, too slow for the fast suite. BakLLaVA's
    Mistral config has a sliding window, whose static cache layer is guarded on its Python-int
    length, so dynamo recompiles at every step until its recompile limit and then runs the
    step eagerly: same rows, no speed-up (docs/collect_at_scale.md; the next test: a model
    after it is compiled again)."""
    from torch._dynamo.utils import counters

    name = "tiny-llava-1.5"
    model, processor = load_llava(stand_ins[name], dtype="float32")
    plain = _collect(model, processor, tasks, tmp_path / "plain", name)
    # the composite path (compiled decode after a shared prefix) runs every piece that compile
    # alone runs; one inductor compile keeps the test near 10 s
    for speedups in (Speedups(share_prefix=True, static_cache=True, compile=True),):
        counters.clear()
        fast = _collect(model, processor, tasks, tmp_path / str(speedups), name,
                        speedups=speedups)
        pd.testing.assert_frame_equal(fast, plain, obj=f"{name} {speedups}")
        assert counters["stats"]["calls_captured"] > 0, f"{speedups}: nothing was compiled"


@pytest.mark.parametrize("name", ["tiny-bakllava", "tiny-llava-gemma"])
def test_compiled_decoding_equals_plain_path_on_the_other_hub_classes(stand_ins, tasks, tmp_path,
                                                                      name, monkeypatch):
    """The other two hub classes through the same compiled-decoding path (static cache, the decode
    step handed to torch.compile), with dynamo's `eager` backend: the graphs are captured and
    run as compiled, only inductor's code generation (~45 s for the Gemma stand-in on this CPU,
    covered by the LLaVA-1.5 test above) is left out. Same rows as the plain path."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    def eager_backend(device):
        config = CompileConfig(fullgraph=False, dynamic=False, backend="eager")
        config._compile_all_devices = True  # as compat.compile_config does on the CPU
        return config

    monkeypatch.setattr(engine, "compile_config", eager_backend)
    model, processor = load_llava(stand_ins[name], dtype="float32")
    plain = _collect(model, processor, tasks, tmp_path / "plain", name)
    counters.clear()
    fast = _collect(model, processor, tasks, tmp_path / "compiled", name,
                    speedups=Speedups(share_prefix=True, static_cache=True, compile=True))
    pd.testing.assert_frame_equal(fast, plain, obj=f"{name} compiled")
    assert counters["stats"]["calls_captured"] > 0, f"{name}: nothing was compiled"


def test_a_second_model_is_compiled_too(tasks, tmp_path, monkeypatch):
    """torch.compile's recompile limit counts per code object, and every model of a class runs
    the same forward code: once one model (or its many batch shapes) used it up, a later model
    in the same process (notebook 03's next model) would decode uncompiled, silently. The
    engine resets the compiler when a new model starts compiled decoding. (The limit is set to
    1 here so that two tiny models show it; the default, 8, is used up the same way.)"""
    from torch._dynamo.utils import counters

    from ifl.collect.synthetic import tiny_llava

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    speedups = Speedups(static_cache=True, compile=True)
    text_only = tasks[tasks.task_id == "z-text"]
    for seed in (0, 1):
        counters.clear()
        collect_responses(*tiny_llava(seed), text_only, model_name=f"m{seed}", template="llava_hf",
                          max_new_tokens=3, batch_size=1, out_dir=tmp_path, progress=False,
                          speedups=speedups)
        assert counters["stats"]["calls_captured"] > 0, f"model {seed} was not compiled"


def _steering(model, positions: str):
    """A LanguageSteering with a random direction, large enough to change the tiny models'
    greedy tokens (so a hook missing from the prefix path, or wrongly on it, shows)."""
    from ifl.steer import LanguageSteering, default_layer

    vector = 4.0 * torch.randn(model.config.get_text_config().hidden_size,
                               generator=torch.Generator().manual_seed(0))
    return LanguageSteering("de", default_layer(model), "test", 1.0, positions, vector)


@pytest.mark.parametrize("name", HUB_CLASSES)
def test_steered_rows_with_shared_prefix_equal_plain_path(stand_ins, tasks, tmp_path, name, caplog):
    """Notebook 07's steered collection: with positions="generated" the vector is added from the
    last prompt token on, which lies in the per-row suffix, so the shared prefix (prefilled
    without the hook) is what the plain path computes there too; the rows are the same. With
    positions="all" the prefix would be steered: the batch runs the plain path, same rows."""
    model, processor = load_llava(stand_ins[name], dtype="float32")
    unsteered = _collect(model, processor, tasks, tmp_path / "unsteered", name)
    for positions in ("generated", "all"):
        steer = _steering(model, positions)
        plain = _collect(model, processor, tasks, tmp_path / positions, name, steering=steer)
        assert (plain["response"] != unsteered["response"]).any(), f"{positions}: no effect"
        for speedups in (Speedups(share_prefix=True),
                         Speedups(share_prefix=True, static_cache=True)):
            caplog.clear()
            engine._SAID.clear()  # the fallback is logged once per process: here once per run
            with caplog.at_level(logging.WARNING, logger="ifl.collect.engine"):
                fast = _collect(model, processor, tasks, tmp_path / f"{positions}-{speedups}",
                                name, steering=steer, speedups=speedups)
            pd.testing.assert_frame_equal(fast, plain, obj=f"{name} {positions} {speedups}")
            assert ("prefix sharing off" in caplog.text) == (positions == "all")


def test_prefix_is_computed_once_per_image(stand_ins, tasks):
    """The batch of 12 image rows holds 3 images: the prefix forward runs on 3 rows, and the
    rows are re-laid [prefix][pads][suffix] with every last prompt token in the last column."""
    model, processor = load_llava(stand_ins["tiny-llava-1.5"], dtype="float32")
    t = template_for("tiny-llava-1.5")
    from ifl.collect.engine import build_items
    items = build_items(tasks, t, ("image",))
    measure(items, processor)
    batch = order(items, by_image=True)[0]
    images = [it.task_id.split("-")[0] for it in batch]
    assert len(images) == 12 and all(images[k:k + 4] == [images[k]] * 4 for k in (0, 4, 8))
    from ifl.collect.engine import decode_image
    inputs = processor(text=[it.prompt for it in batch], images=[decode_image(it.image) for it in batch],
                       return_tensors="pt", padding=True)
    shared = plan(inputs, [it.image for it in batch], image_token_id=model.config.image_token_id,
                  pad_token_id=processor.tokenizer.pad_token_id)
    assert shared.n_images == 3 and len(shared.rows) == 12
    ids, mask = shared.inputs["input_ids"], shared.inputs["attention_mask"]
    assert (mask[:, :shared.prefix_len] == 1).all() and (mask[:, -1] == 1).all()
    assert (ids[:, :shared.prefix_len] == shared.prefix_ids[0]).all()
    assert torch.equal(mask.sum(1), inputs["attention_mask"].sum(1))  # no token lost or added
    calls = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        generate_batch(model, processor, batch, max_new_tokens=4, speedups=Speedups(share_prefix=True))
    finally:
        handle.remove()
    assert calls[0] == (3, shared.prefix_len)  # the prefix: once per image
    assert calls[1][0] == 12 and calls[1][1] == ids.shape[1] - shared.prefix_len  # the suffixes


def test_image_after_question_falls_back_and_says_so(stand_ins, caplog):
    """A prompt with the image after the question shares no prefix that holds the image: the
    plain path runs (same outputs) and a warning says why."""
    model, processor = load_llava(stand_ins["tiny-llava-1.5"], dtype="float32")
    image = _png(0)
    items = [Item(f"t{i}", "image", f"USER: {q}\n<image> ASSISTANT:", image)
             for i, q in enumerate(QUESTIONS.values())]
    plain = generate_batch(model, processor, items, max_new_tokens=4)
    with caplog.at_level(logging.WARNING, logger="ifl.collect.engine"):
        fast = generate_batch(model, processor, items, max_new_tokens=4,
                              speedups=Speedups(share_prefix=True))
    assert "prefix sharing off" in caplog.text and "image first" in caplog.text
    assert [r["response"] for r in fast] == [r["response"] for r in plain]


def test_speedups_parse():
    assert Speedups.of(None) == Speedups()
    assert Speedups.of(["share_prefix"]) == Speedups(share_prefix=True)
    assert str(Speedups.of({"share_prefix": True, "static_cache": True})) == "share_prefix+static_cache"
    with pytest.raises(ValueError, match="unknown speedups"):
        Speedups.of({"prefix": True})
    with pytest.raises(ValueError, match="needs static_cache"):
        Speedups(compile=True)
