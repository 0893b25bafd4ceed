#!/usr/bin/env python
"""Step speed of this checkout against an earlier revision, measured in one process.

    python benchmarks/step_vs_revision.py --rev a355b5f                # 1M parameters
    python benchmarks/step_vs_revision.py --rev v0.1.0 --sizes 100k,1M --threads 1 --repeats 9

Two processes on a shared machine see different background load, so a speed change of
a few percent cannot be read from two separate runs.  This script extracts the package
of ``--rev`` with ``git archive``, renames it (``l2l_lightning`` → ``l2l_lightning_rev``)
so that both versions import side by side, builds one ``LearnedOptimizer`` of each over
copies of the same parameters and gradients, and times their ``step`` interleaved
round-robin (``common.interleaved``).  It also checks that both give the same parameters.
The ratio ``this / rev`` is the figure: below 1.05 means "within 5%".  With ``--with-gac``
it adds :class:`~l2l_lightning.nets.GlobalAveragingLSTM` of the same size (its ratio to
this checkout's plain LSTM step).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
from step_overhead import make_model, parse_size  # noqa: E402

REPO = HERE.parent
RENAMED = "l2l_lightning_rev"


def import_revision(rev: str, into: Path):
    """The package as it was at ``rev``, imported as :data:`RENAMED`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "l2l_lightning"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    package = into / "l2l_lightning"
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bl2l_lightning\b", RENAMED, text))
    package.rename(into / RENAMED)
    sys.path.insert(0, str(into))
    return importlib.import_module(RENAMED)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with (e.g. a commit or tag)")
    parser.add_argument("--sizes", default="1M", help="parameter counts, e.g. 100k,1M")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per candidate (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--with-gac", action="store_true", help="also time GlobalAveragingLSTM (global_cells=5)")
    args = parser.parse_args(argv)
    threads = common.setup_threads(args.threads)
    where = common.machine("cpu")
    with tempfile.TemporaryDirectory() as folder:
        old = import_revision(args.rev, Path(folder))
        from l2l_lightning import CoordinatewiseLSTM, GlobalAveragingLSTM, LearnedOptimizer

        torch.manual_seed(0)
        net = CoordinatewiseLSTM(hidden_size=20, num_layers=2, preprocess="log_sign", p=10.0, output_scale=0.1)
        old_net = old.CoordinatewiseLSTM(hidden_size=20, num_layers=2, preprocess="log_sign", p=10.0, output_scale=0.1)
        old_net.load_state_dict(net.state_dict())
        rows = []
        for label in args.sizes.split(","):
            size = parse_size(label)
            params = make_model(size, "cpu", seed=0)
            copies = [nn.Parameter(p.detach().clone()) for p in params]
            for p, q in zip(params, copies):
                q.grad = p.grad
            ours = LearnedOptimizer(params, net)
            theirs = old.LearnedOptimizer(copies, old_net)
            fns = {"ours": ours.step, "rev": theirs.step}
            if args.with_gac:
                gac_params = [nn.Parameter(p.detach().clone()) for p in params]
                for p, q in zip(params, gac_params):
                    q.grad = p.grad
                fns["gac"] = LearnedOptimizer(gac_params, GlobalAveragingLSTM(global_cells=5)).step
            times = common.interleaved(fns, args.repeats, "cpu")
            same = all(torch.equal(p, q) for p, q in zip(params, copies))
            n = sum(p.numel() for p in params)
            row = [
                f"{label.strip()} ({n:,})",
                common.fmt_time(times["rev"]),
                common.fmt_time(times["ours"]),
                f"**{times['ours'] / times['rev']:.3f}**",
                "yes" if same else "NO",
            ]
            if args.with_gac:
                row += [common.fmt_time(times["gac"]), f"**{times['gac'] / times['ours']:.2f}×**"]
            rows.append(row)
    header = ["parameters", f"step at {args.rev}", "step now", "now / rev", "same parameters"]
    if args.with_gac:
        header += ["GAC step now", "GAC / LSTM"]
    out = common.report(f"step_vs_revision — {threads} thread(s), median of {args.repeats} interleaved calls", where, header, rows)
    print(out)
    return out


if __name__ == "__main__":
    main()
