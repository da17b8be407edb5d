"""A tokenizer.model-only stand-in (lmsys/vicuna-7b-v1.5's files) loads with AutoTokenizer, and
needs protobuf to do so (transformers 5 converts it with SentencePieceExtractor)."""
import subprocess
import sys

import pytest

from ifl.smoke.sentencepiece_tokenizer import write_sentencepiece_tokenizer
from ifl.smoke.tiny_models import tiny_corpus

LOAD = """
import sys
if sys.argv[2] == "hide":  # as on a machine without protobuf
    for name in ("google", "google.protobuf"):
        sys.modules[name] = None
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
print(type(tok).__name__, tok.is_fast, tok("A dog is sitting on the table.").input_ids[0])
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("spm") / "tiny-vicuna-tokenizer"
    write_sentencepiece_tokenizer(out, tiny_corpus())
    return out


def _load(folder, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD, str(folder), mode], capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "",
                                                       "TRANSFORMERS_OFFLINE": "1"})


def test_only_the_sentencepiece_model_is_saved(folder):
    assert sorted(p.name for p in folder.iterdir()) == [
        "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]


def test_loads_with_protobuf_and_fails_without(folder):
    ok = _load(folder, "keep")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.split() == ["LlamaTokenizer", "True", "1"]  # fast, BOS first
    hidden = _load(folder, "hide")
    # what a missing protobuf gives on the real repo: the tiktoken fallback, then this error
    assert hidden.returncode != 0 and "tiktoken" in hidden.stderr, hidden.stderr[-2000:]
