"""Meta-training: the unroll, the baselines and the LightningModule."""

from l2l_lightning.meta.baselines import BASELINES, DEFAULT_LR_GRID, TunedBaseline, run_baseline, tune_baseline
from l2l_lightning.meta.module import MetaLearner
from l2l_lightning.meta.unroll import UnrollResult, evaluate_learned, unroll

__all__ = [
    "BASELINES",
    "DEFAULT_LR_GRID",
    "MetaLearner",
    "TunedBaseline",
    "UnrollResult",
    "evaluate_learned",
    "run_baseline",
    "tune_baseline",
    "unroll",
]
