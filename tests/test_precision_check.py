"""The NF4-vs-bf16 check of notebook 03 on a tiny stand-in on CPU: both precisions collected on
the same seeded sample, IFL per precision and their difference with cluster-bootstrap CIs."""
import functools
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ifl.collect.precision import collect_precisions, ifl_by_precision, precision_sample
from ifl.models import load_llava, template_for
from ifl.smoke.tiny_llava import write_tiny_llava_models


def _png(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tasks(n_items=6, langs=("en", "de")):
    return pd.DataFrame([dict(task_id=f"{lang}-{i}", parallel_id=i, lang=lang,
                              question=f"What is {i}?", image=_png(i), description=f"Thing {i}.")
                         for i in range(n_items) for lang in langs])


def test_sample_is_seeded_and_keeps_every_language():
    tasks = _tasks()
    a, b = (precision_sample(tasks, n_items=3, seed=1) for _ in range(2))
    pd.testing.assert_frame_equal(a, b)
    assert a["parallel_id"].nunique() == 3 and set(a["lang"]) == {"en", "de"}


def test_precision_check_on_a_tiny_stand_in(tmp_path):
    pytest.importorskip("bitsandbytes")
    folder = write_tiny_llava_models(tmp_path / "smoke")["tiny-llava-1.5"]
    sample = precision_sample(_tasks(), n_items=4, seed=0)
    load = functools.partial(lambda q: load_llava(folder, dtype="bfloat16", quantization=q))
    responses = collect_precisions(load, sample, out_dir=tmp_path / "out", model_name="tiny",
                                   template=template_for(folder), max_new_tokens=4, batch_size=4,
                                   progress=False)
    assert set(responses["precision"]) == {"nf4", "bf16"}
    assert len(responses) == 2 * 2 * len(sample)   # precisions x conditions x tasks
    # a deterministic stand-in identifier: the response's first character decides the language
    predict = lambda texts: ["eng_Latn" if t[:1] < "m" else "deu_Latn" for t in texts]
    table = ifl_by_precision(responses, sample, predict, n_boot=200, seed=0)
    assert list(table["precision"]) == ["nf4", "bf16", "nf4 - bf16"]
    row = table.set_index("precision")
    assert row.loc["nf4 - bf16", "ifl"] == pytest.approx(row.loc["nf4", "ifl"] - row.loc["bf16", "ifl"])
    assert (table["ci_low"] <= table["ifl"] + 1e-12).all() and (table["ifl"] <= table["ci_high"] + 1e-12).all()
    assert (table["n_items"] == 4).all()
    again = ifl_by_precision(responses, sample, predict, n_boot=200, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_the_check_collects_only_the_chosen_models_at_their_batch_sizes(tmp_path, monkeypatch):
    """Notebook 03's check (stage03.precision_check): only `precision_check_models`, loaded by
    ifl.runtime.load_model (a NaN revision of a table reaches the loader as None), the bf16
    pass at `precision_check_batch_size`, scored by the identifier the params name."""
    pytest.importorskip("bitsandbytes")
    import ifl.collect.precision as precision
    import ifl.models
    from ifl.params_schema import CollectResponses
    from ifl.stages import collect_responses as stage03

    folder = write_tiny_llava_models(tmp_path / "smoke")["tiny-llava-1.5"]
    models = pd.DataFrame([dict(model=name, kind="llava", source=str(folder), revision=np.nan,
                                template=template_for(folder).name, image_first=True)
                           for name in ("small", "too-big")])
    p = CollectResponses(models=["small", "too-big"], model_sources={}, max_new_tokens=3,
                         batch_size=5, precision_check_models=["small"],
                         precision_check_batch_size=3, precision_check_items=3,
                         precision_check_identifier="fallback")
    real_load, real_collect = ifl.models.load_llava, precision.collect_responses
    loads, batches = [], {}

    def load_llava(source, *, revision=None, **kwargs):
        loads.append((source, revision))
        return real_load(source, revision=revision, **kwargs)

    def collect_responses(*args, model_name, batch_size, **kwargs):
        batches[model_name] = batch_size
        return real_collect(*args, model_name=model_name, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(ifl.models, "load_llava", load_llava)
    monkeypatch.setattr(precision, "collect_responses", collect_responses)
    table = stage03.precision_check(models, _tasks(), tmp_path / "check", p, seed=0, device="cpu")
    assert set(table["model"]) == {"small"}
    assert loads == [(str(folder), None), (str(folder), None)]   # NF4, then bf16
    assert batches == {"small@nf4": 5, "small@bf16": 3}
    assert table["identifier"].str.contains("lid.176").all()


def test_the_check_identifier_follows_notebook_04s_rule(tmp_path):
    """identifier: glotlid is GlotLID or an error (never a silent lid.176), as in notebook 04."""
    from ifl.params_schema import CollectResponses
    from ifl.stages.collect_responses import precision_identifier

    missing = str(tmp_path / "nowhere" / "model_v3.bin")
    with pytest.raises(FileNotFoundError, match="GlotLID v3 is not available"):
        precision_identifier(CollectResponses(precision_check_identifier="glotlid",
                                              precision_check_glotlid_source=missing))
    with pytest.warns(UserWarning, match="fallback"):
        auto = precision_identifier(CollectResponses(precision_check_identifier="auto",
                                                     precision_check_glotlid_source=missing))
    assert auto.is_fallback


def test_checked_models_must_be_collected_models(tmp_path):
    from ifl.params import ParamsError, load_params

    path = tmp_path / "p.yaml"
    path.write_text("03_collect_responses:\n  models: [llava-1.5-7b, variants]\n"
                    "  precision_check_models: [llava-1.5-13b]\n")
    with pytest.raises(ParamsError, match=r"precision_check_models names \['llava-1.5-13b'\]"):
        load_params(path)
