"""The learned-optimizer net interface: what every net offers, and the layout it is told.

A learned optimizer net reads a *flat* gradient (every coordinate of every optimizee
tensor, concatenated) and returns a flat update.  A purely coordinatewise net (the
paper's LSTM) needs nothing else; a net that shares information between coordinates
(the paper's LSTM with global averaging cells) or routes tensors to separate nets
(the paper's conv / fully connected LSTMs) must know which rows belong to which tensor.
That is the :class:`Layout`: one :class:`Segment` per tensor, in order, with its name,
shape, the classes of the module that owns it and the optimizee it belongs to.

Every net is a :class:`LearnedOptimizerNet`.  The contract, used by the unroll,
:class:`~l2l_lightning.MetaLearner`, :class:`~l2l_lightning.LearnedOptimizer`, export and
loading (and nothing else about a net is assumed anywhere):

* ``state = net.init_state(layout)`` and ``update, state = net(grad, state, layout)``: the
  differentiable functional step (meta-training differentiates through it);
* :meth:`~LearnedOptimizerNet.state_shape` / ``coordinate_dim``: the per-tensor state of
  ``n`` coordinates is one tensor with the coordinates along ``coordinate_dim``, so a
  deployed optimizer keeps one state tensor per parameter and concatenates them freely;
* :meth:`~LearnedOptimizerNet.step_inplace`: the no-grad deployment step over per-tensor
  states, updated in place.  A net that offers a :class:`ChunkKernel` (its maths for one
  chunk of coordinates, :meth:`~LearnedOptimizerNet.chunk_kernel`) is run by the deployment
  runtime (:mod:`l2l_lightning.optim.runtime`: chunks, threads, compile); any other net by
  one call of ``forward`` over the concatenated states;
* :attr:`~LearnedOptimizerNet.config`: the constructor arguments as plain data;
  :attr:`~LearnedOptimizerNet.spec` (``{"class_path", "init_args"}``) and
  :meth:`~LearnedOptimizerNet.from_spec` are how checkpoints and exported files describe and
  rebuild a net (the file formats around them: :mod:`l2l_lightning.serialization`);
* :meth:`~LearnedOptimizerNet.bind`: the net as applied to one layout.  Plain nets return
  themselves; :class:`~l2l_lightning.nets.RoutedNets` returns its routed form.  Binding is
  where a layout that cannot work (an unmatched route, a global average over a layout
  without optimizees) is refused, once, with a :class:`~l2l_lightning.errors.ConfigError`.

Optional fast paths with generic defaults: :meth:`~LearnedOptimizerNet.split_state` /
:meth:`~LearnedOptimizerNet.forward_split` / :meth:`~LearnedOptimizerNet.join_state` let the
unroll carry a state in a form that is cheaper to differentiate through (the LSTM carries
per-layer ``(h, c)`` tensors).  This mirrors google/learned_optimization's
``learned_optimizers/base.py`` (init, update, a state that is data) in PyTorch terms.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError, ConfigError, L2LError
from l2l_lightning.serialization import make_spec, read_spec

#: What a global statistic (e.g. the averaged cells of LSTM+GAC) is taken over.
AverageOver = Literal["optimizee", "tensor"]


@dataclass(frozen=True)
class Segment:
    """One tensor behind a flat coordinate vector.

    Attributes:
        name: the parameter's dotted name (``"fc.weight"``), or a generic one (``"theta"``).
        shape: the tensor's shape; its ``numel`` coordinates are consecutive rows.
        module_types: class names of the module that owns it, most derived first, with
            its bases (``("Conv2d", "_ConvNd", "Module")``); empty when unknown.
        optimizee: which independent optimizee it belongs to (several quadratics or
            networks optimized at once are separate optimizees of one flat vector).
        route: a net chosen for it explicitly (a deployed param group's ``"route"`` key).
    """

    name: str
    shape: tuple[int, ...]
    module_types: tuple[str, ...] = ()
    optimizee: int = 0
    route: Optional[str] = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Layout:
    """The segments of a flat coordinate vector, in order (see the module docstring)."""

    def __init__(self, segments: Iterable[Segment]) -> None:
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.sizes: list[int] = [s.numel for s in self.segments]
        self.numel: int = sum(self.sizes)

    @classmethod
    def flat(cls, numel: int, num_optimizees: int = 1, name: str = "theta") -> "Layout":
        """``num_optimizees`` equal 1-D segments: all that is known of a plain flat vector."""
        if num_optimizees <= 0 or numel % num_optimizees:
            raise ConfigError(f"Layout.flat: {numel} coordinates cannot be split into {num_optimizees} optimizees")
        size = numel // num_optimizees
        return cls(Segment(name, (size,), optimizee=i) for i in range(num_optimizees))

    @classmethod
    def of_module(cls, module: nn.Module, params: Optional[dict[str, Tensor]] = None) -> "Layout":
        """One segment per parameter of ``module`` (or per entry of ``params``, shaped as given)."""
        owners = owner_types(module)
        items = params.items() if params is not None else module.named_parameters()
        return cls(Segment(name, tuple(value.shape), owners.get(name, ())) for name, value in items)

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.segments == other.segments

    def __hash__(self) -> int:
        return hash(self.segments)

    def __repr__(self) -> str:
        shown = ", ".join(f"{s.name}{list(s.shape)}" for s in self.segments[:6])
        more = f", ... ({len(self.segments)} in all)" if len(self.segments) > 6 else ""
        return f"Layout({shown}{more}; {self.numel} coordinates, {self.num_optimizees} optimizee(s))"

    @property
    def num_optimizees(self) -> int:
        return len({s.optimizee for s in self.segments}) if self.segments else 0

    def repeat(self, copies: int) -> "Layout":
        """``copies`` optimizees of this layout, concatenated optimizee-major (stacked problems)."""
        per = max((s.optimizee for s in self.segments), default=-1) + 1
        return Layout(replace(s, optimizee=k * per + s.optimizee) for k in range(copies) for s in self.segments)

    def check(self, grad: Tensor) -> None:
        """Refuse a gradient that does not have this layout's number of coordinates."""
        if grad.dim() != 1 or grad.shape[0] != self.numel:
            raise ConfigError(
                f"a gradient of shape {tuple(grad.shape)} does not match its layout of {self.numel} coordinates "
                f"({self!r}); pass the layout of the tensors the gradient was flattened from"
            )

    def group_index(self, over: AverageOver) -> tuple[list[int], int]:
        """For each segment, its group (``over`` optimizees or tensors), and the number of groups."""
        if over == "tensor":
            return list(range(len(self.segments))), len(self.segments)
        ids = {o: i for i, o in enumerate(dict.fromkeys(s.optimizee for s in self.segments))}
        return [ids[s.optimizee] for s in self.segments], len(ids)


def owner_types(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """``parameter name -> class names (with bases) of the module that owns it``."""
    owners = {}
    for module_name, sub in module.named_modules():
        classes = tuple(cls.__name__ for cls in type(sub).__mro__)
        for param_name, _ in sub.named_parameters(recurse=False):
            owners[f"{module_name}.{param_name}" if module_name else param_name] = classes
    return owners


def as_layout(layout: "Layout | int") -> Layout:
    """``layout``, or a flat single-optimizee layout of that many coordinates."""
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, bool) or not isinstance(layout, int) or layout < 0:
        raise ConfigError(f"expected a Layout or a number of coordinates >= 0, got {layout!r}")
    return Layout.flat(layout) if layout else Layout([])


class LearnedOptimizerNet(nn.Module, ABC):
    """Base class of every learned-optimizer net (see the module docstring for the contract).

    A subclass implements :meth:`state_shape`, :meth:`forward` and :attr:`config`; it
    gets the state initialisation, the deployment step, binding and the split-state
    fast path for free, and may override any of them.  ``class_path: mypackage.MyNet``
    in ``model.net`` of an ``l2l fit`` config then meta-trains it, and ``l2l-export`` /
    :class:`~l2l_lightning.LearnedOptimizer` ship and deploy it.
    """

    #: The state dimension that indexes coordinates (``state_shape(n)[coordinate_dim] == n``).
    coordinate_dim: int = 0

    # ------------------------------------------------------------- the contract
    @abstractmethod
    def state_shape(self, n: int) -> tuple[int, ...]:
        """Shape of the state of ``n`` coordinates (coordinates along :attr:`coordinate_dim`)."""

    @abstractmethod
    def forward(self, grad: Tensor, state: Any, layout: "Layout | int | None" = None) -> tuple[Tensor, Any]:
        """One differentiable step: ``(update, new_state)`` for the flat ``grad`` (``θ ← θ + update``)."""

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor arguments as plain data: with the state dict, enough to rebuild the net."""

    # ------------------------------------------------------------- defaults
    @property
    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: how checkpoints and exported files name this net."""
        return make_spec(type(self), self.config)

    @staticmethod
    def from_spec(
        spec: Mapping[str, Any], source: str, error: type[L2LError] = CheckpointError
    ) -> "LearnedOptimizerNet":
        """``class_path(**init_args)`` for a spec (untrained weights); if that fails, an ``error`` naming ``source``.

        ``error`` is :class:`~l2l_lightning.errors.CheckpointError` for specs read from files
        and :class:`~l2l_lightning.errors.ConfigError` for specs a user wrote in a config.
        The class must be a :class:`LearnedOptimizerNet`.
        """
        class_path, init_args = read_spec(spec, source, error)
        try:
            cls = import_class(class_path)
        except CheckpointError as failure:
            raise error(f"{source}: {failure}") from failure
        if not (isinstance(cls, type) and issubclass(cls, LearnedOptimizerNet)):
            raise error(
                f"{source}: class_path {class_path!r} is not a learned-optimizer net; a net class must "
                "subclass l2l_lightning.nets.LearnedOptimizerNet"
            )
        try:
            return cls(**init_args)
        except (TypeError, ValueError) as failure:
            raise error(f"{source}: cannot build {class_path} from its settings: {failure}") from failure

    def init_state(
        self, layout: "Layout | int", device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> Any:
        """The initial state for ``layout`` (zeros; a number of coordinates means a flat layout)."""
        n = as_layout(layout).numel
        return torch.zeros(self.state_shape(n), device=device, dtype=dtype or torch.float32)

    def init_states(
        self, layout: Layout, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> list[Tensor]:
        """The initial state of each segment, one tensor each (a deployed optimizer keeps one per parameter).

        Zeros by default; a net whose :meth:`init_state` is not zero overrides both alike.
        """
        return [torch.zeros(shape, device=device, dtype=dtype or torch.float32) for shape in self.state_shapes(layout)]

    def bind(self, layout: Layout) -> "LearnedOptimizerNet":
        """This net as applied to ``layout``; refuse (``ConfigError``) a layout it cannot work with."""
        return self

    def state_shapes(self, layout: Layout) -> list[tuple[int, ...]]:
        """The state shape of each segment of ``layout`` (a deployed optimizer keeps one per parameter)."""
        return [tuple(self.state_shape(size)) for size in layout.sizes]

    def routes_of(
        self, layout: Layout, *, partial: bool = False, whole: Optional[Layout] = None
    ) -> Optional[list[str]]:
        """Which of its nets steps each segment, for nets made of several (``None``: one net steps all).

        ``partial``: ``layout`` is only part of what the net will step (one param group), so
        checks over the whole (every routing pattern used) are left for later; ``whole``: the
        model ``layout`` is part of, against which those checks run (default: ``layout``).  A deployed
        optimizer stores the answer in its state dict, so a run resumed with parameters
        routed differently is refused instead of continuing states under the wrong nets.
        """
        return None

    def split_state(self, state: Any) -> Any:
        """The state in the form :meth:`forward_split` carries (default: as it is)."""
        return state

    def join_state(self, carried: Any) -> Any:
        """Inverse of :meth:`split_state`."""
        return carried

    def forward_split(self, grad: Tensor, carried: Any, layout: "Layout | int | None" = None) -> tuple[Tensor, Any]:
        """:meth:`forward` on a carried state (see :meth:`split_state`); the unroll calls this."""
        return self(grad, carried, layout)

    def chunk_kernel(self, dtype: torch.dtype, device: torch.device) -> "Optional[ChunkKernel]":
        """This net's maths for one chunk of coordinates, for the chunked deployment runtime
        (``None``: deployment runs :meth:`forward` over all coordinates at once)."""
        return None

    def compute_dtype(self, grad_dtype: torch.dtype) -> torch.dtype:
        """The dtype the arithmetic runs in: the wider of the gradient's and the net's weights'."""
        weight = next(self.parameters(), None)
        return grad_dtype if weight is None else torch.promote_types(grad_dtype, weight.dtype)

    @torch.no_grad()
    def step_inplace(
        self,
        grad: Tensor,
        states: "Tensor | Sequence[Tensor]",
        layout: "Layout | int | None" = None,
        *,
        out: Optional[Tensor] = None,
        keep: Optional[Tensor] = None,
        options: Any = None,
    ) -> Tensor:
        """The deployment step: ``states`` (one per segment of ``layout``) advance in place.

        Args:
            grad: the flat gradient of all segments.
            states: one state per segment of ``layout`` (default layout: one flat tensor per
                state, in ``grad``'s order), any float dtype each.
            out: where to write the update (``grad``'s shape and dtype); allocated if ``None``.
            keep: optional 0-d bool tensor on the device; where it is ``False`` no state
                changes, decided on the device without a host synchronisation.
            options: :class:`~l2l_lightning.optim.runtime.StepOptions` (chunk size, compile, threads).

        Returns the flat update.  Coordinates whose update is non-finite get a zero state
        (a fresh start where the net diverged; the update is left non-finite for the caller
        to see).  A net with a :meth:`chunk_kernel` runs through the deployment runtime
        (chunked, in place, threads, compile); any other net through one :meth:`forward`
        over the concatenated states, written back.
        """
        if grad.dim() != 1 or not grad.is_floating_point():
            raise ValueError(f"grad must be a 1-D floating-point tensor, got {grad.dtype} of shape {tuple(grad.shape)}")
        states = [states] if isinstance(states, Tensor) else list(states)
        dim = self.coordinate_dim
        if layout is None:
            layout = Layout.flat(grad.shape[0]) if len(states) == 1 else Layout(
                Segment(f"tensor{i}", (s.shape[dim],)) for i, s in enumerate(states)
            )
        layout = as_layout(layout)
        layout.check(grad)
        if len(states) != len(layout):
            raise ValueError(f"{len(states)} states for a layout of {len(layout)} tensors; give one state per tensor")
        for state, expected in zip(states, self.state_shapes(layout)):
            if tuple(state.shape) != tuple(expected):
                raise ValueError(
                    f"a state has shape {tuple(state.shape)}, expected {tuple(expected)}; create it with "
                    "net.init_state(numel) for each tensor"
                )
        kernel = self.chunk_kernel(self.compute_dtype(grad.dtype), grad.device)
        if kernel is not None:
            from l2l_lightning.optim.runtime import step_chunked  # the runtime is deployment's, not the net's

            return step_chunked(kernel, grad, states, layout, out=out, keep=keep, options=options)
        update, new_state = self(grad, torch.cat(list(states), dim=dim), layout)
        shape = [1] * new_state.dim()
        shape[dim] = -1
        new_state = new_state.masked_fill(~torch.isfinite(update).view(shape), 0)
        for state, new in zip(states, new_state.split([s.shape[dim] for s in states], dim=dim)):
            state.copy_(torch.where(keep, new, state) if keep is not None else new)
        if out is None:
            return update
        return out.copy_(update)


class ChunkKernel(ABC):
    """A net's arithmetic over one chunk of coordinates, its state advanced in place.

    What the chunked deployment runtime (:mod:`l2l_lightning.optim.runtime`) runs: the
    runtime plans chunks over per-tensor states, gathers pieces of small tensors into a
    workspace, shares chunks over threads and resets diverged coordinates; the kernel
    only does the maths.  Built by a net for one compute dtype and device (weights
    converted once per step).

    Attributes:
        dtype: the compute dtype; state chunks of another dtype go through the workspace.
        state_shape: the net's :meth:`LearnedOptimizerNet.state_shape`.
        coordinate_dim: the net's :attr:`LearnedOptimizerNet.coordinate_dim`.
    """

    dtype: torch.dtype
    coordinate_dim: int

    @abstractmethod
    def state_shape(self, n: int) -> tuple[int, ...]:
        """As the net's."""

    @abstractmethod
    def buffers(self, rows: int, device: torch.device) -> Any:
        """The chunk-sized temporaries one thread reuses for every chunk of a step."""

    @abstractmethod
    def __call__(self, buffers: Any, grad: Tensor, state: Tensor, rows: "Sequence[tuple[int, int, int, int]]") -> Tensor:
        """Advance ``state`` (a view of ``c`` coordinates) in place; return the ``(c,)`` update.

        ``rows`` says where the chunk's rows come from: ``(segment index, start in the
        segment, row in the chunk, length)`` per piece (a chunk may pack pieces of several
        small tensors); coordinatewise kernels ignore it.
        """

    def prepare(self, states: Sequence[Tensor], layout: Layout) -> None:
        """Called once per step before any chunk, with every state of the step (e.g. for global averages)."""

    def functional(self) -> Optional[tuple[Any, tuple[Any, ...]]]:
        """``(fn, args)`` with ``fn(grad, state, *args) -> (update, new_state)`` pure, for
        ``torch.compile`` (same maths as ``__call__``), or ``None`` if the kernel is not compilable."""
        return None

    def fused_step(self, device: torch.device) -> Optional[Any]:
        """A single-kernel step for ``device`` (``fn(grad, states, out, keep) -> out``, states advanced in
        place, diverged coordinates reset), or ``None``: the runtime then runs this kernel in chunks."""
        return None


def import_class(class_path: str) -> type:
    """The class named by a dotted ``class_path`` (``CheckpointError`` if it cannot be imported)."""
    module_name, _, attr = class_path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"cannot import the net class {class_path!r}: {error}") from error
    return obj
