"""ifl.steer and ifl.hooks on a tiny random LLaVA (float32, CPU): the steering vector is read at
the site it is written to, generation with and without KV cache is the same, hooks always come
off, a left-padded batch steers each row like a batch of one, and the collect_responses adapter
works. Plus the steering-prompt table: every paper language, in its script."""
import unicodedata

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ifl.collect import collect_responses
from ifl.compat import decoder_layers
from ifl.data.languages import LANGUAGES
from ifl.data.miniature.tasks import DEFAULT_LANGS
from ifl.hooks import capture
from ifl.models import load_llava
from ifl.prompts import query, template
from ifl.smoke.tiny_llava import write_tiny_llava_models
from ifl.steer import (DESCRIBE_EN, LanguageSteering, default_layer, read_state, steering,
                       steering_prompts, steering_vector)

torch.set_num_threads(1)
LAYER = 0  # tiny stand-ins have 2 decoder layers: default_layer = 2 // 3 = 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = write_tiny_llava_models(tmp_path_factory.mktemp("smoke"))
    model, processor = load_llava(paths["tiny-llava-1.5"], dtype="float32")
    return model, processor


@pytest.fixture(scope="module")
def prompts(tiny):
    """Two image prompts of different lengths (a left-padded batch of two)."""
    _, processor = tiny
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(56, 56, 3) * 255).astype("uint8"))
    t = template("llava_hf")
    texts = [query(t, "What is in the image? Tell me about every shape you see.", image=True),
             query(t, "Colour?", image=True)]
    return processor(text=texts, images=[image, image], return_tensors="pt", padding=True)


def _vector(model, scale=3.0):
    return torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1)) * scale


def _generate(model, enc, *, use_cache=True, n=6):
    out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, enc["input_ids"].shape[1]:], torch.stack(out.logits, 1)


def _one(enc, i):
    """Row i of a left-padded batch, without its padding."""
    keep = enc["attention_mask"][i].bool()
    return {"input_ids": enc["input_ids"][i:i + 1, keep], "attention_mask": enc["attention_mask"][i:i + 1, keep],
            "pixel_values": enc["pixel_values"][i:i + 1]}


def test_doctests():
    import doctest

    import ifl.hooks
    import ifl.steer
    assert doctest.testmod(ifl.hooks).failed == 0 and doctest.testmod(ifl.steer).failed == 0


def test_default_layer_is_one_third_of_the_depth(tiny):
    model, _ = tiny
    assert default_layer(model) == len(decoder_layers(model)) // 3 == LAYER


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_steered_generation_is_the_same_with_and_without_kv_cache(tiny, prompts, positions):
    model, _ = tiny
    enc = _one(prompts, 0)
    base, _ = _generate(model, enc)
    with steering(model, _vector(model), LAYER, positions=positions,
                  prompt_length=int(enc["attention_mask"].sum())):
        cached, logits_cached = _generate(model, enc, use_cache=True)
        uncached, logits_uncached = _generate(model, enc, use_cache=False)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(logits_cached, logits_uncached, atol=1e-4, rtol=1e-4)
    assert not torch.equal(cached, base)  # the vector does steer


def test_vector_lands_only_at_generated_positions(tiny, prompts):
    """Prefill of P tokens: only position P-1 (which emits the first new token) gets the vector."""
    model, _ = tiny
    enc = _one(prompts, 1)
    P, vec = int(enc["attention_mask"].sum()), _vector(model)
    with torch.no_grad(), capture(model, [LAYER + 1]) as plain:
        model(**enc)
    with torch.no_grad(), steering(model, vec, LAYER, prompt_length=P), capture(model, [LAYER + 1]) as steered:
        model(**enc)  # capture is registered after steering's hook, so it sees the steered output
    diff = steered[LAYER + 1][0][0] - plain[LAYER + 1][0][0]
    assert diff[:P - 1].abs().max() == 0
    torch.testing.assert_close(diff[P - 1], vec)


def test_zero_vector_is_a_no_op(tiny, prompts):
    model, _ = tiny
    base, base_logits = _generate(model, prompts)
    with steering(model, torch.zeros(model.config.text_config.hidden_size), LAYER,
                  prompt_length=prompts["attention_mask"].sum(1)):
        same, logits = _generate(model, prompts)
    assert torch.equal(base, same) and torch.equal(base_logits, logits)


def test_hooks_are_removed_after_an_exception(tiny, prompts):
    model, _ = tiny
    enc = _one(prompts, 1)
    base, _ = _generate(model, enc)
    with pytest.raises(RuntimeError, match="boom"):
        with steering(model, _vector(model), LAYER, positions="all"):
            raise RuntimeError("boom")
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in decoder_layers(model))
    assert torch.equal(_generate(model, enc)[0], base)


def test_left_padded_batch_steers_each_row_like_a_batch_of_one(tiny, prompts):
    model, _ = tiny
    vec = _vector(model)
    assert prompts["attention_mask"][1].sum() < prompts["attention_mask"][0].sum()  # row 1 is padded
    with steering(model, vec, LAYER, prompt_length=prompts["attention_mask"].sum(1)):
        batched, batched_logits = _generate(model, prompts)
    for i in range(2):
        enc = _one(prompts, i)
        with steering(model, vec, LAYER, prompt_length=int(enc["attention_mask"].sum())):
            alone, alone_logits = _generate(model, enc)
        assert torch.equal(batched[i], alone[0])
        torch.testing.assert_close(batched_logits[i], alone_logits[0], atol=1e-4, rtol=1e-4)


def test_generated_mode_needs_the_prompt_length(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="prompt_length"):
        with steering(model, _vector(model), LAYER):
            pass


def test_steering_vector_is_read_at_the_written_site(tiny):
    """read_state: output of layer l == hidden_states[l + 1] (l < N - 1), BOS left out of the
    mean, float32 [hidden]; a_lang = difference of the two."""
    model, processor = tiny
    tok = processor.tokenizer
    ids = tok("Beschreibe dieses Bild ausführlich.", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
    mean, norms = read_state(model, tok, "Beschreibe dieses Bild ausführlich.", LAYER)
    last, _ = read_state(model, tok, "Beschreibe dieses Bild ausführlich.", LAYER, pool="last")
    assert mean.dtype == torch.float32 and mean.shape == (model.config.text_config.hidden_size,)
    torch.testing.assert_close(mean, hidden[1:].mean(0))
    torch.testing.assert_close(last, hidden[-1])
    assert len(norms) == ids.shape[1] - 1
    vec = steering_vector(model, tok, "Beschreibe dieses Bild ausführlich.", DESCRIBE_EN, LAYER, lang="de")
    en, _ = read_state(model, tok, DESCRIBE_EN, LAYER)
    torch.testing.assert_close(vec.vector, mean - en)
    assert vec.settings["hidden_states_index"] == LAYER + 1 and vec.settings["pool"] == "mean"
    assert 0 < vec.diagnostics["top2_share"] <= 1 and vec.diagnostics["norm"] > 0


def test_collect_responses_adapter(tiny, tmp_path):
    """LanguageSteering fits collect_responses' protocol: batched == one at a time, steered !=
    unsteered, and its repr (saved for resume checks) names the settings, not the tensor."""
    model, processor = tiny
    rng = np.random.RandomState(0)
    import io
    png = io.BytesIO()
    Image.fromarray((rng.rand(56, 56, 3) * 255).astype("uint8")).save(png, format="PNG")
    tasks = pd.DataFrame([dict(task_id=f"t{i}", question=q, image=png.getvalue(), description="A star.")
                          for i, q in enumerate(["Colour?", "What is in the image? Tell me about every shape."])])
    vec = steering_vector(model, processor.tokenizer, "Beschreibe dieses Bild ausführlich.", DESCRIBE_EN,
                          LAYER, lang="de")
    vec.vector = vec.vector * 20  # a random model needs a push to change its argmax
    adapter = LanguageSteering.of(vec)
    assert "tensor" not in repr(adapter) and vec.digest in repr(adapter)
    kw = dict(model_name="m", template="llava_hf", conditions=("image",), max_new_tokens=5, progress=False)
    batched = collect_responses(model, processor, tasks, batch_size=2, out_dir=tmp_path / "b",
                                steering=adapter, **kw)
    single = collect_responses(model, processor, tasks, batch_size=1, out_dir=tmp_path / "s",
                               steering=adapter, **kw)
    plain = collect_responses(model, processor, tasks, batch_size=2, out_dir=tmp_path / "p", **kw)
    assert batched["response"].tolist() == single["response"].tolist()
    assert batched["response"].tolist() != plain["response"].tolist()


# Unicode character-name prefixes of each languages.csv script
_SCRIPTS = {"Latn": ("LATIN",), "Hani": ("CJK",), "Deva": ("DEVANAGARI",), "Hebr": ("HEBREW",),
            "Thai": ("THAI",), "Arab": ("ARABIC",), "Beng": ("BENGALI",),
            "Jpan": ("CJK", "HIRAGANA", "KATAKANA"), "Cyrl": ("CYRILLIC",)}


def test_steering_prompt_table_covers_every_language_in_its_script():
    table = steering_prompts(LANGUAGES, source="table")
    assert set(table) == set(LANGUAGES) and table["en"] == DESCRIBE_EN
    for iso, text in table.items():
        letters = [c for c in text if c.isalpha()]
        in_script = [any(unicodedata.name(c).startswith(s) for s in _SCRIPTS[LANGUAGES[iso].script])
                     for c in letters]
        assert letters and all(in_script), (iso, text)
    with pytest.raises(KeyError, match="steering_prompts.csv"):
        steering_prompts(["en"], version=99)


def test_miniature_prompts_are_the_worlds_own_describe_sentence():
    mini = steering_prompts(DEFAULT_LANGS, source="miniature")
    assert mini["en"] == "Describe the image in detail."
    assert mini["de"] == "Beschreibe das Bild ausführlich."
    assert set(mini) == set(DEFAULT_LANGS)


def test_ifl_table_arithmetic_and_paper_tables():
    """IFL = image - text, IFL + remedy = steered image - text, on the steered items only; a
    model's average is the unweighted mean of its cells (the paper's Table 5 = mean of 6-9)."""
    from ifl.stages.steering import ifl_table, paper_tables

    def rows(cell, image, text):
        bench, lang = cell
        return ([dict(model="m", benchmark=bench, lang=lang, parallel_id=f"{bench}{k}", image=1, fidelity_lid=v)
                 for k, v in enumerate(image)]
                + [dict(model="m", benchmark=bench, lang=lang, parallel_id=f"{bench}{k}", image=0, fidelity_lid=v)
                   for k, v in enumerate(text)])
    base = pd.DataFrame(rows(("a", "de"), [0, 0, 1, 1], [1, 1, 1, 1]) + rows(("b", "zh"), [0, 1], [1, 1]))
    steered = pd.DataFrame([dict(model="m", benchmark="a", lang="de", parallel_id=f"a{k}", fidelity_lid=v)
                            for k, v in enumerate([1, 0, 1])]  # item a3 was not steered
                           + [dict(model="m", benchmark="b", lang="zh", parallel_id=f"b{k}", fidelity_lid=1)
                              for k in range(2)])
    t = ifl_table(base, steered).set_index(["benchmark", "lang"])
    assert t.loc[("a", "de"), "ifl"] == pytest.approx(1 / 3 - 1)          # a0..a2 only
    assert t.loc[("a", "de"), "ifl_remedy"] == pytest.approx(2 / 3 - 1)
    assert t.loc[("b", "zh"), "diff"] == pytest.approx(0.5)
    avg = t.loc[("average", "-")]
    assert avg["ifl"] == pytest.approx(((1 / 3 - 1) + (0.5 - 1)) / 2) and avg["n"] == 5
    assert avg["relative_pct"] == pytest.approx(100 * avg["diff"] / abs(avg["ifl"]))

    t5, t69 = paper_tables()
    assert set(t5["model"]) == set(t69["model"]) == {"llava-1.5-7b", "llava-1.5-13b", "bakllava", "llava-gemma-2b"}
    assert set(t69["benchmark"]) == {"llavaw", "maxm", "visit", "average"}
    cells = t69[t69["benchmark"] != "average"].groupby("model")["ifl"].mean()
    np.testing.assert_allclose(cells[t5.set_index("model").index], t5["ifl"], atol=6e-4)  # 6-9 average to 5


def test_steering_must_generate_as_notebook_03():
    from ifl.params import load_params
    from ifl.params_schema import Steering
    from ifl.stages.collect_responses import generation_settings
    from ifl.stages.steering import check_generation_matches_03

    params = load_params("params/default.yaml")
    generation = generation_settings(params.collect_responses, "cpu")  # what 03 writes
    check_generation_matches_03(generation, params.steering)  # the default file agrees with itself
    with pytest.raises(ValueError, match="max_new_tokens: 07_steering has 99"):
        check_generation_matches_03(generation, Steering(**{**params.steering.model_dump(), "max_new_tokens": 99}))
