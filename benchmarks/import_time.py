#!/usr/bin/env python
"""What deploying a learned optimizer costs at import: ``LearnedOptimizer`` against ``import torch``.

    python benchmarks/import_time.py              # 7 rounds
    python benchmarks/import_time.py --rounds 15

Each round starts fresh Python processes, one per statement, in turn (so all see the
same background load), and times each from start to exit.  The figure is the median
time of each statement as a ratio to ``import torch`` measured in the same run (goal for
the deployment import: at most 1.2×).  ``import lightning`` is shown for scale: that is
what the deployment import no longer pays.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

STATEMENTS = {
    "import torch": "import torch",
    "from l2l_lightning.optim import LearnedOptimizer": "from l2l_lightning.optim import LearnedOptimizer",
    "import l2l_lightning; l2l_lightning.LearnedOptimizer": "import l2l_lightning; l2l_lightning.LearnedOptimizer",
    "import lightning (for scale)": "import lightning",
}


def time_statement(code: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=HERE.parent)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes per statement (median)")
    args = parser.parse_args(argv)
    where = common.machine("cpu")
    time_statement("import torch")  # warm the file cache once, untimed
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(args.rounds):
        for name, code in STATEMENTS.items():
            times[name].append(time_statement(code))
    rows = common.median_ratio_rows(times, "import torch")
    out = common.report(
        f"import_time — fresh processes, median of {args.rounds} interleaved rounds",
        where,
        ["statement", "wall time", "÷ import torch"],
        rows,
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
