"""The learned-optimizer net interface: what every net offers, and the layout it is told.

A learned optimizer net reads a *flat* gradient (every coordinate of every optimizee
tensor, concatenated) and returns a flat update; the :class:`~l2l_lightning.nets.layout.Layout`
says which rows are which tensor (:mod:`l2l_lightning.nets.layout`).

Every net is a :class:`LearnedOptimizerNet`.  The contract, used by the unroll,
:class:`~l2l_lightning.MetaLearner`, :class:`~l2l_lightning.LearnedOptimizer`, export and
loading (and nothing else about a net is assumed anywhere):

* ``state = net.init_state(layout)`` and ``update, state = net(grad, state, layout)``: the
  differentiable functional step (meta-training differentiates through it);
* :meth:`~LearnedOptimizerNet.state_shape` / ``coordinate_dim``: the per-tensor state of
  ``n`` coordinates is one tensor with the coordinates along ``coordinate_dim``, so a
  deployed optimizer keeps one state tensor per parameter and concatenates them freely;
* :meth:`~LearnedOptimizerNet.chunk_kernel`: the net's maths for one chunk of coordinates
  (a :class:`~l2l_lightning.nets.kernel.ChunkKernel`), which the deployment runtime
  (:mod:`l2l_lightning.optim.runtime`: chunks, threads, compile) runs over per-tensor
  states in place; a net without one is deployed by one call of ``forward`` over the
  concatenated states.  A net never runs its own deployment step: the dependencies point
  one way, from deployment to nets;
* :attr:`~LearnedOptimizerNet.config`: the constructor arguments as plain data;
  :attr:`~LearnedOptimizerNet.spec` (``{"class_path", "init_args"}``) and
  :meth:`~LearnedOptimizerNet.from_spec` are how checkpoints and exported files describe and
  rebuild a net (the file formats around them: :mod:`l2l_lightning.serialization`);
* :meth:`~LearnedOptimizerNet.bind`: the net as applied to one layout.  Plain nets return
  themselves; :class:`~l2l_lightning.nets.RoutedNets` returns its routed form.  Binding is
  where a layout that cannot work (an unmatched route, a global average over a layout
  without optimizees) is refused, once, with a :class:`~l2l_lightning.errors.ConfigError`.

**What a net may read besides the gradient, and per-tensor state** (all opt-in, so a net
that needs none of it is called exactly as before and pays nothing):

* :attr:`~LearnedOptimizerNet.inputs` (an :class:`Inputs`): which of the parameter's current
  value, the step number, the loss and the run's horizon the net reads.  Callers (the unroll, the deployment
  runtime) build a :class:`StepInputs` with just those and pass it as ``inputs=`` to
  ``forward`` / ``forward_split``; a net that declares nothing is never given the keyword.
* :meth:`~LearnedOptimizerNet.tensor_state_shape`: the shape of a per-tensor state for one
  segment (Adafactor's row and column accumulators, a tensor's norms), ``None`` (default)
  for none.  A net with per-tensor state carries ``(coordinate_state, tensor_states)``: the
  per-coordinate state as above, and a tuple with one tensor per segment of the layout;
  a deployed optimizer keeps the latter beside the former for each parameter.
* :attr:`~LearnedOptimizerNet.coordinatewise`: whether a coordinate's update depends on that
  coordinate alone.  Nets that look across coordinates (averages, per-tensor statistics)
  say ``False``, and are refused on sharded (FSDP2) parameters, whose tensors a rank
  only sees part of.

Optional fast paths with generic defaults: :meth:`~LearnedOptimizerNet.split_state` /
:meth:`~LearnedOptimizerNet.forward_split` / :meth:`~LearnedOptimizerNet.join_state` let the
unroll carry a state in a form that is cheaper to differentiate through (the LSTM carries
per-layer ``(h, c)`` tensors).  This mirrors google/learned_optimization's
``learned_optimizers/base.py`` (init, update, a state that is data) in PyTorch terms.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError, L2LError
from l2l_lightning.nets.inputs import Inputs, StepInputs
from l2l_lightning.nets.kernel import ChunkKernel
from l2l_lightning.specs import make_spec, read_spec

# The layout types are part of the net interface: importable from here too.
from l2l_lightning.nets.layout import AverageOver, Layout, Segment, as_layout, owner_types

__all__ = [
    "AverageOver", "ChunkKernel", "Inputs", "Layout", "LearnedOptimizerNet", "RouteParts", "Segment", "StepInputs",
    "as_layout", "import_class", "owner_types",
]  # fmt: skip

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
    #: What the net reads besides the gradient (default: nothing; see :class:`Inputs`).  A class
    #: attribute, or set per instance in ``__init__`` where a setting decides it (a learned schedule).
    inputs: Inputs = Inputs()
    #: Whether a coordinate's update depends on that coordinate alone (sharded parameters need it).
    coordinatewise: ClassVar[bool] = True

    # ------------------------------------------------------------- the contract
    @abstractmethod
    def state_shape(self, n: int) -> tuple[int, ...]:
        """Shape of the state of ``n`` coordinates (coordinates along :attr:`coordinate_dim`)."""

    @abstractmethod
    def forward(self, grad: Tensor, state: Any, layout: "Layout | int | None" = None) -> tuple[Tensor, Any]:
        """One differentiable step: ``(update, new_state)`` for the flat ``grad`` (``θ ← θ + update``).

        A net that declares :attr:`inputs` takes them as a keyword argument ``inputs`` (a :class:`StepInputs`).
        """

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

    def warm_start(self, trained: "LearnedOptimizerNet") -> bool:
        """Start from ``trained``, a net of other settings, if this net knows how (then ``True``).

        ``MetaLearner(init_from=...)`` calls it when the file's settings differ from ``model.net``'s,
        e.g. :class:`~l2l_lightning.nets.FeatureMLP` adding a learned schedule to a trained net.
        The default knows no such start.
        """
        return False

    def init_state(
        self, layout: "Layout | int", device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> Any:
        """The initial state for ``layout`` (zeros; a number of coordinates means a flat layout).

        With per-tensor state (:meth:`tensor_state_shape`): ``(coordinate_state, tensor_states)``.
        """
        layout = as_layout(layout)
        coordinates = torch.zeros(self.state_shape(layout.numel), device=device, dtype=dtype or torch.float32)
        if not self.has_tensor_state:
            return coordinates
        return coordinates, tuple(self.init_tensor_states(layout, device=device, dtype=dtype))

    def tensor_state_shape(self, segment: Segment) -> Optional[tuple[int, ...]]:
        """The shape of the per-tensor state of ``segment`` (``None``, the default: the net keeps none)."""
        return None

    @property
    def has_tensor_state(self) -> bool:
        """Whether the net keeps per-tensor state beside its per-coordinate state."""
        return type(self).tensor_state_shape is not LearnedOptimizerNet.tensor_state_shape

    def init_tensor_states(
        self, layout: Layout, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> list[Tensor]:
        """The initial per-tensor state of each segment (zeros; empty for a net without per-tensor state)."""
        if not self.has_tensor_state:
            return []
        return [
            torch.zeros(self.tensor_state_shape(segment) or (0,), device=device, dtype=dtype or torch.float32)
            for segment in layout
        ]

    def init_segment_states(
        self, layout: Layout, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> list[Tensor]:
        """The initial state of each segment, one tensor each (a deployed optimizer keeps one per parameter).

        Zeros by default; a net whose :meth:`init_state` is not zero overrides both alike.
        """
        return [torch.zeros(shape, device=device, dtype=dtype or torch.float32) for shape in self.segment_state_shapes(layout)]

    def bind(self, layout: Layout) -> "LearnedOptimizerNet":
        """This net as applied to ``layout``; refuse (``ConfigError``) a layout it cannot work with."""
        return self

    def segment_state_shapes(self, layout: Layout) -> list[tuple[int, ...]]:
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

    def forward_split(
        self, grad: Tensor, carried: Any, layout: "Layout | int | None" = None, inputs: Optional[StepInputs] = None
    ) -> tuple[Tensor, Any]:
        """:meth:`forward` on a carried state (see :meth:`split_state`); the unroll calls this.

        ``inputs`` is given only to nets that declare :attr:`inputs`, and passed on to ``forward`` as ``inputs=``.
        """
        return self(grad, carried, layout) if inputs is None else self(grad, carried, layout, inputs=inputs)

    def chunk_kernel(self, dtype: torch.dtype, device: torch.device) -> Optional[ChunkKernel]:
        """This net's maths for one chunk of coordinates, for the chunked deployment runtime
        (``None``: deployment runs :meth:`forward` over all coordinates at once)."""
        return None

    def compute_dtype(self, grad_dtype: torch.dtype) -> torch.dtype:
        """The dtype the arithmetic runs in: the wider of the gradient's and the net's weights'."""
        weight = next(self.parameters(), None)
        return grad_dtype if weight is None else torch.promote_types(grad_dtype, weight.dtype)

    def route_parts(self) -> "Optional[RouteParts]":
        """For a net that hands its segments to separate nets (a bound :class:`~l2l_lightning.nets.RoutedNets`):
        which net steps which segments; ``None``: this net steps every coordinate itself."""
        return None


class RouteParts:
    """How a bound layout's segments are shared among nets: one part per net, coordinates gathered and put back.

    Each part is ``(net, members, layout)``: the net, the positions of its segments in the
    bound layout and their sub-layout.  :meth:`split` gathers each part's coordinates of a
    flat vector with one ``index_select``; :meth:`join` puts the parts' results back in the
    flat order (a ``cat`` alone when the parts are consecutive blocks).  Meta-training
    (:class:`~l2l_lightning.nets.routed.BoundNets`) and the deployment runtime both step
    routed nets through it.
    """

    def __init__(self, layout: Layout, parts: Sequence[tuple["LearnedOptimizerNet", list[int]]]) -> None:
        offsets = [0]
        for size in layout.sizes:
            offsets.append(offsets[-1] + size)
        empty = torch.empty(0, dtype=torch.long)
        self.layout = layout
        self.parts = [(net, members, Layout(layout.segments[i] for i in members)) for net, members in parts]
        self._index = [
            torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in members]) if members else empty
            for _, members in parts
        ]
        order = torch.cat(self._index) if self._index else empty
        positions = torch.arange(layout.numel)
        #: position in ``cat(part results)`` of each coordinate; ``None`` if that is the identity
        self._inverse = None if torch.equal(order, positions) else torch.empty_like(order).index_copy_(0, order, positions)
        self._on: dict[torch.device, tuple[list[Tensor], Optional[Tensor]]] = {}

    def _indices(self, device: torch.device) -> tuple[list[Tensor], Optional[Tensor]]:
        if device not in self._on:
            self._on[device] = (
                [index.to(device) for index in self._index],
                None if self._inverse is None else self._inverse.to(device),
            )
        return self._on[device]

    def split(self, flat: Tensor) -> list[Tensor]:
        """Each part's coordinates of ``flat``."""
        return [flat.index_select(0, index) for index in self._indices(flat.device)[0]]

    def join(self, pieces: Sequence[Tensor], like: Tensor) -> Tensor:
        """The parts' flat results put back in the flat order (``like``: a flat tensor of the result's kind)."""
        joined = torch.cat(list(pieces)) if pieces else like.new_empty(0)
        inverse = self._indices(like.device)[1]
        return joined if inverse is None else joined.index_select(0, inverse)


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
