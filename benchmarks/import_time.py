#!/usr/bin/env python
"""What deploying a learned optimizer costs at import: ``LearnedOptimizer`` against ``import torch``.

    python benchmarks/import_time.py              # 7 rounds
    python benchmarks/import_time.py --rounds 15

Each round starts fresh Python processes, one per statement, in a shuffled order (all see
the same background load, and none always runs first), and times each from start to exit,
with bytecode cached as an installed package has it (``common.fresh_process_env``).  The
wall-time figure is each statement's median as a ratio to ``import torch``'s in the same run;
``import lightning`` is shown for scale (what the deployment import does not pay).  Two
processes' wall times scatter by several percent, more than the package's own cost, so the
last line times the deployment import inside one process, after ``import torch``, as a
fraction of ``import torch``: the figure for the goal "at most 1.0× ``import torch``".
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

STATEMENTS = {
    "import torch": "import torch",
    "from l2l_lightning.optim import LearnedOptimizer": "from l2l_lightning.optim import LearnedOptimizer",
    "import l2l_lightning; l2l_lightning.LearnedOptimizer": "import l2l_lightning; l2l_lightning.LearnedOptimizer",
    "import lightning (for scale)": "import lightning",
}

#: Timed inside one fresh process: ``import torch``, then the deployment import on top of it.
#: Two processes' wall times differ by more noise than the package's own cost, so this is the
#: figure that resolves it.
INSIDE = """
import time
start = time.perf_counter()
import torch
middle = time.perf_counter()
from l2l_lightning.optim import LearnedOptimizer
print(middle - start, time.perf_counter() - middle)
"""


def run_fresh(code: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process, as the benchmark times it (bytecode cached, one thread)."""
    return subprocess.run([sys.executable, "-c", code], check=True, env=common.fresh_process_env(), cwd=HERE.parent, **kwargs)


def time_statement(code: str) -> float:
    start = time.perf_counter()
    run_fresh(code)
    return time.perf_counter() - start


def time_inside() -> tuple[float, float]:
    """``(import torch, the deployment import after it)`` in seconds, timed inside one fresh process."""
    torch_time, ours = map(float, run_fresh(INSIDE, capture_output=True, text=True).stdout.split())
    return torch_time, ours


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes per statement (median)")
    args = parser.parse_args(argv)
    where = common.machine("cpu")
    for code in STATEMENTS.values():  # warm the file and bytecode caches once, untimed
        time_statement(code)
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    inside: list[tuple[float, float]] = []
    order = random.Random(0)
    for _ in range(args.rounds):
        names = list(STATEMENTS)
        order.shuffle(names)  # no statement always runs first, or right after the heavy one
        for name in names:
            times[name].append(time_statement(STATEMENTS[name]))
        inside.append(time_inside())
    rows = common.median_ratio_rows(times, "import torch", digits=3)
    torch_time, ours = (statistics.median(column) for column in zip(*inside))
    out = common.report(
        f"import_time — fresh processes, median of {args.rounds} interleaved rounds",
        where,
        ["statement", "wall time", "÷ import torch"],
        rows,
        f"Inside one process: `import torch` {common.fmt_time(torch_time)}, then "
        f"`from l2l_lightning.optim import LearnedOptimizer` {common.fmt_time(ours)}: "
        f"**+{ours / torch_time:.3f}×** `import torch` (the package's own cost, which the wall times cannot resolve).",
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
