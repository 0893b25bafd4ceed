"""How many intra-op (OpenMP) threads meta-training and ``l2l compare`` use: the thread policy.

Why a policy at all: the ops of meta-training are small (the quadratic's LSTM pass is
1,280 rows × 80 gates) and there are many of them, so with two OpenMP threads every op
ends in a barrier.  When another process keeps one core busy, each barrier waits for a
scheduler time slice: the README's first command took 380 s instead of 81 s on the
project's 2-core machine (``benchmarks/busy_machine.py`` measures it).  One thread has no
barrier, and for small work it is not slower even on an idle machine
(``benchmarks/RESULTS.md``, meta_throughput: quadratic 128×10, 1,280 rows: 729 inner steps/s
with 1 thread vs 671 with 2).

The setting, ``threads``:

* ``"auto"`` (default): one thread when a step's work is small, i.e. the optimizee has
  fewer than :data:`SMALL_WORK_ROWS` coordinates (rows of the LSTM pass); torch's default
  otherwise (MNIST MLP, 15,910 rows: 2 threads are 1.27× faster than 1 on an idle machine,
  111 vs 87 steps/s, so the second core is worth using there).  The threshold is the
  deployment runtime's CPU chunk (8,192 rows, :data:`~l2l_lightning.optim.runtime.DEFAULT_CHUNK_SIZE`):
  below it one op's gate activations fit in cache and the op is too short to share.
* a positive integer: exactly that many threads.

An explicit choice by the user always wins over ``"auto"``: if ``OMP_NUM_THREADS`` (or
``MKL_NUM_THREADS``) is set in the environment, or ``torch.set_num_threads`` was called
after this module was imported, ``"auto"`` changes nothing.  (A ``torch.set_num_threads``
call made before ``l2l_lightning`` was imported cannot be told apart from torch's default.)

The deployment step (``LearnedOptimizer.step``) needs no policy: it already runs its own
ops with one intra-op thread and shares its chunks over ``torch.get_num_threads()`` Python
threads, each chunk single-threaded, so no barrier couples the threads
(:mod:`l2l_lightning.optim.runtime`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch

from l2l_lightning.errors import check_positive_int

#: Below this many coordinates per step, ``"auto"`` uses one thread (see the module docstring).
SMALL_WORK_ROWS = 8192

#: Environment variables by which a user fixes the thread count.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

ThreadsSetting = Union[str, int]

#: torch's thread count when this module was imported: a different count later is the user's choice.
_THREADS_AT_IMPORT = torch.get_num_threads()


def check_threads(setting: Any, name: str = "threads") -> ThreadsSetting:
    """``setting`` if it is ``"auto"`` or a positive integer, else a :class:`ConfigError` naming ``name``."""
    if setting == "auto" and isinstance(setting, str):
        return setting
    if isinstance(setting, str) and setting.isascii() and setting.isdigit() and int(setting) > 0:  # '²'.isdigit()
        return int(setting)
    return check_positive_int(
        name, setting, " (that many intra-op threads) or 'auto' (one thread for small problems, torch's default otherwise)"
    )


def user_choice(environ: Optional[Mapping[str, str]] = None, current: Optional[int] = None) -> Optional[str]:
    """How the user fixed the thread count (``"OMP_NUM_THREADS=1"``, ...), or ``None`` if they did not."""
    environ = os.environ if environ is None else environ
    for var in THREAD_ENV_VARS:
        if environ.get(var, "").strip():
            return f"{var}={environ[var]}"
    current = torch.get_num_threads() if current is None else current
    if current != _THREADS_AT_IMPORT:
        return f"torch.set_num_threads({current})"
    return None


def decide_threads(setting: ThreadsSetting, work_rows: int, current: int, user: Optional[str] = None) -> Optional[int]:
    """The thread count to use, or ``None`` to leave the current one.  Pure: no side effects.

    Args:
        setting: ``"auto"`` or a positive integer (see the module docstring).
        work_rows: coordinates per step (the optimizee's flat parameter count).
        current: ``torch.get_num_threads()`` now.
        user: the user's explicit choice (:func:`user_choice`); ``"auto"`` then keeps it.
    """
    setting = check_threads(setting)
    if isinstance(setting, int):
        return None if setting == current else setting
    if user is not None or current <= 1 or work_rows >= SMALL_WORK_ROWS:
        return None
    return 1


class ThreadPolicy:
    """Applies a thread setting for a stretch of work and restores the previous count afterwards.

    ``apply(work_rows)`` decides once (the first call) and sets the count; later calls re-apply the
    same decision (e.g. ``l2l fit`` then its test); ``restore()`` puts back the count found.
    """

    def __init__(self, setting: ThreadsSetting) -> None:
        self.setting = check_threads(setting)
        self.decided: Optional[int] = None  #: the count chosen (``None``: leave it)
        self.reason = ""
        self._before: Optional[int] = None
        self._done = False

    @property
    def ready(self) -> bool:
        """Whether the decision has been taken (by a first :meth:`apply` with ``work_rows``)."""
        return self._done

    def apply(self, work_rows: Optional[int] = None) -> None:
        """Decide (once; needs ``work_rows`` the first time) and set the thread count."""
        if not self._done:
            if work_rows is None:
                return
            current = torch.get_num_threads()
            user = user_choice(current=current)
            self.decided = decide_threads(self.setting, work_rows, current, user)
            self.reason = (
                f"threads={self.setting!r}, {work_rows} coordinates per step"
                + (f", user's choice {user} kept" if user and self.setting == "auto" else "")
            )
            self._done = True
        if self.decided is not None and self._before is None:
            self._before = torch.get_num_threads()
            torch.set_num_threads(self.decided)

    def restore(self) -> None:
        """Put back the thread count found by the last :meth:`apply` that changed it."""
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None
