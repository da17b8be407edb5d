"""Conversation templates (data in `prompts.yaml`) and the two query forms of the experiment.

The experiment (§3.1) asks the same question twice: with the image, and with a text
description in the image's place. `query(...)` builds both from one template, so the only
difference between the conditions is what stands where `<image>` would be.

>>> t = template("llava_hf")
>>> query(t, "What colour is it?", image=True)
'USER: <image>\\nWhat colour is it? ASSISTANT:'
>>> query(t, "What colour is it?", image=False, description="A red star.")
'USER: A red star.\\nWhat colour is it? ASSISTANT:'
>>> query(dataclasses.replace(t, image_first=False), "What colour is it?", image=True)
'USER: What colour is it?\\n<image> ASSISTANT:'
>>> [(s, trained) for s, trained in segments(t, [("human", "<image>\\nHi?"), ("gpt", "Yes.")])]
[('USER: <image>\\nHi? ', False), ('ASSISTANT:', False), (' Yes.</s>', True)]
>>> template("gemma").end_of_turn
'<end_of_turn>'
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

IMAGE_TOKEN = "<image>"
log = logging.getLogger(__name__)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system: str
    user: str
    assistant: str
    end: str
    end_of_turn: str          # the token that ends an answer; generation stops there too
    generation_prompt: str
    # `<image>`/description before the question (LLaVA-1.5's layout) or after it; a property of
    # the model (ifl/models.yaml `image_first`), set by `ifl.models.template_for`
    image_first: bool = True


@cache
def templates() -> dict[str, ChatTemplate]:
    """Every template of ifl/prompts.yaml, checked: known fields, `end` starts with `end_of_turn`."""
    raw = yaml.safe_load(resources.files("ifl").joinpath("prompts.yaml").read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(ChatTemplate)} - {"name", "image_first"}
    out = {}
    for name, row in raw.items():
        where = f"ifl/prompts.yaml, template {name!r}"
        if set(row) != fields:
            raise ValueError(f"{where}: keys {sorted(row)}; expected {sorted(fields)}")
        if not row["end"].startswith(row["end_of_turn"]):
            raise ValueError(f"{where}: end {row['end']!r} must start with end_of_turn "
                             f"{row['end_of_turn']!r} (the token the model learns to end with)")
        out[name] = ChatTemplate(name=name, **row)
    return out


def template(name: str) -> ChatTemplate:
    try:
        return templates()[name]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; known: {', '.join(templates())} "
                       "(ifl/prompts.yaml)") from None


def query(t: ChatTemplate, question: str, *, image: bool, description: str | None = None,
          image_first: bool | None = None) -> str:
    """A one-turn prompt ending where the model starts answering.

    image=True puts `<image>` beside the question; image=False puts `description` there (the
    text-only condition). image_first: `<image>`/description before the question (LLaVA-1.5's
    layout) or after it (some LCS-558K records, early LLaVA-Gemma usage); None: the template's
    `image_first` (from the model's ifl/models.yaml row)."""
    image_first = t.image_first if image_first is None else image_first
    if image:
        context = IMAGE_TOKEN
    elif description is None:
        context = None
    else:
        context = description.strip()
    if context is None:
        content = question
    else:
        content = f"{context}\n{question}" if image_first else f"{question}\n{context}"
    return t.system + t.user.format(content=content) + t.generation_prompt


def stop_token_ids(t: ChatTemplate, tokenizer, generation_config=None) -> list[int]:
    """Where greedy generation must stop: the generation config's eos (an id or a list), the
    tokenizer's eos, and the template's end-of-turn token. The real configs often name eos only
    (Intel/llava-gemma-2b: `<eos>`, while its answers end with `<end_of_turn>`), so without the
    last one replies run to the token limit with invented turns.

    An end-of-turn that is no single token of this tokenizer cannot be emitted as one; it is left
    out with a warning (the model can then only stop at eos)."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    turn = tokenizer.convert_tokens_to_ids(t.end_of_turn)
    if turn is None or (turn == tokenizer.unk_token_id and t.end_of_turn != tokenizer.unk_token):
        log.warning("template %r: end-of-turn %r is not one token of this tokenizer; generation "
                    "stops at eos only", t.name, t.end_of_turn)
    else:
        ids.add(turn)
    return sorted(i for i in ids if i is not None)


def segments(t: ChatTemplate, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """Render a conversation as (text, trained) pieces: True only for answer text and its end
    marker, so a trainer can mask everything else out of the loss.
    `turns`: (role, text) with role in human/gpt (LLaVA JSON) or user/assistant."""
    out: list[tuple[str, bool]] = [(t.system, False)] if t.system else []
    for role, text in turns:
        kind = _ROLES.get(role)
        if kind is None:
            raise ValueError(f"unknown role {role!r} (expected one of {sorted(_ROLES)})")
        if kind == "user":
            out.append((t.user.format(content=text), False))
        else:
            # Split where generation starts at inference (after `generation_prompt`), so that
            # training and generation see the same token boundary.
            rendered = t.assistant.format(content=text) + t.end
            if not rendered.startswith(t.generation_prompt):
                raise ValueError(f"template {t.name!r}: assistant turn must start with its "
                                 "generation_prompt")
            out.append((t.generation_prompt, False))
            out.append((rendered[len(t.generation_prompt):], True))
    return [(s, trained) for s, trained in out if s]


def conversation_turns(record: dict) -> list[tuple[str, str]]:
    """(role, text) pairs of a LLaVA JSON record's `conversations`."""
    return [(turn["from"], turn["value"]) for turn in record["conversations"]]
