"""The node docs (web/docs, shown in ComfyUI's side panel) start with the user: when to use the node and a typical wiring,
then its settings in a two-column table that fits the panel, then how it works. (That each table names every input of
its node is checked against the real node definitions in tests/host/test_pack.py.)"""

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[2] / "web" / "docs").glob("*.md"))


def blocks(path: Path) -> list[str]:
    """The doc's paragraphs, tables and headings, in order (blank-line separated)."""
    return [block.strip() for block in path.read_text().split("\n\n") if block.strip()]


def table_rows(table: str) -> list[list[str]]:
    """The cells of each row of a Markdown table (``\\|`` inside a cell is not a separator)."""
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in table.splitlines()]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.stem)
def test_each_doc_starts_with_when_to_use_and_the_wiring_then_a_two_column_settings_table_then_the_maths(path):
    parts = blocks(path)
    assert parts[0].startswith("# ")
    if parts[1].startswith("*") and not parts[1].startswith("**"):  # a one-line note under the title
        parts.pop(1)
    assert parts[1].startswith("**When to use it.** ") and parts[2].startswith("**Typical wiring.** ")
    assert parts[3] == "## Settings"
    rows = table_rows(parts[4])
    assert rows[0] == ["input", "what it does"] and set(rows[1]) <= {"---"}
    assert len(rows) > 2 and all(len(row) == 2 for row in rows), "the settings table has two columns"
    assert all(re.match(r"`[a-z_]+`", row[0]) for row in rows[2:])
    assert parts[5:6] in ([], ["## How it works"])  # the maths, if any, after the settings
    assert "| input | meaning | typical |" not in path.read_text()
