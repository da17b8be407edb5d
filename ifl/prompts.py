"""Conversation templates (data in `prompts.yaml`) and the two query forms of the experiment.

The experiment (§3.1) asks the same question twice: with the image, and with a text
description in the image's place. `query(...)` builds both from one template, so the only
difference between the conditions is what stands where `<image>` would be.

>>> t = template("llava_hf")
>>> query(t, "What colour is it?", image=True)
'USER: <image>\\nWhat colour is it? ASSISTANT:'
>>> query(t, "What colour is it?", image=False, description="A red star.")
'USER: A red star.\\nWhat colour is it? ASSISTANT:'
>>> [(s, trained) for s, trained in segments(t, [("human", "<image>\\nHi?"), ("gpt", "Yes.")])]
[('USER: <image>\\nHi? ', False), ('ASSISTANT:', False), (' Yes.</s>', True)]
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

IMAGE_TOKEN = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system: str
    user: str
    assistant: str
    end: str
    generation_prompt: str


@cache
def templates() -> dict[str, ChatTemplate]:
    raw = yaml.safe_load(resources.files("ifl").joinpath("prompts.yaml").read_text(encoding="utf-8"))
    return {name: ChatTemplate(name=name, **fields) for name, fields in raw.items()}


def template(name: str) -> ChatTemplate:
    try:
        return templates()[name]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; known: {', '.join(templates())} "
                       "(ifl/prompts.yaml)") from None


def query(t: ChatTemplate, question: str, *, image: bool, description: str | None = None,
          image_first: bool = True) -> str:
    """A one-turn prompt ending where the model starts answering.

    image=True puts `<image>` beside the question; image=False puts `description` there (the
    text-only condition). image_first: `<image>`/description before the question (LLaVA-1.5's
    layout) or after it (some LCS-558K records, early LLaVA-Gemma usage)."""
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
