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
