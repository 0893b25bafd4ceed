"""Helpers shared by the benchmarks: thread setup, interleaved timing, peak-allocation measurement.

Not part of the package; the scripts next to this file import it by path.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch


def setup_threads(threads: Optional[int]) -> int:
    """Use ``threads`` intra-op threads (default: every core this process may run on)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Temporarily ``torch.set_num_threads(count)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fresh_process_env(**extra: str) -> dict[str, str]:
    """The environment for timing a fresh Python process as an installed package runs: bytecode cached.

    pip compiles every module of a wheel (torch's, Lightning's, ours) to ``.pyc`` at install, so
    imports read bytecode.  A checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (these machines
    set it) compiles the package's own sources again in every process while torch's come from
    its cache: 20–30 ms for the deployment import, billed to us and not to ``import torch``.
    So the variable is dropped here; the scripts' first, untimed process writes the cache
    (into the git-ignored ``__pycache__`` folders).  One intra-op thread, as in the other benchmarks.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def machine(device: str = "cpu") -> str:
    """One line naming the machine, the torch build, the threads and the load when measured."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    else:
        name = _cpu_name()
    load = ", load average %.2f before the run" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (
        f"{name}; {os.cpu_count()} logical CPUs{load}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s); Python {platform.python_version()}"
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: Any = "cpu") -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin.

    Interleaving makes every candidate see the same background load (this benchmark is
    meant for shared machines), so the *ratios* are meaningful even when absolute
    times drift.  Each function runs once before timing (warm-up, lazy allocation).
    """
    for fn in fns.values():
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_extra_bytes(fn: Callable[[], Any], device: Any = "cpu") -> int:
    """Peak bytes allocated by ``fn`` beyond what was allocated when it started.

    * CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak.
    * CPU: torch's CPU allocator reports every allocation and free to the profiler when
      ``profile_memory=True``; replaying those events in time order gives the running
      total of tensor memory, whose maximum (minus the starting value) is the peak extra
      memory.  It counts exactly the tensor storages ``fn`` allocates (temporaries, new
      states, workspaces), not memory held before the call (parameters, gradients, the
      existing optimizer state), and is immune to the allocator caching and page reuse
      that make RSS deltas unreliable.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []

    def walk(nodes: Sequence[Any]) -> None:
        for node in nodes:
            fields = node.extra_fields
            if type(fields).__name__.endswith("Allocation") and str(fields.device) == "cpu":
                events.append((node.start_time_ns, fields.alloc_size))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    total = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        total += size
        peak = max(peak, total)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler backend's start/stop lines (written by C++ straight to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (prints readably in a terminal too)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def report(title: str, where: str, header: Sequence[str], rows: Sequence[Sequence[str]], note: str = "") -> str:
    """The printed form of every benchmark: a title line, the machine line, the table, an optional note."""
    return "\n".join([title, where, "", table(header, rows), "", note]).rstrip()


def median_ratio_rows(times: dict[str, list[float]], base: str, digits: int = 2) -> list[list[str]]:
    """One row per candidate: its name, median time and median ÷ ``base``'s median (the benchmarks' figure)."""
    reference = statistics.median(times[base])
    return [
        [f"`{name}`", fmt_time(statistics.median(t)), f"**{statistics.median(t) / reference:.{digits}f}×**"]
        for name, t in times.items()
    ]
