"""Translation: resume == uninterrupted, structure kept, backends on fakes and a tiny NLLB."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from ifl.data.languages import code_for
from ifl.data.schema import tasks_frame
from ifl.translate import (AzureTranslator, AzureTranslatorError, ModelNotAvailableError,
                           NLLBTranslator, TranslationError, TranslationStore,
                           translate_conversations, translate_llava_json, translate_task_fields,
                           translate_texts)
from ifl.translate.store import text_key

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"sentence number {i} " + "x" * (i % 7) for i in range(30)] + ["sentence number 3 xxx"]


class Fake:
    """Deterministic backend that records every call; optionally fails or is interrupted."""
    backend_id = "fake:v1"

    def __init__(self, fail_on=(), interrupt_at_call=None, delay_s=0.0):
        self.calls: list[list[str]] = []
        self.fail_on, self.interrupt_at_call = set(fail_on), interrupt_at_call
        self.delay_s = delay_s

    def translate_batch(self, texts, src, tgt):
        self.calls.append(list(texts))
        time.sleep(self.delay_s)
        if self.interrupt_at_call is not None and len(self.calls) >= self.interrupt_at_call:
            raise KeyboardInterrupt
        if self.fail_on & set(texts):
            raise RuntimeError("boom")
        return [f"{tgt}:{t[::-1]}" for t in texts]

    @property
    def sent(self) -> list[str]:
        return [t for call in self.calls for t in call]


def expected(texts, tgt="de"):
    return [f"{tgt}:{t[::-1]}" if t.strip() else t for t in texts]


# --- translate_texts: dedup, order, failures, resume ----------------------------------------

def test_duplicates_once_order_restored_blanks_kept(tmp_path):
    fake = Fake()
    texts = ["bb", "a", "", "ccc", "a", "  "]
    run = translate_texts(texts, "en", "de", fake, tmp_path, batch_size=2, progress=False)
    assert run.translations == expected(texts)
    assert sorted(fake.sent) == ["a", "bb", "ccc"]        # each distinct text once, no blanks
    assert fake.calls[0] == ["ccc", "bb"]                  # longest first


def test_per_item_failures_recorded_and_retried(tmp_path):
    fake = Fake(fail_on={"sentence number 5 xxxxx"})
    run = translate_texts(TEXTS, "en", "de", fake, tmp_path, batch_size=4, progress=False)
    assert run.failed == {"sentence number 5 xxxxx": "RuntimeError: boom"}
    bad = TEXTS.index("sentence number 5 xxxxx")
    assert run.translations[bad] is None
    assert [t for i, t in enumerate(run.translations) if i != bad] == \
        [t for i, t in enumerate(expected(TEXTS)) if i != bad]
    assert fake.sent.count("sentence number 5 xxxxx") == 3  # batch, item by item, retry pass
    shard = TranslationStore(tmp_path).shard("fake:v1", "en", "de")
    assert shard.errors == {text_key("sentence number 5 xxxxx"): "RuntimeError: boom"}
    rerun = Fake()  # a rerun retries only the failure
    assert translate_texts(TEXTS, "en", "de", rerun, tmp_path, progress=False).translations == \
        expected(TEXTS)
    assert rerun.sent == ["sentence number 5 xxxxx"]


def test_resume_after_keyboard_interrupt_equals_uninterrupted(tmp_path):
    reference = translate_texts(TEXTS, "en", "de", Fake(), tmp_path / "a", 4, False).translations
    with pytest.raises(KeyboardInterrupt):
        translate_texts(TEXTS, "en", "de", Fake(interrupt_at_call=3), tmp_path / "b", 4, False)
    shard = TranslationStore(tmp_path / "b").shard("fake:v1", "en", "de")
    assert len(shard.done) == 8                             # two finished batches were kept
    rerun = Fake()
    run = translate_texts(TEXTS, "en", "de", rerun, tmp_path / "b", 4, False)
    assert run.translations == reference
    assert run.cached == 8 and run.translated == len(set(TEXTS)) - 8
    assert not {text_key(t) for t in rerun.sent} & set(shard.done)  # nothing translated twice
    assert len(rerun.sent) == len(set(rerun.sent)) == len(set(TEXTS)) - 8


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]
        from test_translate import Fake, TEXTS
        from ifl.translate import translate_texts
        translate_texts(TEXTS, "en", "de", Fake(delay_s=0.2), {str(tmp_path)!r}, 2, False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    path = TranslationStore(tmp_path).path("fake:v1", "en", "de")
    deadline = time.time() + 30
    while time.time() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < 6):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = set(TranslationStore(tmp_path).shard("fake:v1", "en", "de").done)
    assert 6 <= len(done_before) < len(set(TEXTS))
    rerun = Fake()
    run = translate_texts(TEXTS, "en", "de", rerun, tmp_path, batch_size=2, progress=False)
    assert run.translations == expected(TEXTS)
    assert {text_key(t) for t in rerun.sent} == {text_key(t) for t in TEXTS} - done_before
    assert len(rerun.sent) == len(set(rerun.sent))


def test_truncated_last_line_is_tolerated_and_cut(tmp_path):
    translate_texts(TEXTS[:6], "en", "de", Fake(), tmp_path, 3, False)
    path = TranslationStore(tmp_path).path("fake:v1", "en", "de")
    with open(path, "ab") as f:  # what a SIGKILL in the middle of a write leaves behind
        f.write(b'{"key": "' + text_key(TEXTS[6]).encode() + b'", "transl')
    rerun = Fake()
    run = translate_texts(TEXTS[:10], "en", "de", rerun, tmp_path, 3, False)
    assert run.translations == expected(TEXTS[:10]) and sorted(rerun.sent) == sorted(TEXTS[6:10])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10 and all(json.loads(line) for line in lines)


def test_one_writer_per_shard(tmp_path):
    store = TranslationStore(tmp_path)
    with store.shard("fake:v1", "en", "de") as first:
        first.append({"a": "b"}, {})
        with pytest.raises(RuntimeError, match="another process"):
            store.shard("fake:v1", "en", "de").append({"c": "d"}, {})


# --- structure-preserving helpers ---------------------------------------------------------

RECORDS = [
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
        {"from": "gpt", "value": "White and red.\n\n  - It has two doors."},
        {"from": "human", "value": "What is behind it?"}, {"from": "gpt", "value": ""}]},
    {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [
        {"from": "human", "value": "Render a clear summary of the photo.\n<image>"},
        {"from": "gpt", "value": "select luxury furniture"}]},
    {"id": "sharegpt_1", "model": "", "conversations": [  # text only: no "image" key
        {"from": "human", "value": "Write a story. It should be short. Use three sentences."},
        {"from": "gpt", "value": "Once upon a time."}]},
]


def test_conversations_keep_image_token_layout_and_keys(tmp_path):
    fake = Fake()
    out = translate_conversations(RECORDS, "de", fake, tmp_path, max_chars=40, progress=False)
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS]
    assert [set(r) for r in out] == [set(r) for r in RECORDS] and "image" not in out[2]
    assert out[0]["conversations"][0]["value"] == "<image>\nde:?sub eht fo sroloc eht era tahW"
    assert out[0]["conversations"][1]["value"] == "de:.der dna etihW\n\n  de:.srood owt sah tI -"
    assert out[0]["conversations"][3] == {"from": "gpt", "value": ""}
    assert out[1]["conversations"][0]["value"] == "de:.otohp eht fo yrammus raelc a redneR\n<image>"
    # long line: cut between sentences (<= 40 chars each), rejoined with a space
    assert out[2]["conversations"][0]["value"] == \
        "de:.trohs eb dluohs tI .yrots a etirW de:.secnetnes eerht esU"
    assert all("<image>" not in t and "\n" not in t and len(t) <= 40 for t in fake.sent)
    assert RECORDS[0]["conversations"][0]["value"].startswith("<image>\nWhat")  # input untouched


def test_llava_json_file_round_trip(tmp_path):
    src = tmp_path / "mix.json"
    src.write_text(json.dumps(RECORDS), encoding="utf-8")
    out = translate_llava_json(src, tmp_path / "out" / "mix.zh.json", "zh", Fake(),
                               tmp_path / "store", progress=False)
    assert json.loads(out.read_text(encoding="utf-8")) == \
        translate_conversations(RECORDS, "zh", Fake(), tmp_path / "store", progress=False)
    assert not list(out.parent.glob("*.tmp"))


def test_conversation_failures_drop_source_or_raise(tmp_path):
    fake = Fake(fail_on={"select luxury furniture"})
    dropped = translate_conversations(RECORDS, "de", fake, tmp_path / "s", progress=False)
    assert [r["id"] for r in dropped] == ["000000033471", "sharegpt_1"]
    kept = translate_conversations(RECORDS, "de", fake, tmp_path / "s", on_error="source",
                                   progress=False)
    assert kept[1]["conversations"][1]["value"] == "select luxury furniture"
    with pytest.raises(TranslationError, match="004539375"):
        translate_conversations(RECORDS, "de", fake, tmp_path / "s", on_error="raise",
                                progress=False)


def test_task_fields_parallel_rows(tmp_path):
    tasks = tasks_frame([dict(task_id=f"visit-en-{i}", parallel_id=f"visit-{i}", benchmark="visit",
                              lang="en", question=f"What is {i}?", image=b"png", reference="ref",
                              description=None if i else "A cat.", description_lang="en",
                              category="c") for i in range(2)])
    out = translate_task_fields(tasks, ["de", "zh"], Fake(), tmp_path, progress=False,
                                fields=("question", "description", "reference"))
    assert len(out) == 6 and set(out["parallel_id"]) == {"visit-0", "visit-1"}
    de = out[out["lang"] == "de"].set_index("parallel_id")
    assert de.loc["visit-0", "task_id"] == "visit-de-0"
    assert de.loc["visit-0", "question"] == "de:?0 si tahW"
    assert de.loc["visit-0", "description"] == "de:.tac A"
    assert de.loc["visit-0", "description_lang"] == "de"
    assert pd.isna(de.loc["visit-1", "description"])
    assert de.loc["visit-1", "description_lang"] == "en"
    assert de.loc["visit-0", "reference"] == "de:fer" and de.loc["visit-0", "image"] == b"png"
    assert out[out["lang"] == "zh"]["category"].tolist() == ["c", "c"]


# --- Azure backend on a fake HTTP layer -----------------------------------------------------

class FakeHttp:
    def __init__(self, statuses):
        self.statuses, self.requests = list(statuses), []

    def __call__(self, url, headers, body, timeout_s):
        self.requests.append((url, dict(headers), json.loads(body)))
        status = self.statuses.pop(0)
        if status != 200:
            return status, {"Retry-After": "2"}, b'{"error": {"code": 429001, "message": "slow"}}'
        items = self.requests[-1][2]
        return 200, {}, json.dumps([{"translations": [{"text": "T:" + i["Text"], "to": "x"}]}
                                    for i in items]).encode()


def test_azure_request_shape_code_mapping_and_retry(monkeypatch):
    monkeypatch.setenv("AZURE_TRANSLATOR_KEY", "k")
    monkeypatch.setenv("AZURE_TRANSLATOR_REGION", "westeurope")
    http, sleeps = FakeHttp([429, 503, 200]), []
    azure = AzureTranslator(http=http, sleep=sleeps.append, backoff_s=0.5)
    assert azure.translate_batch(["Hi", "Bye"], "en", "zh") == ["T:Hi", "T:Bye"]
    url, headers, body = http.requests[-1]
    assert url == ("https://api.cognitive.microsofttranslator.com/translate"
                   "?api-version=3.0&from=en&to=zh-Hans")
    assert headers["Ocp-Apim-Subscription-Key"] == "k"
    assert headers["Ocp-Apim-Subscription-Region"] == "westeurope"
    assert body == [{"Text": "Hi"}, {"Text": "Bye"}] and len(http.requests) == 3
    assert sleeps == [2.0, 2.0]  # Retry-After wins over the backoff
    many = FakeHttp([200, 200])  # 1,500 texts -> two requests (1,000 elements at most)
    out = AzureTranslator(http=many, sleep=sleeps.append).translate_batch(["x"] * 1500, "en", "he")
    assert len(out) == 1500 and [len(r[2]) for r in many.requests] == [1000, 500]
    assert "to=he" in many.requests[0][0]


def test_azure_errors(monkeypatch):
    monkeypatch.delenv("AZURE_TRANSLATOR_KEY", raising=False)
    with pytest.raises(AzureTranslatorError, match="AZURE_TRANSLATOR_KEY"):
        AzureTranslator()
    http = FakeHttp([401, 200])
    with pytest.raises(AzureTranslatorError, match="HTTP 401 after 1 attempt.*TRANSLATOR_KEY"):
        AzureTranslator(key="k", http=http, sleep=lambda s: None).translate_batch(["a"], "en", "de")
    with pytest.raises(AzureTranslatorError, match="HTTP 429 after 3"):
        AzureTranslator(key="k", http=FakeHttp([429] * 3), max_retries=2,
                        sleep=lambda s: None).translate_batch(["a"], "en", "de")


# --- NLLB backend on the tiny random model --------------------------------------------------

@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory):
    from ifl.smoke.tiny_models import write_tiny_nllb

    root = tmp_path_factory.mktemp("smoke")
    path = write_tiny_nllb(root)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert write_tiny_nllb(root) == path  # idempotent: the second call writes nothing
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    return NLLBTranslator(str(path), device="cpu", max_new_tokens=6, num_beams=1)


def test_nllb_forced_bos_per_target_language(tiny_nllb):
    texts = ["What is in the image?", "A dog is sitting on the table."]
    tok = tiny_nllb.tokenizer
    for tgt in ("de", "zh", "ja", "he", "ur"):
        ids = tiny_nllb.generate_ids(texts, "en", tgt)
        assert ids[:, 0].tolist() == [2, 2]  # decoder start token </s>
        assert ids[:, 1].tolist() == [tok.convert_tokens_to_ids(code_for("nllb", tgt))] * 2
    tiny_nllb.generate_ids(texts, "de", "en")
    assert tok(texts[:1]).input_ids[0][0] == tok.convert_tokens_to_ids("deu_Latn")  # source tag
    assert type(tiny_nllb.model).__name__ == "M2M100ForConditionalGeneration"


def test_nllb_batches_restore_input_order(tiny_nllb, tmp_path):
    texts = ["Why?", "A dog is sitting on the table next to a tall building.", "What color?",
             "Describe the image concisely.", "Why?"]
    one_by_one = [tiny_nllb.translate_batch([t], "en", "de")[0] for t in texts]
    run = translate_texts(texts, "en", "de", tiny_nllb, tmp_path, batch_size=2, progress=False)
    assert run.translations == one_by_one and len(set(one_by_one)) > 1
    again = translate_texts(texts, "en", "de", tiny_nllb, tmp_path, batch_size=2, progress=False)
    assert again.translations == one_by_one and again.translated == 0 and again.cached == 4


def test_nllb_too_long_input_fails_that_item_only(tiny_nllb):
    long = "A dog is sitting on the table. " * 80
    run = translate_texts(["Why?", long], "en", "de", tiny_nllb, None, progress=False)
    assert run.translations[0] is not None and run.translations[1] is None
    assert "max_input_tokens" in run.failed[long]


def test_nllb_missing_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"nope.*hf download"):
        NLLBTranslator(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="empty"):
        NLLBTranslator(str(tmp_path / "empty"))
    rev = "0" * 40  # never in any cache, so this stays an offline miss on every machine
    with pytest.raises(ModelNotAvailableError, match=rf"facebook/nllb-200-distilled-1.3B.*{rev}.*"
                                                     rf"hf download facebook/nllb-200-distilled"):
        NLLBTranslator("facebook/nllb-200-distilled-1.3B", revision=rev)


def test_an_empty_translation_of_real_text_is_recorded_as_a_failure(tmp_path):
    from ifl.translate import TranslationStore, translate_texts

    class Blank:
        backend_id = "blank"

        def translate_batch(self, texts, src, tgt):
            return ["" if t == "b" else t.upper() for t in texts]

    run = translate_texts(["a", "b", " "], "en", "de", Blank(), TranslationStore(tmp_path), progress=False)
    assert run.translations == ["A", None, " "]
    assert "EmptyTranslation" in run.failed["b"]
