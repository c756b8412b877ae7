"""Build the example workflows of ``workflows/`` in ComfyUI's UI format from short Python descriptions.

The graphs are written with the input order of a live server's ``/object_info``, so they load in the frontend and convert
to the API format like a workflow saved by hand, and laid out in columns compact enough that a frontend which fits a
template to the window still draws the node text (``compact_columns``). Run ``python tools/workflows.py`` after
changing a node's inputs, and ``python tools/workflows.py --thumbnails [demo_out]`` after ``make demo`` for the template
browser's pictures.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.comfy_host import ComfyServer  # noqa: E402
from tools.families import FAMILIES  # noqa: E402
from tools.ui_to_api import MEDIA_UPLOADS, NOTE_TYPES, widget_slots  # noqa: E402

PLOT_HEIGHT = 230
"""Pixels the live plots of web/js/plots.js add to a node, per plot output (220 each, and a margin)."""
PREVIEW_HEIGHT = 224
"""Pixels reserved below the widgets of a node that shows images (Load Image, and after a run Save Image, Save
Animated WEBP): the frontend draws them in an image widget of at least 220 px (+4) and grows a shorter node over the
node below it."""
PREVIEW_NODES = {"LoadImage", "SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG"}
SLOT_ROW, WIDGET_ROW, BODY_MARGIN, TEXT_BOX = 20, 24, 14, 70
"""How LiteGraph's ``computeSize`` (frontends 1.32.9 and 1.58.1) sizes a node's body: a row per input or output slot
beside each other, a row per widget, a margin; a multiline text box is given ``TEXT_BOX`` so a prompt reads at a
glance."""
NODE_SLACK = 8
"""Pixels added to each node beyond the frontend's own minimum, so a frontend that measures a little differently does
not grow a node into the one below it."""
NODE_WIDTH, NOTE_WIDTH, GAP_X, GAP_Y, TOP = 340, 420, 40, 16, 40
"""Node and note widths and the gaps between columns and between a node and the title bar of the next one."""
TITLE_HEIGHT, TITLE_CHARACTER, TITLE_MARGIN = 30, 7, 50
"""LiteGraph's NODE_TITLE_HEIGHT (a node's title bar lies above its ``pos``), and the width a title needs: the frontend
widens a node to its title (14 px sans-serif: under 7 px a character, and the title box and margins)."""
FIT_VIEWPORTS, FIT_ZOOM, FIT_PADDING = ((1600, 1000), (1920, 950)), 0.75, 10
"""Frontend 1.58.1 opens a template fitted to the window (``fitView``: ``ds.fitToBounds`` of the nodes' bounds, padded
by 10, at 75 % of the canvas) whatever its saved view; the layout is chosen for the largest such scale on the canvas of
the browser tests (1600×1000) and of a full-HD screen's browser window (1920×950), whichever is smaller."""
TEXT_SCALE = 8 / 14
"""Below this canvas scale LiteGraph draws no node text (``MinFontSizeForLOD`` 8 px over ``NODE_TEXT_SIZE`` 14 px, at a
device pixel ratio of 1; in 1.32.9 and 1.58.1): every workflow's fitted scale must reach it, or it is not written."""
VIEW = {"scale": 0.9, "offset": [100, 160]}
"""The saved view (``extra.ds``), which 1.32.9 restores: 90 % zoom, the graph's top left corner clear of the
frontend's side bar and menu."""


@dataclass(frozen=True)
class Out:
    """Output ``slot`` of node ``node``: what a linked input receives."""

    node: int
    slot: int


@dataclass
class Node:
    id: int
    type: str
    links: dict
    widgets: list
    title: str | None = None
    outputs: list = field(default_factory=list)
    models: list = field(default_factory=list)

    def __getitem__(self, slot: int) -> Out:
        return Out(self.id, slot)


def node_height(node: dict, node_info: dict | None) -> int:
    """Pixels a serialised node's body needs (below its title bar): a note's text (60 characters a line at its width of
    420, 22 pixels a line, headings and gaps included); any other node as the frontend sizes it (``SLOT_ROW`` …), with
    its image preview or live plots and ``NODE_SLACK``."""
    if node_info is None:
        return 40 + 22 * sum(len(line) // 60 + 1 for line in node["widgets_values"][0].splitlines())
    widgets = [name for name in widget_slots(node_info) if name]
    specs = {**node_info["input"].get("optional", {}), **node_info["input"].get("required", {})}
    sockets = len(specs) - len(widgets)
    texts = sum(specs[name][0] == "STRING" and len(specs[name]) > 1 and bool(specs[name][1].get("multiline"))
                for name in widgets)
    height = SLOT_ROW * max(sockets, len(node["outputs"]), 1) + WIDGET_ROW * len(node["widgets_values"])
    height += (TEXT_BOX - WIDGET_ROW) * texts + BODY_MARGIN + NODE_SLACK
    height += PREVIEW_HEIGHT * (node["type"] in PREVIEW_NODES)
    return height + PLOT_HEIGHT * sum(out["type"] == "IMAGE" and "plot" in out["name"] for out in node["outputs"])


def node_width(node: dict) -> int:
    """Pixels a serialised node (not a note) is wide: ``NODE_WIDTH``, or what its title needs if that is more."""
    return max(NODE_WIDTH, TITLE_CHARACTER * len(node.get("title", "")) + TITLE_MARGIN)


def fitted_scale(width: float, height: float) -> float:
    """The smallest scale at which frontend 1.58.1 shows a graph of these bounds on the ``FIT_VIEWPORTS`` canvases."""
    padded = (width + 2 * FIT_PADDING, height + 2 * FIT_PADDING)
    return min(FIT_ZOOM * min(canvas_width / padded[0], canvas_height / padded[1])
               for canvas_width, canvas_height in FIT_VIEWPORTS)


def stack(order: list[int], heights: dict[int, int], limit: int) -> list[list[int]]:
    """``order`` cut into columns, each as tall as fits under ``limit`` (a node taller than that alone)."""
    columns: list[list[int]] = [[]]
    used = 0
    for node_id in order:
        need = TITLE_HEIGHT + heights[node_id] + GAP_Y
        if columns[-1] and used + need > limit:
            columns.append([])
            used = 0
        columns[-1].append(node_id)
        used += need
    return columns


def column_bounds(columns: list[list[int]], heights: dict[int, int], widths: dict[int, int]) -> tuple[int, int]:
    """Width and height of the nodes laid out in ``columns`` (title bars included, no trailing gaps)."""
    width = sum(max(widths[i] for i in column) for column in columns) + GAP_X * (len(columns) - 1)
    height = max(sum(TITLE_HEIGHT + heights[i] + GAP_Y for i in column) - GAP_Y for column in columns)
    return width, height


def compact_columns(orders: list[list[int]], heights: dict[int, int], widths: dict[int, int]) -> list[list[int]]:
    """The cut of one of ``orders`` into columns that frontend 1.58.1 fits to the window at the largest scale."""
    tallest, total = max(heights.values()), sum(TITLE_HEIGHT + h + GAP_Y for h in heights.values())
    limits = range(tallest + TITLE_HEIGHT + GAP_Y, total + 10, 10)
    cuts = (stack(order, heights, limit) for order in orders for limit in limits)
    return max(cuts, key=lambda columns: fitted_scale(*column_bounds(columns, heights, widths)))


def input_spec(node_info: dict, name: str) -> list:
    return {**node_info["input"].get("optional", {}), **node_info["input"].get("required", {})}[name]


def widgets_values(node_info: dict, values: dict) -> list:
    """A node's ``widgets_values`` in the frontend's order (``ui_to_api.widget_slots``) from the values given by name.

    Unnamed inputs take their default (a combo its first option); a seed's control widget is saved as ``"fixed"``, a
    combo's control and filter as ``"fixed", ""``, an upload button as ``"image"``.
    """
    slots, saved = widget_slots(node_info), []
    required = node_info["input"].get("required", {}).values()
    upload = any(len(spec) > 1 and any(spec[1].get(key) for key in MEDIA_UPLOADS) for spec in required)
    for i, slot in enumerate(slots):
        if slot is None:
            last = i == len(slots) - 1
            saved.append("image" if last and upload else ("" if slots[i - 1] is None else "fixed"))
            continue
        spec = input_spec(node_info, slot)
        options = spec[1] if len(spec) > 1 else {}
        choices = spec[0] if isinstance(spec[0], list) else options.get("options")
        saved.append(values.get(slot, options.get("default", choices[0] if choices else None)))
    return saved


class Graph:
    """A workflow under construction; ``add`` returns a node whose ``[slot]`` links into later nodes."""

    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[Node] = []

    def add(self, class_type: str, title: str | None = None, **inputs) -> Node:
        spec = self.info[class_type]
        declared = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        unknown = set(inputs) - set(declared)
        if unknown:
            raise KeyError(f"{class_type} has no input(s) {sorted(unknown)}")
        links = {name: (declared[name][0], value) for name, value in inputs.items() if isinstance(value, Out)}
        widgets = widgets_values(spec, {name: value for name, value in inputs.items() if not isinstance(value, Out)})
        models = [MODELS[value] for value in inputs.values() if isinstance(value, str) and value in MODELS]
        node = Node(len(self.nodes) + 1, class_type, links, widgets, title,
                    list(zip(spec["output_name"], spec["output"])), models)
        self.nodes.append(node)
        return node

    def note(self, text: str, title: str) -> Node:
        """A MarkdownNote: a node of the frontend only (not in ``/object_info``), left out when the graph is queued."""
        node = Node(len(self.nodes) + 1, "MarkdownNote", {}, [text], title)
        self.nodes.append(node)
        return node

    def _depths(self) -> dict[int, int]:
        """Each node's distance from the graph's sources: one more than its deepest input's."""
        depth: dict[int, int] = {}
        for node in self.nodes:  # nodes are added after their inputs, so one pass suffices
            depth[node.id] = max((depth[out.node] + 1 for _, out in node.links.values()), default=0)
        return depth

    def _lay_out(self, serialised: dict[int, dict]) -> None:
        """Sets each node's ``pos`` and ``size``: in a reading order (as added, or by depth then as added: either way
        every input lies above or left of the node it feeds), cut into the columns that a fitted window shows largest
        (``compact_columns``)."""
        depth = self._depths()
        orders = [sorted(serialised), sorted(serialised, key=lambda node_id: (depth[node_id], node_id))]
        info = {i: None if node["type"] in NOTE_TYPES else self.info[node["type"]] for i, node in serialised.items()}
        heights = {i: node_height(node, info[i]) for i, node in serialised.items()}
        widths = {i: NOTE_WIDTH if info[i] is None else node_width(node) for i, node in serialised.items()}
        columns = compact_columns(orders, heights, widths)
        if (scale := fitted_scale(*column_bounds(columns, heights, widths))) < TEXT_SCALE:
            raise ValueError(f"the graph opens fitted at {scale:.0%}, below {TEXT_SCALE:.0%} where node text is drawn: "
                             "split the workflow or make its nodes smaller")
        left = 0
        for column in columns:
            top = TOP
            for node_id in column:
                serialised[node_id].update(pos=[left, top + TITLE_HEIGHT], size=[widths[node_id], heights[node_id]])
                top += TITLE_HEIGHT + heights[node_id] + GAP_Y
            left += max(widths[node_id] for node_id in column) + GAP_X

    def to_ui(self) -> dict:
        links, link_id = [], 0
        serialised = {n.id: {"id": n.id, "type": n.type, "flags": {}, "order": i, "mode": 0, "inputs": [],
                             "outputs": [{"name": name, "type": kind, "links": [], "slot_index": slot}
                                         for slot, (name, kind) in enumerate(n.outputs)],
                             "properties": {"Node name for S&R": n.type}, "widgets_values": n.widgets}
                      for i, n in enumerate(self.nodes)}
        for node in self.nodes:
            if node.title:
                serialised[node.id]["title"] = node.title
            if node.models:
                serialised[node.id]["properties"]["models"] = node.models
            for name, (kind, out) in node.links.items():
                link_id += 1
                slot = len(serialised[node.id]["inputs"])
                serialised[node.id]["inputs"].append({"name": name, "type": kind, "link": link_id})
                serialised[out.node]["outputs"][out.slot]["links"].append(link_id)
                links.append([link_id, out.node, out.slot, node.id, slot, kind])
        self._lay_out(serialised)
        return {"last_node_id": len(self.nodes), "last_link_id": link_id, "nodes": list(serialised.values()),
                "links": links, "groups": [], "config": {}, "extra": {"ds": dict(VIEW)}, "version": 0.4}


CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
EXAMPLE_IMAGE = "error_control_example.png"
CLIP_L, CLIP_G, T5XXL = "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"
UMT5_XXL = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"


def hugging_face(name: str, repo: str, path: str, directory: str) -> dict:
    """A ``models`` entry of a loader (``properties.models``): where the file is published and the model folder it goes
    in; the frontend's missing-model dialog offers it for download."""
    return {"name": name, "url": f"https://huggingface.co/{repo}/resolve/main/{path}", "directory": directory}


MODELS = {entry["name"]: entry for entry in (
    hugging_face(CHECKPOINT, "Comfy-Org/stable-diffusion-v1-5-archive", CHECKPOINT, "checkpoints"),
    hugging_face("flux1-dev.safetensors", "black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors", "diffusion_models"),
    hugging_face("ae.safetensors", "Comfy-Org/Lumina_Image_2.0_Repackaged", "split_files/vae/ae.safetensors", "vae"),
    hugging_face(CLIP_L, "comfyanonymous/flux_text_encoders", CLIP_L, "text_encoders"),
    hugging_face(T5XXL, "comfyanonymous/flux_text_encoders", T5XXL, "text_encoders"),
    hugging_face(CLIP_G, "Comfy-Org/stable-diffusion-3.5-fp8", f"text_encoders/{CLIP_G}", "text_encoders"),
    hugging_face("sd3.5_medium.safetensors", "stabilityai/stable-diffusion-3.5-medium", "sd3.5_medium.safetensors",
                 "checkpoints"),
    *(hugging_face(name, "Comfy-Org/Wan_2.1_ComfyUI_repackaged", f"split_files/{folder}/{name}", folder)
      for name, folder in (("wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models"),
                           ("wan_2.1_vae.safetensors", "vae"), (UMT5_XXL, "text_encoders"))))}
"""Every public model file the workflows load, by file name, with where it is published (Hugging Face). FLUX.1-dev and
SD3.5 Medium are gated there: accept their licence on the model's page first."""


def model_files(*names: str) -> str:
    """A note's list of the model files a workflow loads: each file, its folder under ``models/`` and where to get it."""
    return "\n".join(f"- `{MODELS[name]['directory']}/{name}`: [download]({MODELS[name]['url']})" for name in names)


def decode_and_save(g: Graph, vae: Out, samples: Out, prefix: str, title: str, fps: float | None = None) -> None:
    """VAE Decode → Save Image; with ``fps``, the frames of a video latent → Save Animated WEBP at that rate."""
    images = g.add("VAEDecode", samples=samples, vae=vae)[0]
    if fps is None:
        g.add("SaveImage", title=title, images=images, filename_prefix=prefix)
    else:
        g.add("SaveAnimatedWEBP", title=title, images=images, filename_prefix=prefix, fps=fps)


def ddim_inversion_reconstruct(g: Graph) -> None:
    """Image → VAE Encode → DDIM inversion (cfg 1) → euler back down the same levels → decode, beside the decoded input."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    image = g.add("LoadImage", image=EXAMPLE_IMAGE)
    latent = g.add("VAEEncode", pixels=image[0], vae=ckpt[2])
    positive = g.add("CLIPTextEncode", title="Prompt (describes the image)", text="a photo", clip=ckpt[1])
    negative = g.add("CLIPTextEncode", title="Negative prompt", text="", clip=ckpt[1])
    guider = g.add("CFGGuider", model=ckpt[0], positive=positive[0], negative=negative[0], cfg=1.0)
    schedule = g.add("BasicScheduler", model=ckpt[0], scheduler="normal", steps=20, denoise=1.0)
    levels = g.add("ErrorControlInversionSigmas", model=ckpt[0], sigmas=schedule[0])
    no_noise = g.add("DisableNoise")
    invert = g.add("SamplerCustomAdvanced", title="Invert (image → noise)", noise=no_noise[0], guider=guider[0],
                   sampler=g.add("ErrorControlDDIMInversionSampler")[0], sigmas=levels[0], latent_image=latent[0])
    rebuild = g.add("SamplerCustomAdvanced", title="Reconstruct (noise → image)", noise=no_noise[0], guider=guider[0],
                    sampler=g.add("KSamplerSelect", sampler_name="euler")[0], sigmas=levels[1],
                    latent_image=invert[0])
    decode_and_save(g, ckpt[2], latent[0], "ddim_inversion/input", "Input (VAE round trip)")
    decode_and_save(g, ckpt[2], rebuild[0], "ddim_inversion/reconstruction", "Reconstruction")


PROFILE = "vrg_profile"
FLUX_GUIDANCE = 3.5
"""Flux-dev's usual distilled guidance (FluxGuidance); its sampler runs at cfg 1."""


def user_file(family: str, folder: str) -> str:
    """The name users' file of a family has in a ComfyUI model folder (tools/families.py; the test servers carry a tiny
    file under that name, so the workflows run there unchanged)."""
    return next(tiny.name for tiny in FAMILIES[family].files if tiny.folder == folder)


def prompts(g: Graph, clip: Out, text: str) -> tuple[Node, Node]:
    positive = g.add("CLIPTextEncode", title="Prompt", text=text, clip=clip)
    return positive, g.add("CLIPTextEncode", title="Negative prompt", text="blurry, low quality", clip=clip)


def flux_loaders(g: Graph) -> tuple[Node, Node, Node]:
    """Flux.1-dev as ComfyUI's Flux template loads it: the diffusion model, CLIP-L + T5-XXL, the ``ae`` VAE."""
    unet = g.add("UNETLoader", unet_name=user_file("flux", "diffusion_models"))
    clip = g.add("DualCLIPLoader", clip_name1=CLIP_L, clip_name2=T5XXL, type="flux")
    return unet, clip, g.add("VAELoader", vae_name=user_file("flux", "vae"))


def flux_prompt(g: Graph, clip: Out, text: str, title: str) -> Node:
    """CLIPTextEncode → FluxGuidance: Flux-dev takes its guidance in the conditioning."""
    encoded = g.add("CLIPTextEncode", title=title, text=text, clip=clip)
    return g.add("FluxGuidance", conditioning=encoded[0], guidance=FLUX_GUIDANCE)


def flux_negative(g: Graph, positive: Node) -> Node:
    """The negative input of a sampler at cfg 1: never evaluated, so zeroed rather than prompted."""
    return g.add("ConditioningZeroOut", title="Negative (unused at cfg 1)", conditioning=positive[0])


def ksampler_and_save(g: Graph, model: Out, positive: Node, negative: Node, latent: Node, vae: Out, label: str,
                      prefix: str, **sampling) -> None:
    """One of several KSamplers side by side (titled by ``label``), decoded and saved as ``prefix``."""
    sampled = g.add("KSampler", title=f"KSampler ({label})", model=model, positive=positive[0], negative=negative[0],
                    latent_image=latent[0], seed=7, **sampling)
    decode_and_save(g, vae, sampled[0], prefix, f"Sampled ({label})")


def plain_and_guided(g: Graph, model: Out, positive: Node, negative: Node, latent: Node, vae: Out, folder: str,
                     estimator: Out, **sampling) -> None:
    """The same KSampler plain and with the Noise Awareness Guidance patch (node defaults: estimator mode, w 0.1),
    side by side."""
    patched = g.add("ErrorControlNoiseAwarenessGuidance", model=model, strength=0.1, mode="estimator", delta=0.15,
                    start_percent=0.5, end_percent=1.0, estimator=estimator)
    for label, source in (("plain", model), ("noise awareness guidance", patched[0])):
        ksampler_and_save(g, source, positive, negative, latent, vae, label, f"{folder}/{label.replace(' ', '_')}",
                          **sampling)


def clean_latents(g: Graph, vae: Out) -> Node:
    """One example image, encoded and repeated: where a user connects 4–16 of their own."""
    image = g.add("LoadImage", image=EXAMPLE_IMAGE)
    return g.add("RepeatLatentBatch", title="Clean latents (use 4–16 of your own images)",
                 samples=g.add("VAEEncode", pixels=image[0], vae=vae)[0], amount=4)


def vrg_calibration(g: Graph, model: Out, clip: Out, vae: Out, profile_name: str) -> Node:
    """Encoded images → VRG Calibrate with an empty prompt at cfg 1, and the schedule search for the 20 euler steps the
    KSampler beside it runs."""
    clean = clean_latents(g, vae)
    empty_prompt = g.add("CLIPTextEncode", title="Empty prompt (calibration)", text="", clip=clip)
    return g.add("ErrorControlVRGCalibrate", model=model, latent=clean[0], positive=empty_prompt[0], grid_points=32,
                 profile_name=profile_name, sampler_name="euler", search_steps="20")


def noise_estimator(g: Graph, model: Out, vae: Out, name: str, folder: str) -> Node:
    """Encoded images → Train Noise Estimator (the default mode's estimator), its check plot saved."""
    trained = g.add("ErrorControlTrainNoiseEstimator", model=model, latent=clean_latents(g, vae)[0], iterations=1500,
                    batch_size=32, seed=0, estimator_name=name)
    g.add("SaveImage", title="Noise estimator: estimated vs true sigma", images=trained[1],
          filename_prefix=f"{folder}/noise_estimator")
    return trained


SEARCH_TITLE = "Schedule search: each candidate's error"


def vrg_calibrate_and_sample(g: Graph) -> None:
    """Calibrate VRG on encoded images, then the same KSampler with the 'normal' and the 'vrg' schedule side by side."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    calibrate = vrg_calibration(g, ckpt[0], ckpt[1], ckpt[2], PROFILE)
    g.add("SaveImage", title="Error profile", images=calibrate[2], filename_prefix="vrg/error_profile")
    g.add("SaveImage", title=SEARCH_TITLE, images=calibrate[4], filename_prefix="vrg/schedule_search")
    positive, negative = prompts(g, ckpt[1], "a lighthouse on a cliff at sunset")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    for scheduler, model in (("normal", ckpt[0]), ("vrg", calibrate[0])):
        ksampler_and_save(g, model, positive, negative, latent, ckpt[2], scheduler, f"vrg/{scheduler}", steps=20,
                          cfg=7.0, sampler_name="euler", scheduler=scheduler)


def vrg_flux(g: Graph) -> None:
    """Flux-dev: calibrate VRG on encoded images, then KSampler at cfg 1 with the base 'normal' and the 'vrg' schedule
    side by side."""
    unet, clip, vae = flux_loaders(g)
    calibrate = vrg_calibration(g, unet[0], clip[0], vae[0], "vrg_flux_profile")
    g.add("SaveImage", title="Error profile", images=calibrate[2], filename_prefix="vrg_flux/error_profile")
    g.add("SaveImage", title=SEARCH_TITLE, images=calibrate[4], filename_prefix="vrg_flux/schedule_search")
    positive = flux_prompt(g, clip[0], "a lighthouse on a cliff at sunset", "Prompt")
    negative = flux_negative(g, positive)
    latent = g.add("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    for scheduler, model in (("normal", unet[0]), ("vrg", calibrate[0])):
        ksampler_and_save(g, model, positive, negative, latent, vae[0], scheduler, f"vrg_flux/{scheduler}", steps=20,
                          cfg=1.0, sampler_name="euler", scheduler=scheduler)


def vrg_saved_profile(g: Graph) -> None:
    """A saved profile → VRG Scheduler → SamplerCustomAdvanced, with the base vs VRG σ plot."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    loaded = g.add("ErrorControlVRGLoadProfile", model=ckpt[0], profile_name=f"{PROFILE}.safetensors")
    schedule = g.add("ErrorControlVRGScheduler", model=ckpt[0], profile=loaded[1], scheduler="normal", steps=20)
    g.add("SaveImage", title="Base vs VRG σ", images=schedule[1], filename_prefix="vrg/schedule")
    positive, negative = prompts(g, ckpt[1], "a lighthouse on a cliff at sunset")
    guider = g.add("CFGGuider", model=ckpt[0], positive=positive[0], negative=negative[0], cfg=7.0)
    sampled = g.add("SamplerCustomAdvanced", noise=g.add("RandomNoise", noise_seed=7)[0], guider=guider[0],
                    sampler=g.add("KSamplerSelect", sampler_name="euler")[0], sigmas=schedule[0],
                    latent_image=g.add("EmptyLatentImage", width=512, height=512, batch_size=1)[0])
    decode_and_save(g, ckpt[2], sampled[0], "vrg/saved_profile", "Sampled on the VRG schedule")


TRACE = "polaris_example"


def polaris_inversion(g: Graph, model: Out, vae: Out, latent: Node, source: Node, negative: Node, steps: int,
                      scheduler: str, prefix: str, fps: float | None = None) -> Node:
    """POLARIS Inversion of an encoded image (or video) with the prompt that describes it; saves the ω plot and the
    decoded input (``fps``: as an animated WebP). Returns the inversion."""
    inversion = g.add("ErrorControlPolarisInversion", model=model, positive=source[0], negative=negative[0],
                      latent=latent[0], steps=steps, scheduler=scheduler)
    g.add("SaveImage", title="omega per step", images=inversion[2], filename_prefix=f"{prefix}/omega")
    decode_and_save(g, vae, latent[0], f"{prefix}/input", "Input (VAE round trip)", fps)
    return inversion


def polaris_sd15_inversion(g: Graph, source_prompt: str) -> tuple[Node, Node, Node, Node]:
    """Image → VAE Encode → POLARIS Inversion with the source prompt; returns checkpoint, source prompt, inversion,
    negative."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    latent = g.add("VAEEncode", pixels=g.add("LoadImage", image=EXAMPLE_IMAGE)[0], vae=ckpt[2])
    source = g.add("CLIPTextEncode", title="Source prompt (describes the image)", text=source_prompt, clip=ckpt[1])
    negative = g.add("CLIPTextEncode", title="Negative prompt", text="", clip=ckpt[1])
    inversion = polaris_inversion(g, ckpt[0], ckpt[2], latent, source, negative, 50, "normal", "polaris")
    return ckpt, source, inversion, negative


def polaris_reconstruct(g: Graph) -> None:
    """POLARIS inversion → POLARIS Denoise with the same prompt: the reconstruction beside the input; the trace is saved."""
    ckpt, source, inversion, negative = polaris_sd15_inversion(g, "a photo")
    g.add("ErrorControlPolarisSaveTrace", trace=inversion[1], trace_name=TRACE)
    rebuilt = g.add("ErrorControlPolarisDenoise", model=ckpt[0], positive=source[0], negative=negative[0],
                    trace=inversion[1])
    decode_and_save(g, ckpt[2], rebuilt[0], "polaris/reconstruction", "Reconstruction")


def polaris_edit(g: Graph) -> None:
    """Invert with the source prompt, denoise with an edited one: POLARIS Denoise, and the same through
    POLARIS Replay + SamplerCustomAdvanced."""
    ckpt, _, inversion, negative = polaris_sd15_inversion(g, "a photo of a cat")
    edit = g.add("CLIPTextEncode", title="Edited prompt", text="a photo of a dog", clip=ckpt[1])
    edited = g.add("ErrorControlPolarisDenoise", model=ckpt[0], positive=edit[0], negative=negative[0],
                   trace=inversion[1], cfg=7.0, blend=0.2)
    decode_and_save(g, ckpt[2], edited[0], "polaris/edit", "Edit (POLARIS Denoise)")
    guider = g.add("ErrorControlPolarisReplay", model=ckpt[0], positive=edit[0], negative=negative[0],
                   trace=inversion[1], cfg=7.0, blend=0.2)
    replayed = g.add("SamplerCustomAdvanced", title="Edit (SamplerCustomAdvanced)", noise=g.add("DisableNoise")[0],
                     guider=guider[0], sampler=g.add("KSamplerSelect", sampler_name="euler")[0],
                     sigmas=g.add("ErrorControlPolarisTraceSigmas", trace=inversion[1])[0], latent_image=inversion[0])
    decode_and_save(g, ckpt[2], replayed[0], "polaris/edit_custom", "Edit (POLARIS Replay guider)")


def polaris_flux_reconstruct_edit(g: Graph) -> None:
    """Flux-dev: invert an image with its source prompt, then POLARIS Denoise with the source prompt (reconstruction)
    and with an edited one, at cfg 1 with FluxGuidance."""
    unet, clip, vae = flux_loaders(g)
    latent = g.add("VAEEncode", pixels=g.add("LoadImage", image=EXAMPLE_IMAGE)[0], vae=vae[0])
    source = flux_prompt(g, clip[0], "a photo of a cat", "Source prompt (describes the image)")
    edit = flux_prompt(g, clip[0], "a photo of a dog", "Edited prompt")
    negative = flux_negative(g, source)
    inversion = polaris_inversion(g, unet[0], vae[0], latent, source, negative, 28, "simple", "polaris_flux")
    for label, prompt in (("reconstruction", source), ("edit", edit)):
        denoised = g.add("ErrorControlPolarisDenoise", title=f"POLARIS Denoise ({label})", model=unet[0],
                         positive=prompt[0], negative=negative[0], trace=inversion[1], cfg=1.0, blend=0.0)
        decode_and_save(g, vae[0], denoised[0], f"polaris_flux/{label}", label.capitalize())


WAN_FPS = 16.0
def wan_video_inversion(g: Graph) -> None:
    """Wan 2.1 text-to-video: frames → VAE Encode → POLARIS Inversion with a prompt that describes the clip → POLARIS
    Denoise with the same prompt → decode, as animated WebP beside the input's VAE round trip."""
    unet = g.add("UNETLoader", unet_name=user_file("wan", "diffusion_models"))
    model = g.add("ModelSamplingSD3", model=unet[0], shift=8.0)
    clip = g.add("CLIPLoader", clip_name=UMT5_XXL, type="wan")
    vae = g.add("VAELoader", vae_name=user_file("wan", "vae"))
    image = g.add("ImageScale", image=g.add("LoadImage", image=EXAMPLE_IMAGE)[0], upscale_method="lanczos", width=832,
                  height=480, crop="center")
    frames = g.add("RepeatImageBatch", title="Frames (use your clip's frames)", image=image[0], amount=33)
    latent = g.add("VAEEncode", pixels=frames[0], vae=vae[0])
    source = g.add("CLIPTextEncode", title="Prompt (describes the clip)", text="a yellow ball on a colourful backdrop",
                   clip=clip[0])
    negative = g.add("CLIPTextEncode", title="Negative prompt", text="blurry, static, low quality, distorted",
                     clip=clip[0])
    inversion = polaris_inversion(g, model[0], vae[0], latent, source, negative, 30, "simple", "wan_inversion", WAN_FPS)
    rebuilt = g.add("ErrorControlPolarisDenoise", model=model[0], positive=source[0], negative=negative[0],
                    trace=inversion[1], cfg=6.0, blend=0.0)
    decode_and_save(g, vae[0], rebuilt[0], "wan_inversion/reconstruction", "Reconstruction", WAN_FPS)


def noise_awareness_guidance(g: Graph) -> None:
    """Train a noise estimator on encoded images; KSampler with and without the Noise Awareness Guidance patch (its
    default, estimator mode), and the Noise Shift Meter (plain vs guided, levels read by the estimator) beside them."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    positive, negative = prompts(g, ckpt[1], "a lighthouse on a cliff at sunset")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    estimator = noise_estimator(g, ckpt[0], ckpt[2], "noise_awareness_estimator", "noise_awareness")
    plain_and_guided(g, ckpt[0], positive, negative, latent, ckpt[2], "noise_awareness", estimator[0], steps=20, cfg=7.0,
                     sampler_name="euler", scheduler="normal")
    meter = g.add("ErrorControlNoiseShiftMeter", model=ckpt[0], positive=positive[0], negative=negative[0],
                  latent_image=latent[0], seed=7, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal",
                  strength=0.1, mode="estimator", delta=0.15, start_percent=0.5, end_percent=1.0,
                  estimator=estimator[0])
    g.add("SaveImage", title="Noise shift: scheduled vs estimated sigma", images=meter[0],
          filename_prefix="noise_awareness/noise_shift")


def noise_awareness_guidance_sd35(g: Graph) -> None:
    """SD3.5 Medium with a real negative prompt at cfg 4.5: the same KSampler with and without the Noise Awareness
    Guidance patch, side by side."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=user_file("sd35", "checkpoints"))
    clip = g.add("TripleCLIPLoader", clip_name1=CLIP_L, clip_name2=CLIP_G, clip_name3=T5XXL)
    positive = g.add("CLIPTextEncode", title="Prompt", text="a lighthouse on a cliff at sunset", clip=clip[0])
    negative = g.add("CLIPTextEncode", title="Negative prompt", text="blurry, low quality, deformed, watermark",
                     clip=clip[0])
    latent = g.add("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    estimator = noise_estimator(g, ckpt[0], ckpt[2], "noise_awareness_sd35_estimator", "noise_awareness_sd35")
    plain_and_guided(g, ckpt[0], positive, negative, latent, ckpt[2], "noise_awareness_sd35", estimator[0], steps=28, cfg=4.5,
                     sampler_name="euler", scheduler="sgm_uniform")


def diffier_cfg_sweep(g: Graph) -> None:
    """The same prompt, seed and steps at cfg 4 and 10, with euler and with DiffIER side by side, and DiffIER's Gap
    Meter (plain vs DiffIER gap per step, and the cfg weight it used) at the higher cfg."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    positive, negative = prompts(g, ckpt[1], "a lighthouse on a cliff at sunset")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    # the meter and its two plots first: they fill a column, and the four samplers with their saves the rest
    meter = g.add("ErrorControlDiffIERGapMeter", model=ckpt[0], positive=positive[0], negative=negative[0],
                  latent_image=latent[0], seed=7, steps=12, cfg=10.0, scheduler="normal", iterations=1, damping=1.0)
    g.add("SaveImage", title="Gap per step: plain vs DiffIER", images=meter[1], filename_prefix="diffier/gap")
    g.add("SaveImage", title="DiffIER cfg weight per step", images=meter[2], filename_prefix="diffier/weight")
    for cfg in (4.0, 10.0):
        for sampler in ("euler", "diffier"):
            sampled = g.add("KSampler", title=f"KSampler ({sampler}, cfg {cfg:g})", model=ckpt[0], positive=positive[0],
                            negative=negative[0], latent_image=latent[0], seed=7, steps=12, cfg=cfg, sampler_name=sampler,
                            scheduler="normal")
            decode_and_save(g, ckpt[2], sampled[0], f"diffier/cfg{cfg:g}_{sampler}", f"{sampler}, cfg {cfg:g}")


SD15_FILES = model_files(CHECKPOINT)
FLUX_FILES = model_files("flux1-dev.safetensors", CLIP_L, T5XXL, "ae.safetensors")
GATED = "FLUX.1-dev and SD3.5 Medium are gated on Hugging Face: accept the licence on the model's page first."
IMAGE_STEP = "Load your image in **Load Image** (any size; 512 px suits SD1.5)"


@dataclass(frozen=True)
class Workflow:
    """An example workflow: its file name (the template browser's title and description) and the note that opens it."""

    stem: str
    build: object
    result: str
    """The picture its thumbnail shows, in a ``make demo`` output folder (``{stem}``: this workflow's file name)."""
    note: str


OMEGA, PROFILE_PLOT = "images/{stem}__omega_*.png", "images/{stem}__error_profile_*.png"
SHIFT_PLOT, ESTIMATOR_PLOT = "images/{stem}__noise_shift_*.png", "images/{stem}__noise_estimator_*.png"

WORKFLOWS = [
    Workflow("DDIM inversion - reconstruct an image (SD1.5)", ddim_inversion_reconstruct, "ddim_inversion_testbed.png", (
        "## DDIM inversion: an image to noise and back\n"
        "Inverts an image with the **DDIM Inversion** sampler (cfg 1) and samples the noise back down the same levels "
        "with euler: the reconstruction beside the input's VAE round trip. How far apart they are is the inversion's "
        "error.\n\n**Model files**\n" + SD15_FILES + "\n\n"
        "1. " + IMAGE_STEP + ".\n2. Describe it in the prompt.\n3. Run: compare **Reconstruction** with **Input**.")),
    Workflow("POLARIS - invert and reconstruct an image (SD1.5)", polaris_reconstruct, OMEGA, (
        "## POLARIS: invert with guidance, rebuild the image\n"
        "**POLARIS Inversion** takes the image to noise by DDIM inversion with a guidance scale ω per step, solved by "
        "least squares so that the steps undo (its ω plot). **POLARIS Denoise** with the same prompt rebuilds the "
        "image from the trace; the trace is also saved to `models/polaris_traces` for later edits.\n\n"
        "**Model files**\n" + SD15_FILES + "\n\n"
        "1. " + IMAGE_STEP + ".\n2. Describe it in **Source prompt**.\n"
        "3. Run: **Reconstruction** beside **Input**, and the ω per step.")),
    Workflow("POLARIS - edit an image by its prompt (SD1.5)", polaris_edit, OMEGA, (
        "## POLARIS: edit an image by changing its prompt\n"
        "Inverts the image with the prompt that describes it, then denoises the same trace with an edited prompt: "
        "once with **POLARIS Denoise**, once through the **POLARIS Replay** guider in SamplerCustomAdvanced (the same "
        "result, for graphs built on custom sampling). `blend` keeps more of the source.\n\n**Model files**\n"
        + SD15_FILES + "\n\n1. " + IMAGE_STEP + ".\n2. **Source prompt**: what the image shows; **Edited prompt**: "
        "the change (cat → dog).\n3. Run; raise `blend` (0–1) if the edit drifts from the source.")),
    Workflow("POLARIS - reconstruct and edit an image (Flux.1-dev)", polaris_flux_reconstruct_edit, OMEGA, (
        "## POLARIS on Flux.1-dev\n"
        "Flux-dev is guidance-distilled: it samples at **cfg 1** and takes its guidance through **FluxGuidance**, so "
        "there is no negative branch for POLARIS' ω to weigh. POLARIS Inversion sees this and inverts with **ω ≡ 1**: "
        "plain DDIM inversion, one model call a step (its ω plot says so). The negative inputs are never evaluated. "
        "Reconstruction: POLARIS Denoise with the source prompt; edit: the same trace with the edited prompt (at cfg 1 "
        "`blend` has no effect).\n\n**Model files**\n" + FLUX_FILES + "\n\n" + GATED + "\n\n"
        "1. " + IMAGE_STEP.replace("512 px suits SD1.5", "1024 px suits Flux") + ".\n"
        "2. **Source prompt**: what it shows; **Edited prompt**: the change.\n3. Run: **Reconstruction** and **Edit**.")),
    Workflow("POLARIS - invert and reconstruct a video (Wan 2.1 t2v 1.3B)", wan_video_inversion, OMEGA, (
        "## A clip in, the same clip out (Wan 2.1)\n"
        "The still image repeated as 33 frames stands in for a clip. POLARIS Inversion takes the clip to noise with a "
        "prompt that describes it; POLARIS Denoise with the same prompt brings it back, saved as animated WebP beside "
        "the input. Change the prompt of the denoise to edit the clip.\n\n**Model files**\n"
        + model_files("wan2.1_t2v_1.3B_fp16.safetensors", UMT5_XXL, "wan_2.1_vae.safetensors") + "\n\n"
        "1. Load your clip's frames in place of **Frames** (4k+1 frames, 832×480 for the 1.3B model).\n"
        "2. Describe the clip in **Prompt**.\n3. Run: **Reconstruction** beside **Input**.")),
    Workflow("VRG - calibrate a schedule and sample (SD1.5)", vrg_calibrate_and_sample, PROFILE_PLOT, (
        "## VRG: a step schedule from the model's own error\n"
        "**VRG Calibrate** measures on a few of your images where the model's prediction error is large and writes an "
        "error profile (its plot) to `models/vrg_profiles`; the `vrg` scheduler then spends the steps where the error is. "
        "The same KSampler runs with `normal` and with `vrg` side by side.\n\n**Model files**\n" + SD15_FILES + "\n\n"
        "1. Connect 4–16 of your images to **Clean latents** (one example repeated is there).\n"
        "2. Set your prompt; `search_steps` is 20, the KSampler's steps: the search measures every scheduler with and "
        "without VRG once (thousands of model calls, minutes on a GPU) and `vrg` then hands out the winner. Add the "
        "other step counts you sample with (e.g. `10, 20, 30`).\n3. Run: **Sampled (vrg)** beside **Sampled (normal)**; "
        "the profile and the choices are kept.")),
    Workflow("VRG - sample with a saved profile (SD1.5)", vrg_saved_profile, "images/{stem}__schedule_0*.png", (
        "## VRG: sample with a saved profile\n"
        "**VRG Load Profile** reads a profile that VRG Calibrate saved; **VRG Scheduler** turns it into σ for "
        "SamplerCustomAdvanced and plots the base against the VRG schedule.\n\n**Model files**\n" + SD15_FILES + "\n\n"
        "1. Run *VRG - calibrate a schedule and sample (SD1.5)* once: it saves `vrg_profile`.\n"
        "2. Pick it in **VRG Load Profile**.\n3. Run: the sample and the two schedules.")),
    Workflow("VRG - calibrate a schedule and sample (Flux.1-dev)", vrg_flux, PROFILE_PLOT, (
        "## VRG on Flux.1-dev\n"
        "VRG Calibrate on a few of your images (empty prompt, cfg 1), then KSampler at cfg 1 with FluxGuidance, with "
        "the `normal` and the `vrg` schedule side by side.\n\n**Model files**\n" + FLUX_FILES + "\n\n" + GATED
        + "\n\n1. Connect 4–16 of your images to **Clean latents**.\n2. Set your prompt.\n"
        "3. Run: **Sampled (vrg)** beside **Sampled (normal)**.")),
    Workflow("Noise Awareness Guidance - plain vs guided, with its estimator (SD1.5)", noise_awareness_guidance, SHIFT_PLOT, (
        "## Noise Awareness Guidance: keep each step at its noise level\n"
        "**Train Noise Estimator** learns, on a few of your images, to read a latent's noise level; the **Noise Awareness "
        "Guidance** patch uses it to pull each step back to its scheduled level. The same KSampler runs plain and "
        "patched, and the **Noise Shift Meter** plots scheduled vs estimated σ for both.\n\n**Model files**\n"
        + SD15_FILES + "\n\n1. Connect 4–16 of your images to **Clean latents** (training takes a few minutes once; "
        "the estimator is saved to `models/noise_awareness_estimators`).\n2. Set your prompt.\n"
        "3. Run: plain beside guided, and the noise-shift plot.")),
    Workflow("Noise Awareness Guidance - plain vs guided (SD3.5 Medium)", noise_awareness_guidance_sd35, ESTIMATOR_PLOT, (
        "## Noise Awareness Guidance on SD3.5 Medium\n"
        "A real negative prompt at cfg 4.5: the same KSampler plain and with the Noise Awareness Guidance patch, its "
        "estimator trained on a few of your images.\n\n**Model files**\n"
        + model_files("sd3.5_medium.safetensors", CLIP_L, CLIP_G, T5XXL) + "\n\n" + GATED + "\n\n"
        "1. Connect 4–16 of your images to **Clean latents**.\n2. Set the prompt and the negative prompt.\n"
        "3. Run: plain beside guided, and the estimator's check plot.")),
    Workflow("DiffIER - euler vs DiffIER at cfg 4 and 10 (SD1.5)", diffier_cfg_sweep, "images/{stem}__gap_*.png", (
        "## DiffIER: less drift at high cfg\n"
        "The same prompt, seed and 12 steps at cfg 4 and cfg 10, with `euler` and with the `diffier` sampler side by "
        "side. **DiffIER Gap Meter** plots, per step, the gap between the guided prediction and the model's own at cfg "
        "10, plain and with DiffIER, and the cfg weight DiffIER used.\n\n**Model files**\n" + SD15_FILES + "\n\n"
        "1. Set your prompt.\n2. Pick the cfg values to compare in the KSamplers.\n"
        "3. Run: four samples and the gap plot.")),
]
"""The example workflows, in the order of the template browser's cards."""


def workflow_ui(workflow: Workflow, object_info: dict) -> dict:
    """One example in UI format: its note first (top left), then the graph."""
    graph = Graph(object_info)
    graph.note(workflow.note, "How to use this workflow")
    workflow.build(graph)
    return graph.to_ui()


THUMBNAIL = 512
"""Thumbnails are square JPEGs of this many pixels (the template browser crops its cards to a square)."""


def thumbnail(picture: Path, stem: str):
    """A template card's picture: the workflow's result (``picture``, a plot of the method from a run) above the
    method and the model family, on white."""
    from PIL import Image, ImageDraw, ImageFont

    method, _, rest = stem.partition(" - ")
    what, _, family = rest.rpartition(" (")
    card = Image.new("RGB", (THUMBNAIL, THUMBNAIL), "white")
    plot = Image.open(picture).convert("RGB")
    plot.thumbnail((THUMBNAIL - 16, THUMBNAIL - 136), Image.LANCZOS)
    card.paste(plot, ((THUMBNAIL - plot.width) // 2, 8 + (THUMBNAIL - 136 - plot.height) // 2))
    # the caption at the bottom: newer frontends lay a "Node graph" badge over a card's top left corner
    draw = ImageDraw.Draw(card)
    draw.rectangle([0, THUMBNAIL - 116, THUMBNAIL, THUMBNAIL], fill=(34, 52, 78))
    draw.text((20, THUMBNAIL - 104), method, fill="white", font=ImageFont.load_default(size=34))
    draw.text((20, THUMBNAIL - 54), f"{what}, {family.rstrip(')')}", fill=(200, 215, 235),
              font=ImageFont.load_default(size=21))
    return card


def write_thumbnails(demo_out: Path) -> None:
    """Each workflow's thumbnail, ``workflows/<stem>.jpg``, from the result its ``Workflow.result`` names in a
    ``make demo`` output folder (the newest if several)."""
    for workflow in WORKFLOWS:
        found = sorted(demo_out.glob(workflow.result.format(stem=workflow.stem)))
        if not found:
            raise FileNotFoundError(f"{workflow.stem}: no {workflow.result.format(stem=workflow.stem)} in {demo_out}; "
                                    "run make demo first")
        target = REPO / "workflows" / f"{workflow.stem}.jpg"
        thumbnail(found[-1], workflow.stem).save(target, quality=85, optimize=True)
        print(f"wrote {target.relative_to(REPO)} from {found[-1].relative_to(demo_out)}")


def main() -> None:
    if sys.argv[1:2] == ["--thumbnails"]:
        write_thumbnails(Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "demo_out")
        return
    with ComfyServer(REPO / ".cache" / "workflow_base", REPO) as server:
        object_info = server.object_info()
    for workflow in WORKFLOWS:
        path = REPO / "workflows" / f"{workflow.stem}.json"
        path.write_text(json.dumps(workflow_ui(workflow, object_info), indent=1) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
