"""Separate learned optimizers for separate kinds of parameters.

For CIFAR-10 the paper trains two LSTMs that share nothing, one for the convolutional
parameters and one for the fully connected ones, because a single coordinatewise LSTM
was not enough.  :class:`RoutedNets` is the general form: named nets plus routing rules
that send each optimizee parameter to exactly one of them.

A rule is a list of patterns matched against a parameter's dotted name
(``fnmatch``-style, e.g. ``"classifier.*"``) or, with a ``type:`` prefix, against the
class of the module that owns it, including base classes (``"type:_ConvNd"``,
``"type:Linear"``, ``"type:BatchNorm2d"``).  Routes are tried in order and the first
match wins; a parameter no route matches, or a pattern that matches nothing, is an
error, so a typo never silently leaves parameters to the wrong net.

Which parameter is where in a flat vector depends on the optimizee, so the nets are
*bound* to a layout first: :meth:`RoutedNets.bind` returns a :class:`BoundNets` with the
same functional interface as a single net (``init_state(n)``, ``update, state =
bound(grad, state)``), its state a tuple with one entry per route.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.spec import instantiate_net

NetOrSpec = Union[nn.Module, Mapping[str, Any]]


def _build(route: str, spec: NetOrSpec) -> nn.Module:
    net = spec if isinstance(spec, nn.Module) else instantiate_net(spec, f"RoutedNets: net {route!r}", ConfigError)
    for method in ("init_state", "state_shape"):
        if not callable(getattr(net, method, None)):
            raise ConfigError(
                f"RoutedNets: net {route!r} ({type(net).__name__}) has no {method}() method; each route needs a "
                "coordinatewise net with the CoordinatewiseLSTM interface"
            )
    return net


def owner_types(module: nn.Module) -> dict[str, list[str]]:
    """``parameter name -> class names (with bases) of the module that owns it``."""
    owners = {}
    for module_name, sub in module.named_modules():
        classes = [cls.__name__ for cls in type(sub).__mro__]
        for param_name, _ in sub.named_parameters(recurse=False):
            owners[f"{module_name}.{param_name}" if module_name else param_name] = classes
    return owners


class RoutedNets(nn.Module):
    """Named coordinatewise nets, each optimizing the parameters its route's patterns match.

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
        self.routes = {name: list(routes[name]) for name in nets}

    @property
    def spec(self) -> dict[str, Any]:
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": self.config}

    @property
    def config(self) -> dict[str, Any]:
        return {"nets": {name: net.spec for name, net in self.nets.items()}, "routes": dict(self.routes)}

    def extra_repr(self) -> str:
        return f"routes={self.routes}"

    def assign(self, names: Sequence[str], module: Optional[nn.Module] = None) -> dict[str, str]:
        """``parameter name -> route`` (the first route with a matching pattern wins).

        Raises :class:`ConfigError` if a parameter matches no route, or if a pattern
        matches no parameter (a typo would otherwise silently send parameters to the
        wrong net).  ``type:`` patterns need ``module``.
        """
        owners = owner_types(module) if module is not None else {}
        assignment = {}
        for name in names:
            route = self.route_of(name, owners)
            if route is None:
                raise ConfigError(
                    f"RoutedNets: parameter {name!r} matches no route; routes: {self.routes}"
                    + (f" (its module is a {owners[name][0]})" if name in owners else "")
                    + ". Add a pattern for it (a name pattern such as 'head.*' or 'type:ModuleClass')."
                )
            assignment[name] = route
        self.check_every_pattern_used(names, owners)
        return assignment

    def route_of(self, name: str, owners: Mapping[str, Sequence[str]]) -> Optional[str]:
        """The route of parameter ``name`` (``owners``: see :func:`owner_types`), or ``None``."""
        for route, patterns in self.routes.items():
            if any(self._matches(p, name, owners) for p in patterns):
                return route
        return None

    def check_every_pattern_used(self, names: Iterable[str], owners: Mapping[str, Sequence[str]]) -> None:
        """Raise if some pattern is the first match of none of ``names``."""
        names = list(names)
        used = set()
        for name in names:
            for route, patterns in self.routes.items():
                hit = next((p for p in patterns if self._matches(p, name, owners)), None)
                if hit is not None:
                    used.add((route, hit))
                    break
        unused = [(route, p) for route, patterns in self.routes.items() for p in patterns if (route, p) not in used]
        if unused:
            shown = names if len(names) <= 12 else names[:12] + [f"... ({len(names)} in all)"]
            raise ConfigError(
                f"RoutedNets: pattern(s) {unused} matched no parameter (or only ones an earlier route took); "
                f"parameters: {shown}. Fix or remove the pattern."
            )

    @staticmethod
    def _matches(pattern: str, name: str, owners: Mapping[str, Sequence[str]]) -> bool:
        if pattern.startswith("type:"):
            if not owners:
                raise ConfigError(
                    f"RoutedNets: pattern {pattern!r} needs the optimizee module to match types; "
                    "pass the module (e.g. LearnedOptimizer(..., module=model)) or use name patterns"
                )
            return pattern[5:] in owners.get(name, ())
        return fnmatch.fnmatchcase(name, pattern)

    def bind(
        self, layout: Sequence[tuple[str, int]], module: Optional[nn.Module] = None, device: Any = None
    ) -> "BoundNets":
        """Bind to a flat vector made of ``(parameter name, numel)`` segments, in order.

        A name may repeat (several optimizees of one architecture, concatenated).
        """
        assignment = self.assign(list(dict.fromkeys(name for name, _ in layout)), module)
        pieces: dict[str, list[Tensor]] = {route: [] for route in self.nets}
        offset = 0
        for name, numel in layout:
            pieces[assignment[name]].append(torch.arange(offset, offset + numel, device=device))
            offset += numel
        empty = torch.empty(0, dtype=torch.long, device=device)
        index = {route: torch.cat(p) if p else empty for route, p in pieces.items()}
        return BoundNets(self, index, offset)

    def forward(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise TypeError("RoutedNets must be bound to an optimizee's parameter layout first: use .bind(layout)")


class BoundNets:
    """:class:`RoutedNets` bound to one flat layout: the single-net interface over all coordinates.

    Like :class:`~l2l_lightning.nets.CoordinatewiseLSTM` it offers ``forward_split`` on a
    split state, which the unroll uses; its state is a tuple with one entry per route.
    Each route's coordinates are gathered with one ``index_select`` and the updates put
    back in place with one more (a ``cat`` alone when the routes are consecutive blocks).
    """

    def __init__(self, routed: RoutedNets, index: dict[str, Tensor], numel: int) -> None:
        self.routed, self.numel = routed, numel
        self.nets = list(routed.nets.values())
        #: each net's ``forward_split`` (``None``: a net without one, called as ``net(grad, state)``)
        self.splits = [getattr(net, "forward_split", None) for net in self.nets]
        self.index = [index[route] for route in routed.nets]
        order = torch.cat(self.index)
        positions = torch.arange(numel, device=order.device)
        #: position in ``cat(route updates)`` of each coordinate; ``None`` if that is the identity
        self.inverse = None if torch.equal(order, positions) else torch.empty_like(order).index_copy_(0, order, positions)

    def init_state(self, n: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, ...]:
        if n != self.numel:
            raise ValueError(f"these nets are bound to {self.numel} coordinates, not {n}")
        return tuple(net.init_state(len(index), device=device, dtype=dtype) for net, index in zip(self.nets, self.index))

    def split_state(self, state: Sequence[Any]) -> list[Any]:
        return [net.split_state(s) if split else s for net, split, s in zip(self.nets, self.splits, state)]

    def join_state(self, layers: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(net.join_state(l) if split else l for net, split, l in zip(self.nets, self.splits, layers))

    def forward_split(self, grad: Tensor, layers: Sequence[Any]) -> tuple[Tensor, list[Any]]:
        updates, new_layers = [], []
        for net, split, index, route_layers in zip(self.nets, self.splits, self.index, layers):
            route_grad = grad.index_select(0, index)
            update, route_layers = split(route_grad, route_layers) if split else net(route_grad, route_layers)
            updates.append(update)
            new_layers.append(route_layers)
        update = torch.cat(updates)
        return (update if self.inverse is None else update.index_select(0, self.inverse)), new_layers

    def __call__(self, grad: Tensor, state: Sequence[Any]) -> tuple[Tensor, tuple[Any, ...]]:
        update, layers = self.forward_split(grad, self.split_state(state))
        return update, tree_map(lambda new, old: new.to(old.dtype), self.join_state(layers), tuple(state))
