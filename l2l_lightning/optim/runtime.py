"""The deployment runtime: a net's chunk kernel run over per-parameter states, in place.

A learned optimizer keeps ~80 numbers of state per parameter, so the deployment step
is dominated by moving state through memory.  This module is everything about *how*
a step runs, separate from the net's maths (:class:`~l2l_lightning.nets.base.ChunkKernel`):

* **Chunks.**  The flat gradient is cut into chunks of ``chunk_size`` rows
  (:data:`DEFAULT_CHUNK_SIZE`), so each chunk's temporaries (gate activations: 2.6 MB at
  8192 × 80 floats) stay in cache and never exist for all coordinates at once.
* **In place.**  A chunk inside one state tensor of the compute dtype is computed
  directly in it; pieces of small tensors, and states of other dtypes (bf16), are
  packed through a small :class:`_Workspace` and copied back.  Extra memory: the flat
  update and a few chunk-sized buffers, a few percent of the state.
* **Threads.**  On CPU the chunks are shared over threads, each chunk single-threaded:
  OpenMP inside ~40 small ops per chunk means a barrier per op, and one busy core
  elsewhere stalls every barrier for a scheduler time slice (~100× slower, measured).
* **Compile.**  ``torch.compile`` of the kernel's pure form on request (on CUDA by
  default); a failed compilation warns once and runs eagerly from then on.
* **Fused.**  Where a kernel offers a single-kernel step for the device (the LSTM's Triton
  kernel on CUDA, :mod:`l2l_lightning.optim.triton_step`), that runs instead of the chunks
  (``StepOptions.fused``: by default wherever it is available).
* **Non-finite updates.**  A coordinate whose update comes out NaN/Inf gets a zero
  state, so one diverged coordinate cannot poison later steps; its update is left
  non-finite for the caller to see.  With ``keep`` (a 0-d device bool), states are
  only written where it is true, decided without a host synchronisation.

A net offers its kernel through :meth:`~l2l_lightning.nets.LearnedOptimizerNet.chunk_kernel`;
its :meth:`~l2l_lightning.nets.LearnedOptimizerNet.step_inplace`, which the optimizer calls,
then runs :func:`step_chunked`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, check_positive_int
from l2l_lightning.nets.base import ChunkKernel, Layout

#: Rows per chunk, by device type.  On CPU a chunk's gate activations stay in L2/L3; on
#: GPUs a chunk only has to be big enough to fill the device.
DEFAULT_CHUNK_SIZE: dict[str, int] = {"cpu": 8192, "cuda": 2**18}


class FusedStepUnavailable(RuntimeError):
    """A fused step could not be compiled or launched before any state was written: run the chunked step instead."""


#: Set when the fused kernel failed to compile here: ``fused=None`` ("auto") then stays with the chunks.
_FUSED_FAILED: list[str] = []


def _disable_fused(error: BaseException) -> None:
    """Warn once that the fused step is unavailable in this process, and stop trying it."""
    _FUSED_FAILED.append(str(error))
    warnings.warn(
        f"the fused learned-optimizer step could not be compiled here ({error}); using the chunked step "
        "(same results, slower on GPUs). Pass fused=False to silence this.",
        RuntimeWarning,
        stacklevel=5,
    )


def check_chunk_size(chunk_size: Any) -> int:
    """``chunk_size`` if it is a positive integer, else :class:`ConfigError`."""
    return check_positive_int("chunk_size", chunk_size, " (rows of coordinates per chunk)")


@dataclass(frozen=True)
class StepOptions:
    """How a deployment step runs (results do not depend on them, only speed and memory).

    Attributes:
        chunk_size: rows per chunk (default :data:`DEFAULT_CHUNK_SIZE` for the device).
        compile: run each chunk through ``torch.compile``.
        threads: CPU threads to share chunks over (default ``torch.get_num_threads()``).
        fused: use the kernel's single-kernel step (``None``: wherever it is available;
            ``True``: required, a ``ConfigError`` where it is not; ``False``: never).
    """

    chunk_size: Optional[int] = None
    compile: bool = False
    threads: Optional[int] = None
    fused: Optional[bool] = None


@contextlib.contextmanager
def intra_op_threads(count: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the block (nothing if ``None`` or already so)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Workspace:
    """The chunk-sized buffers of one thread: the kernel's own, plus gather buffers.

    ``grad`` and ``state`` (for pieces copied in and out) are allocated on first use: a
    step whose chunks all lie inside states of the compute dtype never needs them.
    """

    def __init__(self, kernel: ChunkKernel, rows: int, device: torch.device, zero: bool = False) -> None:
        self._new = lambda shape: torch.empty(shape, dtype=kernel.dtype, device=device)
        self._rows = rows
        self._state_shape = kernel.state_shape(rows)
        self.kernel = kernel.buffers(rows, device)
        self.update = self._new((rows,))
        self._grad: Optional[Tensor] = None
        self._state: Optional[Tensor] = None
        if zero:  # the compiled path computes all rows, stale ones included
            self.grad.zero_()
            self.state.zero_()

    @property
    def grad(self) -> Tensor:
        if self._grad is None:
            self._grad = self._new((self._rows,))
        return self._grad

    @property
    def state(self) -> Tensor:
        if self._state is None:
            self._state = self._new(self._state_shape)
        return self._state


def _rows_contiguous(state: Tensor, dim: int) -> bool:
    """Whether the dimensions from ``dim`` on are laid out contiguously (a row block is one slab)."""
    expected = 1
    for d in range(state.dim() - 1, dim - 1, -1):
        if state.shape[d] != 1 and state.stride(d) != expected:
            return False
        expected *= state.shape[d]
    return True


@torch.no_grad()
@torch.autocast("cpu", enabled=False)
@torch.autocast("cuda", enabled=False)
def step_chunked(
    kernel: ChunkKernel,
    grad: Tensor,
    states: Sequence[Tensor],
    layout: Layout,
    *,
    out: Optional[Tensor] = None,
    keep: Optional[Tensor] = None,
    options: Optional[StepOptions] = None,
) -> Tensor:
    """Run ``kernel`` over the flat ``grad`` and per-segment ``states`` (advanced in place).

    Returns ``out`` (allocated if ``None``): the flat update in ``grad``'s dtype.
    """
    options = options or StepOptions()
    n = grad.shape[0]
    dim = kernel.coordinate_dim
    device = grad.device
    chunk_size = check_chunk_size(DEFAULT_CHUNK_SIZE.get(device.type, 2**16) if options.chunk_size is None else options.chunk_size)
    if out is None:
        out = torch.empty_like(grad)
    elif out.shape != grad.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(grad.shape)}")
    if n == 0:
        return out
    if options.fused is not False and not (options.fused is None and _FUSED_FAILED):
        fused = kernel.fused_step(device)
        if fused is not None and all(_rows_contiguous(s, dim) and s.device == device for s in states):
            try:
                return fused(grad, states, out, keep)
            except FusedStepUnavailable as error:
                if options.fused:
                    raise
                _disable_fused(error)  # nothing was written: the chunked path below does the step
        elif options.fused:
            raise ConfigError(
                f"fused=True, but no single-kernel step for {type(kernel).__name__} on {device} with these states "
                "(it needs Triton and CUDA, float32 maths, row-contiguous states); use fused='auto'"
            )
    dtype = kernel.dtype
    rows = min(chunk_size, n)
    masked = keep is not None
    reset_always = masked or device.type != "cpu"  # a host check per chunk would sync a GPU
    kernel.prepare(states, layout)
    runner = _compiled_runner(kernel) if options.compile and kernel.functional() is not None else None
    narrow = Tensor.narrow

    def run(work: _Workspace, g: Tensor, state: Tensor, pieces: list[tuple[int, int, int, int, int]]) -> None:
        """One chunk (``state``: its view); pieces ``(segment, start, flat start, row, length)``; write ``out``."""
        where = [(segment, start, row, length) for segment, start, _, row, length in pieces]
        if runner is not None and runner.active:
            u = runner(kernel, work, g, state, where)
        else:
            u = kernel(work.kernel, g, state, where)
        bad = ~torch.isfinite(u)
        if reset_always or bool(bad.any()):
            shape = [1] * state.dim()
            shape[dim] = -1
            state.masked_fill_(bad.view(shape), 0)
        for _, _, flat_start, row, length in pieces:
            out[flat_start : flat_start + length].copy_(u[row : row + length])

    def direct(work: _Workspace, index: int, seg: Tensor, pos: int, flat_start: int, c: int) -> None:
        """A chunk inside one state tensor of the compute dtype: computed in place."""
        run(work, grad[flat_start : flat_start + c].to(dtype), narrow(seg, dim, pos, c), [(index, pos, flat_start, 0, c)])

    def gathered(work: _Workspace, pieces: list[tuple[int, Tensor, int, int, int]]) -> None:
        """Pieces ``(segment, state, start, flat start, length)`` copied into the workspace, computed, copied back."""
        c = sum(piece[4] for piece in pieces)
        g = work.grad[:c]
        where, row = [], 0
        for index, seg, start, flat_start, length in pieces:
            g[row : row + length].copy_(grad[flat_start : flat_start + length])
            narrow(work.state, dim, row, length).copy_(narrow(seg, dim, start, length))
            where.append((index, start, flat_start, row, length))
            row += length
        run(work, g, narrow(work.state, dim, 0, c), where)
        row = 0
        for _, seg, start, _, length in pieces:
            new = narrow(work.state, dim, row, length)
            target = narrow(seg, dim, start, length)
            target.copy_(torch.where(keep, new, target) if masked else new)
            row += length

    # Plan.  Chunks inside one state of the compute dtype run in place; a tail of at least
    # ``min_direct`` rows too (one more chunk, but no copies); smaller tails and small tensors
    # are packed together through the workspace, so many small parameters still make full chunks.
    direct_ok = not masked and runner is None
    min_direct = max(1, rows // 4)
    tasks: list[tuple[Any, ...]] = []
    pending: list[tuple[int, Tensor, int, int, int]] = []
    pending_rows = offset = 0
    for index, seg in enumerate(states):
        size, pos = seg.shape[dim], 0
        if direct_ok and seg.dtype == dtype and seg.device == device and _rows_contiguous(seg, dim):
            while size - pos >= min_direct:
                c = min(rows, size - pos)
                tasks.append((direct, index, seg, pos, offset + pos, c))
                pos += c
        while pos < size:
            length = min(size - pos, rows - pending_rows)
            pending.append((index, seg, pos, offset + pos, length))
            pending_rows += length
            pos += length
            if pending_rows == rows:
                tasks.append((gathered, pending))
                pending, pending_rows = [], 0
        offset += size
    if pending:
        tasks.append((gathered, pending))

    if device.type != "cpu" or runner is not None:
        work = _Workspace(kernel, rows, device, zero=runner is not None)
        for fn, *args in tasks:
            fn(work, *args)
        return out
    threads = options.threads or torch.get_num_threads()
    _run_chunks_in_threads(tasks, lambda: _Workspace(kernel, rows, device), threads)
    return out


#: ATen uses OpenMP here, whose thread count is per calling thread (the chunk threads rely on it).
_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _run_chunks_in_threads(tasks: list[tuple[Any, ...]], workspace: Callable[[], _Workspace], threads: int) -> None:
    """Run ``fn(work, *args)`` for every task on up to ``threads`` threads, each with its own
    workspace and one intra-op thread; the caller's intra-op thread count is restored."""
    if not _OPENMP:  # thread counts are process-wide there (and cannot change once set): run in order
        buffers = workspace()
        for task in tasks:
            task[0](buffers, *task[1:])
        return
    caller_threads = torch.get_num_threads()
    workers = max(1, min(threads, len(tasks) // 2))  # a thread of its own pays from two chunks on
    queue = iter(tasks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        torch.set_num_threads(1)  # OpenMP/MKL thread counts are per calling thread
        # grad mode and autocast are thread-local too: a helper thread starts with the defaults
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            buffers = workspace()
            while not errors:
                with lock:
                    task = next(queue, None)
                if task is None:
                    return
                try:
                    task[0](buffers, *task[1:])
                except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(error)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
    try:
        for helper in helpers:
            helper.start()
        work()
        for helper in helpers:
            helper.join()
    finally:
        torch.set_num_threads(caller_threads)
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- torch.compile
class _CompiledRunner:
    """``torch.compile``d kernel function over a whole workspace; eager forever after one failure."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.active = True
        self.fn: Optional[Callable[..., Any]] = None

    def disable(self, error: BaseException) -> None:
        self.active = False
        warnings.warn(
            f"torch.compile is unavailable or failed for the learned optimizer's step ({type(error).__name__}: "
            f"{error}); falling back to eager (same results, slower on GPUs). Pass compile=False to silence this.",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(self, kernel: ChunkKernel, work: _Workspace, g: Tensor, state: Tensor, where: list) -> Tensor:
        """Run on the whole workspace (``g`` is ``work.grad[:c]``; rows past ``c`` are stale and ignored)."""
        c = g.shape[0]
        functional = kernel.functional()
        try:
            if functional is None:
                raise NotImplementedError(f"{type(kernel).__name__} has no pure form to compile")
            fn, args = functional
            if self.fn is None:
                self.fn = torch.compile(fn, fullgraph=True)  # automatic dynamic shapes: few recompiles
            update, new_state = self.fn(work.grad, work.state, *args)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.disable(error)
            return kernel(work.kernel, g, state, where)
        work.state.copy_(new_state)
        work.update.copy_(update)
        return work.update[:c]


_RUNNERS: dict[tuple[Any, ...], _CompiledRunner] = {}


def _compiled_runner(kernel: ChunkKernel) -> _CompiledRunner:
    """One runner per kernel function and settings, per process: a failed compilation warns once."""
    functional = kernel.functional()
    fn, args = functional if functional is not None else (type(kernel), ())
    key = (fn, *(a for a in args if isinstance(a, (int, float, str, bool))))
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = _RUNNERS[key] = _CompiledRunner(key)
    return runner
