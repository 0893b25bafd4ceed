"""Param groups → :class:`~l2l_lightning.nets.base.Layout` → routes: which net steps each parameter.

A :class:`~l2l_lightning.nets.RoutedNets` checkpoint (the paper's conv / fully connected
LSTMs) sends each parameter to the net of its route.  The routing itself is the net's
(:meth:`~l2l_lightning.nets.LearnedOptimizerNet.routes_of`, the same code meta-training binds
with); :class:`GroupRouting` only tells it what a deployed optimizer knows of its
parameters: their shapes, names and owning module types (from ``module=model``, or a group's
``param_names``) and a group's own ``"route"`` key.  The decision is taken once, when a
group is added, and kept in the group (``"param_routes"``), so it is in the state dict and a
run resumed with parameters routed differently is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, Protocol

from torch import nn

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.nets.layout import Layout, Segment, owner_types
from l2l_lightning.optim import sharded

#: A param group as ``torch.optim.Optimizer`` keeps it (``"params"`` and the group's settings).
ParamGroup = dict[str, Any]


def param_routes(group: ParamGroup) -> list[Optional[str]]:
    """The route decided for each parameter of ``group`` (all ``None`` for a single net)."""
    return group.get("param_routes") or [None] * len(group["params"])


class NamedModules(Protocol):
    """What ``LearnedOptimizer(module=...)`` reads of a model: its named parameters and modules (any ``nn.Module``).

    A protocol rather than ``nn.Module`` so that a command line's help (``--optimizer.help``)
    does not list every ``nn.Module`` subclass in torch as a candidate value.
    """

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]: ...

    def named_modules(self) -> Iterable[tuple[str, nn.Module]]: ...


class GroupRouting:
    """The routing of one optimizer's param groups for its net (``module``: the model that names them)."""

    def __init__(self, net: LearnedOptimizerNet, module: Optional[nn.Module]) -> None:
        if module is not None and not isinstance(module, nn.Module):
            raise ConfigError(f"module must be the nn.Module the parameters belong to, got {type(module).__name__}")
        self.net = net
        self.module = module

    def layout(self, group: ParamGroup, named: bool) -> Layout:
        """The group's parameters as segments: names and module types if ``named``; routes if decided
        (``"param_routes"``) or given (the group's ``"route"``)."""
        names: list[Optional[str]] = [None] * len(group["params"])
        owners: dict[str, tuple[str, ...]] = {}
        if named:
            names, owners = self._names_of(group)
        routes = group.get("param_routes") or [group.get("route")] * len(group["params"])
        return Layout([
            Segment(name or f"<unnamed parameter #{i}>", tuple(sharded.local(p).shape), owners.get(name or "", ()), route=route)
            for i, (p, name, route) in enumerate(zip(group["params"], names, routes))
        ])  # fmt: skip

    def route(self, group: ParamGroup) -> None:
        """Decide which net steps each parameter of ``group`` (``group["param_routes"]``), if the net routes.

        Names are looked up only when a pattern needs them.
        """
        route = group.get("route")
        group.pop("param_routes", None)
        routes_anything = self.net.routes_of(Layout([]), partial=True) is not None
        layout = self.layout(group, named=route is None and routes_anything)
        routes = self.net.routes_of(layout, partial=True)
        if routes is None:
            if route is not None:
                raise ConfigError(
                    f"LearnedOptimizer: a param group has route={route!r}, but the net is a single "
                    f"{type(self.net).__name__} (routes need a RoutedNets checkpoint); drop the 'route' key"
                )
            return
        group["param_routes"] = list(routes)

    def refuse_unmatched_patterns(self, groups: list[ParamGroup]) -> None:
        """A routing pattern that matches none of the parameters is a typo: refuse it (the net decides)."""
        routed = [g for g in groups if g["route"] is None and "param_routes" in g]
        if routed:
            given = Layout([s for g in routed for s in self.layout({**g, "param_routes": None}, True)])
            # with the module, a pattern may match parameters that other optimizers (or later groups) step
            self.net.routes_of(given, whole=Layout.of_module(self.module) if self.module is not None else None)

    def state_shapes(self, group: ParamGroup) -> list[tuple[tuple[int, ...], Optional[tuple[int, ...]]]]:
        """The net state shape and the per-tensor state shape (``None``: none) of each parameter of ``group``."""
        layout = self.layout(group, named=False)
        net = self.net.bind(layout)
        return list(zip(net.segment_state_shapes(layout), [net.tensor_state_shape(s) for s in layout]))

    def _names_of(self, group: ParamGroup) -> tuple[list[str], dict[str, tuple[str, ...]]]:
        """Each parameter's name (from ``module``, else the group's ``param_names``) and owner types."""
        if self.module is not None:
            by_id = {id(p): name for name, p in self.module.named_parameters()}
            missing = [i for i, p in enumerate(group["params"]) if id(p) not in by_id]
            if missing:
                raise ConfigError(
                    f"LearnedOptimizer: parameter(s) #{missing} of a param group are not parameters of `module` "
                    f"({type(self.module).__name__}); pass the model they belong to"
                )
            return [by_id[id(p)] for p in group["params"]], owner_types(self.module)
        if "param_names" in group:
            return list(group["param_names"]), {}
        raise ConfigError(
            f"LearnedOptimizer: this net has separate nets for routes chosen by parameter name or module type "
            f"({self.net!r}), but a param group gives neither. Pass module=model (needed for 'type:' "
            "patterns), or model.named_parameters(), or a 'route' key per param group. With LightningCLI, use "
            "--trainer.callbacks+=l2l_lightning.LearnedOptimizerCallback instead of --optimizer: it passes the module."
        )
