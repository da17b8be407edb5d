"""How fast is ifl.dsl against the R package `dsl` at the paper's scale?

    python benchmarks/dsl_speed.py           # 10k, 100k and 730k rows, 1,000 labeled
    python benchmarks/dsl_speed.py --quick   # 10k rows only

Data: simulated IFL-shaped responses. A 0/1 expert fidelity label on 1,000 random rows, a
GlotLID-like surrogate that misreads short answers, and the design factors of the paper's
Table 4 regression (7 coefficients): fidelity ~ image + llm + ve + image:llm + image:ve +
image:data. The learner sees the surrogate, the four factors and the answer length.
Settings equal R's defaults: cross_fit 5, sample_split 10, the default (honest) forest learner;
the last column times scikit-learn's forest (learner "forest-sklearn") for comparison.

R baseline (R 4.2.2, dsl 0.1.0, grf 2.6.1, on this project's 2-core machine; see
docs/reference_figures.md): IFL-shaped data with 1k labels and 7
coefficients took 6.6 s per sample split at 10k rows and 45.9 s at 50k; the fold indexing is
quadratic in N, so R's time is extrapolated as t(N) = a + b N^2 through those two points.
R runs 10 (identical) splits per fit by default.

The paper's DSL workload (appendix A: ~500 CPU hours) is taken as 20 fits (Figure 1: 4
models x 4 benchmarks; Table 4: 2 languages x {fidelity, accuracy}), each, as an upper bound,
on all 730k completions. The R extrapolation gives 20 x 24 h ~ 480 h, matching the paper.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ifl.dsl import dsl

R_SECONDS_PER_SPLIT = {10_000: 6.6, 50_000: 45.9}  # docs/reference_figures.md
R_SPLITS = 10
PAPER_FITS = 20
PAPER_CPU_HOURS = 500
FORMULA = "fidelity ~ image + llm + ve + image:llm + image:ve + image:data"


def r_seconds_per_fit(n_rows: int) -> float:
    """R's time for one default fit (10 splits), quadratic through the two anchors."""
    (n1, t1), (n2, t2) = R_SECONDS_PER_SPLIT.items()
    b = (t2 - t1) / (n2**2 - n1**2)
    return R_SPLITS * (t1 + b * (n_rows**2 - n1**2))


def simulate(n_rows: int, n_labeled: int = 1000, seed: int = 0, keep_truth: bool = False
             ) -> pd.DataFrame:
    """IFL-shaped data: N responses, fidelity labeled on n_labeled random rows (and every row's
    true label as `true_fidelity` with keep_truth)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f: rng.integers(0, 2, n_rows) for f in ("image", "llm", "ve", "data")})
    logit = 2.0 - 1.0 * df.image + 0.6 * df.image * df.llm - 0.7 * df.image * df.ve \
        - 0.5 * df.image * df.data + 0.3 * df.llm
    fidelity = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(float)
    df["length"] = np.ceil(rng.lognormal(3.5 - 0.5 * df.image, 1.0)).clip(1, 2000)  # tokens
    misread = rng.random(n_rows) < np.where(df.length < 10, 0.35, 0.03)
    df["glotlid_fidelity"] = np.where(misread, 1 - fidelity, fidelity)
    if keep_truth:
        df["true_fidelity"] = fidelity
    df["fidelity"] = np.nan
    labeled = rng.choice(n_rows, n_labeled, replace=False)
    df.loc[labeled, "fidelity"] = fidelity[labeled]
    return df


def time_fit(df: pd.DataFrame, learner: str = "forest") -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one DSL fit with R's defaults."""
    cpu, wall = time.process_time(), time.perf_counter()
    dsl(df, FORMULA, "fidelity", "glotlid_fidelity", learner=learner,
        feature=["image", "llm", "ve", "data", "length"], cross_fit=5, sample_split=R_SPLITS)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 10k rows")
    sizes = [10_000] if parser.parse_args().quick else [10_000, 100_000, 730_000]
    print(f"{'rows':>8} {'labeled':>8} {'ifl CPU s':>10} {'ifl wall s':>10} "
          f"{'R s (10 splits)':>16} {'speed-up':>9} {'sklearn-forest CPU s':>21}")
    for n_rows in sizes:
        df = simulate(n_rows)
        cpu, wall = time_fit(df)  # the default learner: the honest forest
        cpu_sklearn, _ = time_fit(df, "forest-sklearn")
        r = r_seconds_per_fit(n_rows)
        kind = "measured" if n_rows in R_SECONDS_PER_SPLIT else "extrap."
        print(f"{n_rows:>8} {1000:>8} {cpu:>10.2f} {wall:>10.2f} {r:>9.0f} {kind:<7}"
              f"{r / cpu:>8.0f}x {cpu_sklearn:>21.2f}")
    if 730_000 in sizes:
        total = PAPER_FITS * cpu
        print(f"\nPaper's DSL workload, {PAPER_FITS} fits at 730k rows: {total / 60:.1f} CPU minutes "
              f"(target < 10; paper ~{PAPER_CPU_HOURS} CPU hours; R extrapolated "
              f"{PAPER_FITS * r_seconds_per_fit(730_000) / 3600:.0f} hours)")


if __name__ == "__main__":
    main()
