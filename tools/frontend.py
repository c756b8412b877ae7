"""What the browser tests and the screenshots share about driving ComfyUI's frontend in headless Chromium (Playwright):
the browser, the user's settings, and the canvas scale at which LiteGraph draws node text (frontends 1.32.9 and
1.58.1)."""

import requests

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
"""Debian's Chromium, headless, as root in a container, with nothing reaching outside the loopback server."""
TEXT_THRESHOLD = """() => app.extensionManager.setting.get("LiteGraph.Canvas.MinFontSizeForLOD")
    / (LiteGraph.NODE_TEXT_SIZE * Math.sqrt(window.devicePixelRatio))"""
"""The canvas scale below which LiteGraph draws nodes without their text (its ``updateLowQualityThreshold``: the minimum
font size for detail over the node text size, both in screen pixels), read in the page."""
TEXTLESS_SCALE = 0.2
"""A canvas scale far below the text threshold, set before a template opens so that only the loader's view can lift it."""


def store_settings(url: str, settings: dict) -> None:
    """Store frontend ``settings`` (id → value) for the server's user, as the settings dialog does; a page loaded after
    it starts with them."""
    for name, value in settings.items():
        requests.post(f"{url}/settings/{name}", json=value, timeout=10).raise_for_status()
