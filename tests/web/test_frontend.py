"""The real ComfyUI frontend (comfyui-frontend-package) in headless Debian Chromium against the live test server."""

import json
import time
from pathlib import Path

import pytest
import requests
from playwright import sync_api as playwright

from tools.comfy_host import CACHE, TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SCREENSHOTS = CACHE / "test_out" / "web"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


PLOT_PIXELS = """() => app.graph._nodes.filter(n => n.errorControlPlot).map(n => {
    const c = n.errorControlPlot.canvas, d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let coloured = 0;
    for (let i = 0; i < d.length; i += 4)
        if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) coloured++;
    return {type: n.type, coloured, stale: n.errorControlPlot.stale};
})"""
"""Every plot widget on the graph: its node type and how many saturated (series-coloured) pixels its canvas shows."""


@pytest.fixture(scope="module")
def page(comfy):
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # A first visit opens the template browser over the graph; a returning user has finished the tutorial.
        requests.post(comfy.url + "/settings/Comfy.TutorialCompleted", json=True, timeout=10).raise_for_status()
        page.goto(comfy.url + "/", wait_until="domcontentloaded")
        page.wait_for_function("() => window.app?.graph && Object.keys(window.LiteGraph?.registered_node_types ?? {})"
                               ".length > 100", timeout=90_000)
        page.errors = errors
        yield page
        browser.close()


def test_the_frontend_knows_every_pack_node(page, comfy):
    registered = set(page.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))
    pack_nodes = {name for name, info in comfy.object_info().items() if info["category"].startswith("sampling/error")}
    assert pack_nodes and pack_nodes <= registered


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_without_missing_nodes_and_runs_from_the_ui(page, comfy, workflow):
    started = time.monotonic()
    page.evaluate("async (wf) => await app.loadGraphData(wf)", json.loads(workflow.read_text()))
    print(f"loaded in {time.monotonic() - started:.1f} s")
    missing = page.evaluate("() => app.graph._nodes.filter(n => !(n.type in LiteGraph.registered_node_types))"
                            ".map(n => n.type)")
    assert missing == []
    # The examples name a common checkpoint and 512 px; the test server has the tiny checkpoint (TINY_OVERRIDES).
    page.evaluate("""(overrides) => { for (const n of app.graph._nodes)
                         for (const [name, value] of Object.entries(overrides[n.type] ?? {}))
                             n.widgets.find(w => w.name === name).value = value; }""", TINY_OVERRIDES)
    before = set(comfy.get("/history").json())
    page.evaluate("async () => await app.queuePrompt(0)")
    assert page.evaluate("() => app.lastNodeErrors ?? null") in (None, {})
    deadline = time.monotonic() + 300
    while not (new := set(comfy.get("/history").json()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    (prompt_id,) = new
    assert comfy.wait(prompt_id)["status"]["status_str"] == "success"
    print(f"ran in {time.monotonic() - started:.1f} s")
    plotted = {node: info["category"].startswith("sampling/error_control") and any(
        kind == "IMAGE" and "plot" in name for kind, name in zip(info["output"], info["output_name"]))
        for node, info in comfy.object_info().items()}
    expected = sorted(n["type"] for n in json.loads(workflow.read_text())["nodes"] if plotted.get(n["type"]))
    page.wait_for_function("(n) => app.graph._nodes.filter(n => n.errorControlPlot?.specs).length >= n", arg=len(expected),
                           timeout=30_000)
    assert sorted(plot["type"] for plot in page.evaluate(PLOT_PIXELS)) == expected
    for plot in page.evaluate(PLOT_PIXELS):
        assert plot["coloured"] > 200, plot  # the series lines are drawn (the frame and text are grey)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{workflow.stem}.png"))
    assert page.errors == []
