"""The package's shape, from its own source: import arrows between rooms, cycles, largest files, longest functions.

A *room* is a subpackage of ``l2l_lightning`` (``nets``, ``optim``, ``meta``, ...) or a top-level
module (``cli``, ``errors``, ...).  An arrow ``A -> B`` means some module of ``A`` imports one of
``B`` (at any depth of the file: lazy imports inside functions count, ``TYPE_CHECKING`` ones do
not).  Nothing is imported or run, so this works on any checkout::

    python benchmarks/structure.py            # this checkout
    python benchmarks/structure.py --root /path/to/another/checkout

``tests/test_structure.py`` holds the package to the limits printed here.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "l2l_lightning"


def modules(root: Path) -> dict[str, Path]:
    """``dotted module name -> file`` for every module of the package under ``root``."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def room(module: str) -> str:
    """The room of a module: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names imported anywhere in ``tree`` (relative imports resolved), skipping ``if TYPE_CHECKING``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def module_arrows(root: Path) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``."""
    mods = modules(root)
    arrows: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = {n for n in _imports(tree, name, path.name == "__init__.py") if n in mods and n != name}
        arrows[name] = targets
    return arrows


def room_arrows(root: Path) -> dict[str, set[str]]:
    """``room -> rooms it imports`` (a package's ``__init__`` re-exports are not arrows of its room)."""
    arrows: dict[str, set[str]] = {}
    for source, targets in module_arrows(root).items():
        if room(source) == "__init__":
            continue  # the package's face only hands names on
        for target in targets:
            if room(target) not in (room(source), "__init__"):
                arrows.setdefault(room(source), set()).add(room(target))
        arrows.setdefault(room(source), set())
    return arrows


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for nxt in arrows.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(arrows):
        if node not in index:
            visit(node)
    return found


def functions(root: Path) -> list[tuple[int, str]]:
    """``(lines, "module:qualified name")`` of every function and method, longest first."""
    found = []
    for name, path in modules(root).items():
        tree = ast.parse(path.read_text(), str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        found.append((child.end_lineno - child.lineno + 1, f"{name}:{qual}"))
                    stack.append((child, qual + "."))
                else:
                    stack.append((child, prefix))
    return sorted(found, reverse=True)


def file_lines(root: Path) -> list[tuple[int, str]]:
    """``(lines, path)`` of every module, largest first."""
    return sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in modules(root).values()), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout to read")
    parser.add_argument("--top", type=int, default=8, help="how many files and functions to list")
    args = parser.parse_args()
    arrows = room_arrows(args.root)
    count = sum(len(t) for t in arrows.values())
    print(f"import arrows between rooms ({len(arrows)} rooms, {count} arrows):")
    for source in sorted(arrows):
        print(f"  {source:>20} -> {', '.join(sorted(arrows[source])) or '-'}")
    found = cycles(arrows)
    print("cycles between rooms:", "; ".join(" <-> ".join(c) for c in found) if found else "none")
    print("largest files (lines):")
    for lines, path in file_lines(args.root)[: args.top]:
        print(f"  {lines:5d}  {path}")
    print("longest functions (lines):")
    for lines, name in functions(args.root)[: args.top]:
        print(f"  {lines:5d}  {name}")


if __name__ == "__main__":
    main()
