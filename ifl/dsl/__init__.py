"""Design-based supervised learning (DSL; Egami et al., NeurIPS 2023) in Python.

Regressions on expert-coded variables when only a random sample of rows is coded and a
cheap surrogate (e.g. GlotLID's language label) exists for all rows. A port of the R
package `dsl` 0.1.0 (naoki-egami/dsl) with the same estimating equations and variance,
solved exactly, in O(N) time.

    from ifl.dsl import dsl
    fit = dsl(df, "fidelity ~ image + image:llm", predicted_var="fidelity",
              prediction="glotlid_fidelity", feature=["image", "llm"], sample_prob="pi")
    fit.summary()            # estimate, se, z, two-sided p, 95% CI per term

Modules: inputs (checks, design matrices), crossfit (folds, g_hat), learners (g),
honest_forest (the default g), moments (estimating equations, sandwich), result (median
rule, DSLResult), estimator (dsl).
"""
from .estimator import dsl
from .honest_forest import HonestForest
from .learners import ForestLearner
from .result import DSLResult

__all__ = ["dsl", "DSLResult", "ForestLearner", "HonestForest"]
