"""Append-only translation store: what has been translated survives a kill and is never redone.

Layout (one folder per backend, one file per language pair)::

    <root>/<backend-slug>/backend.json      {"backend_id": "nllb:facebook/...@main:beams=4:..."}
    <root>/<backend-slug>/<src>-<tgt>.jsonl one line per attempt:
        {"key": "<sha256 of the source text>", "translation": "..."}
        {"key": "<sha256 of the source text>", "error": "RuntimeError: CUDA out of memory"}

The key is the hash of the source text; backend and language pair are fixed by the path, so a
line is keyed by (source text, src, tgt, backend id). A later line for the same key wins, except
that an error never replaces a translation. Lines are written per batch, then flushed and fsynced.
A SIGKILL can leave half a last line: readers ignore it and the writer cuts it off before appending.

>>> import tempfile
>>> store = TranslationStore(tempfile.mkdtemp())
>>> with store.shard("fake:v1", "en", "de") as shard:
...     shard.append({"Hello": "Hallo"}, {})
>>> store.shard("fake:v1", "en", "de").get("Hello")
'Hallo'
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

try:  # one writer per shard; fcntl is POSIX-only, elsewhere we simply don't lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def text_key(text: str) -> str:
    """sha256 hex digest of the UTF-8 text (the store key)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def backend_slug(backend_id: str) -> str:
    """A safe folder name for a backend id; the hash suffix keeps distinct ids apart."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", backend_id).strip("_")[:80]
    return f"{readable}-{hashlib.sha256(backend_id.encode()).hexdigest()[:8]}"


class StoreCorruptError(RuntimeError):
    """A line other than the last one cannot be parsed: the file was edited or two runs wrote it."""


class TranslationStore:
    """A directory of shards, one per (backend id, src, tgt)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, backend_id: str, src: str, tgt: str) -> Path:
        return self.root / backend_slug(backend_id) / f"{src}-{tgt}.jsonl"

    def shard(self, backend_id: str, src: str, tgt: str) -> "Shard":
        return Shard(self.path(backend_id, src, tgt), backend_id)


class Shard:
    """Translations and errors of one (backend, src, tgt); `append` persists a batch durably.
    With `path=None` it only lives in memory (for one-off translations that need no resume)."""

    def __init__(self, path: Path | None, backend_id: str):
        self.path = path
        self.backend_id = backend_id
        self.done: dict[str, str] = {}    # key -> translation
        self.errors: dict[str, str] = {}  # key -> last error, only for keys not in `done`
        self._file = None
        self._read()

    def get(self, text: str) -> str | None:
        return self.done.get(text_key(text))

    def _read(self) -> None:
        if self.path is None or not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                key = entry["key"]
            except (ValueError, KeyError, TypeError):
                if number == len(lines):  # the unfinished last line of a killed run
                    continue
                raise StoreCorruptError(
                    f"{self.path}: line {number} is not a store entry; move the file away to start "
                    f"this language pair afresh, or delete that line") from None
            if "translation" in entry:
                self.done[key] = entry["translation"]
                self.errors.pop(key, None)
            elif key not in self.done:
                self.errors[key] = entry.get("error", "unknown error")

    def _open(self):
        if self._file is not None:
            return self._file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.path.parent / "backend.json"
        if not meta.exists():
            meta.write_text(json.dumps({"backend_id": self.backend_id}) + "\n", encoding="utf-8")
        self._file = open(self.path, "ab+")
        if fcntl is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                self._file = None
                raise RuntimeError(f"{self.path} is being written by another process; "
                                   "run one translation per language pair at a time") from None
        self._cut_partial_tail()
        return self._file

    def _cut_partial_tail(self) -> None:
        """Drop bytes after the last newline (half a line from a killed run) before appending."""
        f = self._file
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size
        while end > 0:  # scan backwards in blocks for the last complete line
            start = max(0, end - 65536)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                break
            end = start
        else:
            f.truncate(0)
        f.seek(0, os.SEEK_END)

    def append(self, translations: dict[str, str], errors: dict[str, str]) -> None:
        """Persist one batch: {source text: translation} and {source text: error message}."""
        lines = []
        for text, translation in translations.items():
            key = text_key(text)
            self.done[key] = translation
            self.errors.pop(key, None)
            lines.append({"key": key, "translation": translation})
        for text, error in errors.items():
            key = text_key(text)
            if key not in self.done:
                self.errors[key] = error
            lines.append({"key": key, "error": error})
        if not lines or self.path is None:
            return
        f = self._open()
        f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in lines).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing also releases the flock
            self._file = None

    def __enter__(self) -> "Shard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
