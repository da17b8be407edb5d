"""python -m ifl.audit end to end, offline, on tiny random models of five classes; clear errors
before any generation for bad inputs."""
import json
import shutil

import pandas as pd
import pytest

from ifl.audit.cli import main, run_audit
from ifl.audit.inputs import AuditInputError
from ifl.smoke.tiny_vlms import END_TO_END, write_tiny_vlms

SMALL = dict(languages=["en", "de"], n_per_language=1, precision="fp32", batch_size=2,
             max_new_tokens=4, device="cpu")


@pytest.fixture(scope="session")
def vlms(tmp_path_factory):
    return write_tiny_vlms(tmp_path_factory.mktemp("audit-vlms"))


@pytest.mark.parametrize("name", END_TO_END)
def test_audit_runs_end_to_end(name, vlms, tmp_path):
    out = run_audit(str(vlms[name]), remedy=name == "tiny-llava-1.5", out=tmp_path / name, **SMALL)
    table = pd.read_csv(out / "fidelity.csv")
    assert list(table["lang"]) == ["de", "en"] and {"ifl", "ifl_lo", "ifl_hi"} <= set(table)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "cluster bootstrap by item" in page
    responses = pd.read_parquet(out / "responses.parquet")
    conditions = {"image", "text"} | ({"image_steered"} if name == "tiny-llava-1.5" else set())
    assert set(responses["condition"]) == conditions and len(responses) == 2 * len(conditions)
    assert json.loads((out / "settings.json").read_text())["processor_class"]


def test_rerun_resumes_without_generating(vlms, tmp_path, monkeypatch):
    model = str(vlms["tiny-llava-1.5"])
    run_audit(model, out=tmp_path, **SMALL)
    parts = sorted((tmp_path / "parts").glob("part-*.parquet"))
    import transformers

    monkeypatch.setattr(transformers.GenerationMixin, "generate",
                        lambda *a, **k: pytest.fail("a resumed audit generated again"))
    run_audit(model, out=tmp_path, **SMALL)
    assert sorted((tmp_path / "parts").glob("part-*.parquet")) == parts


def test_rerun_with_other_precision_or_stop_tokens_refuses_the_stored_rows(vlms, tmp_path, capsys):
    """Stored parts made at fp32 are not reused by a bf16 rerun, nor after the stop tokens
    changed (here: the generation config's eos): the rerun names what differs."""
    from ifl.collect.store import ResponseConflictError

    model = tmp_path / "llava"
    shutil.copytree(vlms["tiny-llava-1.5"], model)
    run_audit(str(model), out=tmp_path / "out", **SMALL)
    with pytest.raises(ResponseConflictError, match="precision"):
        run_audit(str(model), out=tmp_path / "out", **{**SMALL, "precision": "bf16"})
    assert main([str(model), "--out", str(tmp_path / "out"), "--precision", "bf16",
                 "--languages", "en,de", "--n-per-language", "1", "--max-new-tokens", "4",
                 "--device", "cpu"]) == 2
    assert "precision" in capsys.readouterr().out
    path = model / "generation_config.json"
    config = json.loads(path.read_text())
    config["eos_token_id"] = [*config["eos_token_id"], config["pad_token_id"]]
    path.write_text(json.dumps(config))
    with pytest.raises(ResponseConflictError, match="stop_tokens"):
        run_audit(str(model), out=tmp_path / "out", **SMALL)


def test_labels_give_dsl_estimates(vlms, tmp_path):
    model = str(vlms["tiny-llava-1.5"])
    out = run_audit(model, out=tmp_path / "a", **{**SMALL, "n_per_language": 6})
    scored = pd.read_parquet(out / "responses.parquet")
    sheet = scored[["task_id", "condition"]].assign(fidelity=scored["fidelity_lid"])
    sheet.iloc[::2].to_csv(tmp_path / "labels.csv", index=False)
    out = run_audit(model, out=tmp_path / "a", labels=str(tmp_path / "labels.csv"),
                    **{**SMALL, "n_per_language": 6})
    assert "DSL (annotated sample)" in (out / "report.html").read_text(encoding="utf-8")


@pytest.fixture
def no_generate(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.GenerationMixin, "generate",
                        lambda *a, **k: pytest.fail("generated before the input check"))


def test_clear_errors_before_generation(vlms, tmp_path, no_generate, capsys):
    llava = vlms["tiny-llava-1.5"]
    with pytest.raises(AuditInputError, match="cannot read a model config"):
        run_audit(str(tmp_path / "nowhere"), out=tmp_path / "o", **SMALL)
    text_only = tmp_path / "text-only"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(AuditInputError, match="does not load"):
        run_audit(str(text_only), out=tmp_path / "o", **SMALL)
    no_template = tmp_path / "no-template"
    shutil.copytree(llava, no_template)
    for f in no_template.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(AuditInputError, match="no chat template"):
        run_audit(str(no_template), out=tmp_path / "o", **SMALL)
    text_template = tmp_path / "text-template"
    shutil.copytree(llava, text_template)
    # a text-only template (what a tokenizer's own template re-saved beside the processor gives):
    # it renders an image message without the image token
    (text_template / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "USER: {{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")
    with pytest.raises(AuditInputError, match="drops the image"):
        run_audit(str(text_template), out=tmp_path / "o", **SMALL)
    with pytest.raises(AuditInputError, match="unknown language"):
        run_audit(str(llava), out=tmp_path / "o", **{**SMALL, "languages": ["xx"]})
    empty = tmp_path / "empty.parquet"
    from ifl.data.schema import TASK_SCHEMA
    TASK_SCHEMA.empty_table().to_pandas().to_parquet(empty)
    with pytest.raises(AuditInputError, match="no tasks"):
        run_audit(str(llava), benchmark=str(empty), out=tmp_path / "o",
                  **{**SMALL, "languages": None})
    assert main([str(llava), "--languages", "xx"]) == 2
    assert "unknown language" in capsys.readouterr().out


def test_audit_completes_an_older_llava_processor_config(vlms, tmp_path):
    """A llava-hf processor config with patch_size but no num_additional_image_tokens (older
    revisions, mirrors such as unsloth/llava-1.5-7b-hf): transformers 5 counts 0 for CLIP's CLS
    and inserts one placeholder too few; the audit completes it from the tower, as the loader does."""
    old = tmp_path / "old-llava"
    shutil.copytree(vlms["tiny-llava-1.5"], old)
    config = json.loads((old / "processor_config.json").read_text())
    config.pop("num_additional_image_tokens", None)
    assert "patch_size" in config
    (old / "processor_config.json").write_text(json.dumps(config))
    out = run_audit(str(old), out=tmp_path / "out", **SMALL)
    assert len(pd.read_parquet(out / "responses.parquet")) == 4


# The stop tokens each stand-in's template and generation config give, as the real repos would:
# llava-hf's LLaVA-1.5 template writes no token after an answer (eos only); Mistral's writes
# eos; Idefics3-8B-Llama3 and Intel/llava-gemma-2b list eos only although their answers end
# with the template's end-of-turn; gemma-3-*-it lists both; Aya Vision ends turns with its eos.
STOPS = {"tiny-llava-1.5": ["</s>"], "tiny-llava-next": ["</s>"],
         "tiny-idefics3": ["<end_of_utterance>", "<|end_of_text|>"],
         "tiny-gemma3": ["<end_of_turn>", "<eos>"], "tiny-aya-vision": ["<|END_OF_TURN_TOKEN|>"]}


@pytest.mark.parametrize("name", END_TO_END)
def test_stop_tokens_are_eos_and_the_templates_end_of_turn(name, vlms):
    from transformers import AutoProcessor, GenerationConfig

    from ifl.audit.generate import stop_tokens

    processor = AutoProcessor.from_pretrained(vlms[name])
    stops = stop_tokens(processor, GenerationConfig.from_pretrained(vlms[name]))
    assert sorted(stops) == sorted(STOPS[name])
    assert stops == {t: processor.tokenizer.convert_tokens_to_ids(t) for t in stops}


def test_end_of_turn_from_a_template_that_takes_string_content(vlms):
    """A tokenizer's text template (Intel/llava-gemma-2b keeps gemma-2b-it's) trims string
    content and would print a list's repr: the probe falls back to a plain string."""
    from transformers import AutoProcessor

    from ifl.audit.generate import end_of_turn_token
    from ifl.smoke.tiny_llava import GEMMA_CHAT_TEMPLATE

    processor = AutoProcessor.from_pretrained(vlms["tiny-gemma3"])
    processor.chat_template = GEMMA_CHAT_TEMPLATE
    assert end_of_turn_token(processor) == "<end_of_turn>"
    processor.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    assert end_of_turn_token(processor) is None  # nothing special after the answer: eos only


def test_generation_stops_at_the_templates_end_of_turn(vlms, tmp_path):
    """Idefics3's stand-in lists eos only, as Idefics3-8B-Llama3; biased to say
    `<end_of_utterance>` as soon as it may end (min_new_tokens = 4), every reply stops there
    instead of running on to the token limit, and settings.json names the stop tokens."""
    model = tmp_path / "eou-idefics3"
    shutil.copytree(vlms["tiny-idefics3"], model)
    path = model / "generation_config.json"
    config = json.loads(path.read_text())
    from transformers import AutoTokenizer

    turn = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<end_of_utterance>")
    assert turn not in config["eos_token_id"]
    config["sequence_bias"] = [[[turn], 100.0]]
    path.write_text(json.dumps(config))
    out = run_audit(str(model), out=tmp_path / "out", **{**SMALL, "max_new_tokens": 12})
    responses = pd.read_parquet(out / "responses.parquet")
    assert (responses["n_new_tokens"] == config["min_new_tokens"] + 1).all(), responses["n_new_tokens"]
    assert not responses["response"].str.contains("end_of_utterance").any()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["stop_tokens"]["<end_of_utterance>"] == turn


@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-gemma3"])
def test_4bit_keeps_each_classes_vision_side_unquantised(name, vlms):
    """--precision 4bit quantises the LM's linear layers only, whatever the class names its
    vision side (Idefics3: vision_model + connector; Gemma 3: vision_tower +
    multi_modal_projector), as LLaVA's own 4-bit loader does for LLaVA."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    import torch

    from ifl.audit.cli import load_model
    from ifl.audit.inputs import check_model
    from ifl.compat import decoder_layers

    model = load_model(str(vlms[name]), check_model(str(vlms[name])), "4bit", "cpu")
    vision = {"tiny-idefics3": ("vision_model", "connector"),
              "tiny-gemma3": ("vision_tower", "multi_modal_projector")}[name]
    for where in [f"model.{v}" for v in vision] + ["lm_head"]:
        # (Gemma 3's projector holds its matrix as a parameter: no Linear there to quantise)
        linears = [m for m in model.get_submodule(where).modules() if isinstance(m, torch.nn.Linear)]
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in linears), f"{where} quantised"
        assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    tower = model.model.get_submodule(vision[0])
    assert any(isinstance(m, torch.nn.Linear) for m in tower.modules())
    lm = [m for m in decoder_layers(model).modules() if isinstance(m, torch.nn.Linear)]
    assert lm and all(isinstance(m, bnb.nn.Linear4bit) for m in lm)
