"""The contract a net's fast deployment maths implements: :class:`ChunkKernel`.

A net describes *what* its no-grad deployment step computes; the deployment runtime
(:mod:`l2l_lightning.optim.runtime`) decides *how* it runs: chunks sized for the cache,
pieces of small tensors gathered into a workspace, chunks shared over threads,
``torch.compile``, the reset of diverged coordinates.  The runtime imports this module;
nothing here imports the runtime, so the net's maths never calls back into deployment.

A net offers its kernel with :meth:`~l2l_lightning.nets.LearnedOptimizerNet.chunk_kernel`.
A kernel may also offer a single-kernel step for a device (:meth:`ChunkKernel.fused_step`,
the LSTM's Triton form in :mod:`l2l_lightning.nets.lstm_triton`), which the runtime runs
instead of the chunks; if that step cannot be built on this machine it raises
:class:`FusedStepUnavailable` before writing anything, and the runtime falls back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from l2l_lightning.nets.inputs import StepInputs
from l2l_lightning.nets.layout import Layout

#: Where a chunk's rows come from: ``(segment index, start in the segment, row in the chunk, length)``
#: per piece (a chunk may pack pieces of several small tensors).
Rows = Sequence[tuple[int, int, int, int]]

#: A kernel's pure form for ``torch.compile``: ``(fn, args)`` with ``fn(grad, state, *args) -> (update, new_state)``.
PureForm = tuple[Callable[..., tuple[Tensor, Tensor]], tuple[Any, ...]]

#: A single-kernel step: ``fn(grad, states, out, keep) -> out``, states advanced in place, diverged
#: coordinates reset, no state written where the 0-d bool ``keep`` is false.
FusedStep = Callable[[Tensor, Sequence[Tensor], Tensor, Optional[Tensor]], Tensor]


class FusedStepUnavailable(RuntimeError):
    """A fused step could not be compiled or launched before any state was written: run the chunked step instead."""


class ChunkKernel(ABC):
    """A net's arithmetic over one chunk of coordinates, its state advanced in place.

    Built by a net for one compute dtype and device (weights converted once per step).

    Attributes:
        dtype: the compute dtype; state chunks of another dtype go through the runtime's workspace.
        coordinate_dim: the net's :attr:`~l2l_lightning.nets.LearnedOptimizerNet.coordinate_dim`.
    """

    dtype: torch.dtype
    coordinate_dim: int

    @abstractmethod
    def state_shape(self, n: int) -> tuple[int, ...]:
        """As the net's :meth:`~l2l_lightning.nets.LearnedOptimizerNet.state_shape`."""

    @abstractmethod
    def buffers(self, rows: int, device: torch.device) -> Any:
        """The chunk-sized temporaries one thread reuses for every chunk of a step."""

    @abstractmethod
    def __call__(self, buffers: Any, grad: Tensor, state: Tensor, rows: Rows) -> Tensor:
        """Advance ``state`` (a view of ``c`` coordinates) in place; return the ``(c,)`` update.

        ``rows`` says where the chunk's rows come from (:data:`Rows`); coordinatewise kernels ignore it.
        """

    def prepare(self, states: Sequence[Tensor], layout: Layout) -> None:
        """Called once per step before any chunk, with every state of the step (e.g. for global averages)."""

    def prepare_step(
        self,
        grad: Tensor,
        states: Sequence[Tensor],
        tensor_states: Sequence[Tensor],
        layout: Layout,
        inputs: Optional[StepInputs],
    ) -> list[Tensor]:
        """Called once per step before any chunk, for a net that keeps per-tensor state or reads inputs.

        The first of two passes (as PyLO's two kernels): whatever needs a whole tensor
        (per-tensor statistics) is computed here, reading ``states`` without writing them;
        ``inputs`` are the step's flat values the chunks then read by row (:data:`Rows`).
        Returns the new per-tensor states (one per segment, in ``tensor_states``' shapes): the
        runtime writes them after the chunks, only where the step is kept, and as zeros for a
        tensor whose update came out non-finite.
        """
        return []

    def functional(self) -> Optional[PureForm]:
        """The same maths as ``__call__`` as a pure function, for ``torch.compile``; ``None`` if not compilable."""
        return None

    def fused_step(self, device: torch.device) -> Optional[FusedStep]:
        """A single-kernel step for ``device``, or ``None``: the runtime then runs this kernel in chunks."""
        return None
