"""`python -m ifl.audit MODEL`: measure image-induced fidelity loss (IFL) for any Hugging Face
vision-language model, and optionally the paper's steering remedy (ifl.remedy.answer_in).

Modules: inputs (benchmark, model and processor, checked before any generation), generate
(chat-templated prompts, resumable collection), measure (fidelity, IFL with CIs), report (one
offline HTML page), cli (the command line).
"""
from ifl.audit.cli import run_audit

__all__ = ["run_audit"]
