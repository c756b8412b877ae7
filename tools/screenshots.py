"""The README's workflow screenshots, taken from the real frontend as a user sees a template open.

``python tools/screenshots.py [--out docs/images]`` starts the newest host (``newest_host``: ComfyUI 0.33.0 with
frontend 1.58.1 once bootstrapped) with the pack and the tiny checkpoint (also under the names of the model files the
templates load: ``model_links``), opens each template of ``SHOTS`` from the
template browser in headless Chromium (Playwright, a 1600×1000 window), waits until the loader's view draws node text,
and saves the page as ``<out>/<slug>.png``. It fails, naming the template, when a template is not in the browser or
opens below the zoom where node text is drawn. Run it after a layout change in ``tools/workflows.py``.
Playwright and Pillow are imported where they are used: ``tools/`` imports only the standard library and requests at
top level (docs/contributing.md#rooms-and-allowed-imports).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: the repository on the path
    sys.path.append(str(Path(__file__).resolve().parents[1]))
from tools.comfy_host import (  # noqa: E402
    CACHE,
    CHECKPOINT_NAME,
    EXAMPLE_IMAGE,
    PACK_NAME,
    REPO,
    ComfyServer,
    newest_host,
    write_example_image,
)
from tools.frontend import CHROMIUM, CHROMIUM_ARGS, TEXT_THRESHOLD, TEXTLESS_SCALE, store_settings  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

SHOTS = {
    "polaris-edit-workflow": "POLARIS - edit an image by its prompt (SD1.5)",
    "polaris-flux-workflow": "POLARIS - reconstruct and edit an image (Flux.1-dev)",
    "polaris-wan-workflow": "POLARIS - invert and reconstruct a video (Wan 2.1 t2v 1.3B)",
}
"""Image name (without ``.png``) -> template (a ``workflows/`` file's stem): POLARIS in each model family with one."""
VIEWPORT = {"width": 1600, "height": 1000}
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": False, "Comfy.Minimap.Visible": False,
            "Comfy.Graph.CanvasInfo": False}
"""A returning user's frontend (no first-visit template browser, the classic canvas), without the minimap and the
frame counters that would cover the graph."""
MAX_BYTES = 400_000
"""Largest PNG written: a screenshot above it is reduced to a 256-colour palette (the frontend's flat colours)."""
TIMEOUT_MS = 60_000
VIEW_SETTLED = """(threshold) => {
    const view = JSON.stringify([app.canvas.ds.scale, ...app.canvas.ds.offset]);
    const settled = view === window.__screenshotView && app.canvas.ds.scale >= threshold && !app.canvas.low_quality;
    window.__screenshotView = view;
    return settled;
}"""
"""True once the canvas is zoomed where text is drawn and its view is the same as at the previous poll."""


def workflow(template: str) -> dict:
    """The saved workflow of ``template`` (``workflows/<template>.json``)."""
    return json.loads((REPO / "workflows" / f"{template}.json").read_text())


def open_template(page: Page, template: str) -> None:
    """Open ``template`` as a user does: Browse Templates, the pack's category, the template's card."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.keyboard.press("Escape")
    page.evaluate("async () => await app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_role("dialog").get_by_text(PACK_NAME, exact=True).first.click(timeout=TIMEOUT_MS)
    card = page.get_by_test_id(f"template-workflow-{template}")
    try:
        card.wait_for(timeout=TIMEOUT_MS)
    except PlaywrightTimeout as missing:
        shown = page.evaluate("""() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')]
                                     .map(e => e.dataset.testid.replace('template-workflow-', ''))""")
        raise SystemExit(f"template {template!r} is not in the template browser's {PACK_NAME} category; "
                         f"it shows {shown}") from missing
    card.scroll_into_view_if_needed()
    page.evaluate("(scale) => { app.canvas.ds.scale = scale; }", TEXTLESS_SCALE)
    card.click()


def wait_until_drawn_with_text(page: Page, template: str) -> None:
    """Wait until every node of ``template`` is on the graph, Load Image's picture is loaded, and the view the loader
    chose is settled at a zoom where node text is drawn; fail loudly if the zoom stays below that."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_function("(n) => app.graph._nodes.length === n", arg=len(workflow(template)["nodes"]),
                           timeout=TIMEOUT_MS)
    page.wait_for_function("() => app.graph._nodes.filter(n => n.type === 'LoadImage')"
                           ".every(n => n.imgs?.length && n.imgs.every(i => i.complete && i.naturalWidth > 0))",
                           timeout=TIMEOUT_MS)
    threshold = page.evaluate(TEXT_THRESHOLD)
    try:
        page.wait_for_function(VIEW_SETTLED, arg=threshold, polling=250, timeout=TIMEOUT_MS)
    except PlaywrightTimeout as textless:
        scale = page.evaluate("() => app.canvas.ds.scale")
        raise SystemExit(f"{template!r} opened at {scale:.0%}; node text is drawn from {threshold:.0%}") from textless
    page.evaluate("async () => { await document.fonts.ready; }")


def model_links(templates: list[str]) -> dict[str, Path]:
    """Every model file the templates' loaders name (``properties.models``), under its folder, as a link to the tiny
    checkpoint. Nothing runs on the screenshot server; its frontend finds each file in place, as a user who has them
    does, and draws no missing-model notice or outline over the graph."""
    entries = [entry for template in templates for node in workflow(template)["nodes"]
               for entry in node.get("properties", {}).get("models", [])]
    return {f"models/{entry['directory']}/{entry['name']}": CACHE / CHECKPOINT_NAME for entry in entries}


def compact_png(png: bytes) -> bytes:
    """``png`` as it is when under ``MAX_BYTES``, else reduced to a 256-colour palette; fail if still too large."""
    from PIL import Image

    if len(png) > MAX_BYTES:
        out = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            out, format="PNG", optimize=True)
        png = out.getvalue()
    if len(png) > MAX_BYTES:
        raise SystemExit(f"the screenshot is {len(png) / 1e3:.0f} kB even with 256 colours, over {MAX_BYTES / 1e3:.0f} kB")
    return png


def screenshot(browser: Browser, url: str, template: str, path: Path) -> None:
    """Open ``template`` in a fresh browser context on ``url`` and save the page as the PNG ``path``."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("() => window.app?.graph && Object.keys(window.LiteGraph?.registered_node_types ?? {})"
                               ".length > 100", timeout=90_000)
        open_template(page, template)
        wait_until_drawn_with_text(page, template)
        png = compact_png(page.screenshot())
    finally:
        context.close()
    if errors:
        raise SystemExit(f"the page raised while opening {template!r}: {errors}")
    path.write_bytes(png)
    print(f"{path} ({len(png) / 1e3:.0f} kB)", flush=True)


def take_screenshots(out: Path) -> None:
    """Every image of ``SHOTS`` into ``out``, from one server of the newest host with the pack, the tiny checkpoint and
    the links of ``model_links``."""
    from playwright.sync_api import sync_playwright

    host = newest_host()
    base_dir = CACHE / "screenshots_base"
    write_example_image(base_dir / "input" / EXAMPLE_IMAGE)
    out.mkdir(parents=True, exist_ok=True)
    links = model_links(list(SHOTS.values()))
    with ComfyServer(base_dir, REPO, host=host, links=links) as comfy, sync_playwright() as driver:
        print(f"{host.id} on {comfy.url}", flush=True)
        store_settings(comfy.url, SETTINGS)
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for slug, template in SHOTS.items():
                screenshot(browser, comfy.url, template, out / f"{slug}.png")
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder of the PNGs")
    take_screenshots(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
