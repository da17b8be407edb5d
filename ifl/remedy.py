"""The paper's training-free remedy (§5.3) around any `model.generate(...)`, outside the pipeline.

    from ifl.remedy import answer_in
    with answer_in(model, processor, "de"):          # or "auto", or one language per row
        out = model.generate(**inputs, max_new_tokens=64)

Inside the block, a_lang = LLM_l(x_lang) - LLM_l(x_en) (ifl.steer.steering_vector on the
model's own text pass of ifl/data/steering_prompts.csv) is added to the output of decoder layer
`layer` (default: one third of the depth) at every position whose output is a generated token:
padded column >= W - 1, W the prompt batch's width (left padding puts every row's last prompt
token in column W - 1). The column of each forward's first position is read from
the attention mask's width (or the cache's length), so a forward that carries the whole sequence (no KV
cache) and a one-column decode step steer the same columns: the output is the same with and
without cache. A forward hook on the model notices when a new prompt starts (a forward at
column 0 that does not extend the previous one), so one block can wrap several generate calls.

Vectors are cached per (model, language, layer) for the model's lifetime. Hooks are removed on
exit, also after an exception; the model's weights and config are never touched.

lang="auto": each row of a batch is steered towards the language `ifl.langid` reads in its
query (the prompt with the chat template's fixed text and special tokens removed); English and
unreadable rows are left alone. In the text condition the description is part of the query, so
the identifier reads both: pass one language per row when you know them.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ifl.compat import decoder_layers, retuple, untuple
from ifl.steer import default_layer, steering_prompts, steering_vector

_VECTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {(lang, layer): vec}
_MARK = "\ue000"  # a private-use character: where the user's text goes in the rendered template


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def language_vector(model, processor, lang: str, layer: int) -> torch.Tensor:
    """a_lang at `layer` [hidden] (float32, CPU), made once per (model, lang, layer)."""
    cache = _VECTORS.setdefault(model, {})
    if (lang, layer) not in cache:
        prompts = steering_prompts([lang])  # KeyError naming the csv for an unknown language
        cache[(lang, layer)] = steering_vector(model, tokenizer_of(processor), prompts[lang],
                                               prompts["en"], layer, lang=lang).vector
    return cache[(lang, layer)]


def query_texts(processor, input_ids: torch.Tensor) -> list[str]:
    """Each row's query: the decoded prompt without special tokens (image tokens, turn markers,
    padding) and without the chat template's fixed text before and after the user's turn."""
    tok = tokenizer_of(processor)
    head, tail = "", ""
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    if template:
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": _MARK}]}],
            add_generation_prompt=True, tokenize=False)
        for special in sorted(set(tok.all_special_tokens), key=len, reverse=True):
            rendered = rendered.replace(special, " ")
        head, _, tail = (" ".join(part.split()) for part in rendered.partition(_MARK))
    out = []
    for text in tok.batch_decode(input_ids, skip_special_tokens=True):
        text = " ".join(text.split())
        if head and text.startswith(head):
            text = text[len(head):]
        if tail and text.endswith(tail):
            text = text[:-len(tail)]
        out.append(text.strip())
    return out


def read_languages(texts: Sequence[str], identifier=None) -> list[str | None]:
    """The ISO code (languages.csv) `ifl.langid` reads in each text; None where it reads
    English, a name shared by several languages (other_latin) or nothing."""
    from ifl.data.languages import LANGUAGES
    from ifl.langid import load_identifier, parse_glotlid

    identifier = identifier or _identifier()
    by_name: dict[str, list[str]] = {}
    for iso, language in LANGUAGES.items():
        by_name.setdefault(language.parsed, []).append(iso)
    out = []
    for label in identifier.predict(list(texts)):
        isos = by_name.get(parse_glotlid(label), [])
        out.append(isos[0] if len(isos) == 1 and isos[0] != "en" else None)
    return out


_LID = []


def _identifier():
    if not _LID:
        import warnings

        from ifl.langid import load_identifier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback warning: the identifier names itself
            _LID.append(load_identifier())
    return _LID[0]


def _row_vectors(model, processor, lang, layer, input_ids) -> torch.Tensor | None:
    """[batch, hidden]: each row's vector (zeros for rows left alone), or None if none steers."""
    batch = input_ids.shape[0]
    if isinstance(lang, str) and lang != "auto":
        langs = [lang] * batch
    elif lang == "auto":
        langs = read_languages(query_texts(processor, input_ids))
    else:
        langs = list(lang)
        if len(langs) != batch:
            raise ValueError(f"answer_in got {len(langs)} languages for a batch of {batch} rows")
    hidden = model.get_input_embeddings().weight.shape[1]
    rows = [torch.zeros(hidden) if x in (None, "en") else language_vector(model, processor, x, layer)
            for x in langs]
    return torch.stack(rows) if any(x not in (None, "en") for x in langs) else None


def _start_column(ids: torch.Tensor, kwargs) -> int:
    """The padded column of this forward's first position: the 2-D attention mask covers the
    cached columns and this forward's, so their difference is the cache's length (transformers
    5 passes no cache_position from generate); else the cache's own length."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.shape[1] - ids.shape[1])
    past = kwargs.get("past_key_values")
    return int(past.get_seq_length()) if past is not None and hasattr(past, "get_seq_length") else 0


@contextmanager
def answer_in(model, processor, lang: str | Sequence[str | None], *, layer: int | None = None,
              scale: float = 1.0) -> Iterator[None]:
    """Steer every `model.generate(...)` inside the block towards `lang` (an ISO code of
    ifl/data/steering_prompts.csv, "auto", or one code/None per batch row); see module doc."""
    layers = decoder_layers(model)
    layer = default_layer(model) if layer is None else layer
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
    if isinstance(lang, str) and lang != "auto":
        language_vector(model, processor, lang, layer)  # unknown language: fail before generating
    state: dict = {"ids": None, "width": 0, "vectors": None, "start": 0, "busy": False}

    def see_inputs(module, args, kwargs):
        if state["busy"]:  # our own text pass making a vector (lang="auto" or per row)
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("answer_in needs input_ids in the model's forward (it reads the "
                               "prompt's width and, for lang='auto', the query from them)")
        start = _start_column(ids, kwargs)
        prev = state["ids"]
        extends = (start > 0 or (prev is not None and ids.shape[0] == prev.shape[0]
                                 and ids.shape[1] > prev.shape[1]
                                 and torch.equal(ids[:, :prev.shape[1]], prev)))
        if not extends or prev is None:  # a new prompt
            state["width"] = ids.shape[1]
            state["busy"] = True
            try:
                state["vectors"] = _row_vectors(model, processor, lang, layer, ids)
            finally:
                state["busy"] = False
        if start == 0:
            state["ids"] = ids
        state["start"] = start

    def steer(module, args, out):
        vectors = state["vectors"]
        if vectors is None or state["busy"]:
            return None
        h = untuple(out)
        columns = state["start"] + torch.arange(h.shape[1], device=h.device)
        generated = (columns >= state["width"] - 1).to(h.dtype)             # [seq]
        v = scale * vectors.to(device=h.device, dtype=h.dtype)               # [batch, hidden]
        return retuple(out, h + generated[None, :, None] * v[:, None, :])    # out of place

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(see_inputs, with_kwargs=True))
        handles.append(layers[layer].register_forward_hook(steer))
        yield
    finally:
        for handle in handles:
            handle.remove()


def choose_layer(model, processor, lang: str, queries: Sequence[str], *,
                 layers: Sequence[int] | None = None, scale: float = 1.0,
                 max_new_tokens: int = 24, identifier=None) -> tuple[int, list[dict]]:
    """A small held-out sweep: generate text-only replies to `queries` (held-out questions, not
    the steering sentences) under answer_in(lang, layer=l) for each candidate l (default: four
    evenly spaced layers in the first two thirds) and return (the layer whose replies are most
    often in `lang`, ties to the one nearest the default, [{layer, fidelity}] per layer)."""
    from ifl.langid import fidelity, parse_glotlid

    n = len(decoder_layers(model))
    candidates = sorted(set(layers if layers is not None else
                            [round(i * (2 * n // 3) / 3) for i in range(4)]))
    if not queries:
        raise ValueError("choose_layer needs held-out queries")
    tok = tokenizer_of(processor)
    prompts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": q}]}],
        add_generation_prompt=True, tokenize=False) for q in queries]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        inputs = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tok.padding_side = side
    identifier = identifier or _identifier()
    table = []
    for layer in candidates:
        with torch.inference_mode(), answer_in(model, processor, lang, layer=layer, scale=scale):
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        replies = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        hits = [fidelity(parse_glotlid(x), lang) for x in identifier.predict(replies)]
        table.append({"layer": layer, "fidelity": sum(hits) / len(hits)})
    default = default_layer(model)
    best = max(table, key=lambda r: (r["fidelity"], -abs(r["layer"] - default)))
    return best["layer"], table
