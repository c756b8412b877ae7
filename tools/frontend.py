"""What the browser tests and the screenshots share about driving ComfyUI's frontend in headless Chromium (Playwright):
the browser, and the canvas scale at which LiteGraph draws node text (frontends 1.32.9 and 1.58.1)."""

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
