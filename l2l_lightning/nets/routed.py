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
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.lstm import CoordinatewiseLSTM

NetOrSpec = Union[nn.Module, Mapping[str, Any]]


def _build(spec: NetOrSpec) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    if spec.get("class_path", "").rsplit(".", 1)[-1] != CoordinatewiseLSTM.__name__:
        raise ConfigError(f"RoutedNets: cannot build a net from {dict(spec)!r}; expected a CoordinatewiseLSTM spec")
    return CoordinatewiseLSTM(**spec.get("init_args", {}))


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
            if isinstance(patterns, str) or not patterns:
                raise ConfigError(f"RoutedNets: route {name!r} needs a non-empty list of patterns, got {patterns!r}")
        self.nets = nn.ModuleDict({name: _build(spec) for name, spec in nets.items()})
        self.routes = {name: list(routes[name]) for name in nets}

    @property
    def spec(self) -> dict[str, Any]:
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": self.config}

    @property
    def config(self) -> dict[str, Any]:
        return {"nets": {name: net.spec for name, net in self.nets.items()}, "routes": dict(self.routes)}

    def assign(self, names: Sequence[str], module: Optional[nn.Module] = None) -> dict[str, str]:
        """``parameter name -> route``; raises if a parameter or a pattern is left unmatched."""
        owners = owner_types(module) if module is not None else {}
        used: set[tuple[str, str]] = set()
        assignment = {}
        for name in names:
            for route, patterns in self.routes.items():
                hit = next((p for p in patterns if self._matches(p, name, owners)), None)
                if hit is not None:
                    assignment[name] = route
                    used.add((route, hit))
                    break
            else:
                raise ConfigError(
                    f"RoutedNets: parameter {name!r} matches no route; routes: {self.routes}"
                    + (f" (its module is a {owners[name][0]})" if name in owners else "")
                )
        unused = [(route, p) for route, patterns in self.routes.items() for p in patterns if (route, p) not in used]
        if unused:
            raise ConfigError(
                f"RoutedNets: pattern(s) {unused} matched no parameter (or only ones an earlier route took); "
                f"parameters: {list(names)}"
            )
        return assignment

    @staticmethod
    def _matches(pattern: str, name: str, owners: Mapping[str, list[str]]) -> bool:
        if pattern.startswith("type:"):
            if not owners:
                raise ConfigError(f"RoutedNets: pattern {pattern!r} needs the optimizee module to match types")
            return pattern[5:] in owners.get(name, ())
        return fnmatch.fnmatchcase(name, pattern)

    def bind(self, layout: Sequence[tuple[str, int]], module: Optional[nn.Module] = None) -> "BoundNets":
        """Bind to a flat vector made of ``(parameter name, numel)`` segments, in order."""
        assignment = self.assign([name for name, _ in layout], module)
        index: dict[str, list[int]] = {route: [] for route in self.nets}
        offset = 0
        for name, numel in layout:
            index[assignment[name]].extend(range(offset, offset + numel))
            offset += numel
        return BoundNets(self, {r: torch.tensor(i, dtype=torch.long) for r, i in index.items()}, offset)

    def forward(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise TypeError("RoutedNets must be bound to an optimizee's parameter layout first: use .bind(layout)")


class BoundNets:
    """:class:`RoutedNets` bound to one flat layout: the single-net interface over all coordinates."""

    def __init__(self, routed: RoutedNets, index: dict[str, Tensor], numel: int) -> None:
        self.routed, self.index, self.numel = routed, index, numel

    def init_state(self, n: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, ...]:
        if n != self.numel:
            raise ValueError(f"these nets are bound to {self.numel} coordinates, not {n}")
        return tuple(
            net.init_state(len(self.index[route]), device=device, dtype=dtype)
            for route, net in self.routed.nets.items()
        )

    def __call__(self, grad: Tensor, state: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        update = grad.new_zeros(grad.shape)
        new_state = []
        for (route, net), route_state in zip(self.routed.nets.items(), state):
            index = self.index[route].to(grad.device)
            route_update, route_state = net(grad.index_select(0, index), route_state)
            update = update.index_put((index,), route_update)
            new_state.append(route_state)
        return update, tuple(new_state)
