"""pytest plugin: collect the repo root as a plain folder, not as a package.

The root ``__init__.py`` is the ComfyUI entry point and imports ``comfy_api``, which only exists inside ComfyUI; pytest
would import it before any test because the root looks like a package. The tests import ``samplers``, ``bench`` and
``tools`` from the root (``pythonpath = ["."]``) instead.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
