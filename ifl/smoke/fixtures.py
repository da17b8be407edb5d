"""Small offline stand-ins for the hub datasets, laid out exactly like the hub repos.

Each folder can be passed as `source=` to the real loaders in `ifl.data` (or set as the
params key `<name>_source`), so the paper-world code path runs without network. Column names
and arrow types are the hub's (docs/sources.md): parquet with README `configs`
for MaXM, XM3600 and the PALO LLaVA-Bench mirror, an imagefolder for VisIT-Bench, one CSV for
MultiQ, JSON for the LLaVA-v1.5 training data. Images are two tiny generated pictures (a red
square, two blue circles); the text is short sentences about them in every split's language.

Deliberate quirks the tests rely on: MaXM's Hebrew split is `iw` while XM3600's is `he`;
XM3600's `ro` split lacks one MaXM image (so the loader falls back to `en`); one VisIT-Bench
row is rated incorrect (filtered out); MultiQ carries two codes outside the paper's 14.

Writing is deterministic and skips files whose bytes are unchanged, so a rerun is fast and
keeps the `datasets` cache valid.

>>> import tempfile
>>> paths = write_fixtures(Path(tempfile.mkdtemp()))
>>> sorted(paths)
['llava_images', 'llava_instruct', 'llava_pretrain', 'llavaw', 'maxm', 'multiq', 'visit', 'xm3600']
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw

from ifl.data.languages import LANGUAGES


class Phrases(NamedTuple):
    square: str          # long caption of the square picture
    circles: str         # long caption of the circles picture
    square_short: str    # second XM3600-style caption
    circles_short: str
    q_color: str
    q_count: str
    a_color: str
    a_count: str
    q_capital: str       # MultiQ-style factual questions
    q_legs: str


# Hand-written for these fixtures (no copied text).
PHRASES: dict[str, Phrases] = {
    "en": Phrases("A red square on a white background.", "Two blue circles on a white background.",
                  "A red square.", "Two blue circles.", "What color is the square?",
                  "How many circles are there?", "red", "two",
                  "What is the capital of France?", "How many legs does a spider have?"),
    "zh": Phrases("白色背景上的一个红色正方形。", "白色背景上的两个蓝色圆圈。", "一个红色正方形。",
                  "两个蓝色圆圈。", "正方形是什么颜色的？", "有几个圆圈？", "红色", "两个",
                  "法国的首都是哪里？", "蜘蛛有几条腿？"),
    "hi": Phrases("सफ़ेद पृष्ठभूमि पर एक लाल वर्ग।", "सफ़ेद पृष्ठभूमि पर दो नीले वृत्त।", "एक लाल वर्ग।",
                  "दो नीले वृत्त।", "वर्ग किस रंग का है?", "कितने वृत्त हैं?", "लाल", "दो",
                  "फ़्रांस की राजधानी क्या है?", "मकड़ी के कितने पैर होते हैं?"),
    "he": Phrases("ריבוע אדום על רקע לבן.", "שני עיגולים כחולים על רקע לבן.", "ריבוע אדום.",
                  "שני עיגולים כחולים.", "באיזה צבע הריבוע?", "כמה עיגולים יש?", "אדום", "שניים",
                  "מהי בירת צרפת?", "כמה רגליים יש לעכביש?"),
    "th": Phrases("สี่เหลี่ยมสีแดงบนพื้นหลังสีขาว", "วงกลมสีน้ำเงินสองวงบนพื้นหลังสีขาว", "สี่เหลี่ยมสีแดง",
                  "วงกลมสีน้ำเงินสองวง", "สี่เหลี่ยมเป็นสีอะไร", "มีวงกลมกี่วง", "สีแดง", "สอง",
                  "เมืองหลวงของฝรั่งเศสคืออะไร", "แมงมุมมีกี่ขา"),
    "ar": Phrases("مربع أحمر على خلفية بيضاء.", "دائرتان زرقاوان على خلفية بيضاء.", "مربع أحمر.",
                  "دائرتان زرقاوان.", "ما لون المربع؟", "كم عدد الدوائر؟", "أحمر", "اثنتان",
                  "ما هي عاصمة فرنسا؟", "كم عدد أرجل العنكبوت؟"),
    "bn": Phrases("সাদা পটভূমিতে একটি লাল বর্গ।", "সাদা পটভূমিতে দুটি নীল বৃত্ত।", "একটি লাল বর্গ।",
                  "দুটি নীল বৃত্ত।", "বর্গটি কোন রঙের?", "কয়টি বৃত্ত আছে?", "লাল", "দুটি",
                  "ফ্রান্সের রাজধানী কী?", "মাকড়সার কয়টি পা আছে?"),
    "ja": Phrases("白い背景の上の赤い四角形。", "白い背景の上の二つの青い円。", "赤い四角形。",
                  "二つの青い円。", "四角形は何色ですか？", "円はいくつありますか？", "赤", "二つ",
                  "フランスの首都はどこですか？", "クモの脚は何本ですか？"),
    "es": Phrases("Un cuadrado rojo sobre un fondo blanco.", "Dos círculos azules sobre un fondo blanco.",
                  "Un cuadrado rojo.", "Dos círculos azules.", "¿De qué color es el cuadrado?",
                  "¿Cuántos círculos hay?", "rojo", "dos", "¿Cuál es la capital de Francia?",
                  "¿Cuántas patas tiene una araña?"),
    "de": Phrases("Ein rotes Quadrat auf weißem Hintergrund.", "Zwei blaue Kreise auf weißem Hintergrund.",
                  "Ein rotes Quadrat.", "Zwei blaue Kreise.", "Welche Farbe hat das Quadrat?",
                  "Wie viele Kreise gibt es?", "rot", "zwei", "Was ist die Hauptstadt von Frankreich?",
                  "Wie viele Beine hat eine Spinne?"),
    "fr": Phrases("Un carré rouge sur un fond blanc.", "Deux cercles bleus sur un fond blanc.",
                  "Un carré rouge.", "Deux cercles bleus.", "De quelle couleur est le carré ?",
                  "Combien y a-t-il de cercles ?", "rouge", "deux", "Quelle est la capitale de la France ?",
                  "Combien de pattes a une araignée ?"),
    "ro": Phrases("Un pătrat roșu pe un fundal alb.", "Două cercuri albastre pe un fundal alb.",
                  "Un pătrat roșu.", "Două cercuri albastre.", "Ce culoare are pătratul?",
                  "Câte cercuri sunt?", "roșu", "două", "Care este capitala Franței?",
                  "Câte picioare are un păianjen?"),
    "ru": Phrases("Красный квадрат на белом фоне.", "Два синих круга на белом фоне.", "Красный квадрат.",
                  "Два синих круга.", "Какого цвета квадрат?", "Сколько здесь кругов?", "красный", "два",
                  "Какая столица Франции?", "Сколько ног у паука?"),
    "ur": Phrases("سفید پس منظر پر ایک سرخ مربع۔", "سفید پس منظر پر دو نیلے دائرے۔", "ایک سرخ مربع۔",
                  "دو نیلے دائرے۔", "مربع کس رنگ کا ہے؟", "کتنے دائرے ہیں؟", "سرخ", "دو",
                  "فرانس کا دارالحکومت کیا ہے؟", "مکڑی کی کتنی ٹانگیں ہوتی ہیں؟"),
}

MAXM_SPLITS = ("hi", "th", "zh", "fr", "en", "iw", "ro")         # hub order
XM3600_SPLITS = ("en", "fr", "hi", "he", "ro", "th", "zh", "de")  # the MaXM languages (+ one more)
PALO_SPLITS = ("english", "russian", "hindi", "bengali", "chinese", "spanish", "japanese",
               "arabic", "french", "urdu")
XM3600_MISSING = ("ro", "circles")  # (xm3600 split, picture) left out: exercises the en fallback

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
STRINGS = pa.list_(pa.string())


# ---------------------------------------------------------------------------------- helpers
@lru_cache(maxsize=None)
def picture(kind: str, fmt: str = "JPEG") -> bytes:
    """A 16x16 picture ('square' or 'circles') encoded as JPEG or PNG (deterministic bytes)."""
    img = Image.new("RGB", (16, 16), "white")
    draw = ImageDraw.Draw(img)
    if kind == "square":
        draw.rectangle([4, 4, 11, 11], fill=(220, 20, 20))
    else:
        draw.ellipse([1, 5, 7, 11], fill=(20, 40, 220))
        draw.ellipse([9, 5, 15, 11], fill=(20, 40, 220))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _hex_id(*parts: str) -> str:
    """16 hex digits, like the Open Images ids XM3600 uses."""
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:16]


def _write(path: Path, data: bytes | str) -> None:
    """Write unless the file already holds exactly these bytes (keeps mtimes, so caches hold)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    _write(path, buf.getvalue())


def _feature(dtype: pa.DataType):
    """The YAML `dataset_info.features` form of an arrow type, as push_to_hub writes it."""
    if pa.types.is_struct(dtype):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in dtype]}
    if pa.types.is_list(dtype):
        return {"sequence": _feature(dtype.value_type)["dtype"]}
    return {"dtype": {pa.string(): "string", pa.int64(): "int64", pa.bool_(): "bool",
                      pa.binary(): "binary"}[dtype]}


def _readme(title: str, body: str, splits=(), schema: pa.Schema | None = None,
            pattern: str = "data/{split}-*", **card) -> str:
    """A dataset card: YAML header (licence, features, `configs`) + text."""
    if schema is not None:
        card["dataset_info"] = {"features": [{"name": f.name, **_feature(f.type)} for f in schema]}
    if splits:
        card["configs"] = [{"config_name": "default", "data_files": [
            {"split": s, "path": pattern.format(split=s)} for s in splits]}]
    header = yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n# {title} (offline fixture of ifl)\n\n{body}\n"


def _parquet_name(split: str) -> str:
    return f"data/{split}-00000-of-00001.parquet"


# ---------------------------------------------------------------------------------- MaXM
MAXM_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("image_url", pa.string()), ("image", IMAGE),
    ("image_locale", pa.string()), ("image_captions", STRINGS), ("question_id", pa.string()),
    ("question", pa.string()), ("answers", STRINGS), ("processed_answers", STRINGS),
    ("language", pa.string()), ("is_collection", pa.bool_()), ("method", pa.string()),
])
XM3600_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("image_locale", pa.string()), ("captions", STRINGS),
    ("captions_tokenized", STRINGS), ("captions_tokenized_lowercase", STRINGS), ("image", IMAGE),
])


def _iso_of_maxm(split: str) -> str:
    return next(lang.iso for lang in LANGUAGES.values() if lang.maxm_split == split)


def _maxm_images() -> list[tuple[str, str, str]]:
    """(maxm split, picture kind, image_id): MaXM shows different images per language."""
    return [(split, kind, _hex_id("maxm", split, kind))
            for split in MAXM_SPLITS for kind in ("square", "circles")]


def write_maxm(root: Path) -> Path:
    out = root / "maxm"
    for split in MAXM_SPLITS:
        iso = _iso_of_maxm(split)
        p, rows = PHRASES[iso], []
        for s, kind, image_id in _maxm_images():
            if s != split:
                continue
            question, answer = (p.q_color, p.a_color) if kind == "square" else (p.q_count, p.a_count)
            rows.append(dict(
                image_id=image_id,
                image_url=f"https://open-images-dataset.s3.amazonaws.com/crossmodal-3600/{image_id}.jpg",
                image={"bytes": picture(kind), "path": None},
                image_locale=LANGUAGES[iso].xm3600_split,
                image_captions=[getattr(p, kind)],
                question_id=f"{image_id}_{split}_0", question=question,
                answers=[answer], processed_answers=[answer.lower()],
                language=split, is_collection=False, method="fixture"))
        _write_parquet(out / _parquet_name(split), rows, MAXM_SCHEMA)
    _write(out / "README.md", _readme(
        "MaXM", "Clone layout of floschne/maxm: one split per language, Hebrew is `iw`.",
        MAXM_SPLITS, MAXM_SCHEMA, language=sorted({_iso_of_maxm(s) for s in MAXM_SPLITS})))
    return out


def write_xm3600(root: Path) -> Path:
    out = root / "xm3600"
    for split in XM3600_SPLITS:
        p, rows = PHRASES[split], []
        for _, kind, image_id in _maxm_images():
            if (split, kind) == XM3600_MISSING:
                continue
            captions = [getattr(p, f"{kind}_short"), getattr(p, kind)]
            rows.append(dict(image_id=image_id, image_locale=split, captions=captions,
                             captions_tokenized=captions,
                             captions_tokenized_lowercase=[c.lower() for c in captions],
                             image={"bytes": picture(kind), "path": None}))
        _write_parquet(out / _parquet_name(split), rows, XM3600_SCHEMA)
    _write(out / "README.md", _readme(
        "XM3600", "Clone layout of floschne/xm3600: one split per caption language (Hebrew is `he`).",
        XM3600_SPLITS, XM3600_SCHEMA, license="cc-by-4.0"))
    return out


# ---------------------------------------------------------------------------------- LLaVA-Bench
LLAVAW_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("image", IMAGE), ("image_caption", pa.string()),
    ("question_id", pa.int64()), ("question", pa.string()), ("question_category", pa.string()),
    ("gpt4_answer", pa.string()), ("gpt4_model_id", pa.string()),
])


def write_llavaw(root: Path) -> Path:
    out = root / "llavaw"
    for split in PALO_SPLITS:
        p = PHRASES[next(lang.iso for lang in LANGUAGES.values() if lang.palo_split == split)]
        rows = [dict(image_id="001", image={"bytes": picture("square"), "path": None},
                     image_caption=p.square, question_id=0, question=p.q_color,
                     question_category="conv", gpt4_answer=p.a_color, gpt4_model_id="gpt-4-0314"),
                dict(image_id="002", image={"bytes": picture("circles"), "path": None},
                     image_caption=p.circles, question_id=1, question=p.q_count,
                     question_category="complex", gpt4_answer=p.a_count, gpt4_model_id="gpt-4-0314")]
        _write_parquet(out / _parquet_name(split), rows, LLAVAW_SCHEMA)
    _write(out / "README.md", _readme(
        "Multilingual LLaVA-Bench-in-the-Wild", "Clone layout of the PALO parquet mirror.",
        PALO_SPLITS, LLAVAW_SCHEMA, license="cc-by-4.0"))
    return out


# ---------------------------------------------------------------------------------- VisIT-Bench
VISIT_COLUMNS = ("file_name", "instruction_category", "instruction", "instruction_conditioned_caption",
                 "gpt4_prediction", "reference_output", "human_ratings_gpt4_correct",
                 "human_ratings_problem_in_caption", "human_ratings_problem_in_gpt4",
                 "public_images_metadata")
# (file name, picture, category, instruction, caption, gpt4 answer, reference, rated correct)
VISIT_ROWS = (
    ("1_tested_skill_color_fixture_square.png", "square", "Color", "What color is the square?",
     "A red square sits in the middle of a plain white background.", "The square is red.",
     "Red.", True),
    ("2_tested_skill_counting_fixture_circles.png", "circles", "Counting",
     "How many circles are there?", "Two blue circles side by side on a white background.",
     "There are two circles.", "", True),
    ("3_gqa_fixture_square.jpg", "square", "gqa", "Is the square on a white background?",
     "A small red square on a white background.", "Yes, the background is white.", "Yes.", True),
    ("4_tested_skill_counting_fixture_circles_wrong.png", "circles", "Counting",
     "How many circles overlap?", "Two blue circles that do not touch.",
     "Three circles overlap.", "", False),
)


def write_visit(root: Path) -> Path:
    out = root / "visit"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(VISIT_COLUMNS)
    for name, kind, category, instruction, caption, answer, reference, correct in VISIT_ROWS:
        _write(out / "test" / name, picture(kind, "PNG" if name.endswith(".png") else "JPEG"))
        meta = json.dumps({"source": "ifl fixture",
                           "License": "https://creativecommons.org/licenses/by/4.0/"})
        writer.writerow([name, category, instruction, caption, answer, reference,
                         correct, False, not correct, meta])
    _write(out / "test" / "metadata.csv", buf.getvalue())
    _write(out / "README.md", _readme(
        "VisIT-Bench", "Clone layout of mlfoundations/VisIT-Bench: an imagefolder in `test/`.",
        ("test",), pattern="test/*", license="cc-by-4.0", language=["en"]))
    return out


# ---------------------------------------------------------------------------------- MultiQ
def write_multiq(root: Path) -> Path:
    out = root / "multiq"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "language", "prompt", "domain"])
    questions = [(lang.multiq_code, PHRASES[lang.iso].q_capital, PHRASES[lang.iso].q_legs)
                 for lang in LANGUAGES.values()]
    # codes the paper does not use: `iw` duplicates `he`, `sw` is outside the 14 languages
    questions += [("iw", PHRASES["he"].q_capital, PHRASES["he"].q_legs),
                  ("sw", "Mji mkuu wa Ufaransa ni upi?", "Buibui ana miguu mingapi?")]
    for code, capital, legs in questions:
        writer.writerow(["gpt-1", code, capital, "geography"])
        writer.writerow(["gpt-2", code, legs, "animals"])
    _write(out / "MultiQ.csv", buf.getvalue())
    _write(out / "README.md", _readme("MultiQ", "Clone layout of caro-holt/MultiQ (one CSV).",
                                      license="cc-by-4.0", task_categories=["question-answering"]))
    return out


# ---------------------------------------------------------------------------------- LLaVA-v1.5 data
def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


PRETRAIN_RECORDS = [  # the first is the record shape documented in docs/sources.md §5
    {"id": "004539375", "image": "00453/004539375.jpg", "conversations": _turns(
        "Render a clear and concise summary of the photo.\n<image>",
        "select luxury furniture 3 - inch gel memory foam mattress topper")},
    {"id": "002239345", "image": "00223/002239345.jpg", "conversations": _turns(
        "<image>\nGive a brief description of the image.", "two blue circles on white")},
]
MIX665K_RECORDS = [
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": _turns(
        "<image>\nWhat color is the square in the image?", "The square in the image is red.",
        "What is behind the square?", "A plain white background.")},
    {"id": "2354786", "image": "gqa/images/2354786.jpg", "conversations": _turns(
        "<image>\nHow many circles are there?\nAnswer the question using a single word or phrase.",
        "2")},
    {"id": "i6IyJda_0", "conversations": _turns(  # text-only (ShareGPT) records have no image
        "How do I greet someone in French?", "You can say \"Bonjour\".")},
]


def write_llava_training(root: Path) -> dict[str, Path]:
    """LLaVA-Pretrain (json + images.zip unpacked to images/), LLaVA-Instruct-150K (json) and
    the `playground/data` image folder the mix665k `image` paths are relative to."""
    pretrain, instruct, images = root / "llava_pretrain", root / "llava_instruct", root / "llava_images"
    _write(pretrain / "blip_laion_cc_sbu_558k.json", json.dumps(PRETRAIN_RECORDS, indent=1))
    for record, kind in zip(PRETRAIN_RECORDS, ("square", "circles")):
        _write(pretrain / "images" / record["image"], picture(kind))
    _write(instruct / "llava_v1_5_mix665k.json", json.dumps(MIX665K_RECORDS, indent=1))
    for record, kind in zip(MIX665K_RECORDS[:2], ("square", "circles")):
        _write(images / record["image"], picture(kind))
    return {"llava_pretrain": pretrain, "llava_instruct": instruct, "llava_images": images}


def write_fixtures(root: Path) -> dict[str, Path]:
    """Write every stand-in under `root`; returns {source name in sources.yaml: folder}
    (plus `llava_images`, the image folder of the mix665k records)."""
    root = Path(root)
    paths = {"maxm": write_maxm(root), "xm3600": write_xm3600(root), "llavaw": write_llavaw(root),
             "visit": write_visit(root), "multiq": write_multiq(root)}
    paths.update(write_llava_training(root))
    return paths
