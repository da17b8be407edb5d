"""Notebook 08's stage (ifl/stages/beyond_llava.py) on tiny VLMs, the variants' chat template,
the audit's BOS, the companion's links to each audit's report, and --check's hub models."""
import dataclasses

import jinja2
import pandas as pd
import pytest

from ifl.params_schema import BeyondLlava
from ifl.prompts import query, templates
from ifl.smoke.tiny_vlms import write_tiny_vlms
from ifl.stages import beyond_llava as stage08
from ifl.train.chat_template import jinja_template


@pytest.mark.parametrize("name", sorted(templates()))
@pytest.mark.parametrize("image_first", [True, False])
def test_saved_chat_template_renders_what_the_variant_was_trained_on(name, image_first):
    t = dataclasses.replace(templates()[name], image_first=image_first)
    render = jinja2.Environment().from_string(jinja_template(t)).render
    with_image = [{"type": "image"}, {"type": "text", "text": "Was ist das?"}]
    text = "Ein Stern.\nWas ist das?" if image_first else "Was ist das?\nEin Stern."
    for content, expected in ((with_image, query(t, "Was ist das?", image=True)),
                              ([{"type": "text", "text": text}],
                               query(t, "Was ist das?", image=False, description="Ein Stern."))):
        assert render(messages=[{"role": "user", "content": content}], add_generation_prompt=True) == expected


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    return write_tiny_vlms(tmp_path_factory.mktemp("vlms"), names=("tiny-llava-1.5", "tiny-gemma3"))


def test_audit_adds_bos_only_when_the_template_did_not(vlms):
    from transformers import AutoProcessor

    from ifl.audit.generate import build_items, generate_batch  # noqa: F401
    from ifl.audit.generate import adds_special_tokens, chat_prompt

    for name, template_writes_bos in (("tiny-llava-1.5", False), ("tiny-gemma3", True)):
        proc = AutoProcessor.from_pretrained(vlms[name])
        prompt = chat_prompt(proc, "Was ist das?", image=False, description="Ein Stern.")
        ids = proc.tokenizer(prompt, add_special_tokens=adds_special_tokens(proc.tokenizer, prompt))["input_ids"]
        assert ids[0] == proc.tokenizer.bos_token_id and ids[1] != proc.tokenizer.bos_token_id, name
        assert adds_special_tokens(proc.tokenizer, prompt) is not template_writes_bos


def test_stage_audits_each_model_and_lists_the_unusable_with_the_reason(vlms, tmp_path):
    import shutil

    no_template = tmp_path / "no-template"
    shutil.copytree(vlms["tiny-llava-1.5"], no_template)
    for f in no_template.glob("chat_template*"):
        f.unlink()
    variants = pd.DataFrame({"variant": ["llava"], "model_dir": [str(vlms["tiny-llava-1.5"])]})
    p = BeyondLlava(models=["llava", "gemma", "bare"], benchmark="shapes", n_per_language=1,
                    precision="fp32", batch_size=4, max_new_tokens=3, remedy=True,
                    identifier="fallback", model_sources={"gemma": str(vlms["tiny-gemma3"]),
                                                         "bare": str(no_template)})
    models = stage08.resolve_models(p, variants)
    assert [m["source"] for m in models][0] == str(vlms["tiny-llava-1.5"])
    bench = stage08.benchmark_for_audit(p, None, tmp_path)
    langs = stage08.audit_languages(p, ["en", "de", "xx-not-in-shapes"], bench)
    assert langs == ["en", "de"]
    status = stage08.audit_all(models, p, benchmark=bench, languages=langs, folder=tmp_path / "08",
                               device="cpu", lid=stage08.identifier("fallback"))
    assert list(status["audited"]) == [True, True, False] and "chat template" in status["error"].iloc[2]
    table = stage08.summary_table(status, tmp_path / "08")
    for name in ("llava", "gemma"):
        assert (tmp_path / "08" / name / "report.html").is_file()
        assert (tmp_path / "08" / name / "fidelity.csv").is_file()
    done = table[table["audited"]]
    assert done["ifl"].between(-1, 1).all() and done["ifl_steered"].notna().all()
    headline, metrics = stage08.summary(table, bench, langs)
    assert "bare" in headline and set(metrics["ifl"]) == {"llava", "gemma"}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    stage08.plot_ifl(table, ax)
    plt.close(fig)


def test_unknown_model_name_is_named():
    with pytest.raises(KeyError, match="'nope'"):
        stage08.resolve_models(BeyondLlava(models=["nope"], model_sources={}), None)


def test_companion_links_every_audit_report(tmp_path):
    from ifl.companion import _output_links

    for model in ("a", "b"):
        (tmp_path / "runs/r/08_beyond_llava" / model).mkdir(parents=True)
        (tmp_path / "runs/r/08_beyond_llava" / model / "report.html").write_text("<html>")
    links = _output_links(tmp_path / "runs/r", "08_beyond_llava", tmp_path / "rendered/r")
    for model in ("a", "b"):
        assert f'href="../../runs/r/08_beyond_llava/{model}/report.html"' in links


def test_check_lists_the_hub_models_of_notebook_08():
    from ifl.params import load_params
    from ifl.precheck import hub_needs

    needs, _ = hub_needs(load_params("params/paper.yaml"), ["08_beyond_llava"])
    repos = {n.repo_id for n in needs}
    assert {"Qwen/Qwen2.5-VL-7B-Instruct", "google/gemma-3-4b-it", "Intel/llava-gemma-2b"} <= repos
