"""Tiny random models built offline, for tests and the smoke run (outputs are gibberish).

`write_tiny_nllb(root)` writes `root/models/tiny-nllb/`: the real classes
(`M2M100ForConditionalGeneration`, `NllbTokenizer`, i.e. `NllbTokenizerFast`) with a 600-piece
BPE vocabulary trained here on a few hundred sentences in the paper's 14 languages, the 14
FLORES-200 language tokens, and a 2-layer, d_model=32 network with random weights. It loads with
`AutoTokenizer.from_pretrained(dir)` + `AutoModelForSeq2SeqLM.from_pretrained(dir)` exactly like
`facebook/nllb-200-distilled-1.3B`, so the translation path runs end to end without the hub.

>>> from ifl.smoke.tiny_models import write_tiny_nllb
>>> write_tiny_nllb(Path("/tmp/ifl-smoke")).name  # doctest: +SKIP
'tiny-nllb'
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from ifl.data.languages import LANGUAGES
from ifl.smoke.atomic import write_folder_atomically

# Short everyday sentences, enough for every script of the paper's languages to have pieces.
_SENTENCES = {
    "zh": ["图片里有什么？", "一只狗坐在桌子上。", "请简要描述这张图片。", "天空是蓝色的。",
           "这个人在做什么？", "街上有很多汽车。", "她在公园里看书。", "桌子上有两个苹果。"],
    "hi": ["चित्र में क्या है?", "एक कुत्ता मेज़ पर बैठा है।", "कृपया इस चित्र का वर्णन करें।",
           "आसमान नीला है।", "यह आदमी क्या कर रहा है?", "सड़क पर बहुत सारी गाड़ियाँ हैं।"],
    "he": ["מה יש בתמונה?", "כלב יושב על השולחן.", "תאר בקצרה את התמונה.", "השמיים כחולים.",
           "מה האיש הזה עושה?", "יש הרבה מכוניות ברחוב."],
    "th": ["ในภาพมีอะไร", "สุนัขนั่งอยู่บนโต๊ะ", "กรุณาอธิบายภาพนี้สั้นๆ", "ท้องฟ้าเป็นสีฟ้า",
           "ผู้ชายคนนี้กำลังทำอะไร", "มีรถยนต์มากมายบนถนน"],
    "ar": ["ماذا يوجد في الصورة؟", "كلب يجلس على الطاولة.", "صف هذه الصورة باختصار.",
           "السماء زرقاء.", "ماذا يفعل هذا الرجل؟", "هناك الكثير من السيارات في الشارع."],
    "bn": ["ছবিতে কী আছে?", "একটি কুকুর টেবিলের উপর বসে আছে।", "ছবিটি সংক্ষেপে বর্ণনা করুন।",
           "আকাশ নীল।", "এই লোকটি কী করছে?", "রাস্তায় অনেক গাড়ি আছে।"],
    "ja": ["画像には何がありますか？", "犬がテーブルの上に座っています。", "この画像を簡単に説明してください。",
           "空は青いです。", "この人は何をしていますか？", "通りにはたくさんの車があります。"],
    "es": ["¿Qué hay en la imagen?", "Un perro está sentado en la mesa.",
           "Describe brevemente la imagen.", "El cielo es azul.", "¿Qué está haciendo este hombre?",
           "Hay muchos coches en la calle."],
    "de": ["Was ist auf dem Bild?", "Ein Hund sitzt auf dem Tisch.",
           "Beschreibe das Bild kurz.", "Der Himmel ist blau.", "Was macht dieser Mann?",
           "Auf der Straße fahren viele Autos.", "Sie liest im Park ein Buch."],
    "fr": ["Qu'y a-t-il sur l'image ?", "Un chien est assis sur la table.",
           "Décrivez brièvement l'image.", "Le ciel est bleu.", "Que fait cet homme ?",
           "Il y a beaucoup de voitures dans la rue."],
    "ro": ["Ce este în imagine?", "Un câine stă pe masă.", "Descrieți pe scurt imaginea.",
           "Cerul este albastru.", "Ce face acest bărbat?", "Pe stradă sunt multe mașini."],
    "ru": ["Что изображено на картинке?", "Собака сидит на столе.",
           "Кратко опишите изображение.", "Небо голубое.", "Что делает этот человек?",
           "На улице много машин."],
    "ur": ["تصویر میں کیا ہے؟", "ایک کتا میز پر بیٹھا ہے۔", "براہ کرم تصویر کو مختصراً بیان کریں۔",
           "آسمان نیلا ہے۔", "یہ آدمی کیا کر رہا ہے؟", "سڑک پر بہت سی گاڑیاں ہیں۔"],
}
# English gets LLaVA-style prompts and captions, combined into a few hundred sentences.
_EN_SUBJECTS = ["A dog", "The man", "Two children", "A woman", "The red bus", "A cat", "The train"]
_EN_VERBS = ["is sitting on", "is standing next to", "is looking at", "is parked near"]
_EN_OBJECTS = ["the table.", "a tall building.", "the river.", "a wooden bench.", "the street.",
               "an old tree.", "the small boat."]
_EN_PROMPTS = ["What is in the image?", "Describe the image concisely.",
               "Render a clear and concise summary of the photo.", "What color is the bus?",
               "Answer the question using a single word or phrase.", "How many people are there?",
               "What are the colors of the bus in the image?", "Why is the sky blue?"]

VOCAB_SIZE = 600
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3 as in NLLB (bos, pad, eos, unk)


def tiny_corpus() -> list[str]:
    """The sentences the tiny tokenizer is trained on (about 300)."""
    english = [" ".join(t) for t in itertools.product(_EN_SUBJECTS, _EN_VERBS, _EN_OBJECTS)]
    return english + _EN_PROMPTS + [s for sents in _SENTENCES.values() for s in sents]


def write_tiny_nllb(root: Path, seed: int = 0) -> Path:
    """Write (once) a tiny random NLLB-architecture model + tokenizer to root/models/tiny-nllb."""
    target = Path(root) / "models" / "tiny-nllb"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target  # idempotent: a complete model is never rewritten
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizerFast

    # BPE with the same Metaspace pre-tokenisation NLLB's tokenizer uses
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    bpe.train_from_iterator(tiny_corpus(), trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    vocab, merges = trained["vocab"], [tuple(m) for m in trained["merges"]]
    lang_codes = [lang.nllb for lang in LANGUAGES.values()]
    tokenizer = NllbTokenizerFast(vocab=vocab, merges=merges, extra_special_tokens=lang_codes,
                                  src_lang="eng_Latn", model_max_length=256)

    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=256, encoder_layerdrop=0.0,
        decoder_layerdrop=0.0, dropout=0.0, attention_dropout=0.0,
        init_std=0.3,  # large random weights, so different inputs give different gibberish
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        tie_word_embeddings=False)  # own output rows, see the language-code rows below
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(config).eval()
    # A random model often ends at once or emits only special tokens, which decode to "" and
    # would count as failed translations; prevent both so the smoke run has text to carry on.
    # Language codes cannot be suppressed (the forced first token is one); instead their output
    # rows get zero weight, so their logit 0 loses to the large random logits of real pieces.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(lang_codes)] = 0.0
    model.generation_config.min_new_tokens = 4
    model.generation_config.suppress_tokens = [tokenizer.convert_tokens_to_ids(t)
                                               for t in ("<s>", "<pad>", "<unk>")]

    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return write_folder_atomically(target, write)

