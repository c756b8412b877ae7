"""The pack's documentation lives in the repository (``docs/``): no tracked file points at a note outside it, and every
``docs/<page>.md#<anchor>`` that the code, the README or a page names is a page with that heading.

Anchors follow GitHub's rule for headings: lower case, punctuation dropped except ``-`` and ``_``, spaces as ``-``, and
``-1``, ``-2``, ... appended to repeats."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = ("methods", "evaluation", "benchmark", "contributing")

OUTSIDE = re.compile(r"\b(?:" + "|".join(("METHODS", "EVAL", "HOST", "DESIGN")) + r")\.md\b")
"""Notes that were never part of the repository: a reference to one is a dead end for anyone who clones it."""
DOCS_REF = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
"""``docs/<page>.md`` with an optional anchor, not ``web/docs/...`` (the nodes' help pages)."""
PAGE_LINK = re.compile(r"\]\(([\w.-]+\.md)?#([\w-]+)\)")
"""A Markdown link from one page of ``docs/`` to a heading: ``[text](page.md#anchor)`` or ``[text](#anchor)``."""
SKIP = (".git/", ".venv", ".cache/", "demo_out/", "device_out/", "bench/out/", "__pycache__/")


def tracked_files() -> list[Path]:
    """The files git tracks (those a clone gets), else every file under the root outside tool and output folders."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()]
    return [ROOT / n for n in names if not n.startswith(SKIP) and (ROOT / n).is_file()]


def text_of(path: Path) -> str | None:
    """A file's text, or None for a binary file (weights, images)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (headings inside code blocks do not count)."""
    found, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def texts() -> list[tuple[str, str]]:
    """``(path relative to the root, text)`` of every tracked text file."""
    pairs = [(p.relative_to(ROOT).as_posix(), text_of(p)) for p in tracked_files()]
    return [(name, text) for name, text in pairs if text is not None]


def test_the_pages_exist_and_have_headings():
    for page in PAGES:
        path = DOCS / f"{page}.md"
        assert path.is_file(), f"docs/{page}.md is missing"
        assert len(anchors(path)) >= 3, f"docs/{page}.md has fewer than three headings"


def test_no_tracked_file_points_at_a_note_outside_the_repository():
    found = [f"{name}:{i}: {line.strip()}" for name, text in texts()
             for i, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert found == [], "point these at a page of docs/ instead:\n" + "\n".join(found)


def test_every_docs_reference_names_a_page_and_a_heading_that_exist():
    pages: dict[str, set[str]] = {}
    refs = 0
    missing = []
    for name, text in texts():
        for i, line in enumerate(text.splitlines(), 1):
            for page, anchor in DOCS_REF.findall(line):
                refs += 1
                path = DOCS / page
                if not path.is_file():
                    missing.append(f"{name}:{i}: docs/{page} does not exist")
                    continue
                if anchor and anchor not in pages.setdefault(page, anchors(path)):
                    missing.append(f"{name}:{i}: docs/{page} has no heading #{anchor}")
    assert refs >= 40  # the code and README point into docs/; if this drops, the pattern stopped matching them
    assert missing == [], "\n".join(missing)


def test_links_between_the_pages_resolve():
    missing = []
    for source in sorted(DOCS.glob("*.md")):
        for i, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            for page, anchor in PAGE_LINK.findall(line):
                target = DOCS / page if page else source
                if not target.is_file():
                    missing.append(f"docs/{source.name}:{i}: {page} does not exist")
                elif anchor not in anchors(target):
                    missing.append(f"docs/{source.name}:{i}: {target.name} has no heading #{anchor}")
    assert missing == [], "\n".join(missing)


def test_anchors_follow_githubs_rule():
    assert slug("Testbed 1: analytic mixture") == "testbed-1-analytic-mixture"
    assert slug("DDIM inversion (baseline)") == "ddim-inversion-baseline"
    assert slug("Extending ComfyUI's sampling") == "extending-comfyuis-sampling"
