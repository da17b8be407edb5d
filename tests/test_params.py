"""Params: every error names the file, section and key; overrides validate the same way."""
from pathlib import Path

import pytest
import yaml

from ifl.params import ParamsError, check_files, dump, load_params, notebook_parameters, validate

PARAMS_FILES = sorted(Path("params").glob("*.yaml"))


def write(tmp_path, content: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_shipped_params_files_validate_and_keep_every_value_they_set(path):
    params = load_params(path)
    assert params.common.run_name == path.stem  # each file's outputs go to a folder of its name
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    resolved = yaml.safe_load(dump(params))
    for section, block in raw.items():
        for key, value in (block or {}).items():
            assert resolved[section][key] == value, f"{path.name}: {section}.{key}"


def test_unknown_section_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, {"common": {}, "01_translate_dat": {}})
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    assert "unknown section '01_translate_dat'" in message
    assert "did you mean '01_translate_data'" in message


def test_unknown_key_wrong_type_and_range_are_all_reported(tmp_path):
    path = write(tmp_path, {"common": {"seed": -1, "world": "paperr"},
                            "01_translate_data": {"mini_scens": 3, "mini_error_rate": "high"}})
    with pytest.raises(ParamsError) as err:
        load_params(path)
    lines = str(err.value).splitlines()
    assert any("section 'common', key 'seed'" in l and "greater than or equal to 0" in l for l in lines)
    assert any("section 'common', key 'world'" in l and "'paperr'" in l for l in lines)
    assert any("key 'mini_scens': unknown key (did you mean 'mini_scenes'?)" in l for l in lines)
    assert any("key 'mini_error_rate'" in l and "valid number" in l for l in lines)
    assert all(l.startswith(str(path)) for l in lines)


def test_unknown_language_is_rejected(tmp_path):
    path = write(tmp_path, {"common": {"languages": ["en", "xx"]}})
    with pytest.raises(ParamsError, match=r"key 'languages.1': unknown language 'xx'"):
        load_params(path)


def test_section_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, {"common": [1, 2]})
    with pytest.raises(ParamsError, match="section 'common' must be a mapping"):
        load_params(path)


def test_missing_local_file_names_section_and_key(tmp_path):
    path = write(tmp_path, {"common": {"world": "paper"},
                            "01_translate_data": {"maxm_source": "./no/such/dir"},
                            "02_train_variants": {"llm_sources": {"vicuna": "./no/vicuna"}}})
    params = load_params(path)
    with pytest.raises(ParamsError, match=r"section '01_translate_data', key 'maxm_source'.*not found: ./no/such/dir"):
        check_files(params, source=str(path), root=tmp_path, sections=["common", "01_translate_data"])
    with pytest.raises(ParamsError, match=r"section '02_train_variants', key 'llm_sources.vicuna'.*not found: ./no/vicuna"):
        check_files(params, source=str(path), root=tmp_path, sections=["02_train_variants"])
    (tmp_path / "no/such/dir").mkdir(parents=True)
    check_files(params, source=str(path), root=tmp_path, sections=["01_translate_data"])  # now present
    # the miniature world reads no external files, so nothing is checked there
    params.common.world = "miniature"
    check_files(params, source=str(path), root=tmp_path)


def test_hub_ids_are_not_checked_as_files(tmp_path):
    params = validate({"01_translate_data": {"maxm_source": "floschne/maxm"}}, source="x")
    check_files(params, source="x", root=tmp_path)


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, {"common": {"seed": 1}})
    params = load_params(path, overrides=["common.seed=7", "common.languages=[en, zh]",
                                          "01_translate_data.mini_error_rate=0.25"])
    assert params.common.seed == 7
    assert params.common.languages == ["en", "zh"]
    assert params.translate_data.mini_error_rate == 0.25
    with pytest.raises(ParamsError, match=r"override -p common\.sed=3.*did you mean 'seed'"):
        load_params(path, overrides=["common.sed=3"])
    with pytest.raises(ParamsError, match=r"override -p comon\.seed=3\): unknown section 'comon' \(did you mean 'common'"):
        load_params(path, overrides=["comon.seed=3"])
    with pytest.raises(ParamsError, match="key 'mini_error_rate'.*less than or equal to 1"):
        load_params(path, overrides=["01_translate_data.mini_error_rate=2"])
    with pytest.raises(ParamsError, match="section.key=value"):
        load_params(path, overrides=["seed=3"])


def test_resolved_params_round_trip(tmp_path):
    params = load_params("params/default.yaml", overrides=["common.seed=5"])
    again = validate(yaml.safe_load(dump(params)), source="dump")
    assert again == params


def test_injected_parameters_are_common_plus_block():
    params = load_params("params/default.yaml")
    injected = notebook_parameters(params, "01_translate_data")
    assert injected["run_name"] == "default" and injected["mini_scenes"] == params.translate_data.mini_scenes
    assert set(notebook_parameters(params, "99_unknown")) == set(type(params.common).model_fields)


def test_notebook_keys_never_shadow_common_keys():
    from ifl.params_schema import SECTIONS
    common = set(SECTIONS["common"].model_fields)
    for name, block in SECTIONS.items():
        if name != "common":
            assert not common & set(block.model_fields), name


def test_docs_params_lists_every_key_whose_default_yaml_value_differs_from_the_schema():
    """docs/params.md says which value is which: its table names exactly the keys of
    params/default.yaml that differ from the schema default."""
    from ifl.params_schema import SECTIONS

    raw = yaml.safe_load(Path("params/default.yaml").read_text(encoding="utf-8"))
    differ = set()
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            key = field.alias or name
            block = raw.get(section) or {}
            default = field.get_default(call_default_factory=True)
            default = default.model_dump() if hasattr(default, "model_dump") else default  # a sub-block
            if key in block and block[key] != default:
                differ.add((section, key))
    rows = [line.split("|")[1:3] for line in Path("docs/params.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| section")]
    assert {(s.strip(), k.strip()) for s, k in rows} == differ

@pytest.mark.parametrize("name", [".", ".."])
def test_run_name_is_one_plain_folder(tmp_path, name):
    path = write(tmp_path, {"common": {"run_name": "ok"}})
    with pytest.raises(ParamsError, match=r"key 'run_name': a run name is one plain folder name"):
        load_params(path, overrides=[f"common.run_name={name}"])


def test_empty_params_file_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing but a comment\n")
    with pytest.raises(ParamsError, match=r"empty.yaml: the file is empty"):
        load_params(path)


@pytest.mark.parametrize("text, what", [("{}\n", "an empty mapping"),
                                        ("common:\n", r"only empty sections \(common\)"),
                                        ("common: {}\n01_translate_data:\n",
                                         r"only empty sections \(common, 01_translate_data\)")])
def test_params_file_that_sets_no_key_is_an_error(tmp_path, text, what):
    path = tmp_path / "nothing.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=rf"nothing.yaml: the file sets no key, {what}; start from"):
        load_params(path, overrides=["common.seed=1"])  # an override does not make it a params file


def test_duplicate_key_names_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("common:\n  seed: 1\n  world: miniature\n  seed: 2\n")
    with pytest.raises(ParamsError, match=r"dup.yaml: key 'seed' is given twice, on line 2 and line 4"):
        load_params(path)
    path.write_text("common: {}\n03_collect_responses: {}\ncommon: {seed: 1}\n")
    with pytest.raises(ParamsError, match=r"key 'common' is given twice, on line 1 and line 3"):
        load_params(path)


def test_resolved_params_say_where_each_value_came_from(tmp_path):
    from ifl.params import defaulted_blocks
    path = write(tmp_path, {"common": {"seed": 1}, "03_collect_responses": {"max_new_tokens": 32}})
    params = load_params(path, overrides=["03_collect_responses.batch_size=8"])
    text = dump(params, ["03_collect_responses.batch_size=8"])
    lines = text.splitlines()
    assert "  seed: 1" in lines  # from the file: no comment
    assert "  max_new_tokens: 32" in lines
    assert "  batch_size: 8  # -p 03_collect_responses.batch_size=8" in lines
    assert "  quantization: 4bit  # default (ifl/params_schema.py)" in lines
    assert "04_score_languages" in defaulted_blocks(params)
    assert "03_collect_responses" not in defaulted_blocks(params)
    assert validate(yaml.safe_load(text), source="dump") == params


def test_annotation_sheet_is_checked_in_both_worlds(tmp_path):
    path = write(tmp_path, {"common": {"world": "miniature"},
                            "04_score_languages": {"annotation_sheet": "filled.csv"}})
    params = load_params(path)
    with pytest.raises(ParamsError, match=r"key 'annotation_sheet'.*not found: filled.csv"):
        check_files(params, source=str(path), root=tmp_path, sections=["04_score_languages"])
    (tmp_path / "filled.csv").write_text("id\n")
    check_files(params, source=str(path), root=tmp_path, sections=["04_score_languages"])


def test_the_offline_message_and_the_pre_run_check_agree_on_local_paths(tmp_path):
    """What the download message tells a user to write is checked before the run as a path."""
    from ifl.data.hub import SOURCES, SourceUnavailableError, _how_to_get, resolve
    for spec in SOURCES.values():
        suggested = f"./{spec.local_dir}" if not spec.local_dir.startswith(("/", ".")) else spec.local_dir
        assert f"`{spec.params_key}: {suggested}`" in _how_to_get(spec)
    path = write(tmp_path, {"common": {"world": "paper"},
                            "01_translate_data": {"maxm_source": "./data/maxm",
                                                  "llavaw_source": "some/where/llavaw"}})
    params = load_params(path)
    with pytest.raises(ParamsError) as err:
        check_files(params, source=str(path), root=tmp_path, sections=["01_translate_data"])
    assert "key 'maxm_source'" in str(err.value) and "key 'llavaw_source'" in str(err.value)
    # and a loader given such a missing path says so instead of asking the hub for it
    with pytest.raises(SourceUnavailableError, match="there is no folder some/where/llavaw"):
        resolve(SOURCES["llavaw"], "some/where/llavaw", None)


def test_doctests_of_the_reliability_modules():
    import doctest

    import ifl.annotate
    import ifl.data.hub
    import ifl.runlock
    import ifl.stage
    for module in (ifl.runlock, ifl.stage, ifl.data.hub, ifl.annotate):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_paper_files_state_their_hardware():
    """paper.yaml is the paper's 8-GPU setup, paper-1gpu.yaml the 4-bit route on one 24 GB GPU;
    both insist on GlotLID."""
    paper, one_gpu = load_params("params/paper.yaml"), load_params("params/paper-1gpu.yaml")
    from ifl.train.recipes import learning_rates

    def rates(train):  # the lr keys are null: the mode's recipe decides
        return learning_rates(train.training, stage1=train.stage1_lr, stage2=train.stage2_lr,
                              projector=train.stage2_projector_lr)

    train, collect = paper.train_variants, paper.collect_responses
    assert (train.training, rates(train).stage2, collect.quantization) == ("full", 2e-5, "none")
    assert paper.steering.quantization == "none" and not collect.precision_check
    assert paper.train_variants.processes == 8   # one 8-GPU node, a rank per GPU
    train, collect = one_gpu.train_variants, one_gpu.collect_responses
    assert (train.training, collect.quantization) == ("qlora", "4bit")
    assert train.processes == 1
    assert (rates(train).stage2, rates(train).projector) == (2e-4, 2e-5)
    assert collect.batch_size == one_gpu.steering.batch_size == 32
    assert collect.precision_check
    # bf16 weights of llava-1.5-13b (~26 GB) cannot load on the 24 GB card: the check skips it,
    # and its bf16 pass runs at a batch that fits (7B bf16 at 16: 19.2 GiB)
    off_the_shelf = {m for m in collect.models if m != "variants"}
    assert set(collect.precision_check_models) == off_the_shelf - {"llava-1.5-13b"}
    assert collect.precision_check_batch_size == 16 < collect.batch_size
    assert collect.precision_check_identifier == "glotlid"
    for params in (paper, one_gpu):
        assert params.score_languages.identifier == "glotlid"
    header = Path("params/paper-1gpu.yaml").read_text().split("common:")[0]
    assert "deviations from the paper" in header and "QLoRA" in header
