#!/usr/bin/env python
"""Meta-training throughput on the task mixture: inner steps/s of ``l2l fit --config configs/general.yaml``.

    python benchmarks/mixture_throughput.py                          # the config as it is, 40 truncations
    python benchmarks/mixture_throughput.py --truncations 80 --per-family
    python benchmarks/mixture_throughput.py --estimator tbptt         # truncated BPTT instead of PES

What is timed is the real thing: the config is read by the ``l2l`` command's own parser and the
``MetaLearner`` runs under a Lightning ``Trainer`` (no validation, no checkpoints, no logger), so a
timed truncation is exactly a meta-training step: a fresh mixture draw when the last problem lived its
horizon, PES's particles and central run (or BPTT's forward and backward), and the meta-optimizer step.
Only the horizon is shortened (``--horizon``, default 50 = 2 truncations per problem), so that a short
measurement sees many draws of the mixture; the cost of an inner step does not depend on the horizon,
and drawing a problem (a few ms) is counted; reading the datasets is not (64 draws of a generator of
its own fill every cache before the clock starts).

Reported: inner steps of the carried optimizees (what ``num_steps`` counts) per CPU-second of this
process, the same times the networks each step trains (``optimizees_per_draw``, ``--stack`` varies it),
inner steps per wall-second (a shared machine stretches the latter; the load average is printed), the
unroll-steps actually computed (PES: particles + 1 unrolls per step), the CPU-seconds per 1,000-step
trajectory, and the CPU-hours of the config's whole run extrapolated from them (training only:
validation and test excluded, and said so).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from l2l_lightning.cli import L2LCLI  # noqa: E402
from l2l_lightning.meta.module import MetaLearner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Clock(L.Callback):
    """Wall-clock and process CPU seconds of every training batch (one truncation), skipping the first ``warmup``.

    CPU time is what a shared machine cannot inflate (other processes' time is not ours), so the
    CPU-hour estimate uses it; wall time is reported beside it with the load average.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup, self.wall, self.cpu, self._start = warmup, [], [], (0.0, 0.0)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.wall.append(time.perf_counter() - self._start[0])
            self.cpu.append(time.process_time() - self._start[1])


def measure(config: str, overrides: list[str], truncations: int, warmup: int) -> tuple[MetaLearner, float, float]:
    """The model and its mean wall and CPU seconds per truncation: the total time of the timed ones over
    their count (a mean, not a median: the slow truncations on big draws are part of the cost)."""
    args = [
        "--config", config, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "0", "--trainer.max_steps", str(truncations + warmup), *overrides,
    ]  # fmt: skip
    argv, sys.argv = sys.argv, sys.argv[:1]  # this script's own flags are not the CLI's
    try:
        cli = L2LCLI(MetaLearner, run=False, args=args, save_config_callback=None)  # no config.yaml in the cwd
    finally:
        sys.argv = argv
    for seed in range(64):  # read every dataset now, not inside a timed truncation
        cli.model.task.sample(torch.Generator().manual_seed(seed), "cpu", split="train")
    clock = Clock(warmup)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model)
    return cli.model, sum(clock.wall) / len(clock.wall), sum(clock.cpu) / len(clock.cpu)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "general.yaml"))
    parser.add_argument("--truncations", type=int, default=40, help="timed truncations (per row)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed truncations first")
    parser.add_argument("--horizon", type=int, default=50, help="inner steps per problem while measuring")
    parser.add_argument("--estimator", choices=("config", "tbptt"), default="config")
    parser.add_argument("--per-family", action="store_true", help="also time each of the config's families alone")
    parser.add_argument("--stack", default="", help="also time these optimizees_per_draw, e.g. 1,8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    threads = common.setup_threads(args.threads)
    where = common.machine()
    base = ["--model.num_steps", str(args.horizon), "--model.threads", str(threads)]
    if args.estimator == "tbptt":
        base += ["--model.estimator", "l2l_lightning.meta.estimators.TruncatedBPTT"]
    runs = {"mixture (the config's weights)": []}
    for count in filter(None, args.stack.split(",")):
        runs[f"mixture, optimizees_per_draw {count}"] = ["--model.task.init_args.optimizees_per_draw", count]
    if args.per_family:  # each family of the config alone, with the config's settings for it
        families = yaml.safe_load(Path(args.config).read_text())["model"]["task"]["init_args"]["families"]
        for family, settings in families.items():
            runs[family] = ["--model.task.init_args.families", json.dumps({family: settings})]
    rows, full = [], None
    for name, overrides in runs.items():
        model, wall, cpu = measure(args.config, base + overrides, args.truncations, args.warmup)
        particles = getattr(model.estimator, "num_particles", 0)
        unrolls = particles + 1 if particles else 1
        per_cpu_s = model.unroll / cpu
        optimizees = model.task.optimizees_per_draw
        rows.append([name, unrolls, f"**{per_cpu_s:.1f}**", f"{per_cpu_s * optimizees:.0f}", f"{model.unroll / wall:.1f}",
                     f"{per_cpu_s * unrolls:.0f}", f"{1000 / per_cpu_s:.0f}"])  # fmt: skip
        full = full or (model, per_cpu_s)
    model, per_cpu_s = full
    header = ["problems", "forward unrolls / truncation", "inner steps per CPU-s", "network-steps per CPU-s", "inner steps per wall-s", "unroll-steps per CPU-s", "CPU-s per 1,000-step trajectory"]
    title = f"mixture_throughput — {args.config}, {threads} thread(s), {args.truncations} timed truncations of {model.unroll} steps, horizon {args.horizon}"
    out = common.report(title, where, header, rows)
    if model.trainer.max_epochs:
        truncations = model.truncations_per_epoch * model.trainer.max_epochs
        hours = truncations * model.unroll / per_cpu_s / 3600
        out += (
            f"\nThe config's run, extrapolated: {truncations:,} truncations × {model.unroll} inner steps at {per_cpu_s:.1f} "
            f"inner steps per CPU-second ≈ {hours:.1f} CPU-hours of training (validation and test not included).\n"
        )
    print(out)
    return out


if __name__ == "__main__":
    main()
