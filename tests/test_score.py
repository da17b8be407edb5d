"""Scoring responses: the language surrogate, miniature gold labels and the naive IFL table."""
import pandas as pd
import pytest

from ifl.data.miniature import make_tasks
from ifl.langid import load_fallback
from ifl.score import fidelity_table, join_tasks, miniature_gold, score_language


@pytest.fixture(scope="module")
def scored():
    tasks = make_tasks(2, ["en", "de"], seed=0)
    vqa = tasks[tasks["benchmark"] == "shapes_vqa"]
    rows = []
    for t in vqa.itertuples():
        # image condition answers in English, text condition in the query's language
        rows.append(dict(model="m", task_id=t.task_id, condition="image",
                         response="The star is purple and it is on the right."))
        rows.append(dict(model="m", task_id=t.task_id, condition="text", response=t.reference))
    return join_tasks(pd.DataFrame(rows), tasks), vqa


def test_join_names_unknown_tasks():
    tasks = make_tasks(1, ["en"], seed=0)
    with pytest.raises(KeyError, match="not in the task table.*'nope'"):
        join_tasks(pd.DataFrame([dict(model="m", task_id="nope", condition="image", response="x")]), tasks)


def test_surrogate_gold_and_naive_ifl(scored):
    joined, vqa = scored
    out = miniature_gold(score_language(joined, load_fallback()), annotator_error_rate=0.0, seed=0)
    german_image = out[(out["lang"] == "de") & (out["image"] == 1)]
    assert (german_image["gold_lang"] == "en").all() and (german_image["fidelity_gold"] == 0).all()
    text = out[out["image"] == 0]
    assert (text["gold_lang"] == text["lang"]).all()      # references are language-pure
    assert (text["correct_gold"] == 1).all()              # a reference answers its own question
    table = fidelity_table(out, "fidelity_gold")
    assert table.loc[("m", "shapes_vqa", "de"), "ifl"] == -1.0
    assert table.loc[("m", "shapes_vqa", "en"), "ifl"] == 0.0


def test_annotator_errors_change_about_that_share(scored):
    joined, _ = scored
    big = pd.concat([joined] * 50, ignore_index=True)
    noisy = miniature_gold(big, annotator_error_rate=0.2, seed=1)
    wrong = (noisy["gold_lang"] != noisy["gold_true_lang"]).mean()
    assert 0.12 < wrong < 0.28
