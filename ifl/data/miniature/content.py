"""What is said about a scene, language-free: questions, instructions, answers, descriptions.

Each builder returns acts (see render.py) plus a language-independent `answer_key` where there is
one, so the same item renders in every language and answers can be checked in any of them.

>>> import random
>>> from ifl.data.miniature.scenes import sample_scene
>>> scene = sample_scene(random.Random(1), "s")
>>> q, a, key = short_qa(scene, "count", random.Random(0))
>>> q[0]["act"], a[0]["act"], key == str(len(scene["objects"]))
('ask_count', 'ans_count', True)
"""
from __future__ import annotations

import random

from ifl.data.miniature.scenes import COLORS, SHAPES

QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist", "position")
INSTRUCTION_KINDS: tuple[str, ...] = ("detail", "brief", "colors", "positions")
N_VARIANTS = 4   # paraphrase index drawn in 0..3; each language uses it modulo its variants


def _obj(o: dict) -> dict:
    return {"color": o["color"], "shape": o["shape"]}


def description(scene: dict) -> list[dict]:
    """The text that replaces the image: count, then each object with colour, shape, position.
    It holds every fact any question asks about.

    >>> scene = {"objects": [{"color": "red", "shape": "star", "pos": "left"}]}
    >>> [a["act"] for a in description(scene)]
    ['say_count', 'say_pos']
    """
    objs = scene["objects"]
    return [{"act": "say_count", "n": len(objs)}] + [
        {"act": "say_pos", **_obj(o), "pos": o["pos"]} for o in objs]


def caption(scene: dict) -> list[dict]:
    """A short caption (stage-1 data, like BLIP captions in LCS-558K): the objects, no verb."""
    return [{"act": "caption", "objects": [_obj(o) for o in scene["objects"]]}]


def short_qa(scene: dict, qtype: str, rng: random.Random) -> tuple[list[dict], list[dict], str]:
    """(question acts, answer acts, answer_key) of a short-answer question of type `qtype`."""
    v = rng.randrange(N_VARIANTS)
    o = rng.choice(scene["objects"])
    if qtype == "color":
        return ([{"act": "ask_color", "shape": o["shape"], "v": v}],
                [{"act": "ans_color", **_obj(o)}], o["color"])
    if qtype == "shape":
        return ([{"act": "ask_shape", "color": o["color"], "v": v}],
                [{"act": "ans_shape", "shape": o["shape"]}], o["shape"])
    if qtype == "count":
        n = len(scene["objects"])
        return [{"act": "ask_count", "v": v}], [{"act": "ans_count", "n": n}], str(n)
    if qtype == "position":
        return ([{"act": "ask_pos", "shape": o["shape"], "v": v}],
                [{"act": "ans_pos", "pos": o["pos"]}], o["pos"])
    if qtype == "exist":
        present = {(p["color"], p["shape"]) for p in scene["objects"]}
        if rng.random() < 0.5:
            color, shape, value = o["color"], o["shape"], "yes"
        else:   # an absent pair: a shape not in the scene, or a present shape in another colour
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            color, shape = rng.choice(absent)
            value = "no"
        return ([{"act": "ask_exist", "color": color, "shape": shape, "v": v}],
                [{"act": "ans_yesno", "value": value}], value)
    raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


def instruction(scene: dict, kind: str, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(instruction acts, long answer acts) for a describe-style instruction of `kind`."""
    v = rng.randrange(N_VARIANTS)
    objs = scene["objects"]
    if kind == "detail":
        answer = description(scene)
    elif kind == "brief":
        answer = [{"act": "say_list", "objects": [_obj(o) for o in objs]}]
    elif kind == "colors":
        answer = [{"act": "say_attr", **_obj(o)} for o in objs]
    elif kind == "positions":
        answer = [{"act": "say_pos", **_obj(o), "pos": o["pos"]} for o in objs]
    else:
        raise ValueError(f"unknown instruction kind {kind!r}; known: {', '.join(INSTRUCTION_KINDS)}")
    return [{"act": f"instr_{kind}", "v": v}], answer
