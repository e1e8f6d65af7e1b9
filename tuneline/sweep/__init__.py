"""Hyperparameter search over a project config (`run.py sweep`), ZenML-free.

`schema` reads and checks a sweep file against the project config, `space` turns a trial's
sampled values into `--set` overrides validated like the command line's, `study` opens the
Optuna study (sampler, pruner, storage), `pruning` reports eval loss from inside training,
`summary` and `plot` describe a finished study. The pipeline side is `pipelines/sweep.py`.

Kept free of imports so the pruning callback, which the train step's cache key follows,
does not pull the rest of the package into that key.
"""
