"""`./run_all.sh PARAMS --check`: before a multi-day run, what would run and what is missing.

Prints the notebooks that would run, then every hub repository the params refer to (models of
ifl/models.yaml named in the params, datasets of ifl/data/sources.yaml, the NLLB checkpoint,
GlotLID) at its revision, and whether it is already in the local Hugging Face cache; for each
missing one the exact `hf download` command that puts it there. Local paths are checked too.
Nothing is downloaded, built or written. Exit 0 when the params are valid (missing downloads
are listed, not errors); exit 2 when they are not (the runner has validated them by then, so
what is left here is a given local file that is missing, or an output_root that cannot be
written).

The cache check reads the cache folder (`<HF_HUB_CACHE>/<repo folder>/snapshots/<commit>/`)
and never the network: a snapshot with the file the loader reads first (config.json of a model,
model_v3.bin of GlotLID, the listed files of a dataset) counts as present.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ifl.params import ParamsError, notebook_parameters
from ifl.params_schema import Params, _LocalFile, is_local, local_path_fields

_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubNeed:
    """One hub repository a run will read."""
    used_by: str          # params key, e.g. '03_collect_responses.model_sources.bakllava'
    repo_id: str
    repo_type: str        # model | dataset
    revision: str | None  # None = main
    files: tuple[str, ...]  # files that must be in the snapshot (empty = any file)
    command: str          # hf download command that fills the cache

    @property
    def at(self) -> str:
        return f"{self.repo_id}@{self.revision or 'main'}"


def snapshot(repo_id: str, repo_type: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of repo_id at revision (a SHA or a ref such as main), or None."""
    from huggingface_hub.constants import HF_HUB_CACHE
    folder = Path(HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    if not _SHA.match(revision):
        ref = folder / "refs" / revision
        if not ref.is_file():
            return None
        revision = ref.read_text(encoding="utf-8").strip()
    snap = folder / "snapshots" / revision
    return snap if snap.is_dir() else None


def in_cache(need: HubNeed) -> bool:
    snap = snapshot(need.repo_id, need.repo_type, need.revision)
    if snap is None:
        return False
    if need.files:
        return all((snap / f).exists() for f in need.files)
    return any(snap.iterdir())


def _model_need(used_by: str, source: str, revision: str | None = None) -> HubNeed:
    from ifl.models import download_command, find_model
    info = find_model(source)
    if revision is None and info is not None and source in (info.name, info.hub_id):
        revision = info.revision  # the models.yaml pin
    repo = info.hub_id if info is not None and source == info.name else source
    return HubNeed(used_by, repo, "model", revision, ("config.json",),
                   download_command(repo, revision))


def _dataset_need(used_by: str, name: str, source: str, revision: str | None) -> HubNeed:
    from ifl.data.hub import download_command, source_spec
    spec = source_spec(name)
    if revision is None and source == spec.hub_id:
        revision = spec.revision
    files = tuple(f for f in spec.include if not any(c in f for c in "*?["))
    command = download_command(spec, revision=revision, local_dir=None)
    if source != spec.hub_id:
        command = command.replace(spec.hub_id, source, 1)
    return HubNeed(used_by, source, "dataset", revision, files, command)


def _glotlid_uses(params: Params, selected: list[str]) -> list[tuple[str, str, str, str | None]]:
    """(source key, identifier kind, source, revision) of every selected notebook that loads a
    language identifier by notebook 04's rule: 04 itself, and 03 when its precision check is on."""
    uses = []
    s, c = params.score_languages, params.collect_responses
    if "04_score_languages" in selected:  # first: a repo needed twice is listed under 04's key
        uses.append(("04_score_languages.glotlid_source", s.identifier, s.glotlid_source,
                     s.glotlid_revision))
    if "03_collect_responses" in selected and c.precision_check:
        uses.append(("03_collect_responses.precision_check_glotlid_source", c.precision_check_identifier,
                     c.precision_check_glotlid_source, c.precision_check_glotlid_revision))
    return uses


def hub_needs(params: Params, selected: list[str]) -> tuple[list[HubNeed], list[tuple[str, str]]]:
    """(hub repositories, local paths as (used_by, path)) that the selected notebooks read."""
    from ifl.langid import GLOTLID_FILE, GLOTLID_REPO, GLOTLID_REVISION
    needs: list[HubNeed] = []
    local: list[tuple[str, str]] = []

    def source(used_by: str, value: str, make) -> None:
        (local.append((used_by, value)) if is_local(value) else needs.append(make()))

    if params.common.world == "paper":
        t = params.translate_data
        if "01_translate_data" in selected:
            sec = "01_translate_data"
            datasets = [b for b in t.benchmarks]
            if "maxm" in datasets and t.maxm_description == "xm3600":
                datasets.append("xm3600")
            datasets += ["llava_pretrain", "llava_instruct"]
            for name in datasets:
                key = {"llava_pretrain": "pretrain", "llava_instruct": "instruct"}.get(name, name)
                value, rev = getattr(t, f"{key}_source"), getattr(t, f"{key}_revision")
                source(f"{sec}.{key}_source", value,
                       lambda n=name, k=key, v=value, r=rev: _dataset_need(f"{sec}.{k}_source", n, v, r))
            if t.translator == "nllb" or (t.visit_translator == "nllb" and "visit" in t.benchmarks):
                source(f"{sec}.nllb_model", t.nllb_model,
                       lambda: _model_need(f"{sec}.nllb_model", t.nllb_model, t.nllb_revision))
        if "02_train_variants" in selected:
            v = params.train_variants
            for kind, names, sources in (("llm", v.llms, v.llm_sources),
                                         ("vision", v.visions, v.vision_sources)):
                for name in names:
                    value = sources.get(name, name)
                    key = f"02_train_variants.{kind}_sources.{name}"
                    source(key, value, lambda k=key, s=value: _model_need(k, s))
            local += [("02_train_variants.pretrain_image_folder", v.pretrain_image_folder),
                      ("02_train_variants.instruct_image_folder", v.instruct_image_folder)]
        for sec in ("03_collect_responses", "06_umap_cka", "08_beyond_llava"):
            if sec not in selected:
                continue
            block = notebook_parameters(params, sec)
            wanted = block["umap_model"] if sec == "06_umap_cka" else block["models"]
            wanted = [wanted] if isinstance(wanted, str) else wanted
            revisions = block.get("model_revisions", {})
            for name in wanted:
                if name == "variants" or name not in block["model_sources"]:
                    continue  # trained by notebook 02
                value = block["model_sources"][name]
                key = f"{sec}.model_sources.{name}"
                source(key, value, lambda k=key, s=value, n=name: _model_need(
                    k, s, revisions.get(n)))
    for key, kind, value, revision in _glotlid_uses(params, selected):
        if kind == "fallback":
            continue
        revision = revision or GLOTLID_REVISION
        if is_local(value):
            local.append((key, value))
        else:
            repo = value or GLOTLID_REPO
            needs.append(HubNeed(key, repo, "model", revision, (GLOTLID_FILE,),
                                 f"hf download {repo} {GLOTLID_FILE} --revision {revision}"))
    return needs, local


def check_report(params: Params, selected: list[str], root: Path, *, source: str,
                 out=None) -> int:
    """Print the report; 0 when the params are valid, 2 when not."""
    out = out or sys.stdout
    c = params.common
    errors: list[str] = []
    print(f"params {source}: valid. Run '{c.run_name}' ({c.world} world, device {c.device}) "
          f"would run: {', '.join(selected)}", file=out)
    base = root / c.output_root
    target = base / "runs" / c.run_name
    writable = next((p for p in [target, *target.parents] if p.exists()), None)
    if writable is None or not os.access(writable, os.W_OK):
        errors.append(f"common.output_root {c.output_root!r}: {writable} is not writable")
    elif (target / ".lock").exists():
        print(f"note: {target / '.lock'} exists: another run may be using this run name", file=out)
    for section, key, value in local_path_fields(params, kind=_LocalFile):
        if section in selected and not (root / Path(value).expanduser()).exists():
            errors.append(f"{source}: section {section!r}, key {key!r}: file not found: {value}")
    needs, local = hub_needs(params, selected)
    if c.make_smoke_assets:
        print("make_smoke_assets: the run builds smoke_assets/ first (python -m ifl.smoke)", file=out)
    if c.world != "paper":
        print("miniature world: every model and dataset is made by the notebooks; no downloads.",
              file=out)
    missing = 0
    if needs:
        print("\nhub repositories (local Hugging Face cache, nothing downloaded):", file=out)
    seen = set()
    for need in needs:
        if (need.at, need.files) in seen:
            continue
        seen.add((need.at, need.files))
        if in_cache(need):
            print(f"  in cache  {need.repo_type} {need.at}  ({need.used_by})", file=out)
        else:
            missing += 1
            fallback = (" (identifier auto: the run falls back to lid.176 without it)"
                        if need.used_by.startswith("04_") and params.score_languages.identifier == "auto"
                        else "")
            print(f"  MISSING   {need.repo_type} {need.at}  ({need.used_by}){fallback}\n"
                  f"            {need.command}", file=out)
    if local:
        print("\nlocal paths:", file=out)
    smoke = (root / "smoke_assets").resolve()
    for used_by, value in dict.fromkeys(local):
        path = (root / Path(value).expanduser()).resolve()
        if path.exists():
            print(f"  present   {value}  ({used_by})", file=out)
        elif c.make_smoke_assets and path.is_relative_to(smoke):
            print(f"  to build  {value}  ({used_by}; by make_smoke_assets)", file=out)
        else:
            missing += 1
            print(f"  MISSING   {value}  ({used_by})", file=out)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    print(f"\n{missing} download(s) or local path(s) missing"
          + (" (HF_HUB_OFFLINE=1: run the commands above where the hub is reachable, or run "
             "with HF_HUB_OFFLINE=0 to let the run download them)" if offline and missing else ""),
          file=out)
    if errors:
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        return 2
    return 0


__all__ = ["check_report", "hub_needs", "in_cache", "snapshot", "HubNeed", "ParamsError"]
