"""Where generation stops, and how prompts are laid out, on stand-ins that carry the real
checkpoints' generation configs: eos only (Intel/llava-gemma-2b stops at `<eos>` although its
answers end with `<end_of_turn>`), so the chat template's end-of-turn must be added by the
pipeline (notebooks 03 and 07 and notebook 02's sanity check all generate through
`collect_responses`)."""
from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from ifl.collect import collect_responses
from ifl.collect.engine import build_items
from ifl.models import load_llava, template_for
from ifl.prompts import stop_token_ids, template
from ifl.smoke.tiny_llava import write_tiny_llava_models

torch.set_num_threads(1)
MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llava_models(tmp_path_factory.mktemp("smoke"))


def _gen_eos(folder) -> list[int]:
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    return eos if isinstance(eos, list) else [eos]


def test_stand_in_generation_configs_name_eos_only_as_the_real_repos(tiny):
    """generation_config.json as on the hub: Intel/llava-gemma-2b `<eos>` (1), LeoLM `</s>` (2),
    Yi-6B-Chat `<|im_end|>` (7) with `<|endoftext|>` as the tokenizer's eos, llava-hf `</s>`."""
    expect = {"tiny-llava-gemma": "<eos>", "tiny-leo": "</s>", "tiny-yi": "<|im_end|>",
              "tiny-llava-1.5": "</s>", "tiny-bakllava": "</s>", "tiny-vicuna": "</s>"}
    for name, token in expect.items():
        tok = AutoTokenizer.from_pretrained(tiny[name])
        assert _gen_eos(tiny[name]) == [tok.convert_tokens_to_ids(token)], name
    assert AutoTokenizer.from_pretrained(tiny["tiny-yi"]).eos_token == "<|endoftext|>"


def test_stop_token_ids_add_the_templates_end_of_turn(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["tiny-llava-gemma"])
    config = GenerationConfig.from_pretrained(tiny["tiny-llava-gemma"])
    eos, turn = tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    assert stop_token_ids(template("gemma"), tok, config) == sorted({eos, turn})
    leo = AutoTokenizer.from_pretrained(tiny["tiny-leo"])
    assert leo.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(template("chatml"), leo, None)
    # an end-of-turn the tokenizer lacks cannot be emitted: eos only (with a warning)
    assert stop_token_ids(template("chatml"), tok, config) == [eos]


def _text_tasks(n: int) -> pd.DataFrame:
    return pd.DataFrame([dict(task_id=f"t{i}", question=f"Question {i}?", image=None,
                              description=f"A picture number {i}.") for i in range(n)])


@pytest.mark.parametrize("steered", [False, True])
def test_generation_stops_at_the_end_of_turn_token(tiny, tmp_path, steered):
    """The Gemma stand-in (eos = `<eos>` only) is biased to say `<end_of_turn>` as soon as it may
    end (its generation config's min_new_tokens = 4): answers stop there, also when steered,
    instead of running to the token limit with invented turns."""
    model, processor = load_llava(tiny["tiny-llava-gemma"], dtype="float32")
    turn = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert turn not in _gen_eos(tiny["tiny-llava-gemma"])
    model.generation_config.sequence_bias = {(turn,): 100.0}
    steering = (lambda model, inputs: nullcontext()) if steered else None
    out = collect_responses(model, processor, _text_tasks(3), model_name="gemma",
                            template=template_for(tiny["tiny-llava-gemma"]), conditions=("text",),
                            max_new_tokens=MAX_NEW, batch_size=2, out_dir=tmp_path,
                            progress=False, steering=steering)
    min_new = model.generation_config.min_new_tokens
    assert (out["n_new_tokens"] == min_new + 1).all(), out["n_new_tokens"].tolist()
    assert not out["response"].str.contains("<end_of_turn>").any()


def test_image_first_reaches_the_prompt(tiny, tmp_path):
    """models.yaml's `image_first` rides on the template `template_for` returns; false puts the
    description (or `<image>`) after the question."""
    assert template_for("llava-gemma-2b").image_first is True
    last = dataclasses.replace(template("llava_hf"), image_first=False)
    tasks = _text_tasks(1)
    (item,) = build_items(tasks, last, ("text",))
    assert item.prompt == "USER: Question 0?\nA picture number 0. ASSISTANT:"
    (first,) = build_items(tasks, template("llava_hf"), ("text",))
    assert first.prompt == "USER: A picture number 0.\nQuestion 0? ASSISTANT:"

    from ifl.runtime import run_template
    row = pd.Series(dict(template="gemma", image_first=False))
    assert run_template(row) == dataclasses.replace(template("gemma"), image_first=False)
    assert run_template(pd.Series(dict(template="gemma"))).image_first  # older models.csv

    model, processor = load_llava(tiny["tiny-llava-1.5"], dtype="float32")
    out = collect_responses(model, processor, tasks, model_name="m", template=last,
                            conditions=("text",), max_new_tokens=2, batch_size=1,
                            out_dir=tmp_path, progress=False)
    assert out["prompt"].iloc[0] == item.prompt
    settings = json.loads(next((tmp_path / "m").rglob("settings.json")).read_text())
    assert settings["image_first"] is False
