"""What a net is told about a flat coordinate vector: which rows are which tensor (:class:`Layout`).

A learned optimizer net reads a *flat* gradient (every coordinate of every optimizee
tensor, concatenated).  A purely coordinatewise net (the paper's LSTM) needs nothing else;
a net that shares information between coordinates (LSTM+GAC) or routes tensors to separate
nets (the paper's conv / fully connected LSTMs) must know which rows belong to which tensor:
one :class:`Segment` per tensor, in order, with its name, shape, the classes of the module
that owns it and the optimizee it belongs to.  Plain data, imported by the net interface
(:mod:`~l2l_lightning.nets.base`), the kernel contract (:mod:`~l2l_lightning.nets.kernel`),
tasks and deployment alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Literal, Optional

from torch import Tensor, nn

from l2l_lightning.errors import ConfigError, check_nonnegative_int

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
    check_nonnegative_int("layout", layout, " (a number of coordinates) or a Layout")
    return Layout.flat(layout) if layout else Layout([])
