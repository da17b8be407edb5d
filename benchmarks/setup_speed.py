"""How long the quick set-up steps take on this machine (what the suite used to assert as time
limits): writing the paper-smoke fixture files, building the tiny stand-in models, and
`./run_all.sh` rejecting a bad params file before any work.

    .venv/bin/python benchmarks/setup_speed.py

Prints one line per step with the wall time of a fresh run and of a rerun (which should find
everything in place and rewrite nothing).
"""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(label: str, fn) -> None:
    start = time.perf_counter()
    fn()
    print(f"{label:<55} {time.perf_counter() - start:7.2f} s")


def main() -> None:
    from ifl.smoke.fixtures import write_fixtures
    from ifl.smoke.tiny_llava import write_tiny_llava_models

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timed("paper-smoke fixture files (fresh)", lambda: write_fixtures(tmp / "fixtures"))
        timed("paper-smoke fixture files (rerun: nothing rewritten)", lambda: write_fixtures(tmp / "fixtures"))
        timed("tiny stand-in LLaVA models (fresh)", lambda: write_tiny_llava_models(tmp / "models"))
        timed("tiny stand-in LLaVA models (rerun)", lambda: write_tiny_llava_models(tmp / "models"))
        bad = tmp / "bad.yaml"
        bad.write_text("common: {}\n01_tranlsate_data: {}\n")
        timed("./run_all.sh rejects an unknown section (exit 2)",
              lambda: subprocess.run([str(ROOT / "run_all.sh"), str(bad)], capture_output=True, check=False))


if __name__ == "__main__":
    main()
