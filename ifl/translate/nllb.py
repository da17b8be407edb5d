"""NLLB-200 backend (the paper's training-data translator, §4.1: "NLLB-1.7-distilled").

No 1.7B NLLB checkpoint exists on the hub; the distilled ones are 600M and 1.3B, so the model id
is a parameter with the 1.3B distilled default (docs/sources.md §7). Pin `revision`
to a commit: the store keys translations by model id, revision and decoding settings.
Example (needs the downloaded weights; the output shown is illustrative, not a recorded run):

>>> nllb = NLLBTranslator("facebook/nllb-200-distilled-1.3B", device="cuda")  # doctest: +SKIP
>>> nllb.translate_batch(["What is in the image?"], "en", "de")  # doctest: +SKIP
['Was ist auf dem Bild?']
"""
from __future__ import annotations

import os
from pathlib import Path

from ifl.data.languages import code_for

DEFAULT_NLLB = "facebook/nllb-200-distilled-1.3B"


class ModelNotAvailableError(OSError):
    """The model could not be loaded from the local directory, the hub cache or the hub."""


def _looks_local(model_id: str) -> bool:
    """A path, not a hub id ("owner/name"): it exists, starts with . / ~, or has 2+ slashes."""
    return (Path(model_id).expanduser().exists() or model_id.startswith((".", "/", "~"))
            or model_id.count("/") > 1 or os.sep != "/" and os.sep in model_id)


def _how_to_get(model_id: str, revision: str | None, exc: Exception) -> str:
    why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # on one line
    if _looks_local(model_id):
        return (f"cannot load an NLLB model from the directory {model_id!r} ({why}). It needs "
                f"config.json, the weights and tokenizer files (tokenizer.json or "
                f"sentencepiece.bpe.model), e.g. from `hf download {DEFAULT_NLLB} --local-dir "
                f"{model_id}`; for tests `ifl.smoke.tiny_models.write_tiny_nllb(root)` writes one.")
    rev = f" --revision {revision}" if revision else ""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    return (f"cannot load {model_id!r} (revision {revision or 'main'}) "
            f"{'with HF_HUB_OFFLINE=1: it is not in the hub cache' if offline else 'from the hub'}"
            f" ({why}). Pre-download it on a machine with internet: "
            f"`hf download {model_id}{rev}` (older clients: `huggingface-cli download "
            f"{model_id}{rev}`), or `--local-dir DIR` and pass DIR as the model id.")


class NLLBTranslator:
    """NLLB through `AutoTokenizer` + `AutoModelForSeq2SeqLM`; a hub id or a local directory.

    Decoding: `num_beams=4` as in NLLB's own evaluation [U: the paper does not say];
    `max_new_tokens` bounds runaway repetition. Inputs longer than `max_input_tokens` (NLLB
    was trained on <= 512 tokens) are refused rather than silently truncated: split them first
    (`ifl.translate.structured` does, by line and sentence).
    """

    def __init__(self, model_id: str = DEFAULT_NLLB, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, max_new_tokens: int = 512,
                 num_beams: int = 4, max_input_tokens: int = 512):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.model_id, self.revision = model_id, revision
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.max_input_tokens = max_input_tokens
        source = str(Path(model_id).expanduser()) if _looks_local(model_id) else model_id
        try:
            if _looks_local(model_id) and not (Path(source) / "config.json").is_file():
                raise FileNotFoundError(f"no config.json in {source}")
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(
                source, revision=revision, dtype=dtype or "auto").to(self.device).eval()
        except (OSError, ValueError) as exc:  # ValueError: bad repo id or unreadable tokenizer
            raise ModelNotAvailableError(_how_to_get(model_id, revision, exc)) from exc
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        # everything that changes the output text: the store keys translations by this id
        rev = revision or ("local" if _looks_local(model_id) else "main")
        self.backend_id = (f"nllb:{model_id}@{rev}:beams={num_beams}"
                           f":max_new={max_new_tokens}:{self.dtype}")

    def lang_token_id(self, iso: str) -> int:
        """Vocabulary id of the FLORES-200 language token of `iso` (e.g. 'de' -> 'deu_Latn')."""
        code = code_for("nllb", iso)
        token_id = self.tokenizer.convert_tokens_to_ids(code)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer of {self.model_id!r} has no language token {code!r}")
        return token_id

    def generate_ids(self, texts: list[str], src: str, tgt: str):
        """Output token ids, shape (len(texts), 1 + generated): column 0 is the decoder start
        token (</s>), column 1 the forced target-language token."""
        import torch

        forced_bos = self.lang_token_id(tgt)
        self.lang_token_id(src)
        self.tokenizer.src_lang = code_for("nllb", src)  # setter re-templates the prefix token
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        if enc["input_ids"].shape[1] > self.max_input_tokens:
            raise ValueError(f"input of {enc['input_ids'].shape[1]} tokens exceeds "
                             f"max_input_tokens={self.max_input_tokens}; split it into sentences")
        with torch.inference_mode():
            return self.model.generate(**enc.to(self.device), forced_bos_token_id=forced_bos,
                                       max_new_tokens=self.max_new_tokens,
                                       num_beams=self.num_beams)

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        ids = self.generate_ids(texts, src, tgt)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
