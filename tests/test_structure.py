"""The package keeps its shape (``benchmarks/structure.py`` prints it): dependencies one way, small parts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("structure", ROOT / "benchmarks" / "structure.py")
structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(structure)


def test_no_cycle_between_rooms_and_nets_never_import_deployment():
    arrows = structure.room_arrows(ROOT)
    assert structure.cycles(arrows) == [], "the rooms of l2l_lightning import each other in a loop"
    assert "optim" not in arrows["nets"] and "meta" not in arrows["nets"], "nets must not import optim or meta"
    assert "meta" not in arrows["optim"], "deployment must not import meta-training"


def test_files_and_functions_stay_small():
    lines = {path: n for n, path in structure.file_lines(ROOT)}
    assert lines["l2l_lightning/meta/module.py"] <= 400
    assert lines["l2l_lightning/optim/learned.py"] <= 500
    longest, name = structure.functions(ROOT)[0]
    assert longest <= 80, f"{name} has {longest} lines; split it"


def _room(frame) -> str:
    name = frame.f_globals.get("__name__", "")
    parts = name.split(".")
    return parts[1] if parts[0] == "l2l_lightning" and len(parts) > 2 else ""


def _deepest_walks(step) -> set[tuple[str, ...]]:
    """Every chain of ``optim``/``nets`` rooms on the call stack while ``step()`` runs (repeats folded)."""
    import sys
    import threading

    walks: set[tuple[str, ...]] = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        rooms: list[str] = []
        while frame is not None:
            room = _room(frame)
            if room in ("optim", "nets") and (not rooms or rooms[-1] != room):
                rooms.append(room)
            frame = frame.f_back
        walks.add(tuple(reversed(rooms)))

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return walks


def test_the_deployment_walk_goes_down_to_the_maths_once_and_comes_back():
    """From ``LearnedOptimizer.step()`` to the net's maths and back crosses optim/nets once each way:
    no stack ever reads optim -> nets -> optim (a net calling back into deployment)."""
    import torch
    from torch import nn

    from l2l_lightning import CoordinatewiseLSTM, GlobalAveragingLSTM, LearnedOptimizer, RoutedNets

    model = nn.Sequential(nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 3))
    routed = RoutedNets({"a": CoordinatewiseLSTM(hidden_size=4), "b": GlobalAveragingLSTM(hidden_size=4, global_cells=2)},
                        {"a": ["0.*"], "b": ["2.*"]})
    for net in (CoordinatewiseLSTM(hidden_size=4), routed):
        optimizer = LearnedOptimizer(model.parameters(), checkpoint=net, module=model, chunk_size=64)
        model(torch.randn(8, 30)).square().mean().backward()
        walks = _deepest_walks(optimizer.step)
        assert ("optim", "nets") in walks, "the walk never reached the net's maths"
        assert all(len(walk) <= 2 and walk[:1] != ("nets",) for walk in walks if walk), sorted(walks)
