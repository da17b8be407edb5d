"""Notebook 03/04 logic: which models and tasks, and the scored table's labels."""
import numpy as np
import pandas as pd
import pytest

from ifl.data.miniature import make_tasks
from ifl.langid import load_fallback
from ifl.params_schema import CollectResponses, ScoreLanguages
from ifl.stages.collect_responses import models_table, select_tasks
from ifl.stages.score_languages import annotate, score_responses


def variants():
    return pd.DataFrame({"variant": ["vicuna-clip-en", "yi-dinov2-zh"], "llm": ["vicuna", "yi"],
                         "vision": ["clip", "dinov2"], "data_lang": ["en", "zh"],
                         "model_dir": ["/m/a", "/m/b"]})


def test_models_table_expands_variants_and_names_models():
    p = CollectResponses(models=["llava-1.5-7b", "variants"],
                         model_sources={"llava-1.5-7b": "llava-hf/llava-1.5-7b-hf"})
    table = models_table(p, "paper", variants())
    assert table["model"].tolist() == ["llava-1.5-7b", "vicuna-clip-en", "yi-dinov2-zh"]
    assert table["template"].tolist() == ["llava_hf", "vicuna_v1", "chatml"]  # each LLM's own
    assert table.set_index("model").loc["yi-dinov2-zh", "data_lang"] == "zh"
    mini = models_table(CollectResponses(models=["variants"]), "miniature", variants())
    assert set(mini["template"]) == {"llava_hf"}


def test_models_table_errors_name_the_key():
    with pytest.raises(KeyError, match="model_sources"):
        models_table(CollectResponses(models=["bakllava"], model_sources={}), "paper", None)
    with pytest.raises(FileNotFoundError, match="notebook 02"):
        models_table(CollectResponses(models=["variants"]), "miniature", None)
    with pytest.raises(ValueError, match="listed twice"):
        models_table(CollectResponses(models=["variants", "variants"]), "miniature", variants())


def test_select_tasks_keeps_the_same_items_in_every_language():
    tasks = make_tasks(10, ["en", "de", "zh"], seed=0)
    chosen = select_tasks(tasks, benchmarks=["shapes_vqa"], max_per_cell=4, languages=["en", "de"],
                          seed=1)
    assert set(chosen["benchmark"]) == {"shapes_vqa"} and set(chosen["lang"]) == {"en", "de"}
    per_lang = chosen.groupby("lang")["parallel_id"].apply(frozenset)
    assert per_lang.nunique() == 1 and len(per_lang.iloc[0]) == 4
    again = select_tasks(tasks, benchmarks=["shapes_vqa"], max_per_cell=4, languages=["en", "de"], seed=1)
    pd.testing.assert_frame_equal(chosen, again)
    with pytest.raises(KeyError, match="benchmarks"):
        select_tasks(tasks, benchmarks=["maxm"], max_per_cell=None, languages=["en"], seed=0)


def test_responses_of_retrained_weights_are_collected_again(tmp_path):
    from ifl.stages.collect_responses import forget_stale, weights_id
    weights = tmp_path / "variant"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"one")
    first = weights_id(str(weights), None)
    assert weights_id("llava-hf/llava-1.5-7b-hf", "abc") == "llava-hf/llava-1.5-7b-hf@abc"
    out = tmp_path / "responses"
    assert not forget_stale(out, "v", first)
    (out / "v" / "shard-0-of-1").mkdir()   # responses stored from these weights
    assert not forget_stale(out, "v", first) and (out / "v" / "shard-0-of-1").exists()
    (weights / "model.safetensors").write_bytes(b"two")   # notebook 02 retrained the variant
    assert weights_id(str(weights), None) != first
    assert forget_stale(out, "v", weights_id(str(weights), None))
    assert not (out / "v" / "shard-0-of-1").exists() and (out / "v" / "weights.json").exists()


@pytest.fixture(scope="module")
def scored():
    tasks = make_tasks(20, ["en", "de", "zh"], seed=0)
    rng = np.random.default_rng(0)
    english = {"shapes_vqa": "red", "shapes_describe": "There is a red circle on the left."}
    rows = []
    for model in ("vicuna-clip-en", "yi-dinov2-zh"):
        for t in tasks.itertuples():
            for condition in ("image", "text"):
                # image answers drift to English half the time; text answers keep the reference
                answer = english[t.benchmark] if condition == "image" and rng.random() < .5 else t.reference
                rows.append(dict(model=model, task_id=t.task_id, condition=condition,
                                 response=answer, n_new_tokens=3))
    models = models_table(CollectResponses(models=["variants"]), "miniature", variants())
    return score_responses(pd.DataFrame(rows), tasks, models, load_fallback())


def test_miniature_annotation_labels_the_sample_and_keeps_the_truth(scored, tmp_path):
    p = ScoreLanguages(annotation_n=50, mini_annotator_error_rate=0.0)
    out = annotate(scored, p, world="miniature", seed=0, sheet_path=tmp_path / "sheet.csv")
    assert out["labeled"].sum() == 50
    assert out["sample_prob"].between(0, 1).all() and abs(out["sample_prob"].sum() - 50) < 1e-6
    lab = out[out["labeled"] == 1]
    assert lab["fidelity_gold"].notna().all() and out.loc[out["labeled"] == 0, "fidelity_gold"].isna().all()
    # an error-free annotator agrees with the truth on every labeled row
    assert (lab["fidelity_gold"] == lab["fidelity_true"]).all()
    assert out.groupby("condition")["fidelity_true"].mean()["image"] < 1.0
    sheet = pd.read_csv(tmp_path / "sheet.simulated.csv", encoding="utf-8-sig")
    assert len(sheet) == 50 and sheet["answer_language"].notna().all()
    blank = pd.read_csv(tmp_path / "sheet.csv", encoding="utf-8-sig")  # left blank for people
    assert len(blank) == 50 and blank["answer_language"].isna().all()


def test_paper_world_without_a_sheet_labels_nothing(scored, tmp_path):
    p = ScoreLanguages(annotation_n=30)
    out = annotate(scored, p, world="paper", seed=0, sheet_path=tmp_path / "sheet.csv")
    assert out["labeled"].sum() == 0 and out["fidelity_gold"].isna().all()
    assert (tmp_path / "sheet.csv").exists() and "fidelity_true" not in out


def test_paper_world_imports_a_filled_sheet(scored, tmp_path):
    blank = tmp_path / "blank.csv"
    annotate(scored, ScoreLanguages(annotation_n=30), world="paper", seed=0, sheet_path=blank)
    sheet = pd.read_csv(blank, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    sheet.loc[:9, "answer_language"] = "en"  # an annotator did the first ten rows
    sheet.loc[:9, "correct"] = "NA"
    filled = tmp_path / "filled.csv"
    sheet.to_csv(filled, index=False, encoding="utf-8-sig")
    out = annotate(scored, ScoreLanguages(annotation_n=30, annotation_sheet=str(filled)),
                   world="paper", seed=0, sheet_path=tmp_path / "again.csv")
    lab = out[out["labeled"] == 1]
    assert len(lab) == 10 and set(lab["gold_parsed"]) == {"english"}
    assert (lab["fidelity_gold"] == (lab["lang"] == "en")).all()
    assert out["correct_gold"].isna().all()  # NA = no coherent output: no accuracy label


def test_judge_asks_once_per_response_and_resumes(tmp_path):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from ifl.judge import judge_accuracy

    asked = []

    class Endpoint(BaseHTTPRequestHandler):  # a local OpenAI-compatible server
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            asked.append(prompt)
            answer = "Yes." if "Model answer: red" in prompt else "no"
            data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = pd.DataFrame({"model": "m", "task_id": ["a", "b", "c"], "condition": "image",
                         "question": "Colour?", "reference": "red", "response": ["red", "blue", ""]})
    url = f"http://127.0.0.1:{server.server_port}/v1"
    cache = tmp_path / "judge.jsonl"
    first = judge_accuracy(rows, endpoint=url, model="judge", cache=cache, progress=False)
    assert first.tolist() == [1.0, 0.0, 0.0] and len(asked) == 3
    again = judge_accuracy(rows, endpoint=url, model="judge", cache=cache, progress=False)
    assert again.tolist() == first.tolist() and len(asked) == 3  # all cached
    server.shutdown()
    with pytest.raises(ValueError, match="judge_model"):
        judge_accuracy(rows, endpoint=url, model=None, cache=cache)


def test_sheet_filled_in_place_keeps_every_label_on_rerun(scored, tmp_path):
    """The exported sheet, filled where it was written and given back: never overwritten."""
    from ifl.annotate import labels_held
    sheet_path = tmp_path / "annotation_sheet.csv"
    annotate(scored, ScoreLanguages(annotation_n=30), world="paper", seed=0, sheet_path=sheet_path)
    sheet = pd.read_csv(sheet_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    sheet["answer_language"] = "en"  # every row labeled, in place
    sheet.to_csv(sheet_path, index=False, encoding="utf-8-sig")
    given = ScoreLanguages(annotation_n=30, annotation_sheet=str(sheet_path))
    for _ in range(2):  # rerun twice
        out = annotate(scored, given, world="paper", seed=0, sheet_path=sheet_path)
        assert out["labeled"].sum() == 30
        assert labels_held(sheet_path) == 30
    assert labels_held(tmp_path / "annotation_sheet.blank.csv") == 0  # the fresh blank one


def test_a_given_sheet_without_labels_is_an_error(scored, tmp_path):
    from ifl.annotate import SheetError
    blank = tmp_path / "annotation_sheet.csv"
    annotate(scored, ScoreLanguages(annotation_n=30), world="paper", seed=0, sheet_path=blank)
    with pytest.raises(SheetError, match="no row has a label"):
        annotate(scored, ScoreLanguages(annotation_n=30, annotation_sheet=str(blank)),
                 world="paper", seed=0, sheet_path=tmp_path / "again.csv")


def test_miniature_honours_a_given_sheet(scored, tmp_path):
    sheet_path = tmp_path / "annotation_sheet.csv"
    annotate(scored, ScoreLanguages(annotation_n=30), world="miniature", seed=0, sheet_path=sheet_path)
    sheet = pd.read_csv(sheet_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    sheet.loc[:4, "answer_language"] = "zh"  # a reader labelled five rows by hand
    sheet.to_csv(sheet_path, index=False, encoding="utf-8-sig")
    out = annotate(scored, ScoreLanguages(annotation_n=30, annotation_sheet=str(sheet_path)),
                   world="miniature", seed=0, sheet_path=sheet_path)
    lab = out[out["labeled"] == 1]
    assert len(lab) == 5 and set(lab["gold_parsed"]) == {"chinese"}
    assert "fidelity_true" in out  # the oracle is still there


def test_identifier_glotlid_is_strict(tmp_path):
    """`identifier: glotlid` (paper.yaml) never falls back to lid.176: a missing GlotLID stops."""
    from ifl.params_schema import ScoreLanguages
    from ifl.stages.score_languages import identifier_for
    missing = str(tmp_path / "model_v3.bin")
    with pytest.raises(FileNotFoundError, match="GlotLID v3 is not available"):
        identifier_for(ScoreLanguages(identifier="glotlid", glotlid_source=missing))
