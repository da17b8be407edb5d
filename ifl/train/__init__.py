"""LLaVA training engine: one code path for the paper's 7B variants and the CPU miniature.

    model, processor = assemble_llava(llm_dir, vision_dir)           # LLM + tower + 2-layer MLP
    train_stage(model, processor, records, image_folder, "plain", StageSettings.llava_stage1(),
                stage="projector", out_dir=".../stage1")                 # LLaVA stage 1
    train_variant(variant("yi-clip-zh"), llm, vision, manifest, None,
                  StageSettings.llava_stage1(), StageSettings.llava_stage2(), out_dir)

Modules: assemble (model + processor), data (records -> masked tokens, images, sample order),
lora (what is trained, LoRA, export), checkpoint (atomic resume), settings (StageSettings),
loop (train_stage), variants (the 14-variant design space). Launching on several GPUs: see `ifl/train/__main__.py`.
"""
from ifl.train.assemble import assemble_llava, load_llava
from ifl.train.lora import LoraSettings
from ifl.train.loop import TrainResult, train_stage
from ifl.train.settings import StageSettings
from ifl.train.variants import VariantResult, VariantSpec, design_space, train_variant, variant

__all__ = ["assemble_llava", "load_llava", "train_stage", "TrainResult", "LoraSettings",
           "design_space", "variant", "VariantSpec", "StageSettings", "train_variant",
           "VariantResult"]
