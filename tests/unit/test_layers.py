"""The harness in layers (docs/contributing.md#the-harness): ``tools/`` never imports ``bench/``, and its modules import
each other in one direction only (no cycle, function-level imports included). Read with ``ast``."""

import ast
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "tools":  # `from tools import families`
                found |= {f"tools.{alias.name}" for alias in node.names}
    return found


def tools_graph() -> dict[str, set[str]]:
    """tools module -> the tools modules it imports."""
    modules = {p.stem: imported_modules(p) for p in TOOLS.glob("*.py")}
    return {name: {m.split(".")[1] for m in imports if m.startswith("tools.") and m.split(".")[1] in modules}
            for name, imports in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path, or None."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if found := visit(target):
                return found
        path.pop()
        done.add(node)
        return None

    return next((found for node in sorted(graph) if (found := visit(node))), None)


def test_tools_never_import_bench():
    reaching = {p.name: sorted(m for m in imported_modules(p) if m.split(".")[0] == "bench") for p in TOOLS.glob("*.py")}
    assert {name: mods for name, mods in reaching.items() if mods} == {}


def test_tools_import_each_other_in_one_direction():
    graph = tools_graph()
    assert graph["comfy_host"] >= {"hosts", "families", "api_graphs"}  # the check sees the imports it is about
    assert graph["ui_to_api"] >= {"hosts", "families", "api_graphs"} and "ui_to_api" not in graph["comfy_host"]
    assert cycle(graph) is None


def test_the_cycle_check_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
