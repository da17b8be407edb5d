"""Pre-flight check of training data: every image a record names exists, before any training.

LLaVA's 665k instruction records load their images lazily, so one missing file would stop
stage 2 hours in. The check runs first and either fails with the count and the first missing
paths, or (skip) drops those records and says how many.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp()); (folder / "a.jpg").write_bytes(b"")
0
>>> recs = [{"id": "1", "image": "a.jpg"}, {"id": "2", "image": "b.jpg"}, {"id": "3"}]
>>> kept, report = check_images(recs, folder, skip_missing=True, name="instruct")
>>> [r["id"] for r in kept], report["skipped_records"], report["missing_files"]
(['1', '3'], 1, ['b.jpg'])
"""
from __future__ import annotations

from pathlib import Path

SHOW = 5  # missing paths named in the error
# LLaVA's README (Visual Instruction Tuning data): OCR-VQA's downloader saves images under their
# original extensions (.gif, .png); LLaVA's records name them all as .jpg
OCR_VQA_HINT = ("OCR-VQA: LLaVA's records name every image ocr_vqa/images/<id>.jpg; its download "
                "script saves other extensions, which LLaVA's README says to save as .jpg")


class MissingImagesError(FileNotFoundError):
    pass


def check_images(records: list[dict], folder: str | Path | None, *, skip_missing: bool = False,
                 name: str = "records") -> tuple[list[dict], dict]:
    """(records to train on, report). Raises MissingImagesError naming the count and the first
    missing paths unless skip_missing, which drops those records. Each file is checked once."""
    files = sorted({r["image"] for r in records if r.get("image")})
    root = Path(folder) if folder is not None else None
    if files and root is None:
        raise ValueError(f"{name}: records have images but no image folder is given")
    missing = [f for f in files if not (root / f).is_file()]
    gone = set(missing)
    dropped = [r for r in records if r.get("image") in gone]
    report = {"part": name, "records": len(records), "image_files": len(files),
              "missing_files": missing, "skipped_records": len(dropped) if skip_missing else 0}
    if not missing:
        return list(records), report
    if not skip_missing:
        first = ", ".join(str(root / f) for f in missing[:SHOW])
        ocr = f"; {OCR_VQA_HINT}" if any("ocr_vqa" in f for f in missing) else ""
        raise MissingImagesError(
            f"{name}: {len(missing)} of {len(files)} image files are missing under {root} "
            f"({len(dropped)} of {len(records)} records use them); first: {first}{ocr}. "
            "Fix the image folder, or set 02_train_variants.skip_missing_images: true to train "
            "without those records (counted in the outputs)")
    return [r for r in records if r.get("image") not in gone], report


def check_manifest(manifest: dict | str | Path, data_langs, *, skip_missing: bool = False
                   ) -> list[dict]:
    """check_images over every part of every language a run will train on: called before the
    first variant, so a missing image in the German data does not surface after the English
    variants' days of training. Returns the reports (raises unless skip_missing)."""
    import json

    from ifl.train.loop import load_records
    if not isinstance(manifest, dict):
        manifest = json.loads(Path(manifest).read_text(encoding="utf-8"))
    folders = manifest.get("image_folders") or {}
    reports = []
    for lang in dict.fromkeys(data_langs):
        if lang not in manifest:
            continue  # train_variant names the missing language
        for part in ("pretrain", "instruct"):
            _, report = check_images(load_records(manifest[lang][part]),
                                     folders.get(part, manifest.get("image_folder")),
                                     skip_missing=skip_missing, name=f"{lang} {part}")
            reports.append(report)
    return reports
