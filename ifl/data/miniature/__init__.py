"""The miniature world: seeded toy data that runs every step of the paper on CPU.

Rendered scenes of coloured shapes with scene graphs; parallel tasks in en, de, zh, ru, hi, ar
(one yaml lexicon per language); LLaVA-format training data; LM pretraining QA items;
translation by re-rendering with optional noise; and exact gold language labels.

    tasks = make_tasks(n_scenes=200, langs=["en", "de", "zh"], seed=0)
    paths = write_training_data("runs/x/mini", n_caption=4000, n_instruct=4000, seed=0)
    rerender_file(paths["instruct"], "runs/x/mini/instruct_de.json", "de", error_rate=0.1)
    corpus = pretraining_corpus(BACKBONE_MIXES["leo"], n=20000, seed=0)
    gold_language("Der Kreis ist rot.")  # 'de'

>>> sorted(make_tasks(1, ["en"], seed=0)["benchmark"].unique())
['shapes_describe', 'shapes_vqa']
"""
from ifl.data.miniature.lexicon import available_langs, concepts, gold_language, word_language
from ifl.data.miniature.rerender import rerender_file, rerender_record, rerender_records
from ifl.data.miniature.tasks import make_tasks
from ifl.data.miniature.training import BACKBONE_MIXES, pretraining_corpus, write_training_data

__all__ = [
    "make_tasks", "write_training_data", "pretraining_corpus", "BACKBONE_MIXES",
    "rerender_record", "rerender_records", "rerender_file",
    "gold_language", "word_language", "concepts", "available_langs",
]
