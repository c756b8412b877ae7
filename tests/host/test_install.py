"""The pack installed the ways users install it, on ComfyUI 0.33.0, and the Comfy Registry's own pre-publish check.

- Through ComfyUI Manager (``comfyui_manager`` 4.2.2, as ComfyUI 0.33.0's ``manager_requirements.txt`` pins it): a
  clone of the repository's committed HEAD is served over HTTP on loopback (git's dumb HTTP protocol) and installed by
  the Manager's "Install via Git URL", then checked after a restart, disabled and uninstalled through the Manager's own
  HTTP API, with a restart after each.
- From the zip ``comfy node pack`` makes (git-tracked files, less what ``.comfyignore`` names), unzipped into a clean
  ``custom_nodes``.
- ``comfy node validate`` passes with no warning.

Each test starts its own servers (not the session's ``comfy`` fixture): the pack is cloned or copied into
``custom_nodes`` here, never symlinked.
"""

import functools
import http.server
import json
import os
import subprocess
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

from tests.host.test_pack import PACK_NODES
from tools.comfy_host import EXAMPLE_IMAGE, PACK_NAME, ComfyServer, hosts_to_test, write_example_image
from tools.ui_to_api import tiny_api_graph

REPO = Path(__file__).resolve().parents[2]
COMFY_CLI = REPO / ".venv-cli" / "bin" / "comfy"
HOST_ID = "comfyui-0.33.0"
CATEGORY = "sampling/error_control"
WORKFLOWS = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
# What `comfy node pack` must leave out (.comfyignore) and what the pack cannot run without.
LEFT_OUT = ("tests/", "tools/", "bench/", ".ci/", "Makefile")
PACK_PARTS = ("__init__.py", "nodes/", "samplers/", "plots/", "web/", "workflows/", "pyproject.toml", "LICENSE")

# ComfyUI Manager's config, as a user edits it: ``<base>/user/__manager/config.ini`` (folder_paths'
# system user directory "manager", comfyui_manager/common/context.py). network_mode = offline: no remote node lists
# (nothing outside loopback is reachable). allow_git_url_install = true: Manager 4.2.2 gates "Install via Git URL" by
# this flag alone, on a loopback listener, whatever the security_level; security_level = normal (the default) is what
# disable (no check) and uninstall ("middle": weak, normal or normal-) need.
MANAGER_CONFIG = """[default]
network_mode = offline
security_level = normal
allow_git_url_install = true
"""
# ComfyUI 0.33.0 with frontend 1.58.1 shows the Manager's new UI, which installs only Comfy Registry packs (its
# manager/queue/task API takes a pack id). "Install via Git URL" is a button of the Manager's legacy UI, which
# --enable-manager-legacy-ui turns on (it implies --enable-manager).
MANAGER_ARGS = ["--enable-manager", "--enable-manager-legacy-ui"]


def run(command: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output unless it exits 0."""
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def host():
    """ComfyUI 0.33.0 (tools/bootstrap.sh), whose venv has comfyui_manager 4.2.2."""
    if os.environ.get("COMFYUI_DIR"):
        pytest.skip("COMFYUI_DIR names the one host to test; these tests install into ComfyUI 0.33.0 of tools/bootstrap.sh")
    found = [h for h in hosts_to_test() if h.id == HOST_ID]
    assert found, f"{HOST_ID} is not set up: run `bash tools/bootstrap.sh`"
    return found[0]


@pytest.fixture
def clone(tmp_path) -> Path:
    """A fresh clone of the repository: its committed HEAD, as a user's or the Registry's checkout has it."""
    run(["git", "clone", "--quiet", "--no-hardlinks", REPO, tmp_path / "clone"], cwd=tmp_path)
    return tmp_path / "clone"


@pytest.fixture
def git_repo(tmp_path):
    """``(url, commit)``: ``http://127.0.0.1:<port>/error-control-samplers``, a bare clone of HEAD served by git's dumb
    HTTP protocol (``git update-server-info`` + static files), and the commit it serves. The Manager takes only URLs
    with a scheme and a host (no ``file://``)."""
    served = tmp_path / "served"
    run(["git", "clone", "--quiet", "--bare", REPO, served / PACK_NAME], cwd=tmp_path)
    run(["git", "update-server-info"], cwd=served / PACK_NAME)
    commit = run(["git", "rev-parse", "HEAD"], cwd=served / PACK_NAME).stdout.strip()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{PACK_NAME}", commit
    finally:
        server.shutdown()
        server.server_close()


def pack_nodes(object_info: dict) -> set[str]:
    return {name for name, info in object_info.items() if info.get("category", "").startswith(CATEGORY)}


def combo(object_info: dict, node: str, name: str) -> list:
    spec = object_info[node]["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def run_workflow(server: ComfyServer, name: str) -> list[Path]:
    """Run ``workflows/<name>.json`` of the installed pack on the tiny checkpoint; return the images it saved."""
    installed = server.base_dir / "custom_nodes" / PACK_NAME / "workflows" / f"{name}.json"
    graph = tiny_api_graph(json.loads(installed.read_text()), server.object_info())
    images = server.output_images(server.run(graph, timeout=240))
    assert images and all(p.stat().st_size > 0 for p in images), images
    return images


def assert_pack_serves(server: ComfyServer) -> None:
    """The pack's nodes in their category, its sampler and scheduler in KSampler's dropdowns, its templates."""
    info = server.object_info()
    nodes = pack_nodes(info)
    assert PACK_NODES <= nodes and all(name.startswith("ErrorControl") for name in nodes), sorted(nodes)
    assert "ddim_inversion" in combo(info, "KSampler", "sampler_name")
    assert "vrg" in combo(info, "KSampler", "scheduler")
    templates = server.get("/api/workflow_templates").json()
    assert sorted(templates.get(PACK_NAME, [])) == WORKFLOWS, templates.get(PACK_NAME)


def assert_pack_absent(server: ComfyServer) -> None:
    """ComfyUI serves its own nodes and none of the pack's."""
    info = server.object_info()
    assert "KSampler" in info and not pack_nodes(info)
    assert "vrg" not in combo(info, "KSampler", "scheduler")
    assert PACK_NAME not in server.get("/api/workflow_templates").json()


def manager_batch(server: ComfyServer, kind: str, item: dict, timeout: float = 60) -> dict:
    """Queue one Manager task as the legacy UI's buttons do (POST /v2/manager/queue/batch with a batch id), wait
    until the Manager's queue is idle, and return the batch's history (``nodepack_result`` by ``ui_id``)."""
    batch_id = uuid.uuid4().hex
    response = requests.post(server.url + "/v2/manager/queue/batch", json={kind: [item], "batch_id": batch_id}, timeout=60)
    assert response.status_code == 200 and response.json() == {"failed": []}, (response.status_code, response.text)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.get("/v2/manager/queue/status").json()
        if not status["is_processing"] and status["total_count"] == 0:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"the Manager's {kind} did not finish in {timeout:.0f} s: {status}\n{server.log_tail()}")
    return server.get(f"/v2/manager/queue/history?id={batch_id}").json()


def test_comfy_node_validate_passes_without_a_warning(clone):
    done = run([COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=clone)
    output = done.stdout + done.stderr
    assert "All validation checks passed" in output, output
    assert not [line for line in output.splitlines() if "warning" in line.lower()], output


def test_the_packed_zip_leaves_out_the_harness_and_runs_from_a_clean_custom_nodes(host, clone, tmp_path):
    run([COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", "pack"], cwd=clone)
    with zipfile.ZipFile(clone / "node.zip") as packed:
        names = packed.namelist()
        assert not [n for n in names if n.startswith(LEFT_OUT)], [n for n in names if n.startswith(LEFT_OUT)]
        tracked = [name for name in run(["git", "ls-files", "-z"], cwd=clone).stdout.split("\0") if name]  # names with spaces
        needed = [name for name in tracked if name.startswith(PACK_PARTS)]
        assert set(needed) <= set(names), sorted(set(needed) - set(names))
        base = tmp_path / "base"
        packed.extractall(base / "custom_nodes" / PACK_NAME)
    assert not (base / "custom_nodes" / PACK_NAME).is_symlink()
    write_example_image(base / "input" / EXAMPLE_IMAGE)
    with ComfyServer(base, None, host=host) as server:
        assert_pack_serves(server)
        run_workflow(server, "DDIM inversion - reconstruct an image (SD1.5)")


def test_comfyui_manager_installs_runs_disables_and_uninstalls_the_pack_from_a_git_url(host, git_repo, tmp_path):
    git_url, commit = git_repo
    base = tmp_path / "base"
    (base / "user" / "__manager").mkdir(parents=True)
    (base / "user" / "__manager" / "config.ini").write_text(MANAGER_CONFIG)
    write_example_image(base / "input" / EXAMPLE_IMAGE)
    installed = base / "custom_nodes" / PACK_NAME

    def server() -> ComfyServer:
        # COMFYUI_PATH: the Manager reads the ComfyUI folder from it, else from __main__'s file (here the launcher)
        return ComfyServer(base, None, host=host, extra_args=MANAGER_ARGS, extra_env={"COMFYUI_PATH": str(host.comfy_dir)})

    with server() as comfy:
        assert not pack_nodes(comfy.object_info())
        assert comfy.get("/v2/manager/is_legacy_manager_ui").json() == {"is_legacy_manager_ui": True}
        # "Install via Git URL" (js/common.js install_via_git_url): the URL as the POST body; it clones before answering
        response = requests.post(comfy.url + "/v2/customnode/install/git_url", data=git_url, timeout=180)
        assert response.status_code == 200, (response.status_code, response.text, comfy.log_tail())
    assert installed.is_dir() and not installed.is_symlink()
    assert run(["git", "rev-parse", "HEAD"], cwd=installed).stdout.strip() == commit

    # the Manager's API names a pack installed from a git URL by its URL (version "unknown")
    item = {"id": PACK_NAME, "version": "unknown", "files": [git_url], "ui_id": PACK_NAME}
    with server() as comfy:
        assert_pack_serves(comfy)
        run_workflow(comfy, "VRG - calibrate a schedule and sample (SD1.5)")
        history = manager_batch(comfy, "disable", item)
        assert history["nodepack_result"] == {PACK_NAME: "success"}, history
    assert not installed.exists() and (base / "custom_nodes" / ".disabled" / PACK_NAME).is_dir()

    with server() as comfy:
        assert_pack_absent(comfy)
        history = manager_batch(comfy, "uninstall", item)
        assert history["nodepack_result"] == {PACK_NAME: "success"}, history
    assert not installed.exists() and not (base / "custom_nodes" / ".disabled" / PACK_NAME).exists()

    with server() as comfy:
        assert_pack_absent(comfy)
