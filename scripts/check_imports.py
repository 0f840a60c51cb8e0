"""Check the package's import structure: no import cycles (module-level or inside functions), no import of
another module's private (underscore) names, and no module over the line limit.

Usage: python scripts/check_imports.py [SRC_PACKAGE_DIR] [--max-lines N] [--lines-under SUBDIR]
Exit status 1, with one line per problem, when something is wrong.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    """`root/models/formats/nvidia.py` -> `model_rewrite.models.formats.nvidia` (root is the package dir)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def executed_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (at module level or in a function), less `if TYPE_CHECKING:` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]
             ) -> list[tuple[str, str | None]]:
    """(module, name) pairs the statement imports from modules of the package; name None for whole modules."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name in modules]
    if node.level:
        base_parts = importer.split(".") if is_package else importer.split(".")[:-1]
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out: list[tuple[str, str | None]] = []
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            out.append((f"{base}.{alias.name}", None))
        elif base in modules:
            out.append((base, alias.name))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def problems(root: Path, max_lines: int = MAX_LINES, lines_under: Path | None = None) -> list[str]:
    """Every problem found in the package at `root`, one line each."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    found: list[str] = []
    for mod, path in files.items():
        text = path.read_text()
        for node in executed_imports(ast.parse(text, str(path))):
            for target, name in imported(node, mod, path.name == "__init__.py", modules):
                if target != mod:
                    graph[mod].add(target)
                if name and name.startswith("_") and not name.startswith("__") and target != mod:
                    found.append(f"{path}:{node.lineno}: imports the private name {name} from {target}")
        n = len(text.splitlines())
        if n > max_lines and (lines_under is None or path.is_relative_to(lines_under)):
            found.append(f"{path}: {n} lines (limit {max_lines})")
    if cycle := find_cycle(graph):
        found.append("import cycle: " + " -> ".join(cycle))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "model_rewrite")
    parser.add_argument("--max-lines", type=int, default=MAX_LINES)
    parser.add_argument("--lines-under", type=Path, default=None, help="check the line limit only below this folder")
    args = parser.parse_args(argv)
    found = problems(args.root.resolve(), args.max_lines, args.lines_under.resolve() if args.lines_under else None)
    print("\n".join(found) if found else "imports: no cycles, no private names; sizes within the limit")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
