"""Params files: load, merge command-line overrides, validate against one typed schema.

A params file (YAML) has a `common` block and one block per notebook, named after the notebook
file (`01_translate_data`, ...). The runner injects `common` plus the notebook's own block into
the notebook's `parameters` cell. Every check happens here, before any work starts, and every
error names the file, the section and the key:

    params/x.yaml: section '01_translate_data', key 'batch_sise': unknown key (did you mean 'batch_size'?)

Defaults live in one place, the schema (ifl/params_schema.py): a key or a whole block left out
of a file takes the schema's default, which is the paper's setting (params/default.yaml sets the
miniature's sizes explicitly). The resolved params saved with a run (runs/<run>/params.yaml)
mark every value with where it came from: the file, a `-p` override, or the schema's default.
An empty file, one that sets no key (`{}`, or `common:` with nothing under it) and a key
given twice are errors: a file that sets nothing would run on the schema's defaults alone.

>>> p = load_params("params/default.yaml", overrides=["common.seed=3"])
>>> p.common.seed
3
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from ifl.params_schema import SECTIONS, Params, _LocalFile, local_path_fields
from ifl.params_schema import section as section_of


class ParamsError(ValueError):
    """Invalid params; the message is meant for the user as it is."""


def load_params(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Params:
    """Read `path`, apply `section.key=value` overrides, validate. Raises ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    except DuplicateKeyError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    if raw is None:
        raise ParamsError(f"{path}: the file is empty; start from params/default.yaml (the "
                          "miniature) or params/paper.yaml")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    if all(section in SECTIONS and block in (None, {}) for section, block in raw.items()):
        # `{}`, or `common:` alone (an unknown section is named by `validate` instead)
        what = f"only empty sections ({', '.join(map(str, raw))})" if raw else "an empty mapping"
        raise ParamsError(f"{path}: the file sets no key, {what}; start from params/default.yaml "
                          "(the miniature) or params/paper.yaml")
    origins = {_apply_override(raw, override, path): override for override in overrides}
    return validate(raw, source=str(path), origins=origins)


def validate(raw: dict[str, Any], *, source: str,
             origins: dict[tuple[str, str], str] | None = None) -> Params:
    """Validate a raw params mapping; errors name the source, section and key, and the
    command-line override a bad value came from (`origins`: (section, key) -> override)."""
    for section, block in raw.items():
        if section in SECTIONS and block is not None and not isinstance(block, dict):
            raise ParamsError(f"{source}: section {section!r} must be a mapping of keys, "
                              f"got {type(block).__name__}")
    raw = {k: ({} if v is None else v) for k, v in raw.items()}
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("\n".join(_describe(err, source, origins or {})
                                     for err in exc.errors())) from None
    return params


def check_files(params: Params, *, source: str, root: Path = Path("."),
                sections: Iterable[str] | None = None) -> None:
    """Every local path named in params (in `sections`, default all) must exist; hub ids are
    checked when loaded. The runner checks only the notebooks it is about to run. Sources are
    read only in the paper world (the miniature makes all its data), so only there are they
    checked; local files such as the annotation sheet are read in both worlds."""
    fields = list(local_path_fields(params, kind=_LocalFile))
    if params.common.world == "paper":
        fields += list(local_path_fields(params))
    missing = []
    wanted = None if sections is None else set(sections)
    for section, key, value in fields:
        if wanted is not None and section not in wanted:
            continue
        if not (root / Path(value).expanduser()).exists():
            missing.append(f"{source}: section {section!r}, key {key!r}: file or folder "
                           f"not found: {value}")
    if missing:
        raise ParamsError("\n".join(missing))


def notebook_parameters(params: Params, section: str) -> dict[str, Any]:
    """What papermill injects into a notebook: common keys, then the notebook's own keys
    (a notebook without a block of its own gets the common keys only)."""
    dumped = params.model_dump(by_alias=True, mode="json")
    return {**dumped["common"], **dumped.get(section, {})}


def from_notebook(namespace: dict[str, Any], section: str) -> tuple[Any, Any]:
    """(common, block) rebuilt from a notebook's variables and validated again, so values that
    papermill injected, or that a reader edited by hand, meet the same schema.

    >>> common, block = from_notebook({"seed": 1, "mini_scenes": 5}, "01_translate_data")
    >>> common.seed, block.mini_scenes
    (1, 5)
    """
    raw = {name: {k: namespace[k] for k in model.model_fields if k in namespace}
           for name, model in SECTIONS.items() if name in ("common", section)}
    params = validate(raw, source=f"notebook {section}")
    return params.common, section_of(params, section)


def value_origins(params: Params, overrides: Iterable[str] = ()) -> dict[tuple[str, str], str]:
    """(section, key) -> where its value came from: 'file', '-p <override>' (one of
    `overrides`, as given to load_params) or 'default' (the schema's)."""
    overrides = {tuple(o.split("=", 1)[0].split(".", 1)): o for o in overrides}
    out = {}
    for name in SECTIONS:
        block = section_of(params, name)
        for key in type(block).model_fields:
            if (name, key) in overrides:
                out[name, key] = f"-p {overrides[name, key]}"
            else:
                out[name, key] = "file" if key in block.model_fields_set else "default"
    return out


def defaulted_blocks(params: Params) -> list[str]:
    """Blocks the params file left out (every key from the schema's defaults)."""
    origins = value_origins(params)
    return [name for name in SECTIONS
            if all(origins[name, key] == "default" for key in SECTIONS[name].model_fields)]


def dump(params: Params, overrides: Iterable[str] = ()) -> str:
    """The resolved params as YAML (saved beside every run), each value with a comment saying
    where it came from (`# default` = ifl/params_schema.py; `# -p ...` = a command-line
    override; no comment = the params file)."""
    dumped = params.model_dump(by_alias=True, mode="json")
    origins = value_origins(params, overrides)
    lines = []
    for name, block in dumped.items():
        lines.append(f"{name}:")
        for key, value in block.items():
            # one line per key: the value in YAML flow style ([a, b], {k: v}, quoted if needed)
            flow = yaml.safe_dump([value], default_flow_style=True, width=10**6,
                                  allow_unicode=True).strip()[1:-1]
            text = f"  {key}: {flow}"
            origin = origins[name, key]
            if origin != "file":
                text += "  # default (ifl/params_schema.py)" if origin == "default" else f"  # {origin}"
            lines.append(text)
    return "\n".join(lines) + "\n"


class DuplicateKeyError(ValueError):
    """A params file sets one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} is given twice, on line {seen[key]} and "
                                        f"line {line}; keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _apply_override(raw: dict, override: str, source: Path) -> tuple[str, str]:
    where = f"{source} (override -p {override})"
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise ParamsError(f"{where}: overrides look like section.key=value")
    dotted, text = override.split("=", 1)
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise ParamsError(f"{where}: unknown section {section!r}{_did_you_mean(section, SECTIONS)}")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    block = raw.setdefault(section, {}) or {}
    raw[section] = block
    block[key] = value
    return section, key


def _describe(err: dict, source: str, origins: dict[tuple[str, str], str]) -> str:
    loc = [str(part) for part in err["loc"]]
    section = loc[0] if loc else "?"
    if len(loc) > 1 and (section, loc[1]) in origins:
        source = f"{source} (override -p {origins[(section, loc[1])]})"
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        return f"{source}: unknown section {section!r}{_did_you_mean(section, SECTIONS)}"
    key = ".".join(loc[1:]) or "?"
    if err["type"] == "extra_forbidden":
        model = SECTIONS.get(section)
        hint = _did_you_mean(loc[1], model.model_fields) if model else ""
        return f"{source}: section {section!r}, key {key!r}: unknown key{hint}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    message = err["msg"].removeprefix("Value error, ")
    return f"{source}: section {section!r}, key {key!r}: {message}{shown}"


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


__all__ = ["ParamsError", "load_params", "validate", "check_files", "notebook_parameters",
           "dump", "value_origins", "defaulted_blocks", "Params", "BaseModel"]
