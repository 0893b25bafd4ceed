"""Separate learned optimizers for separate kinds of parameters.

For CIFAR-10 the paper trains two LSTMs that share nothing, one for the convolutional
parameters and one for the fully connected ones, because a single coordinatewise LSTM
was not enough.  :class:`RoutedNets` is the general form: named nets plus routing rules
that send each optimizee tensor to exactly one of them.

A rule is a list of patterns matched against a tensor's dotted name
(``fnmatch``-style, e.g. ``"classifier.*"``) or, with a ``type:`` prefix, against the
class of the module that owns it, including base classes (``"type:_ConvNd"``,
``"type:Linear"``, ``"type:BatchNorm2d"``).  Routes are tried in order and the first
match wins; a tensor no route matches, or a pattern that matches nothing, is an
error, so a typo never silently leaves parameters to the wrong net.  A segment may
also carry its route explicitly (a deployed param group's ``"route"`` key).

The routing reads the :class:`~l2l_lightning.nets.base.Layout` (names, module types),
so it is decided in one place, :meth:`RoutedNets.bind`, for meta-training (the unroll
binds to each drawn problem's layout) and deployment (``LearnedOptimizer`` binds to its
parameters) alike.  The bound form, :class:`BoundNets`, is a net like any other: its
state is a tuple with one entry per route.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.base import LearnedOptimizerNet, RouteParts
from l2l_lightning.nets.layout import Layout, Segment
from l2l_lightning.torch_compat import tree_map

NetOrSpec = Union[nn.Module, Mapping[str, Any]]


def _build(route: str, spec: NetOrSpec) -> LearnedOptimizerNet:
    net = spec if isinstance(spec, nn.Module) else LearnedOptimizerNet.from_spec(spec, f"RoutedNets: net {route!r}", ConfigError)
    if not isinstance(net, LearnedOptimizerNet):
        raise ConfigError(
            f"RoutedNets: net {route!r} is a {type(net).__name__}, not an l2l_lightning.nets.LearnedOptimizerNet; "
            "each route needs a learned-optimizer net (subclass LearnedOptimizerNet)"
        )
    return net


class RoutedNets(LearnedOptimizerNet):
    """Named learned-optimizer nets, each optimizing the tensors its route's patterns match.

    Args:
        nets: ``route name -> net`` (a net, or its ``{"class_path", "init_args"}`` spec).
        routes: ``route name -> patterns``; every net needs a route and vice versa.

    Example (the paper's CIFAR-10 setting)::

        RoutedNets(
            nets={"conv": CoordinatewiseLSTM(), "fc": CoordinatewiseLSTM()},
            routes={"conv": ["type:_ConvNd", "type:BatchNorm2d"], "fc": ["type:Linear", "type:BatchNorm1d"]},
        )

    In YAML (``model.net``), as in ``configs/cifar10.yaml``::

        net:
          class_path: l2l_lightning.nets.RoutedNets
          init_args:
            nets:
              conv: {class_path: l2l_lightning.CoordinatewiseLSTM}
              fc: {class_path: l2l_lightning.CoordinatewiseLSTM}
            routes: {conv: ["type:_ConvNd", "type:BatchNorm2d"], fc: ["type:Linear", "type:BatchNorm1d"]}
    """

    def __init__(self, nets: Mapping[str, NetOrSpec], routes: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        if not nets:
            raise ConfigError("RoutedNets: give at least one net")
        if set(nets) != set(routes):
            raise ConfigError(
                f"RoutedNets: nets {sorted(nets)} and routes {sorted(routes)} must name the same routes"
            )
        for name, patterns in routes.items():
            if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) for p in patterns):
                raise ConfigError(
                    f"RoutedNets: route {name!r} needs a non-empty list of pattern strings, got {patterns!r}"
                )
        self.nets = nn.ModuleDict({name: _build(name, spec) for name, spec in nets.items()})
        for name, net in self.nets.items():
            if net.inputs.any or net.has_tensor_state:
                raise ConfigError(
                    f"RoutedNets: net {name!r} ({type(net).__name__}) reads inputs besides the gradient or keeps "
                    "per-tensor state; routing such nets is not supported yet: use it alone"
                )
        self.routes = {name: list(routes[name]) for name in nets}

    @property
    def config(self) -> dict[str, Any]:
        return {"nets": {name: net.spec for name, net in self.nets.items()}, "routes": dict(self.routes)}

    def extra_repr(self) -> str:
        return f"routes={self.routes}"

    # ------------------------------------------------------------------ routing
    def routes_of(self, layout: Layout, *, partial: bool = False, whole: Optional[Layout] = None) -> list[str]:
        """The route of each segment of ``layout`` (its explicit route, else the first matching pattern).

        Raises :class:`ConfigError` if a segment matches no route or names an unknown route,
        or (unless ``partial``) if a pattern matches none of the pattern-routed segments, or
        of ``whole`` if given (a typo would otherwise silently send parameters to the wrong net).
        """
        assignment, by_pattern = [], []
        for segment in layout:
            if segment.route is not None:
                if segment.route not in self.routes:
                    raise ConfigError(
                        f"RoutedNets: route={segment.route!r} (given for {segment.name!r}) is not one of the "
                        f"routes {list(self.routes)}"
                    )
                assignment.append(segment.route)
                continue
            route = self._route_of(segment)
            if route is None:
                owner = f" (its module is a {segment.module_types[0]})" if segment.module_types else ""
                raise ConfigError(
                    f"RoutedNets: parameter {segment.name!r} matches no route; routes: {self.routes}{owner}. "
                    "Add a pattern for it (a name pattern such as 'head.*' or 'type:ModuleClass'), or give "
                    "its param group a 'route' key."
                )
            assignment.append(route)
            by_pattern.append(segment)
        if by_pattern and not partial:
            self._refuse_unused_patterns(list(whole) if whole is not None else by_pattern)
        return assignment

    def _route_of(self, segment: Segment) -> Optional[str]:
        for route, patterns in self.routes.items():
            if any(_matches(p, segment) for p in patterns):
                return route
        return None

    def _refuse_unused_patterns(self, segments: Sequence[Segment]) -> None:
        """Raise if some pattern is the first match of none of ``segments``."""
        unique = list({(s.name, s.module_types): s for s in segments}.values())
        used = set()
        for segment in unique:
            for route, patterns in self.routes.items():
                hit = next((p for p in patterns if _matches(p, segment)), None)
                if hit is not None:
                    used.add((route, hit))
                    break
        unused = [(route, p) for route, patterns in self.routes.items() for p in patterns if (route, p) not in used]
        if unused:
            names = [s.name for s in unique]
            shown = names if len(names) <= 12 else names[:12] + [f"... ({len(names)} in all)"]
            raise ConfigError(
                f"RoutedNets: pattern(s) {unused} matched no parameter (or only ones an earlier route took); "
                f"parameters: {shown}. Fix or remove the pattern."
            )

    def bind(self, layout: Layout) -> "BoundNets":
        """The nets applied to ``layout``: each segment to the net of its route (see :meth:`routes_of`)."""
        return BoundNets(self, layout, self.routes_of(layout))

    # ----------------------------------------------- only the bound form steps
    def state_shape(self, n: int) -> tuple[int, ...]:
        raise TypeError("RoutedNets has one state shape per route: bind it to a layout first (net.bind(layout))")

    def forward(self, grad: Tensor, state: Any, layout: Any = None) -> tuple[Tensor, Any]:
        if not isinstance(layout, Layout):
            raise ConfigError(
                "RoutedNets routes tensors by name or module type, so it needs the parameter layout: "
                "call net(grad, state, layout) with a Layout (for meta-training, a task whose problems declare "
                "named parameters, e.g. ModuleProblem)"
            )
        return self.bind(layout)(grad, state, layout)

    def init_state(self, layout: Any, device: Any = None, dtype: Optional[torch.dtype] = None) -> Any:
        if not isinstance(layout, Layout):
            raise ConfigError("RoutedNets.init_state needs the parameter layout (a Layout), not a number of coordinates")
        return self.bind(layout).init_state(layout, device=device, dtype=dtype)

    def segment_state_shapes(self, layout: Layout) -> list[tuple[int, ...]]:
        return self.bind(layout).segment_state_shapes(layout)


def _matches(pattern: str, segment: Segment) -> bool:
    if pattern.startswith("type:"):
        if not segment.module_types:
            raise ConfigError(
                f"RoutedNets: pattern {pattern!r} needs the module that owns {segment.name!r} to match types; "
                "pass the module (e.g. LearnedOptimizer(..., module=model)) or use name patterns; to meta-train, "
                "use a task whose problems have named parameters (ModuleProblem)"
            )
        return pattern[5:] in segment.module_types
    return fnmatch.fnmatchcase(segment.name, pattern)


class BoundNets(LearnedOptimizerNet):
    """:class:`RoutedNets` bound to one layout: a net over all its coordinates.

    Its state is a tuple with one entry per route (that route's net's state for its
    segments).  Each route's coordinates are gathered with one ``index_select`` and the
    updates put back in place with one more (a ``cat`` alone when the routes are
    consecutive blocks).  Not a module of its own: it steps the routed nets' weights.
    """

    def __init__(self, routed: RoutedNets, layout: Layout, assignment: Sequence[str]) -> None:
        super().__init__()
        self.__dict__["routed"] = routed  # a plain reference: the weights belong to ``routed``
        self.layout = layout
        self.assignment = list(assignment)
        members: dict[str, list[int]] = {route: [] for route in routed.nets}
        for i, route in enumerate(self.assignment):
            members[route].append(i)
        self.routing = RouteParts(layout, [(routed.nets[route], positions) for route, positions in members.items()])

    @property
    def parts(self) -> list[tuple[LearnedOptimizerNet, list[int], Layout]]:
        """Per route: its net, its segments' positions in the bound layout, its sub-layout."""
        return self.routing.parts

    def route_parts(self) -> RouteParts:
        return self.routing

    @property
    def config(self) -> dict[str, Any]:
        return self.routed.config

    @property
    def spec(self) -> dict[str, Any]:
        return self.routed.spec

    def state_shape(self, n: int) -> tuple[int, ...]:
        raise TypeError("BoundNets has one state shape per segment: use segment_state_shapes(layout)")

    def routes_of(self, layout: Layout, *, partial: bool = False, whole: Optional[Layout] = None) -> list[str]:
        self._check(layout)
        return list(self.assignment)

    def _check(self, layout: Any) -> None:
        if isinstance(layout, int) and layout == self.layout.numel:
            return
        if layout is not None and layout is not self.layout and layout != self.layout:
            raise ConfigError(f"these nets are bound to {self.layout!r}, not {layout!r}; bind them to the new layout")

    def segment_state_shapes(self, layout: Layout) -> list[tuple[int, ...]]:
        self._check(layout)
        shapes: list[Any] = [None] * len(layout)
        for net, members, sub in self.parts:
            for i, shape in zip(members, net.segment_state_shapes(sub)):
                shapes[i] = shape
        return shapes

    def init_segment_states(self, layout: Layout, device: Any = None, dtype: Optional[torch.dtype] = None) -> list[Tensor]:
        self._check(layout)
        states: list[Any] = [None] * len(layout)
        for net, members, sub in self.parts:
            for i, state in zip(members, net.init_segment_states(sub, device=device, dtype=dtype)):
                states[i] = state
        return states

    def init_state(self, layout: Any = None, device: Any = None, dtype: Optional[torch.dtype] = None) -> tuple[Any, ...]:
        self._check(layout)
        return tuple(net.init_state(sub, device=device, dtype=dtype) for net, _, sub in self.parts)

    def split_state(self, state: Sequence[Any]) -> list[Any]:
        return [net.split_state(s) for (net, *_), s in zip(self.parts, state)]

    def join_state(self, carried: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(net.join_state(c) for (net, *_), c in zip(self.parts, carried))

    def forward_split(self, grad: Tensor, carried: Sequence[Any], layout: Any = None) -> tuple[Tensor, list[Any]]:
        self._check(layout)
        new: list[Any] = []
        updates = []
        for (net, _, sub), route_grad, state in zip(self.parts, self.routing.split(grad), carried):
            update, state = net.forward_split(route_grad, state, sub)
            updates.append(update)
            new.append(state)
        return self.routing.join(updates, grad), new

    def forward(self, grad: Tensor, state: Sequence[Any], layout: Any = None) -> tuple[Tensor, tuple[Any, ...]]:
        update, carried = self.forward_split(grad, self.split_state(state), layout)
        return update, tree_map(lambda new, old: new.to(old.dtype), self.join_state(carried), tuple(state))
