"""A trained variant's chat template as Jinja, saved with its processor and tokenizer as real
checkpoints carry theirs (llava-hf's chat_template.json): the package prompts a variant with an
`ifl.prompts.ChatTemplate`; this renders the same text, so `processor.apply_chat_template`
(and with it `python -m ifl.audit`) prompts the variant exactly as it was trained.

>>> from ifl.prompts import template
>>> print(jinja_template(template("llava_hf"))[:60])
{{ "" }}{% for message in messages %}{% if message['content'
"""
from __future__ import annotations

import json

from ifl.prompts import IMAGE_TOKEN, ChatTemplate


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}"  # a JSON string is a valid Jinja string literal


def jinja_template(t: ChatTemplate) -> str:
    """Jinja that renders one conversation as `ifl.prompts.query` / `segments` do: system text,
    each user turn with its images (`<image>`) before or after its text (t.image_first, joined
    by a newline), each assistant turn with its end marker, then the generation prompt."""
    user_pre, user_post = t.user.split("{content}")
    bot_pre, bot_post = t.assistant.split("{content}")
    join = ("{% set ns.c = ns.img + ns.txt if ns.img else ns.txt %}" if t.image_first else
            "{% set ns.c = ns.txt + '\\n' + ns.img[:-1] if ns.img else ns.txt %}")
    return (
        _literal(t.system)
        + "{% for message in messages %}"
        + "{% if message['content'] is string %}{% set ns = namespace(c=message['content']) %}"
        + "{% else %}{% set ns = namespace(c='', img='', txt='') %}"
        + "{% for part in message['content'] %}"
        + f"{{% if part['type'] == 'image' %}}{{% set ns.img = ns.img + {json.dumps(IMAGE_TOKEN)} + '\\n' %}}"
        + "{% elif part['type'] == 'text' %}{% set ns.txt = ns.txt + part['text'] %}{% endif %}"
        + "{% endfor %}" + join + "{% endif %}"
        + "{% if message['role'] == 'user' %}" + _literal(user_pre) + "{{ ns.c }}" + _literal(user_post)
        + "{% elif message['role'] == 'assistant' %}" + _literal(bot_pre) + "{{ ns.c }}"
        + _literal(bot_post + t.end) + "{% endif %}"
        + "{% endfor %}"
        + "{% if add_generation_prompt %}" + _literal(t.generation_prompt) + "{% endif %}")


def give_chat_template(processor, t: ChatTemplate) -> None:
    """Set the Jinja of `t` on a processor (and its tokenizer) that has none, before saving."""
    text = jinja_template(t)
    if not getattr(processor, "chat_template", None):
        processor.chat_template = text
    tok = getattr(processor, "tokenizer", None)
    if tok is not None and not getattr(tok, "chat_template", None):
        tok.chat_template = text
