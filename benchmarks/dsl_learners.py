"""Which DSL learner is closer to the R package (grf)? Per term, in standard errors.

    python benchmarks/dsl_learners.py            # PanChen vs R, and 10 simulated replications
    python benchmarks/dsl_learners.py --reps 3   # quicker

1. PanChen (tests/data/dsl: R's estimates, folds and g_hat): per term, (ours - R) / R's SE for
   the default honest forest ("forest") and scikit-learn's forest ("forest-sklearn"), end to end
   (own folds, seed 1234) and with R's own folds (the learner alone moves the estimate).
2. Table-4-shaped simulations with interactions (11,200 rows, 1,000 labels; the data of
   benchmarks/dsl_speed.py): the paper's literal formula, per term the truth (OLS on every row's
   true label), each learner's mean estimate, and the bias in units of the mean DSL SE. R is
   not run here (no R in this workplace); `--write-csv DIR` saves the simulated data so that
   R `dsl` can be fitted on the same rows where R and grf are installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from dsl_speed import simulate  # noqa: E402

from ifl.dsl import dsl  # noqa: E402
from ifl.dsl.crossfit import cross_fit  # noqa: E402
from ifl.dsl.estimator import estimate_split  # noqa: E402
from ifl.dsl.inputs import prepare  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "dsl"
LEARNERS = ("forest", "forest-sklearn")
PAPER_FORMULA = "fidelity ~ image + image:llm + image:ve + image:data"
FEATURES = ["image", "llm", "ve", "data", "length"]


def panchen() -> pd.DataFrame:
    df = pd.read_csv(DATA / "panchen.csv")
    ref = json.loads((DATA / "panchen_r_reference.json").read_text())
    split = pd.read_csv(DATA / "panchen_r_split1.csv").sort_values("row")
    fold = split["fold"].to_numpy() - 1
    rows = []
    for model in ("lm", "logit"):
        r_coef = pd.Series(ref[model]["coefficients"]).rename({"(Intercept)": "Intercept"})
        r_se = pd.Series(ref[model]["standard_errors"]).rename({"(Intercept)": "Intercept"})
        for learner in LEARNERS:
            fit = dsl(df, ref["formula"], "countyWrong", "pred_countyWrong", model=model,
                      learner=learner)
            prep = prepare(df, ref["formula"], "countyWrong", "pred_countyWrong")
            g_hat, _ = cross_fit(prep, fold, 5, learner, 1234)  # R's folds: the learner alone
            on_r_folds = pd.Series(estimate_split(prep, g_hat, model).beta, index=prep.terms)
            for term in r_coef.index:
                rows.append({"model": model, "learner": learner, "term": term,
                             "gap_R_SE": (fit.coef[term] - r_coef[term]) / r_se[term],
                             "gap_R_SE_R_folds": (on_r_folds[term] - r_coef[term]) / r_se[term]})
    return pd.DataFrame(rows)


def truth(df_full: pd.DataFrame, formula: str) -> pd.Series:
    """The finite-population target: OLS of the formula with every row's true label."""
    from formulaic import model_matrix
    y, X = model_matrix(formula, df_full)
    beta = np.linalg.lstsq(X.to_numpy(float), y.to_numpy(float)[:, 0], rcond=None)[0]
    return pd.Series(beta, index=X.columns)


def simulations(reps: int, write_csv: Path | None) -> pd.DataFrame:
    rows = []
    for rep in range(reps):
        df = simulate(11_200, seed=100 + rep, keep_truth=True)
        target = truth(df.assign(fidelity=df.pop("true_fidelity")), PAPER_FORMULA)
        df = df.drop(columns="true_fidelity", errors="ignore")
        if write_csv:
            write_csv.mkdir(parents=True, exist_ok=True)
            df.to_csv(write_csv / f"sim_{rep}.csv", index=False)
        for learner in LEARNERS:
            fit = dsl(df, PAPER_FORMULA, "fidelity", "glotlid_fidelity", feature=FEATURES,
                      learner=learner, seed=rep)
            for term in target.index:
                rows.append({"rep": rep, "learner": learner, "term": term, "truth": target[term],
                             "estimate": fit.coef[term], "se": fit.se[term]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--write-csv", type=Path, default=None)
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    pc = panchen()
    print("PanChen: (ours - R) / R SE, per term")
    print(pc.pivot_table(index=["model", "term"], columns="learner",
                         values=["gap_R_SE", "gap_R_SE_R_folds"]).round(3).to_string())
    print(f"max |gap| in R SE: {pc.groupby('learner').gap_R_SE.apply(lambda g: g.abs().max()).round(3).to_dict()}")
    sim = simulations(args.reps, args.write_csv)
    sim["err_SE"] = (sim.estimate - sim.truth) / sim.se
    sim["covered"] = (sim.estimate - sim.truth).abs() <= 1.96 * sim.se
    summary = sim.groupby(["term", "learner"]).agg(
        truth=("truth", "mean"), estimate=("estimate", "mean"), se=("se", "mean"),
        bias_SE=("err_SE", "mean"), coverage=("covered", "mean")).unstack("learner")
    print(f"\nSimulated Table-4 design, {args.reps} replications, formula {PAPER_FORMULA}")
    print(summary.round(4).to_string())
    wide = sim.pivot_table(index=["rep", "term"], columns="learner", values="estimate")
    se = sim.pivot_table(index=["rep", "term"], columns="learner", values="se")["forest"]
    gap = ((wide["forest"] - wide["forest-sklearn"]) / se).groupby("term").mean()
    print("\nmean (honest - sklearn) / SE per term:", gap.round(3).to_dict())


if __name__ == "__main__":
    main()
