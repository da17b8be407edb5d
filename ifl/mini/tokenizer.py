"""The miniature's BPE tokenizer: one vocabulary for every lexicon language, trained offline.

Byte-level BPE (as GPT-2 / Llama-3): any text encodes without `<unk>` and decodes back exactly,
including Chinese, Devanagari, Arabic and the newlines of LLaVA prompts. Special tokens are
`<s>` (bos, added in front of every encoding, as Llama's tokenizer does), `</s>` (eos, also the
`llava_hf` end-of-turn text), `<pad>`, `<unk>` and `<image>` (one token, as in llava-hf).

    texts = tokenizer_texts(seed=0)                 # ~9k chat-formatted lines, 6 languages
    tok = train_tokenizer("runs/x/mini/tokenizer", texts, vocab_size=2048)
    AutoTokenizer.from_pretrained("runs/x/mini/tokenizer")   # the same tokenizer

>>> import tempfile
>>> tok = train_tokenizer(tempfile.mkdtemp(), ["USER: <image>\\nWas ist rot? ASSISTANT: Stern</s>"], 300)
>>> tok.decode(tok("Der Kreis ist rot.")["input_ids"], skip_special_tokens=True)
'Der Kreis ist rot.'
>>> tok.convert_ids_to_tokens(tok("<image>")["input_ids"])
['<s>', '<image>']
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ifl.data.miniature import available_langs, pretraining_corpus
from ifl.data.miniature.rerender import rerender_record
from ifl.data.miniature.training import caption_record, instruct_record
from ifl.mini.common import fresh_dir, is_done, mark_done
from ifl.prompts import conversation_turns, query, segments, template

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"
SPECIALS = [BOS, EOS, PAD, UNK, IMAGE]   # ids 0..4 in this order
# Pre-tokenisation: one Han character (Chinese has no spaces; BPE then learns no cross-word
# merges), a letter run with its combining marks (Hindi vowel signs, Arabic harakat), digits,
# punctuation, whitespace; each with at most one leading space.
WORDS = r"\p{Han}| ?[\p{L}\p{M}&&[^\p{Han}]]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]+|\s+(?!\S)|\s+"


def tokenizer_texts(langs: Sequence[str] | None = None, n_per_lang: int = 600, seed: int = 0,
                    chat_template: str = "llava_hf") -> list[str]:
    """Chat-formatted texts of everything the miniature says, in every language: description +
    question -> answer (LM pretraining, text-only condition), caption and instruction records
    (LLaVA stages 1 and 2). n_per_lang QA items plus n_per_lang // 4 records of each kind.

    >>> texts = tokenizer_texts(["en", "zh"], n_per_lang=4, seed=0)
    >>> len(texts), texts[0].startswith("USER: ")
    (12, True)
    """
    langs = list(langs or available_langs())
    t = template(chat_template)
    texts = []
    for lang in langs:
        for item in pretraining_corpus({lang: 1.0}, n_per_lang, seed):
            description, question = split_prompt(item["prompt"])
            texts.append(query(t, question, image=False, description=description)
                         + " " + item["answer"] + t.end)
        for i in range(max(1, n_per_lang // 4)):
            for make in (caption_record, instruct_record):
                record = rerender_record(make(i, seed), lang)
                texts.append("".join(s for s, _ in segments(t, conversation_turns(record))))
    return texts


def split_prompt(prompt: str) -> tuple[str, str]:
    """(description, question) of a `pretraining_corpus` prompt "<description>\\n<question>\\n";
    the question keeps its own lines (the short-answer hint).

    >>> split_prompt("A red star.\\nWhat color?\\nOne word.\\n")
    ('A red star.', 'What color?\\nOne word.')
    """
    description, question = prompt.split("\n", 1)
    return description, question.rstrip("\n")


def _fingerprint(texts: Sequence[str], vocab_size: int) -> str:
    h = hashlib.sha256(str(vocab_size).encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def train_tokenizer(out_dir: str | Path, texts: Sequence[str], vocab_size: int = 2048):
    """Train (or load the cached) byte-level BPE on `texts`; save it so AutoTokenizer loads it.

    Returns a `PreTrainedTokenizerFast` with bos/eos/pad/unk set and `<image>` as a special
    token; encodings start with `<s>`; padding side "left" (batched generation, as llava-hf).
    Training stops early when no pair occurs twice, so len(tokenizer) may be < vocab_size.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    settings = {"kind": "tokenizer", "vocab_size": vocab_size, "texts": _fingerprint(texts, vocab_size)}
    if is_done(out_dir, settings):
        return AutoTokenizer.from_pretrained(out_dir)
    fresh_dir(out_dir)
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    # Words are split by WORDS (not GPT-2's regex, which cuts Devanagari words at every vowel
    # sign and keeps a whole Chinese sentence as one word), then mapped to bytes. No prefix space:
    # a text is encoded as written, so "ASSISTANT:" + " answer" gives the same tokens whether the
    # answer is part of a training text or generated after a query.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORDS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE}, model_input_names=["input_ids", "attention_mask"],
        padding_side="left", model_max_length=512, clean_up_tokenization_spaces=False)
    tok.save_pretrained(out_dir)
    mark_done(out_dir, settings)
    return AutoTokenizer.from_pretrained(out_dir)
