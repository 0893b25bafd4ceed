"""``l2l bench``: optimizers on a suite of held-out tasks, each an ordinary PyTorch training run, against tuned baselines.

Modules: :mod:`~l2l_lightning.bench.spec` (a task as YAML), :mod:`~l2l_lightning.bench.models` and
:mod:`~l2l_lightning.bench.data` (the suite's models and data streams),
:mod:`~l2l_lightning.bench.optimizers` (baselines, class paths, learned optimizers),
:mod:`~l2l_lightning.bench.runner` (one training run), :mod:`~l2l_lightning.bench.cache`,
:mod:`~l2l_lightning.bench.metrics` (the field's figures), :mod:`~l2l_lightning.bench.suite`
(the whole bench) and :mod:`~l2l_lightning.bench.outputs`.
"""
