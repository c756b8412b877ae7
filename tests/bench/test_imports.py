"""The benchmark code uses only the public names of its own modules: no ``from .x import _y`` and no ``x._y`` across
bench/ modules or from their tests, so a module's private helpers can change without breaking another. Read with ``ast``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([*(ROOT / "bench").rglob("*.py"), *(ROOT / "tests" / "bench").glob("*.py")])


def from_bench(node: ast.ImportFrom) -> bool:
    """Whether an ``import from`` reads the pack's benchmark code (relative inside bench/, or ``bench...``)."""
    return node.level > 0 or (node.module or "").split(".")[0] == "bench"


def private_reaches(source: str) -> list[str]:
    """Every private name ``source`` imports from bench/ or reads as an attribute of a name it imported from there."""
    tree, bound, found = ast.parse(source), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and from_bench(node):
            found += [alias.name for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
            bound |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            bound |= {alias.asname or alias.name for alias in node.names if alias.name.split(".")[0] == "bench"}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    assert len(FILES) > 20  # the check sees bench/, its testbeds and their tests
    reaches = {str(path.relative_to(ROOT)): private_reaches(path.read_text()) for path in FILES}
    assert {name: found for name, found in reaches.items() if found} == {}


def test_the_check_finds_private_imports_and_reads():
    source = "from .digits import _cache, psnr\nfrom bench import editing\nfrom os import _exit\nediting._front([])\n"
    assert private_reaches(source) == ["_cache", "editing._front"]
