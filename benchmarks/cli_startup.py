#!/usr/bin/env python
"""How long the ``l2l`` command takes to say anything: ``--help`` against ``import lightning``.

    python benchmarks/cli_startup.py              # 5 rounds
    python benchmarks/cli_startup.py --rounds 9

Each round starts fresh Python processes, one per command, in turn (so all see the same
background load), and times each from start to its first useful line on stdout (the
``usage:`` line of a help; for ``import lightning``, a line printed right after it).  The
figure is the median of each command as a ratio to ``import lightning`` measured in the same
run: ``l2l fit`` is a LightningCLI, so that import is its floor (goal: at most 1.3×);
``l2l compare`` needs no Lightning at all.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

BASE = "python -c 'import lightning'"
COMMANDS = {
    BASE: ["-c", "import lightning; print('usage: imported')"],
    "l2l fit --help": ["-m", "l2l_lightning.cli", "fit", "--help"],
    "l2l compare --help": ["-m", "l2l_lightning.cli", "compare", "--help"],
}


def time_to_first_line(args: list[str]) -> float:
    """Seconds from starting ``python ARGS`` to reading its first stdout line that starts with ``usage:``."""
    env = common.fresh_process_env(PYTHONPATH=str(HERE.parent))
    start = time.perf_counter()
    with subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env, cwd=HERE.parent) as process:  # fmt: skip
        for line in process.stdout:
            if line.startswith("usage:"):
                elapsed = time.perf_counter() - start
                break
        else:
            raise RuntimeError(f"python {' '.join(args)} printed no usage line")
        process.stdout.read()
    return elapsed


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per command (median)")
    args = parser.parse_args(argv)
    where = common.machine("cpu")
    for command in COMMANDS.values():  # warm the file and bytecode caches once, untimed
        time_to_first_line(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(time_to_first_line(command))
    rows = common.median_ratio_rows(times, BASE)
    out = common.report(
        f"cli_startup — time to the first line, fresh processes, median of {args.rounds} interleaved rounds",
        where,
        ["command", "wall time", "÷ import lightning"],
        rows,
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
