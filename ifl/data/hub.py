"""Shared loading for the hub datasets: one call for a hub id and for a local copy, errors that
say what to download, and the row-count check against the paper.

Every benchmark loader takes `source`: the hub id of `sources.yaml` or a local directory laid
out like the hub repo (what `hf download --local-dir` makes). Both go through the same
`datasets.load_dataset(source, revision=...)` call, so the offline fixtures in
`ifl.smoke.fixtures` exercise the real code path. `revision=None` means the pin of
`sources.yaml` when `source` is that hub id (any other hub id: its latest commit); a local copy
has no revision. Data loaded from the hub is cached by `datasets` (`cache_dir`), so a second
load downloads nothing; a local copy is prepared afresh at every load (see `load_hub_dataset`).

>>> spec = source_spec("maxm")
>>> spec.params_key
'maxm_source'
>>> print(download_command(spec))  # doctest: +NORMALIZE_WHITESPACE
hf download floschne/maxm --repo-type dataset --revision 169afacfb848a1a4dab6b2aaaa149841cd643961
   --local-dir data/maxm
>>> is_path_like("./data/maxm"), is_path_like("floschne/maxm")
(True, False)
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping

import yaml

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class SourceUnavailableError(RuntimeError):
    """A dataset can be read neither from the hub nor from the datasets cache; the message
    gives the download command and the params key to point at the local copy."""


@dataclass(frozen=True)
class SourceSpec:
    """One row of `sources.yaml` (see the comments there for the meaning of each field)."""
    name: str
    hub_id: str
    revision: str | None
    params_key: str
    local_dir: str
    include: tuple[str, ...] = ()
    gated: bool = False
    expected_rows: Mapping[str, int] = field(default_factory=dict)
    split_files: str | None = None


def _load_specs() -> dict[str, SourceSpec]:
    text = resources.files("ifl.data").joinpath("sources.yaml").read_text(encoding="utf-8")
    specs = {}
    for name, row in yaml.safe_load(text).items():
        row = dict(row, include=tuple(row.get("include") or ()),
                   expected_rows=dict(row.get("expected_rows") or {}))
        specs[name] = SourceSpec(name=name, **row)
    return specs


SOURCES: dict[str, SourceSpec] = _load_specs()


def source_spec(name: str) -> SourceSpec:
    """The `sources.yaml` entry `name`, with an error listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None


def is_path_like(source: str | os.PathLike) -> bool:
    """A local path rather than a hub id: it exists here, or it looks like a path (`/`, `./`,
    `../` or `~` in front, a backslash, or two or more `/`). The params check before a run
    (ifl.params.check_files) uses this same rule, so a path-like value that is missing is
    reported before any work instead of being tried as a hub id."""
    text = str(source)
    return (Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~"))
            or "\\" in text or text.count("/") > 1)


def local_value(spec: SourceSpec) -> str:
    """What to write in params for the suggested local copy: `./data/maxm` (path-like)."""
    return spec.local_dir if is_path_like(spec.local_dir) else f"./{spec.local_dir}"


def is_local(source: str | os.PathLike) -> bool:
    """True for an existing directory; anything else is treated as a hub id."""
    return Path(source).expanduser().is_dir()


def resolve(spec: SourceSpec, source: str | os.PathLike | None,
            revision: str | None) -> tuple[str, str | None]:
    """(path or hub id, revision) for `datasets`: local dirs have no revision; the pinned
    revision applies when `source` is the pinned hub id and no revision is given."""
    source = spec.hub_id if source is None else source
    if is_local(source):
        return str(Path(source).expanduser()), None
    source = str(source)
    if is_path_like(source):
        raise SourceUnavailableError(f"{spec.name}: {source!r} is neither a directory nor a hub id "
                                     f"(there is no folder {source})." + _how_to_get(spec))
    if not _HUB_ID.match(source):
        raise SourceUnavailableError(f"{spec.name}: {source!r} is neither a directory nor a hub id."
                                     + _how_to_get(spec))
    if revision is None and source == spec.hub_id:
        revision = spec.revision
    return source, revision


def provenance(spec: SourceSpec, source: str | os.PathLike | None,
               revision: str | None) -> dict[str, str | None]:
    """What a load read, for the record saved beside results: {name, source, revision}
    (revision None for a local copy). Loaders put a list of these in `tasks.attrs["sources"]`."""
    path, revision = resolve(spec, source, revision)
    return {"name": spec.name, "source": path, "revision": revision}


_SPEC_DIR = "<spec.local_dir>"


def download_command(spec: SourceSpec, include: tuple[str, ...] | None = None,
                     revision: str | None = None, local_dir: str | None = _SPEC_DIR) -> str:
    """The `hf download` command that makes the local copy `spec.local_dir` (at `revision`,
    default the pinned one; only the files `include`, default `spec.include`); with
    local_dir=None, the command that fills the Hugging Face cache instead."""
    include = spec.include if include is None else include
    revision = revision or spec.revision
    parts = [f"hf download {spec.hub_id} --repo-type dataset"]
    if revision:
        parts.append(f"--revision {revision}")
    parts += [f"--include '{pattern}'" for pattern in include]
    if local_dir is not None:
        parts.append(f"--local-dir {spec.local_dir if local_dir == _SPEC_DIR else local_dir}")
    return " ".join(parts)


def _how_to_get(spec: SourceSpec, include: tuple[str, ...] | None = None,
                revision: str | None = None) -> str:
    lines = ["", "Download it where the Hugging Face Hub is reachable:",
             f"    {download_command(spec, include, revision)}"]
    if spec.gated:
        lines += [f"  {spec.hub_id} is gated: accept its terms at "
                  f"https://huggingface.co/datasets/{spec.hub_id} with your account, then "
                  "`export HF_TOKEN=<your token>` (or `hf auth login`) before downloading."]
    lines += [f"then copy {spec.local_dir}/ here and set `{spec.params_key}: {local_value(spec)}` "
              "in the params file (or pass source=<that directory>)."]
    return "\n".join(lines)


def _hub_failures() -> tuple[type[BaseException], ...]:
    """Exceptions meaning 'the hub (or this repo on it) cannot be reached from here'."""
    import httpx
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError)
    # datasets turns offline mode and network failures into the builtin ConnectionError
    return (ConnectionError, DatasetNotFoundError, GatedRepoError, LocalEntryNotFoundError,
            OfflineModeIsEnabled, RepositoryNotFoundError, httpx.HTTPError)


def _unavailable(spec: SourceSpec, source: str, revision: str | None, error: BaseException,
                 include: tuple[str, ...] | None = None) -> SourceUnavailableError:
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")]
    reason = (f"offline mode is on ({offline[0]}=1)" if offline
              else f"{type(error).__name__}: {error}")
    if spec.gated and "gated" in str(error).lower():
        reason = "it is gated and no accepted token was found (HF_TOKEN)"
    at = f"@{revision}" if revision else ""
    return SourceUnavailableError(f"cannot load {spec.name} from {source}{at}: {reason}, and it is "
                                  "not in the local cache." + _how_to_get(spec, include, revision))


def load_hub_dataset(spec: SourceSpec, source: str | os.PathLike | None = None, *,
                     revision: str | None = None, split: str | None = None,
                     data_files: Mapping[str, str] | None = None,
                     cache_dir: str | os.PathLike | None = None, token: str | None = None):
    """`datasets.load_dataset` for a hub id or a local copy, with hub failures turned into
    `SourceUnavailableError`. Returns a DatasetDict (split=None) or a Dataset.

    `data_files` (split -> glob relative to the repo root) restricts what is downloaded;
    without it the repo's README `configs` decide. `token=None` lets huggingface_hub read
    HF_TOKEN from the environment.
    """
    import datasets

    path, revision = resolve(spec, source, revision)
    # A local copy is prepared afresh: datasets' cache key for a local imagefolder does not
    # follow the folder, so a copy moved or rebuilt elsewhere (same files) was served from a
    # cache whose image paths point into the old, possibly deleted, folder.
    mode = "force_redownload" if is_local(path) else None
    try:
        return datasets.load_dataset(path, split=split, data_files=data_files, revision=revision,
                                     cache_dir=None if cache_dir is None else str(cache_dir),
                                     token=token, download_mode=mode)
    except _hub_failures() as error:
        if is_local(path):
            raise
        include = None
        if data_files and spec.split_files:
            include = ("README.md",) + tuple(data_files.values())
        raise _unavailable(spec, path, revision, error, include) from error


def hub_file(spec: SourceSpec, filename: str, source: str | os.PathLike | None = None, *,
             revision: str | None = None, cache_dir: str | os.PathLike | None = None,
             token: str | None = None) -> Path:
    """Local path of one repo file: `<dir>/<filename>` for a local copy, else the
    huggingface_hub cache (downloaded once, at the pinned revision)."""
    path, revision = resolve(spec, source, revision)
    if is_local(path):
        local = Path(path) / filename
        if not local.is_file():
            raise SourceUnavailableError(f"{spec.name}: no {filename} in {path}."
                                         + _how_to_get(spec, (filename,)))
        return local
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(path, filename, repo_type="dataset", revision=revision,
                                    cache_dir=None if cache_dir is None else str(cache_dir),
                                    token=token))
    except _hub_failures() as error:
        raise _unavailable(spec, path, revision, error, (filename,)) from error


def check_counts(spec: SourceSpec, counts: Mapping[str, int], where: str = "") -> dict[str, int]:
    """Compare loaded rows per language with `spec.expected_rows`; log one warning naming each
    difference (never raise: a new revision should not stop a run). Returns {lang: found -
    expected} for the languages that differ.

    >>> check_counts(source_spec("llavaw"), {"en": 60})
    {}
    """
    diff = {lang: counts.get(lang, 0) - want for lang, want in spec.expected_rows.items()
            if lang in counts and counts[lang] != want}
    if diff:
        detail = ", ".join(f"{lang} {counts[lang]} (paper {spec.expected_rows[lang]}, {d:+d})"
                           for lang, d in diff.items())
        log.warning("%s%s: row counts differ from the paper's: %s. Another revision than the "
                    "pinned %s@%s, or a partial local copy? Results will not match the paper's "
                    "tables exactly.", spec.name, f" ({where})" if where else "", detail,
                    spec.hub_id, spec.revision)
    return diff


def require_columns(spec: SourceSpec, column_names, needed, where: str = "") -> None:
    """Raise ValueError naming the columns a loader needs that the data lacks (a changed
    revision, or a local copy of something else)."""
    missing = [c for c in needed if c not in column_names]
    if missing:
        raise ValueError(f"{spec.name}{f' ({where})' if where else ''}: missing column(s) "
                         f"{missing}; found {list(column_names)}. Is this {spec.hub_id} at "
                         f"revision {spec.revision}?")


def image_bytes(value) -> bytes | None:
    """Encoded image bytes from a datasets image value ({'bytes', 'path'} struct, as stored in
    parquet or given by `Image(decode=False)`), read from `path` when the bytes are not
    embedded. No decoding or re-encoding."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value.get("bytes") is not None:
        return bytes(value["bytes"])
    path = value.get("path")
    if not path:
        return None
    if os.path.isfile(path):
        return Path(path).read_bytes()
    from datasets.utils.file_utils import xopen  # hf:// and other fsspec paths
    with xopen(path, "rb") as f:
        return f.read()
