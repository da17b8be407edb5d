"""Pretrained components of the miniature world, standing in for the paper's hub models:
a BPE tokenizer, tiny Llama LMs (Vicuna / Yi / Leo) and tiny vision towers (CLIP / DINOv2),
each saved with save_pretrained in the real Hugging Face classes, so `ifl/train` loads them
like hub models (AutoTokenizer, AutoModelForCausalLM, AutoModel + AutoImageProcessor).

    result = build_components("runs/default/mini/components", seed=0)
    result["paths"]["leo"], result["paths"]["clip"]

Files: tokenizer.py (BPE), lm.py (LM pretraining, text-only QA check), towers.py (CLIP-style and
DINO-style towers, probes), components.py (all of it, sizes, backbone language mixes),
common.py (finished-build cache, learning-rate schedule).
"""
from ifl.mini.components import BACKBONES, ComponentConfig, build_components
from ifl.mini.lm import pretrain_lm
from ifl.mini.tokenizer import tokenizer_texts, train_tokenizer
from ifl.mini.towers import train_clip_tower, train_dino_tower

__all__ = ["build_components", "ComponentConfig", "BACKBONES", "train_tokenizer", "tokenizer_texts",
           "pretrain_lm", "train_clip_tower", "train_dino_tower"]
