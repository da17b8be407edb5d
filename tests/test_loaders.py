"""Benchmark loaders on the offline fixtures (same code path as the hub), the offline error,
and the paper row-count warning."""
from __future__ import annotations

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ifl.data import hub
from ifl.data.languages import LANGUAGES
from ifl.data.llava_training import image_path, load_llava_mix665k, load_llava_pretrain
from ifl.data.llavaw import load_llavaw
from ifl.data.maxm import _warn_if_latin, load_maxm
from ifl.data.multiq import load_multiq
from ifl.data.schema import validate_tasks
from ifl.data.visit import load_visit, visit_translated_tasks
from ifl.smoke.fixtures import PHRASES, picture, write_fixtures


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets_cache")


# ---------------------------------------------------------------------------------- fixtures
def test_fixtures_are_hub_layouts_and_idempotent(tmp_path):
    paths = write_fixtures(tmp_path)
    assert (paths["maxm"] / "data" / "iw-00000-of-00001.parquet").is_file()
    assert (paths["xm3600"] / "data" / "he-00000-of-00001.parquet").is_file()
    assert (paths["llavaw"] / "data" / "english-00000-of-00001.parquet").is_file()
    assert (paths["visit"] / "test" / "metadata.csv").is_file()
    assert (paths["multiq"] / "MultiQ.csv").is_file()
    assert "configs:" in (paths["maxm"] / "README.md").read_text()
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    write_fixtures(tmp_path)  # unchanged bytes are not rewritten: mtimes survive
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


def test_fixture_parquet_has_hub_arrow_types(fx):
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    maxm = pq.read_schema(fx["maxm"] / "data" / "iw-00000-of-00001.parquet")
    assert maxm.field("image").type == image
    assert maxm.field("image_captions").type == pa.list_(pa.string())
    llavaw = pq.read_schema(fx["llavaw"] / "data" / "urdu-00000-of-00001.parquet")
    assert llavaw.field("question_id").type == pa.int64()
    assert llavaw.names == ["image_id", "image", "image_caption", "question_id", "question",
                            "question_category", "gpt4_answer", "gpt4_model_id"]


# ---------------------------------------------------------------------------------- MaXM
def test_maxm_tasks_hebrew_and_own_parallel_ids(fx, cache):
    tasks = load_maxm(fx["maxm"], cache_dir=cache, check_counts=False)
    validate_tasks(tasks)
    assert tasks["lang"].value_counts().to_dict() == dict.fromkeys(
        ["en", "fr", "hi", "he", "ro", "th", "zh"], 2)
    assert "iw" not in set(tasks["lang"]) and tasks["task_id"].str.startswith("maxm-he-").sum() == 2
    assert (tasks["parallel_id"] == tasks["task_id"]).all()      # different images per language
    he = tasks[tasks["lang"] == "he"].iloc[0]
    assert he["question"] == PHRASES["he"].q_color and he["reference"] == PHRASES["he"].a_color
    assert he["description"] == PHRASES["he"].square and he["description_lang"] == "he"
    assert he["image"] == picture("square")                       # encoded bytes, untouched


def test_maxm_xm3600_descriptions_with_en_fallback(fx, cache):
    kwargs = dict(description="xm3600", xm3600_source=fx["xm3600"], cache_dir=cache,
                  check_counts=False)
    tasks = load_maxm(fx["maxm"], **kwargs).set_index("lang")
    assert tasks.loc["he", "description"].tolist() == [PHRASES["he"].square_short,
                                                       PHRASES["he"].circles_short]
    assert set(tasks.loc["he", "description_lang"]) == {"he"}     # xm3600's Hebrew is `he`
    ro = tasks.loc["ro"].set_index("reference")                   # ro circles: not in xm3600 ro
    assert ro.loc[PHRASES["ro"].a_count, "description"] == PHRASES["en"].circles_short
    assert ro.loc[PHRASES["ro"].a_count, "description_lang"] == "en"
    assert ro.loc[PHRASES["ro"].a_color, "description_lang"] == "ro"
    fixed = load_maxm(fx["maxm"], langs=["th"], description_lang="en", **kwargs)
    assert fixed["description"].tolist() == [PHRASES["en"].square_short, PHRASES["en"].circles_short]
    assert [(s["name"], s["source"], s["revision"]) for s in fixed.attrs["sources"]] == [
        ("maxm", str(fx["maxm"]), None), ("xm3600", str(fx["xm3600"]), None)]


def test_maxm_rejects_languages_it_lacks(fx, cache):
    with pytest.raises(ValueError, match="MaXM has no 'de' split"):
        load_maxm(fx["maxm"], langs=["de"], cache_dir=cache)


def test_maxm_flags_latin_captions_in_non_latin_split(caplog):
    with caplog.at_level(logging.WARNING, logger="ifl.data.maxm"):
        _warn_if_latin("th", ["A red square on a white background."])
        _warn_if_latin("th", [PHRASES["th"].square])
        _warn_if_latin("fr", ["A red square."])                   # Latin script: not checkable
    assert len(caplog.records) == 1 and "th split are mostly Latin" in caplog.text


# ---------------------------------------------------------------------------------- LLaVAW
def test_llavaw_parallel_across_ten_languages(fx, cache):
    tasks = load_llavaw(fx["llavaw"], cache_dir=cache, check_counts=False)
    validate_tasks(tasks)
    langs = {lang.iso for lang in LANGUAGES.values() if lang.palo_split}
    assert set(tasks["lang"]) == langs and len(langs) == 10
    assert tasks["parallel_id"].value_counts().to_dict() == {"llavaw-0": 10, "llavaw-1": 10}
    assert (tasks["description_lang"] == tasks["lang"]).all()
    ur = tasks[tasks["task_id"] == "llavaw-ur-1"].iloc[0]
    assert (ur["question"], ur["description"], ur["reference"], ur["category"]) == (
        PHRASES["ur"].q_count, PHRASES["ur"].circles, PHRASES["ur"].a_count, "complex")
    assert ur["image"] == picture("circles")


# ---------------------------------------------------------------------------------- VisIT
def test_visit_keeps_rows_rated_correct(fx, cache):
    tasks = load_visit(fx["visit"], cache_dir=cache, check_counts=False)
    validate_tasks(tasks)
    assert len(tasks) == 3 and not tasks["image_id"].str.contains("wrong").any()
    assert len(load_visit(fx["visit"], only_correct=False, cache_dir=cache, check_counts=False)) == 4
    first = tasks.iloc[0]
    assert first["task_id"] == "visit-en-1_tested_skill_color_fixture_square"
    assert first["parallel_id"] == "visit-1_tested_skill_color_fixture_square"
    assert first["question"] == "What color is the square?" and first["reference"] == "Red."
    assert first["description"].startswith("A red square sits") and first["description_lang"] == "en"
    assert first["image"] == (fx["visit"] / "test" / "1_tested_skill_color_fixture_square.png").read_bytes()
    assert tasks["reference"].isna().sum() == 1                   # empty reference_output -> missing


def test_a_local_copy_moved_elsewhere_is_read_from_its_new_place(tmp_path):
    """Regression: datasets served a moved local imagefolder from its cache, whose image paths
    pointed into the old, deleted folder (FileNotFoundError in notebook 01)."""
    import shutil
    from ifl.smoke.fixtures import write_visit
    old, new, cache = tmp_path / "old", tmp_path / "new", tmp_path / "cache"
    first = load_visit(write_visit(old), cache_dir=cache, check_counts=False)
    shutil.rmtree(old)
    again = load_visit(write_visit(new), cache_dir=cache, check_counts=False)
    assert again["image"].tolist() == first["image"].tolist()


def test_visit_translations_share_parallel_ids(fx, cache):
    en = load_visit(fx["visit"], cache_dir=cache, check_counts=False)
    n = len(en)
    translations = {("question", "de"): [f"Frage {i}" for i in range(n)],
                    ("description", "de"): [f"Beschreibung {i}" for i in range(n)],
                    ("question", "th"): [f"คำถาม {i}" for i in range(n)]}
    out = visit_translated_tasks(en, translations)
    validate_tasks(out)
    assert out["lang"].tolist() == ["de"] * n + ["th"] * n
    assert out["parallel_id"].tolist() == en["parallel_id"].tolist() * 2
    de, th = out[out["lang"] == "de"], out[out["lang"] == "th"]
    assert set(de["description_lang"]) == {"de"} and de["description"].iloc[0] == "Beschreibung 0"
    assert set(th["description_lang"]) == {"en"}                  # caption not translated: stays en
    assert th["reference"].tolist() == en["reference"].tolist()
    assert (out["image"].tolist() == en["image"].tolist() * 2)
    # same ids as the generic translation stage gives
    from ifl.translate.structured import new_task_id
    assert de["task_id"].tolist() == [new_task_id(t, "en", "de") for t in en["task_id"]]
    with pytest.raises(ValueError, match="must be translated"):
        visit_translated_tasks(en, {("description", "de"): ["x"] * n})
    with pytest.raises(ValueError, match="has 1 texts"):
        visit_translated_tasks(en, {("question", "de"): ["x"]})
    with pytest.raises(ValueError, match="empty at row 1"):
        visit_translated_tasks(en, {("question", "de"): ["x", "", "y"]})


# ---------------------------------------------------------------------------------- MultiQ
def test_multiq_paper_languages_text_only(fx, cache):
    tasks = load_multiq(fx["multiq"], cache_dir=cache, check_counts=False)
    validate_tasks(tasks)
    assert tasks["lang"].value_counts().to_dict() == dict.fromkeys(LANGUAGES, 2)  # not iw, not sw
    assert tasks["image"].isna().all() and tasks["description"].isna().all()
    assert tasks["parallel_id"].value_counts().to_dict() == {"multiq-gpt-1": 14, "multiq-gpt-2": 14}
    zh = tasks[tasks["task_id"] == "multiq-zh-gpt-2"].iloc[0]
    assert zh["question"] == PHRASES["zh"].q_legs and zh["category"] == "animals"


# ---------------------------------------------------------------------------------- LLaVA data
def test_llava_training_records_and_images(fx, tmp_path):
    pretrain = load_llava_pretrain(fx["llava_pretrain"], check_counts=False)
    assert pretrain[0]["conversations"][0]["value"].endswith("<image>")
    assert all(image_path(r, fx["llava_pretrain"] / "images").is_file() for r in pretrain)
    mix = load_llava_mix665k(fx["llava_instruct"])
    paths = [image_path(r, fx["llava_images"]) for r in mix]
    assert [p.is_file() for p in paths[:2]] == [True, True] and paths[2] is None
    broken = [{"id": "1", "conversations": [{"from": "human"}]}]  # a turn without "value"
    (tmp_path / "llava_v1_5_mix665k.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="record 0 has no valid 'conversations'"):
        load_llava_mix665k(tmp_path)


# ---------------------------------------------------------------------------------- counts
def test_counts_differing_from_the_paper_only_warn(fx, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="ifl.data.hub"):
        tasks = load_llavaw(fx["llavaw"], langs=["en", "ar"], cache_dir=cache)
    assert len(tasks) == 4
    [record] = caplog.records
    assert "llavaw" in record.message and "en 2 (paper 60, -58)" in record.message
    assert "0f7202befe5a2e67a0e763f1afa4e6d09ce96414" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ifl.data.hub"):
        load_visit(fx["visit"], cache_dir=cache)
        assert "en 3 (paper 525, -522)" in caplog.text
        assert hub.check_counts(hub.source_spec("maxm"), {"he": 280, "iw": 3}) == {}


# ---------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("load, key, hub_id", [
    (load_maxm, "maxm_source", "floschne/maxm"),
    (load_llavaw, "llavaw_source", "floschne/multilingual-llava-bench-in-the-wild"),
    (load_visit, "visit_source", "mlfoundations/VisIT-Bench"),
    (load_multiq, "multiq_source", "caro-holt/MultiQ"),
    (load_llava_pretrain, "pretrain_source", "liuhaotian/LLaVA-Pretrain"),
])
def test_hub_ids_offline_raise_a_download_recipe(load, key, hub_id, tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"                    # set by conftest
    with pytest.raises(hub.SourceUnavailableError) as info:
        load(cache_dir=tmp_path)
    message = str(info.value)
    spec = next(s for s in hub.SOURCES.values() if s.hub_id == hub_id)
    assert "HF_HUB_OFFLINE=1" in message
    assert f"hf download {hub_id} --repo-type dataset --revision {spec.revision}" in message
    assert f"--local-dir {spec.local_dir}" in message and f"`{key}: ./{spec.local_dir}`" in message
    assert ("HF_TOKEN" in message) == (hub_id == "mlfoundations/VisIT-Bench")


def test_xm3600_offline_names_only_the_needed_splits(fx, cache, tmp_path):
    with pytest.raises(hub.SourceUnavailableError) as info:
        load_maxm(fx["maxm"], langs=["he"], description="xm3600", cache_dir=tmp_path)
    message = str(info.value)
    assert "hf download floschne/xm3600" in message and "`xm3600_source: ./data/xm3600`" in message
    assert "--include 'data/he-*'" in message and "--include 'data/en-*'" in message
    assert "data/zh-*" not in message


def test_missing_local_path_is_explained(tmp_path):
    with pytest.raises(hub.SourceUnavailableError, match="neither a directory nor a hub id"):
        load_multiq(tmp_path / "not" / "there")
    with pytest.raises(hub.SourceUnavailableError, match="no llava_v1_5_mix665k.json in"):
        load_llava_mix665k(tmp_path)


def test_changed_columns_are_named(tmp_path, cache):
    (tmp_path / "MultiQ.csv").write_text("id,language,question\ngpt-1,en,Why?\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt', 'domain'\]"):
        load_multiq(tmp_path, cache_dir=cache)


def test_image_bytes_reads_paths_without_reencoding(tmp_path):
    (tmp_path / "a.png").write_bytes(picture("square", "PNG"))
    assert hub.image_bytes({"bytes": None, "path": str(tmp_path / "a.png")}) == picture("square", "PNG")
    assert hub.image_bytes({"bytes": b"xyz", "path": None}) == b"xyz"
    assert hub.image_bytes(None) is None
