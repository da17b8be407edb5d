"""One module per notebook, named like it (`notebooks/03_collect_responses.py` ->
`ifl.stages.collect_responses`): the work of that section of the paper, called from the notebook
in one line per step.

A stage module imports the engines and the shared layers below it (ifl.runtime, ifl.score,
ifl.regress, ifl.figures, ifl.paper, ifl.params_schema, ...), never another stage module: what
two stages share goes down a layer. A stage reads an earlier stage's outputs, never its params;
what each stage writes, and who reads it, is declared once in ifl/artifacts.csv
(`Stage.input` / `Stage.output`), which the runner's prerequisite check also reads.
tests/test_architecture.py checks all of this.
"""
