"""Machine translation for the paper's data (notebook 01).

Backends (`translate_batch(texts, src, tgt)` with ISO codes from ifl/data/languages.csv):
`NLLBTranslator` (training data, §4.1) and `AzureTranslator` (VisIT-Bench, appendix D).
`translate_texts` batches, deduplicates and resumes through a `TranslationStore`;
`translate_conversations` / `translate_llava_json` / `translate_task_fields` keep structure.

    nllb = NLLBTranslator("facebook/nllb-200-distilled-1.3B", device="cuda")
    translate_llava_json("llava_v1_5_mix665k.json", "mix665k.de.json", "de", nllb,
                         store="runs/translations", batch_size=64)
"""
from ifl.translate.azure import AzureTranslator, AzureTranslatorError, azure_code
from ifl.translate.nllb import DEFAULT_NLLB, ModelNotAvailableError, NLLBTranslator
from ifl.translate.run import TranslationError, TranslationRun, Translator, translate_texts
from ifl.translate.store import TranslationStore
from ifl.translate.structured import (translate_conversations, translate_llava_json,
                                      translate_strings, translate_task_fields)

__all__ = ["AzureTranslator", "AzureTranslatorError", "azure_code", "DEFAULT_NLLB",
           "ModelNotAvailableError", "NLLBTranslator", "TranslationError", "TranslationRun",
           "Translator", "translate_texts", "TranslationStore", "translate_conversations",
           "translate_llava_json", "translate_strings", "translate_task_fields"]
