"""``l2l bench``: every optimizer on every task of a suite, against baselines tuned per task.

For each task: the baselines (and any ``torch.optim`` class given) are tuned on a learning-rate
grid over all seeds, the grid extended past an edge that wins
(:func:`~l2l_lightning.meta.baselines.next_rate_past_edge`); the rate with the lowest mean final
loss is the tuned one.  Learned optimizers run untuned, at their shipped rate.  Every run comes
from the :class:`~l2l_lightning.bench.cache.RunCache` when it is there.  Step times are then measured
for every optimizer at its rate, in this process and interleaved with Adam's, so their ratio to
Adam compares like with like.  Figures of merit: :mod:`l2l_lightning.bench.metrics`; outputs:
:mod:`l2l_lightning.bench.outputs`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from l2l_lightning.bench import metrics
from l2l_lightning.bench.cache import RunCache, default_cache_dir
from l2l_lightning.bench.optimizers import ADAM_REFERENCE, BENCH_BASELINES, DEFAULT_GRIDS, Contender, baseline, contender
from l2l_lightning.bench.runner import Run, train
from l2l_lightning.bench.spec import BenchTask, default_suite, load_suite
from l2l_lightning.errors import ConfigError, check_positive_int
from l2l_lightning.meta.baselines import next_rate_past_edge

#: ``--quick``: steps per run, seeds and grid stride, so that a whole suite runs in seconds.
QUICK_STEPS, QUICK_TIMING_STEPS = 30, 4


@dataclass
class Tuned:
    """One optimizer on one task: its chosen rate, the runs there and every rate tried."""

    contender: Contender
    lr: float
    runs: list[Run]  #: one per seed, at ``lr``
    scores: dict[float, float]  #: mean final loss per rate tried (inf: diverged)
    all_runs: list[Run] = field(default_factory=list)  #: every rate × seed (Adam's make the reference)


@dataclass
class TaskResult:
    task: BenchTask
    k: int  #: the final-loss window
    tuned: list[Tuned]
    rows: list[dict]  #: one per optimizer: the per-task figures
    reference: np.ndarray  #: the smoothed best-tuned-Adam curve


@dataclass
class BenchResult:
    tasks: list[TaskResult]
    aggregate: list[dict]  #: one per optimizer
    settings: dict


def _check_writable(out_dir: Optional[str], flag: str = "out_dir") -> None:
    """Fail before any run, not after an hour of them, when results could not be written."""
    if out_dir is None:
        return
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".l2l-bench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{flag} {out_dir} is not writable ({error.strerror or error}); choose another --{flag}") from None


def _names(value: Union[str, Sequence[str], None]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``: so that ``--tasks mlp_*`` works without list brackets."""
    if value is None:
        return []
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def bench(
    optimizers: Union[str, Sequence[str]] = ("fashion_mnist",),
    suite: Optional[str] = None,
    tasks: Union[str, list[str], None] = None,
    baselines: Sequence[str] = tuple(BENCH_BASELINES),
    grids: Optional[dict[str, list[float]]] = None,
    seeds: Sequence[int] = (0, 1),
    learned_lrs: Sequence[float] = (),
    timing_steps: int = 20,
    quick: bool = False,
    out_dir: Optional[str] = "bench",
    cache_dir: Optional[str] = None,
    no_cache: bool = False,
    progress: bool = True,
) -> BenchResult:
    """Benchmark optimizers on a suite of held-out tasks against per-task tuned baselines.

    Args:
        optimizers: what to benchmark: learned optimizers (a shipped name such as ``fashion_mnist``,
            an exported ``.pt`` or a ``MetaLearner`` ``.ckpt``) and ``torch.optim`` classes by path
            (``torch.optim.RMSprop``: tuned on the ``torch`` grid); each optionally ``label=spec``;
            a list, or one string separated by commas.
        suite: folder of task YAML files (default: the checkout's ``configs/bench``).
        tasks: keep only tasks whose names match one of these shell patterns (``mlp_*``; a list,
            or one string separated by commas).
        baselines: the tuned baselines, any of ``adam``, ``adam_cosine``, ``nag``, ``adamw``;
            the speedup needs ``adam`` and/or ``adam_cosine``.
        grids: learning-rate grid per baseline (and ``torch`` for class paths); missing keys take
            :data:`~l2l_lightning.bench.optimizers.DEFAULT_GRIDS`.
        seeds: seeds of every (optimizer, rate): each fixes the model's initial weights and the minibatch order.
        learned_lrs: also run each learned optimizer at these rates (labelled ``name@lr``).
        timing_steps: steps per optimizer (twice, interleaved) for the step-time ratio to Adam.
        quick: a smoke test of the whole pipeline: 30 steps per run, the first seed, every other grid rate.
        out_dir: where the table, figures and TensorBoard runs go (``None``: nothing written).
        cache_dir: finished runs (default: ``~/.cache/l2l-lightning/bench``); shared across out folders.
        no_cache: neither read nor write the cache.
    """
    started = time.perf_counter()
    optimizers, tasks = _names(optimizers), _names(tasks) or None
    grids = _check_settings(baselines, grids, seeds, timing_steps)
    _check_writable(out_dir)
    cache_folder = None if no_cache else Path(cache_dir) if cache_dir else default_cache_dir()
    if cache_folder is not None:
        _check_writable(str(cache_folder), "cache_dir")
    suite_tasks = load_suite(suite or default_suite(), tasks)
    contenders = _contenders(baselines, optimizers, grids, learned_lrs)
    if quick:
        seeds = list(seeds)[:1]
        suite_tasks = [t.with_steps(min(t.steps, QUICK_STEPS)) for t in suite_tasks]
        for c in contenders:
            c.lrs = c.lrs[::2] if c.tuned else c.lrs
        timing_steps = min(timing_steps, QUICK_TIMING_STEPS)
    for task in suite_tasks:  # every task must build before any run: a typo costs seconds, not an hour
        task.build_model(0)
        task.build_data()
    cache = RunCache(cache_folder, note=tqdm.write)
    bar = tqdm(total=sum(len(c.lrs) for c in contenders) * len(seeds) * len(suite_tasks), desc="l2l bench", unit="run", disable=not progress)
    results = []
    for task in suite_tasks:
        bar.set_postfix_str(task.name)
        tuned = [_tune(task, c, list(seeds), cache, bar) for c in contenders]
        times = _step_times(task, tuned, timing_steps)
        results.append(_task_result(task, tuned, times))
    bar.close()
    settings = dict(
        optimizers=list(optimizers), suite=str(suite or default_suite()), tasks=tasks, baselines=list(baselines),
        grids=grids, seeds=list(seeds), learned_lrs=list(learned_lrs), timing_steps=timing_steps, quick=quick,
        cache_dir=None if cache_folder is None else str(cache_folder), cache_hits=cache.hits, runs_made=cache.misses,
        wall_seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    result = BenchResult(results, _aggregate(results, [c.label for c in contenders]), settings)
    if out_dir is not None:
        from l2l_lightning.bench.outputs import write_outputs

        write_outputs(result, Path(out_dir))
    return result


def _check_settings(
    baselines: Sequence[str], grids: Optional[dict[str, list[float]]], seeds: Sequence[int], timing_steps: int
) -> dict[str, list[float]]:
    """The grids with defaults filled in, after checking every setting that could only fail later."""
    check_positive_int("bench: timing_steps", timing_steps)
    if not seeds:
        raise ConfigError("bench: seeds must name at least one seed")
    if not any(b in ADAM_REFERENCE for b in baselines):
        raise ConfigError(f"bench: baselines={list(baselines)} has no Adam ({' or '.join(ADAM_REFERENCE)}): the speedup is over tuned Adam")
    grids = {**DEFAULT_GRIDS, **(grids or {})}
    for name, grid in grids.items():
        if not grid or any(not lr > 0 for lr in grid):
            raise ConfigError(f"bench: grids[{name!r}]={grid!r} must be a non-empty list of positive rates")
    return grids


def _contenders(
    baselines: Sequence[str], optimizers: list[str], grids: dict[str, list[float]], learned_lrs: Sequence[float]
) -> list[Contender]:
    """The baselines, then every optimizer given (a learned one once per rate); labels must differ."""
    contenders = [baseline(name, grids) for name in baselines]
    for entry in optimizers:
        contenders += contender(entry, grids, list(learned_lrs))
    labels = [c.label for c in contenders]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"bench: two optimizers share a label in {labels}; label them as label=spec")
    return contenders


def _run(task: BenchTask, c: Contender, lr: float, seed: int, cache: RunCache, bar: tqdm) -> Run:
    run = cache.get(task.key, c.identity, c.schedule, lr, seed)
    if run is None:
        run = train(task, c, lr, seed)
        cache.put(task.key, c.identity, c.schedule, lr, seed, run)
    bar.update()
    return run


def _tune(task: BenchTask, c: Contender, seeds: list[int], cache: RunCache, bar: tqdm, extend: int = 3) -> Tuned:
    """Every rate of ``c``'s grid on every seed; the grid grows past an edge that wins (``extend`` rates at most)."""
    k = metrics.final_window(task.steps)
    runs: dict[float, list[Run]] = {}
    scores: dict[float, float] = {}

    def evaluate(lr: float) -> None:
        runs[lr] = [_run(task, c, lr, seed, cache, bar) for seed in seeds]
        finals = [metrics.final_loss(r.curve, k, r.diverged) for r in runs[lr]]
        scores[lr] = float(np.mean(finals))

    for lr in c.lrs:
        evaluate(lr)
    for _ in range(extend if c.tuned else 0):
        lr = next_rate_past_edge(scores)
        if lr is None:
            break
        bar.total += len(seeds)
        evaluate(lr)
    best = min(sorted(scores), key=lambda lr: scores[lr])
    return Tuned(c, best, runs[best], dict(sorted(scores.items())), [r for lr in sorted(runs) for r in runs[lr]])


def _step_times(task: BenchTask, tuned: list[Tuned], steps: int, rounds: int = 2) -> dict[str, float]:
    """Median seconds per training iteration of each optimizer at its rate, in rounds that interleave all of them."""
    samples: dict[str, list[float]] = {t.contender.label: [] for t in tuned}
    warmup = min(2, steps - 1)
    for _ in range(rounds):
        for t in tuned:
            run = train(task, t.contender, t.lr, 0, steps=steps)
            samples[t.contender.label] += run.seconds_per_step[warmup:]
    return {label: statistics.median(s) if s else math.nan for label, s in samples.items()}


def _task_result(task: BenchTask, tuned: list[Tuned], times: dict[str, float]) -> TaskResult:
    k = metrics.final_window(task.steps)
    reference = metrics.adam_reference([r.curve for t in tuned if t.contender.label in ADAM_REFERENCE for r in t.all_runs], k)
    adam_time = next(times[t.contender.label] for t in tuned if t.contender.label in ADAM_REFERENCE)
    finals = {t.contender.label: float(np.mean([metrics.final_loss(r.curve, k, r.diverged) for r in t.runs])) for t in tuned}
    rows = []
    for t in tuned:
        label = t.contender.label
        others = {b.contender.label: finals[b.contender.label] for b in tuned if b.contender.baseline and b is not t}
        best_name = min(others, key=others.get) if others else None
        per_seed = [metrics.speedup(r.curve, k, metrics.final_loss(r.curve, k, r.diverged), reference) for r in t.runs]
        speed = metrics.speedup(np.mean([r.curve for r in t.runs], axis=0), k, finals[label], reference)
        best = others.get(best_name, math.nan)
        rows.append({
            "task": task.name, "optimizer": label, "steps": task.steps, "k": k, "lr": t.lr, "schedule": t.contender.schedule,
            "tuned": t.contender.tuned, "final_loss": finals[label],
            "final_loss_per_seed": [metrics.final_loss(r.curve, k, r.diverged) for r in t.runs],
            "best_baseline": best_name, "best_baseline_final_loss": best,
            "ratio_to_best_baseline": finals[label] / best if best_name and best > 0 else math.nan,
            "win": bool(best_name) and finals[label] < best,
            "speedup": speed[0], "adam_reaches": speed[1],
            "speedup_low": min(s for s, _ in per_seed), "speedup_high": max(s for s, _ in per_seed),
            "diverged": any(r.diverged for r in t.runs),
            "step_time_ratio_to_adam": times[label] / adam_time, "seconds_per_step": times[label],
            "scores_per_lr": {repr(lr): s for lr, s in t.scores.items()},
        })  # fmt: skip
    return TaskResult(task, k, tuned, rows, reference)


def _aggregate(results: list[TaskResult], labels: list[str]) -> list[dict]:
    """Per optimizer: fraction of tasks won, IQM speedup with its bootstrap 95% interval, tasks diverged."""
    out = []
    for label in labels:
        rows = [row for r in results for row in r.rows if row["optimizer"] == label]
        speedups = [row["speedup"] for row in rows]
        low, high = metrics.iqm_interval(speedups) if rows else (math.nan, math.nan)
        out.append({
            "optimizer": label, "tasks": len(rows), "won": sum(row["win"] for row in rows),
            "fraction_won": sum(row["win"] for row in rows) / len(rows) if rows else math.nan,
            "iqm_speedup": metrics.iqm(speedups) if rows else math.nan, "iqm_speedup_low": low, "iqm_speedup_high": high,
            "diverged": sum(row["diverged"] for row in rows),
            "adam_never_reaches": sum(not row["adam_reaches"] for row in rows),
        })  # fmt: skip
    return out
