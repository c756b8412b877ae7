"""The real ComfyUI frontend (comfyui-frontend-package) in headless Debian Chromium against the live test server."""

import contextlib
import json
import time
from pathlib import Path

import pytest
from playwright import sync_api as playwright
from playwright.sync_api import expect

from tools.comfy_host import CACHE, CHECKPOINT_NAME
from tools.frontend import CHROMIUM, CHROMIUM_ARGS, TEXT_THRESHOLD, TEXTLESS_SCALE, store_settings
from tools.ui_to_api import NOTE_TYPES, conditioning_stand_ins, tiny_api_graph, tiny_overrides, ui_to_api, why_host_cannot_run

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SCREENSHOTS = CACHE / "test_out" / "web"


NODE_BOXES = """() => app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title,
    box: [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]}))"""
"""Each node's bounding box on the canvas, its title bar included; a node that shows images has grown to hold them
where it was too short (the frontend resizes it), so its size covers them."""

PLOT_PIXELS = """() => app.graph._nodes.filter(n => n.errorControlPlot).map(n => {
    const c = n.errorControlPlot.canvas, d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let coloured = 0;
    for (let i = 0; i < d.length; i += 4)
        if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) coloured++;
    return {type: n.type, coloured, stale: n.errorControlPlot.stale};
})"""
"""Every plot widget on the graph: its node type and how many saturated (series-coloured) pixels its canvas shows."""


@pytest.fixture(scope="session")
def chromium():
    """One Playwright driver and headless Debian Chromium for the session (the sync API allows one driver at a time)."""
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def browser_page(chromium, comfy, settings: dict):
    """The frontend in a fresh browser context, loaded with ``settings`` stored on the server first; page errors
    collected in ``page.errors``."""
    store_settings(comfy.url, settings)
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(comfy.url + "/", wait_until="domcontentloaded")
    page.wait_for_function("() => window.app?.graph && Object.keys(window.LiteGraph?.registered_node_types ?? {})"
                           ".length > 100", timeout=90_000)
    page.errors = errors
    yield page
    context.close()


@pytest.fixture(scope="module")
def page(chromium, comfy):
    # A first visit opens the template browser over the graph; a returning user has finished the tutorial.
    with browser_page(chromium, comfy, {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": False}) as page:
        yield page


def test_the_frontend_knows_every_pack_node(page, comfy):
    registered = set(page.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))
    pack_nodes = {name for name, info in comfy.object_info().items() if info["category"].startswith("sampling/error")}
    assert pack_nodes and pack_nodes <= registered


STAND_IN_CONDITIONING = """(plan) => {
    const graph = app.graph;
    for (const [id, seed] of Object.entries(plan.encoders)) {
        const encoder = graph.getNodeById(Number(id)), standIn = LiteGraph.createNode("ErrorControlTestConditioning");
        standIn.pos = [...encoder.pos];
        graph.add(standIn);
        standIn.widgets.find(w => w.name === "family").value = plan.family;
        standIn.widgets.find(w => w.name === "seed").value = seed;
        const control = standIn.widgets.find(w => w.name === "control_after_generate");
        if (control) control.value = "fixed";  // the seed of the plan, whether the host controls before or after
        for (const linkId of [...(encoder.outputs[0].links ?? [])]) {
            const link = graph.getLink(linkId);
            standIn.connect(0, graph.getNodeById(link.target_id), link.target_slot);
        }
        graph.remove(encoder);
    }
    for (const id of plan.loaders) graph.remove(graph.getNodeById(Number(id)));
}"""
"""A family's workflow edited in the page as ``conditioning_stand_ins`` plans it: each text encoder replaced by the
test conditioning node, wired to where the encoder's output went; the text-encoder loaders removed."""


def intersect(a: list[float], b: list[float]) -> bool:
    """Whether two boxes ``[left, top, right, bottom]`` share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def overlapping(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of nodes whose boxes intersect."""
    return [(a["title"], b["title"]) for i, a in enumerate(boxes) for b in boxes[i + 1:] if intersect(a["box"], b["box"])]


IMAGE_NODES = {"LoadImage", "SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG"}
"""Nodes that draw images inside themselves: Load Image its picture, the others their results after a run."""

PREVIEWS = """(types) => app.graph._nodes.filter(n => types.includes(n.type)).map(n => {
    const w = n.widgets?.find(w => ["$$canvas-image-preview", "$$comfy_animation_preview"].includes(w.name));
    const loaded = (n.imgs ?? []).filter(i => i.complete && i.naturalWidth > 0).length;
    return {id: n.id, type: n.type, title: n.title, shown: loaded > 0 && loaded === n.imgs.length && w?.computedHeight > 0,
            box: [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1]],
            preview: w && [n.pos[0], n.pos[1] + w.y, n.pos[0] + n.size[0], n.pos[1] + w.y + (w.computedHeight ?? 0)]};
})"""
"""Each node of ``types`` that draws images: whether they are loaded and laid out (the image widget the frontend adds
to a node with images, arranged: the node has grown to hold it where it was too short), its box after that, and the
area the widget draws them in (``y`` and ``computedHeight`` of the widget, from the node's top left corner)."""


def covered_by_previews(previews: list[dict], boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs (node showing images, other node) where the first node's box, grown for its images, or the area its
    images are drawn in intersects the other node."""
    return [(shown["title"], other["title"]) for shown in previews for other in boxes if other["id"] != shown["id"]
            and any(intersect(area, other["box"]) for area in (shown["box"], shown["preview"]))]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_without_missing_nodes_and_runs_from_the_ui(page, comfy, workflow):
    started = time.monotonic()
    saved = json.loads(workflow.read_text())
    page.evaluate("async (wf) => await app.loadGraphData(wf)", saved)
    print(f"loaded in {time.monotonic() - started:.1f} s")
    missing = page.evaluate("() => app.graph._nodes.filter(n => !(n.type in LiteGraph.registered_node_types))"
                            ".map(n => n.type)")
    assert missing == [] and page.errors == []
    if reason := why_host_cannot_run(saved, comfy.host):
        pytest.skip(reason)
    # No tiny text encoder exists for Flux, SD3.5 or Wan: their prompts become seeded test conditioning, as in the API
    # tests (tools/ui_to_api.py, conditioning_stand_ins).
    if stand_ins := conditioning_stand_ins(saved):
        page.evaluate(STAND_IN_CONDITIONING, stand_ins)
    # The examples name users' model files and 512 px; the test server has tiny files (tiny_overrides).
    page.evaluate("""(overrides) => { for (const n of app.graph._nodes)
                         for (const [name, value] of Object.entries(overrides[n.type] ?? {}))
                             n.widgets.find(w => w.name === name).value = value; }""", tiny_overrides(saved))
    before = set(comfy.get("/history").json())
    page.evaluate("async () => await app.queuePrompt(0)")
    assert page.evaluate("() => app.lastNodeErrors ?? null") in (None, {})
    deadline = time.monotonic() + 300
    while not (new := set(comfy.get("/history").json()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    (prompt_id,) = new
    entry = comfy.wait(prompt_id)
    assert entry["status"]["status_str"] == "success"
    print(f"ran in {time.monotonic() - started:.1f} s")
    object_info = comfy.object_info()
    queued = entry["prompt"][2]  # the page's stand-ins have new node ids: the same nodes, not the same ids
    assert sorted(n["class_type"] for n in queued.values()) == sorted(
        n["class_type"] for n in tiny_api_graph(saved, object_info).values())
    plotted = {node: info["category"].startswith("sampling/error_control") and any(
        kind == "IMAGE" and "plot" in name for kind, name in zip(info["output"], info["output_name"]))
        for node, info in object_info.items()}
    expected = sorted(n["type"] for n in saved["nodes"] if plotted.get(n["type"]))
    page.wait_for_function("(n) => app.graph._nodes.filter(n => n.errorControlPlot?.specs).length >= n", arg=len(expected),
                           timeout=30_000)
    assert sorted(plot["type"] for plot in page.evaluate(PLOT_PIXELS)) == expected
    for plot in page.evaluate(PLOT_PIXELS):
        assert plot["coloured"] > 200, plot  # the series lines are drawn (the frame and text are grey)
    showing = [node["type"] for node in saved["nodes"] if node["type"] in IMAGE_NODES]
    types = sorted(IMAGE_NODES)
    page.wait_for_function(f"([types, n]) => ({PREVIEWS})(types).filter(p => p.shown).length === n",
                           arg=[types, len(showing)], timeout=30_000)
    previews = page.evaluate(PREVIEWS, types)
    assert sorted(p["type"] for p in previews) == sorted(showing)
    assert covered_by_previews(previews, page.evaluate(NODE_BOXES)) == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{workflow.stem}.png"))
    assert page.errors == []


PACK = "error-control-samplers"
THUMBNAIL_PIXELS = 512  # tools/workflows.py, THUMBNAIL
SAVED_SCALE = 0.9  # tools/workflows.py, VIEW
TEXT_SCALE = 8 / 14  # tools/workflows.py, TEXT_SCALE: the default threshold at a device pixel ratio of 1
IN_VIEW = """((a) => n.box[0] >= a[0] && n.box[1] >= a[1] && n.box[2] <= a[0] + a[2] && n.box[3] <= a[1] + a[3])
    (app.canvas.visible_area)"""
"""Whether node box ``n`` lies inside the canvas's visible area (``[left, top, width, height]`` in graph units)."""


def wait_until_text_is_drawn(page) -> None:
    """Wait until the canvas is zoomed where LiteGraph draws node text (at or above the default threshold)."""
    threshold = page.evaluate(TEXT_THRESHOLD)
    assert threshold == pytest.approx(TEXT_SCALE)
    try:
        page.wait_for_function("(t) => app.canvas.ds.scale >= t && !app.canvas.low_quality", arg=threshold,
                               timeout=30_000)
    except playwright.TimeoutError:
        scale = page.evaluate("() => app.canvas.ds.scale")
        pytest.fail(f"the workflow opened at {scale:.0%}; node text is drawn from {threshold:.0%}")


def open_pack_templates(page) -> None:
    """The template browser (the menu's Browse Templates), on this pack's category, over no other dialog."""
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    page.evaluate("async () => await app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_role("dialog").get_by_text(PACK, exact=True).first.click()


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_the_template_browser_shows_the_workflow_readably_and_it_opens_with_its_note(page, comfy, workflow):
    """The card a user sees: the file name as the title (the only title a pack's template has), the description
    where the frontend shows one on the card (the file name with '-' and '_' as spaces), the thumbnail loaded at its
    full 512 px; clicked, the workflow opens with its note, no two nodes overlapping, zoomed where node text is
    drawn: at the saved 90 % where the frontend restores a workflow's view (1.32.9), fitted to the window with every
    node in view where it fits a template instead (1.58.1)."""
    saved = json.loads(workflow.read_text())
    open_pack_templates(page)
    card = page.get_by_test_id(f"template-workflow-{workflow.stem}")
    card.scroll_into_view_if_needed()
    expect(card).to_contain_text(workflow.stem)
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    if version.startswith("1.32."):  # the card shows the description; 1.58.1 shows it only in a detail view
        expect(card).to_contain_text(" ".join(workflow.stem.replace("-", " ").replace("_", " ").split()))
    expect(card.locator("img").first).to_have_js_property("naturalWidth", THUMBNAIL_PIXELS)
    page.evaluate("(scale) => { app.canvas.ds.scale = scale; }", TEXTLESS_SCALE)  # what the loader must change
    card.click()
    page.wait_for_function("(n) => app.graph._nodes.length === n",
                           arg=len(saved["nodes"]), timeout=30_000)
    if version.startswith("1.32."):
        # The files the test server lacks (the SD1.5 checkpoint, text encoders, the families it cannot load): the
        # missing-model dialog lists each from its loader's models entry, with its download (1.58.1 shows a toast)
        missing = [entry for node in saved["nodes"] for entry in node["properties"].get("models", [])
                   if entry["name"] not in comfy.get(f"/models/{entry['directory']}").json()]
        assert missing
        dialog = page.get_by_role("dialog").filter(has_text="Missing Models")
        expect(dialog.get_by_role("option")).to_have_count(len(missing))
        for entry in missing:
            option = dialog.get_by_role("option").filter(has_text=f"{entry['directory']} / {entry['name']}")
            expect(option.get_by_role("button", name="Copy URL")).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)
    (note,) = [node for node in saved["nodes"] if node["type"] in NOTE_TYPES]
    heading = note["widgets_values"][0].splitlines()[0].lstrip("# ")
    assert page.evaluate("() => app.graph._nodes.filter(n => n.type === 'MarkdownNote').map(n => n.widgets[0].value)"
                         ) == note["widgets_values"]
    assert overlapping(page.evaluate(NODE_BOXES)) == []
    wait_until_text_is_drawn(page)
    expect(page.get_by_text(heading)).to_be_visible()
    if version.startswith("1.58."):  # fitted to the window: every node in view
        page.wait_for_function(f"() => ({NODE_BOXES})().every(n => {IN_VIEW})", timeout=30_000)
    else:
        assert page.evaluate("() => app.canvas.ds.scale") == pytest.approx(SAVED_SCALE)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"template_{workflow.stem}_{version}.png"))
    assert page.errors == []


BUILD_TXT2IMG = """async (checkpoint) => {
    app.graph.clear();
    const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
    const ckpt = add("CheckpointLoaderSimple", 0, 0), pos = add("CLIPTextEncode", 350, 0), neg = add("CLIPTextEncode", 350, 250);
    const empty = add("EmptyLatentImage", 350, 500), sampler = add("KSampler", 750, 0), decode = add("VAEDecode", 1100, 0);
    const save = add("SaveImage", 1300, 0);
    add("MarkdownNote", 0, 400);
    ckpt.connect(0, sampler, "model"); ckpt.connect(1, pos, "clip"); ckpt.connect(1, neg, "clip"); ckpt.connect(2, decode, "vae");
    pos.connect(0, sampler, "positive"); neg.connect(0, sampler, "negative"); empty.connect(0, sampler, "latent_image");
    sampler.connect(0, decode, "samples"); decode.connect(0, save, "images");
    const set = (node, name, value) => { node.widgets.find(w => w.name === name).value = value; };
    set(ckpt, "ckpt_name", checkpoint); set(pos, "text", "a red circle"); set(neg, "text", "blurry");
    set(empty, "width", 64); set(empty, "height", 64); set(sampler, "steps", 3);
    return {workflow: app.graph.serialize(), prompt: (await app.graphToPrompt()).output};
}"""
"""SD1.5 txt2img built in the frontend as a user wires it (and a note), as the frontend saves it and as it queues it."""


def test_a_graph_saved_by_this_frontend_converts_as_the_frontend_queues_it_and_runs(page, comfy):
    """ui_to_api on the frontend's own saved format (1.32.9 on ComfyUI 0.3.75, 1.49.6 on 0.33.0) gives exactly the
    API graph that the frontend itself queues, and that graph runs."""
    built = page.evaluate(BUILD_TXT2IMG, CHECKPOINT_NAME)
    graph = ui_to_api(built["workflow"], comfy.object_info())
    assert sorted(node["class_type"] for node in graph.values()) == [
        "CLIPTextEncode", "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler", "SaveImage",
        "VAEDecode"]  # the note is gone
    assert graph == {node_id: {"class_type": node["class_type"], "inputs": node["inputs"]}
                     for node_id, node in built["prompt"].items()}
    assert comfy.output_images(comfy.run(graph))


SEARCH_OPEN = "() => document.activeElement?.getAttribute('placeholder')?.startsWith('Add a node')"


def open_node_search(page, attempts: int = 5) -> None:
    """Double-click the empty canvas until the node search box has the focus (on a busy machine the canvas may not
    take the first double-click just after the graph changed)."""
    for _ in range(attempts):
        page.mouse.dblclick(900, 700)
        try:
            page.wait_for_function(SEARCH_OPEN, timeout=4_000)
            return
        except playwright.TimeoutError:
            page.keyboard.press("Escape")
    raise AssertionError(f"the node search box did not open after {attempts} double-clicks on the canvas")


def test_expert_inputs_fold_away_and_the_search_finds_nodes_by_alias(chromium, comfy):
    """What a user of frontend 1.49.6 sees (node API with ``advanced`` and ``search_aliases``, ComfyUI 0.33): in the
    node view, Noise Awareness Guidance shows strength and mode, its expert inputs behind "Show advanced inputs"; the
    node search finds it by "exposure bias", a word only its aliases hold."""
    nag = comfy.object_info()["ErrorControlNoiseAwarenessGuidance"]
    if not nag.get("search_aliases"):
        pytest.skip(f"{comfy.host.id}'s node API has no advanced inputs or search aliases")
    settings = {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": True}
    try:
        with browser_page(chromium, comfy, settings) as page:
            page.evaluate("""() => { app.graph.clear(); const n = LiteGraph.createNode("ErrorControlNoiseAwarenessGuidance");
                                     n.pos = [300, 200]; app.graph.add(n); }""")
            button = page.locator('[data-testid="advanced-inputs-button"]')
            button.wait_for(timeout=30_000)
            node = page.locator("[data-node-id]").filter(has_text="Noise Awareness Guidance")
            expect(node.get_by_text("strength", exact=True)).to_be_visible(timeout=30_000)
            expect(node.get_by_text("delta", exact=True)).not_to_be_visible(timeout=30_000)
            button.click()
            expect(node.get_by_text("delta", exact=True)).to_be_visible(timeout=30_000)
            expect(node.get_by_text("start_percent", exact=True)).to_be_visible(timeout=30_000)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"advanced_inputs_{comfy.host.id}.png"))
            page.evaluate("() => app.graph.clear()")
            open_node_search(page)
            page.keyboard.type("exposure bias", delay=20)
            page.get_by_role("option").filter(has_text="Noise Awareness Guidance (model patch)").first.wait_for(timeout=10_000)
            page.screenshot(path=str(SCREENSHOTS / f"search_alias_{comfy.host.id}.png"))
            assert page.errors == []
    finally:
        store_settings(comfy.url, {"Comfy.VueNodes.Enabled": False})
