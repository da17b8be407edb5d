"""A Llama-style SentencePiece tokenizer saved as `tokenizer.model` only, like lmsys/vicuna-7b-v1.5
(which ships tokenizer.model, tokenizer_config.json and special_tokens_map.json, no tokenizer.json).

transformers 5 turns such a folder into a fast tokenizer by reading the SentencePiece model with
protobuf (SentencePieceExtractor): a stand-in saved this way makes a missing protobuf fail here,
not first on the real checkpoint. The model is a real BPE SentencePiece model with byte fallback
(as Llama's), trained offline on the tiny corpus; ids 0/1/2 are <unk>/<s>/</s> as in Llama.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

PIECES = 1000  # vocabulary incl. 256 byte pieces and the three specials


def write_sentencepiece_tokenizer(out: Path, lines: list[str], *, model_max_length: int = 4096) -> None:
    """Train on `lines` and write tokenizer.model, tokenizer_config.json, special_tokens_map.json."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=PIECES, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
        split_digits=True, num_threads=1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    # vicuna-7b-v1.5's tokenizer_config.json fields (LlamaTokenizer, BOS added, no pad token)
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "legacy": False, "pad_token": None,
              "padding_side": "right", "sp_model_kwargs": {}, "model_max_length": model_max_length,
              **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
