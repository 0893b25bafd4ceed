"""The deployment runtime: a net's chunk kernel run over per-parameter states, in place.

A learned optimizer keeps ~80 numbers of state per parameter, so the deployment step
is dominated by moving state through memory.  This module is everything about *how*
a step runs, separate from the net's maths (:class:`~l2l_lightning.nets.kernel.ChunkKernel`).
:func:`step_inplace` is the one dispatcher of a deployment step: a bound
:class:`~l2l_lightning.nets.RoutedNets` is stepped route by route; a net with a chunk kernel
runs fused or in chunks; any other net through one ``forward`` over its concatenated states.
The runtime calls into the net's maths and gets the result back; nothing in ``nets`` calls
into deployment, so the walk from ``LearnedOptimizer.step()`` to the maths and back crosses
between ``optim`` and ``nets`` once each way.

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
  kernel on CUDA, :mod:`l2l_lightning.nets.lstm_triton`), that runs instead of the chunks
  (``StepOptions.fused``: by default wherever it is available).
* **Per-tensor state and inputs.**  For a net that keeps per-tensor state or reads the
  parameter, the step number or the loss, the kernel's :meth:`~l2l_lightning.nets.kernel.ChunkKernel.prepare_step`
  runs first over whole tensors (per-tensor statistics: the first of two passes), then the
  chunks; the new per-tensor states are written after the chunks, where the step is kept.
* **Non-finite updates.**  A coordinate whose update comes out NaN/Inf gets a zero
  state, so one diverged coordinate cannot poison later steps; its update is left
  non-finite for the caller to see.  A tensor with a non-finite update gets a zero per-tensor state.  With ``keep`` (a 0-d device bool), states are
  only written where it is true, decided without a host synchronisation.

A net offers its kernel through :meth:`~l2l_lightning.nets.LearnedOptimizerNet.chunk_kernel`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, check_choice, check_positive_int
from l2l_lightning.nets.base import LearnedOptimizerNet, StepInputs
from l2l_lightning.nets.kernel import ChunkKernel, FusedStepUnavailable, Rows
from l2l_lightning.nets.layout import Layout, Segment, as_layout

#: Rows per chunk, by device type.  On CPU a chunk's gate activations stay in L2/L3; on
#: GPUs a chunk only has to be big enough to fill the device.
DEFAULT_CHUNK_SIZE: dict[str, int] = {"cpu": 8192, "cuda": 2**18}


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


def check_step_options(chunk_size: Optional[int], compile: Any, fused: Any) -> tuple[Optional[int], Any, Any]:
    """The step's ``chunk_size``, ``compile`` and ``fused`` options, checked (``LearnedOptimizer`` and its callback)."""
    return (
        None if chunk_size is None else check_chunk_size(chunk_size),
        check_choice("compile", compile, (True, False, "auto"), " ('auto': compile on CUDA only)"),
        check_choice("fused", fused, (True, False, "auto"), " ('auto': the fused step wherever it is available)"),
    )


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
def step_inplace(
    net: LearnedOptimizerNet,
    grad: Tensor,
    states: "Tensor | Sequence[Tensor]",
    layout: "Layout | int | None" = None,
    *,
    out: Optional[Tensor] = None,
    keep: Optional[Tensor] = None,
    options: Optional[StepOptions] = None,
    tensor_states: Sequence[Tensor] = (),
    inputs: Optional[StepInputs] = None,
) -> Tensor:
    """The deployment step of ``net``: ``states`` (one per segment of ``layout``) advance in place.

    Args:
        net: the net, bound to ``layout`` (:meth:`~l2l_lightning.nets.LearnedOptimizerNet.bind`).
        grad: the flat gradient of all segments.
        states: one state per segment of ``layout`` (default layout: one flat tensor per
            state, in ``grad``'s order), any float dtype each.
        out: where to write the update (``grad``'s shape and dtype); allocated if ``None``.
        keep: optional 0-d bool tensor on the device; where it is ``False`` no state
            changes, decided on the device without a host synchronisation.
        options: how the step runs (chunk size, compile, threads, fused); not what it computes.
        tensor_states: for a net with per-tensor state, one per segment (advanced in place too).
        inputs: what the net declared it reads (:attr:`~l2l_lightning.nets.LearnedOptimizerNet.inputs`).

    Returns the flat update.  Coordinates whose update is non-finite get a zero state
    (a fresh start where the net diverged; the update is left non-finite for the caller
    to see).
    """
    states, layout = _checked(net, grad, states, layout)
    tensor_states = list(tensor_states)
    if net.has_tensor_state:
        shapes = [net.tensor_state_shape(segment) for segment in layout]
        if [tuple(t.shape) for t in tensor_states] != [tuple(shape or ()) for shape in shapes]:
            raise ValueError(
                f"{type(net).__name__} keeps per-tensor state: give one per segment, shaped {shapes} "
                "(net.init_tensor_states(layout))"
            )
    if net.inputs.any and inputs is None:
        raise ValueError(f"{type(net).__name__} reads {net.inputs}; pass them as inputs=StepInputs(...)")
    extra = _Extra(tensor_states, inputs if net.inputs.any else None)
    return _dispatch(net, grad, states, layout, out, keep, options or StepOptions(), extra)


@dataclass(frozen=True)
class _Extra:
    """What a net reads or keeps besides the gradient and per-coordinate states (empty for the paper's nets)."""

    tensor_states: list[Tensor]
    inputs: Optional[StepInputs]

    @property
    def any(self) -> bool:
        return bool(self.tensor_states) or self.inputs is not None


_NONE = _Extra([], None)


def _write_tensor_states(
    tensor_states: Sequence[Tensor], new: Sequence[Tensor], update: Tensor, layout: Layout, keep: Optional[Tensor]
) -> None:
    """The new per-tensor states, written where the step is kept; zeros for a tensor whose update is not finite
    (as the per-coordinate states of diverged coordinates).  Decided on the device: no host synchronisation."""
    for old, fresh, u in zip(tensor_states, new, update.split(layout.sizes)):
        fresh = fresh.to(old.dtype).masked_fill(~torch.isfinite(u).all(), 0)
        old.copy_(fresh if keep is None else torch.where(keep, fresh, old))


def _checked(
    net: LearnedOptimizerNet, grad: Tensor, states: "Tensor | Sequence[Tensor]", layout: "Layout | int | None"
) -> tuple[list[Tensor], Layout]:
    """``states`` as a list and ``layout`` as a :class:`Layout`, both checked against ``grad`` and the net."""
    if grad.dim() != 1 or not grad.is_floating_point():
        raise ValueError(f"grad must be a 1-D floating-point tensor, got {grad.dtype} of shape {tuple(grad.shape)}")
    states = [states] if isinstance(states, Tensor) else list(states)
    routes = net.route_parts()
    if layout is None and routes is not None:
        layout = routes.layout
    elif layout is None:
        dim = net.coordinate_dim
        layout = Layout.flat(grad.shape[0]) if len(states) == 1 else Layout(
            [Segment(f"tensor{i}", (s.shape[dim],)) for i, s in enumerate(states)]
        )
    layout = as_layout(layout)
    layout.check(grad)
    if len(states) != len(layout):
        raise ValueError(f"{len(states)} states for a layout of {len(layout)} tensors; give one state per tensor")
    for state, expected in zip(states, net.segment_state_shapes(layout)):
        if tuple(state.shape) != tuple(expected):
            raise ValueError(
                f"a state has shape {tuple(state.shape)}, expected {tuple(expected)}; create it with "
                "net.init_state(numel) for each tensor"
            )
    return states, layout


def _dispatch(
    net: LearnedOptimizerNet,
    grad: Tensor,
    states: list[Tensor],
    layout: Layout,
    out: Optional[Tensor],
    keep: Optional[Tensor],
    options: StepOptions,
    extra: _Extra = _NONE,
) -> Tensor:
    """Route by route, then fused or chunked where the net has a kernel, else one ``forward``."""
    routes = net.route_parts()
    if routes is not None:  # RoutedNets refuses member nets with inputs or per-tensor state: nothing extra here
        updates = [
            _dispatch(sub, route_grad, [states[m] for m in members], sub_layout, None, keep, options)
            for (sub, members, sub_layout), route_grad in zip(routes.parts, routes.split(grad))
        ]
        update = routes.join(updates, grad)
        return update if out is None else out.copy_(update)
    kernel = net.chunk_kernel(net.compute_dtype(grad.dtype), grad.device)
    if kernel is not None:
        return step_chunked(kernel, grad, states, layout, out=out, keep=keep, options=options, extra=extra)
    dim = net.coordinate_dim
    state: Any = torch.cat(states, dim=dim)
    if net.has_tensor_state:
        state = (state, tuple(extra.tensor_states))
    if extra.inputs is None:
        update, new_state = net(grad, state, layout)
    else:
        update, new_state = net(grad, state, layout, inputs=extra.inputs)
    if net.has_tensor_state:
        new_state, new_tensor_states = new_state
        _write_tensor_states(extra.tensor_states, new_tensor_states, update, layout, keep)
    shape = [1] * new_state.dim()
    shape[dim] = -1
    new_state = new_state.masked_fill(~torch.isfinite(update).view(shape), 0)
    for state, new in zip(states, new_state.split([s.shape[dim] for s in states], dim=dim)):
        state.copy_(torch.where(keep, new, state) if keep is not None else new)
    return update if out is None else out.copy_(update)


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
    extra: _Extra = _NONE,
) -> Tensor:
    """Run ``kernel`` over the flat ``grad`` and per-segment ``states`` (advanced in place).

    Returns ``out`` (allocated if ``None``): the flat update in ``grad``'s dtype.  With ``extra``
    (per-tensor states, inputs), :meth:`~l2l_lightning.nets.kernel.ChunkKernel.prepare_step` runs
    before the chunks and the per-tensor states it returns are written after them.
    """
    options = options or StepOptions()
    device = grad.device
    chunk_size = check_chunk_size(DEFAULT_CHUNK_SIZE.get(device.type, 2**16) if options.chunk_size is None else options.chunk_size)
    if out is None:
        out = torch.empty_like(grad)
    elif out.shape != grad.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(grad.shape)}")
    if grad.shape[0] == 0 or (not extra.any and _stepped_fused(kernel, grad, states, out, keep, options)):
        return out
    rows = min(chunk_size, grad.shape[0])
    kernel.prepare(states, layout)
    new_tensor_states = kernel.prepare_step(grad, states, extra.tensor_states, layout, extra.inputs) if extra.any else []
    _run_chunks(kernel, grad, states, out, keep, options, rows)
    if extra.tensor_states:
        _write_tensor_states(extra.tensor_states, new_tensor_states, out, layout, keep)
    return out


def _run_chunks(
    kernel: ChunkKernel,
    grad: Tensor,
    states: Sequence[Tensor],
    out: Tensor,
    keep: Optional[Tensor],
    options: StepOptions,
    rows: int,
) -> None:
    """The chunks of one step: in order on GPUs and when compiled, shared over threads on CPU."""
    device = grad.device
    runner = _compiled_runner(kernel) if options.compile and kernel.functional() is not None else None
    chunks = _Chunks(kernel, grad, out, keep, runner)
    tasks = chunks.plan(states, rows, direct_ok=keep is None and runner is None)
    if device.type != "cpu" or runner is not None:
        work = _Workspace(kernel, rows, device, zero=runner is not None)
        for fn, *args in tasks:
            fn(work, *args)
        return
    threads = options.threads or torch.get_num_threads()
    _run_chunks_in_threads(tasks, lambda: _Workspace(kernel, rows, device), threads)


def _stepped_fused(
    kernel: ChunkKernel, grad: Tensor, states: Sequence[Tensor], out: Tensor, keep: Optional[Tensor], options: StepOptions
) -> bool:
    """Run the kernel's single-kernel step if it applies and is wanted; whether it ran (``out`` written)."""
    if options.fused is False or (options.fused is None and _FUSED_FAILED):
        return False
    device, dim = grad.device, kernel.coordinate_dim
    fused = kernel.fused_step(device)
    if fused is not None and all(_rows_contiguous(s, dim) and s.device == device for s in states):
        try:
            fused(grad, states, out, keep)
            return True
        except FusedStepUnavailable as error:
            if options.fused:
                raise
            _disable_fused(error)  # nothing was written: the chunked path does the step
            return False
    if options.fused:
        raise ConfigError(
            f"fused=True, but no single-kernel step for {type(kernel).__name__} on {device} with these states "
            "(it needs Triton and CUDA, float32 maths, row-contiguous states); use fused='auto'"
        )
    return False


#: One piece of a gathered chunk: ``(segment index, its state, start in the segment, flat start, length)``.
_Piece = tuple[int, Tensor, int, int, int]


class _Chunks:
    """One chunked step: the plan of chunks over the states, and how one chunk runs (direct or gathered)."""

    def __init__(
        self, kernel: ChunkKernel, grad: Tensor, out: Tensor, keep: Optional[Tensor], runner: "Optional[_CompiledRunner]"
    ) -> None:
        self.kernel, self.grad, self.out, self.keep, self.runner = kernel, grad, out, keep, runner
        self.dim, self.dtype, self.device = kernel.coordinate_dim, kernel.dtype, grad.device
        #: reset diverged rows without asking the host first: masked steps, and GPUs (a check would sync)
        self.reset_always = keep is not None or grad.device.type != "cpu"

    def plan(self, states: Sequence[Tensor], rows: int, direct_ok: bool) -> list[tuple[Any, ...]]:
        """``(fn, *args)`` per chunk.  Chunks inside one state of the compute dtype run in place; a tail of
        at least ``rows // 4`` rows too (one more chunk, but no copies); smaller tails and small tensors
        are packed together through the workspace, so many small parameters still make full chunks."""
        dim, min_direct = self.dim, max(1, rows // 4)
        tasks: list[tuple[Any, ...]] = []
        pending: list[_Piece] = []
        pending_rows = offset = 0
        for index, seg in enumerate(states):
            size, pos = seg.shape[dim], 0
            if direct_ok and seg.dtype == self.dtype and seg.device == self.device and _rows_contiguous(seg, dim):
                while size - pos >= min_direct:
                    c = min(rows, size - pos)
                    tasks.append((self.direct, index, seg, pos, offset + pos, c))
                    pos += c
            while pos < size:
                length = min(size - pos, rows - pending_rows)
                pending.append((index, seg, pos, offset + pos, length))
                pending_rows += length
                pos += length
                if pending_rows == rows:
                    tasks.append((self.gathered, pending))
                    pending, pending_rows = [], 0
            offset += size
        if pending:
            tasks.append((self.gathered, pending))
        return tasks

    def run(self, work: _Workspace, g: Tensor, state: Tensor, pieces: list[tuple[int, int, int, int, int]]) -> None:
        """One chunk (``state``: its view); pieces ``(segment, start, flat start, row, length)``; write ``out``."""
        where: Rows = [(segment, start, row, length) for segment, start, _, row, length in pieces]
        if self.runner is not None and self.runner.active:
            u = self.runner(self.kernel, work, g, state, where)
        else:
            u = self.kernel(work.kernel, g, state, where)
        bad = ~torch.isfinite(u)
        if self.reset_always or bool(bad.any()):
            shape = [1] * state.dim()
            shape[self.dim] = -1
            state.masked_fill_(bad.view(shape), 0)
        out = self.out
        for _, _, flat_start, row, length in pieces:
            out[flat_start : flat_start + length].copy_(u[row : row + length])

    def direct(self, work: _Workspace, index: int, seg: Tensor, pos: int, flat_start: int, c: int) -> None:
        """A chunk inside one state tensor of the compute dtype: computed in place."""
        g = self.grad[flat_start : flat_start + c].to(self.dtype)
        self.run(work, g, seg.narrow(self.dim, pos, c), [(index, pos, flat_start, 0, c)])

    def gathered(self, work: _Workspace, pieces: list[_Piece]) -> None:
        """Pieces copied into the workspace, computed, copied back (only where ``keep``)."""
        dim, grad, keep = self.dim, self.grad, self.keep
        c = sum(piece[4] for piece in pieces)
        g = work.grad[:c]
        where, row = [], 0
        for index, seg, start, flat_start, length in pieces:
            g[row : row + length].copy_(grad[flat_start : flat_start + length])
            work.state.narrow(dim, row, length).copy_(seg.narrow(dim, start, length))
            where.append((index, start, flat_start, row, length))
            row += length
        self.run(work, g, work.state.narrow(dim, 0, c), where)
        row = 0
        for _, seg, start, _, length in pieces:
            new = work.state.narrow(dim, row, length)
            target = seg.narrow(dim, start, length)
            target.copy_(torch.where(keep, new, target) if keep is not None else new)
            row += length


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


def not_traced(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` runs eagerly even inside ``torch.compile``: a graph break, as torch's own optimizers
    make for code Dynamo cannot trace.  Inductor cannot compile the net's weights as graph inputs
    ("weight must be a graph constant"), and the step's host-side decisions (skip on NaN, chunking,
    threads) are not graph material anyway.  On CUDA the chunk itself is still compiled
    (``compile="auto"``), by the optimizer, outside the caller's graph.

    ``torch.compiler.disable`` is applied only while compiling: wrapping at import time would
    import Dynamo with the optimizer (about 2 s, more than ``import torch`` itself), a cost a
    plain training loop should not pay.  Outside compilation the step is called directly."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return torch.compiler.disable(step, recursive=True)(*args, **kwargs)
        return step(*args, **kwargs)

    return run


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

    def __call__(self, kernel: ChunkKernel, work: _Workspace, g: Tensor, state: Tensor, where: Rows) -> Tensor:
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
