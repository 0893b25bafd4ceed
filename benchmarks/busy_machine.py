#!/usr/bin/env python
"""The README's first command on an idle and on a busy machine: old thread behaviour vs ``threads="auto"``.

    python benchmarks/busy_machine.py                      # the real command (15 epochs): ~10 min
    python benchmarks/busy_machine.py --epochs 2 --truncations 50     # shortened

Runs ``l2l fit --config configs/quadratic.yaml`` (meta-training, validation and the test
after fitting, in a fresh process each time, in a temporary folder) four times:

* *idle* and *busy*: busy means a co-tenant process spinning one core (a bounded busy loop in
  a subprocess, killed when the run ends), as another user's job would;
* *old*: ``--model.threads N`` with N = the cores this process may use, i.e. torch's default
  before the thread policy existed; *auto*: the new default, no flag.

``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are removed from the children's environment (a user
who sets them has chosen, and the policy would keep their choice).  The figures are wall times
and ratios to the idle run of the same setting, measured in the same invocation (goal for the
default: busy ≤ 1.5× idle).  Other processes on a shared machine add noise: the load average
before each run is printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

#: A co-tenant: one core at 100 % for at most ``limit`` seconds (killed earlier by the benchmark).
SPIN = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def command(args: argparse.Namespace, threads: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "l2l_lightning.cli", "fit", "--config", str(REPO / "configs" / "quadratic.yaml")]
    if args.epochs is not None:
        cmd += ["--trainer.max_epochs", str(args.epochs)]
    if args.truncations is not None:
        cmd += ["--model.truncations_per_epoch", str(args.truncations)]
    if threads is not None:
        cmd += ["--model.threads", threads]
    return cmd + shlex.split(args.cli_args)


def timed_run(cmd: list[str], busy: bool, timeout: float) -> tuple[float, float]:
    """Wall seconds of one run (and the load average before it), with a spinning co-tenant if ``busy``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(timeout)]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
            wall = time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, load


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="--trainer.max_epochs (default: the config's, 15)")
    parser.add_argument("--truncations", type=int, default=None, help="--model.truncations_per_epoch (default 100)")
    parser.add_argument("--cli-args", default="", help="more `l2l fit` arguments, one string (for smoke tests)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is abandoned")
    args = parser.parse_args(argv)
    old = str(cores())
    where = common.machine("cpu")
    settings = [("old: --model.threads " + old, old), ("new default (threads auto)", None)]
    walls: dict[tuple[str, bool], float] = {}
    loads: dict[tuple[str, bool], float] = {}
    for busy in (False, True):  # idle runs first, so each busy run has its idle reference from this invocation
        for label, threads in settings:
            walls[label, busy], loads[label, busy] = timed_run(command(args, threads), busy, args.timeout)
            state = "busy" if busy else "idle"  # as it goes: a long run's first figures are not lost
            print(f"{label}, {state}: {walls[label, busy]:.1f} s (load {loads[label, busy]:.2f})", file=sys.stderr, flush=True)
    rows = []
    for label, _ in settings:
        idle, busy = walls[label, False], walls[label, True]
        rows.append([label, f"{idle:.1f} s", f"{busy:.1f} s", f"**{busy / idle:.2f}×**",
                     f"{loads[label, False]:.2f} / {loads[label, True]:.2f}"])  # fmt: skip
    default_busy = walls[settings[1][0], True] / walls[settings[1][0], False]
    shown = " ".join(command(args, None)[1:]).replace(str(REPO) + os.sep, "")
    out = common.report(
        f"busy_machine — `{shown}`, idle vs one core spun by a co-tenant",
        where,
        ["threads", "idle", "busy (1 core spinning)", "busy ÷ idle", "load avg before idle / busy"],
        rows,
        note=f"goal: the default's busy run ≤ 1.5× its idle run: {default_busy:.2f}× "
        f"({'met' if default_busy <= 1.5 else 'NOT met'})",
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
