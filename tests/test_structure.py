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
