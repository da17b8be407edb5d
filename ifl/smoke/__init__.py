"""Local stand-ins for the paper world, so its code path runs offline (params/paper-smoke.yaml).

`ensure_smoke_assets(root)` writes, once, tiny random models of the hub classes and small
fixture datasets laid out like the hub repos, in the real schemas. Their outputs mean nothing;
they prove that every real-path stage runs. Build by hand with `python -m ifl.smoke`.
"""
from __future__ import annotations

from pathlib import Path


def ensure_smoke_assets(root: str | Path = "smoke_assets") -> Path:
    """Create (or reuse) every stand-in under `root`; returns `root`."""
    from ifl.smoke.fixtures import write_fixtures
    from ifl.smoke.tiny_llava import write_tiny_llava_models
    from ifl.smoke.tiny_models import write_tiny_nllb
    from ifl.smoke.tiny_vlms import write_tiny_vlms

    root = Path(root)
    write_fixtures(root)
    write_tiny_nllb(root)
    write_tiny_llava_models(root)
    write_tiny_vlms(root)  # root/vlms/: the audit's classes beyond LLaVA (notebook 08)
    return root
