"""Example workflows (UI format, as the frontend saves them) as the API graphs a server queues: ``ui_to_api`` reads a
workflow the way the frontend turns it into a prompt, and ``tiny_api_graph`` is how a test or demo server runs it, on
tiny model files and with seeded conditioning in place of text encoders. Standard library only; the families' tiny
files are ``tools/families.py``."""

from __future__ import annotations

from tools.api_graphs import CHECKPOINT_NAME
from tools.hosts import Host

# The example workflows name users' model files and 512-1024 px; a test or demo server has the tiny SD1.5 checkpoint
# (and, under users' names, tiny files of the families: ``tiny_overrides``), on which 64 px runs in seconds on a CPU
# (their pictures mean nothing either way).
TINY_OVERRIDES = {"CheckpointLoaderSimple": {"ckpt_name": CHECKPOINT_NAME}, "EmptyLatentImage": {"width": 64, "height": 64},
                  "EmptySD3LatentImage": {"width": 64, "height": 64},
                  "EmptyHunyuanLatentVideo": {"width": 64, "height": 64, "length": 5},
                  # a video workflow's frames: one image scaled and repeated into 5 frames, a [1, 16, 2, 8, 8] Wan latent
                  "ImageScale": {"width": 64, "height": 64}, "RepeatImageBatch": {"amount": 5},
                  # fewer steps and levels than a user wants: the tiny model's pictures mean nothing, the graphs still run
                  "KSampler": {"steps": 4}, "ErrorControlPolarisInversion": {"steps": 8},
                  "ErrorControlVRGCalibrate": {"grid_points": 8, "search_steps": "4", "search_bank": 2},
                  "ErrorControlNoiseShiftMeter": {"steps": 4},
                  "ErrorControlDiffIERGapMeter": {"steps": 4}, "ErrorControlTrainNoiseEstimator": {"iterations": 60}}

# ---------------------------------------------------------------------------------------------------------------------
# UI-format workflows to API-format graphs
#
# How frontend 1.32.9 saves a node (read from its bundle): node.widgets are made in the order of
# object_info's input_order (required, then optional), then inputs that an extension added (the image upload
# button); an input has a widget when its type (or options.widgetType) is a widget type and it has no forceInput.
# widgets_values holds one entry per widget, linked or not: a widget input that is linked keeps its value there.
# An INT with control_after_generate (or named seed/noise_seed, unless the flag is false) is followed by its
# control widget ("fixed", ...); a COMBO with control_after_generate by the control and a filter-list string. A
# media combo (image_upload, video_upload, animated_image_upload) adds an "upload" button whose value ("image") is
# saved too. Queueing skips modes 2 (never) and 4 (bypass) and virtual nodes; a link out of a bypassed node is
# taken from the node's input of the link's type (same slot first); a link to a muted node is dropped.

WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR"}
MEDIA_UPLOADS = ("image_upload", "video_upload", "animated_image_upload")
NOTE_TYPES = {"Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4


def widget_slots(node_info: dict) -> list[str | None]:
    """Input names in the order of a node's widgets_values; None for values that are not inputs (controls, upload)."""
    specs = {**node_info["input"].get("optional", {}), **node_info["input"].get("required", {})}
    order = node_info.get("input_order") or {k: list(node_info["input"].get(k, {})) for k in ("required", "optional")}
    slots: list[str | None] = []
    for name in [*order.get("required", []), *order.get("optional", [])]:
        kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
        widget = "COMBO" if isinstance(kind, list) else options.get("widgetType", kind)
        if widget not in WIDGET_TYPES or options.get("forceInput"):
            continue
        slots.append(name)
        if widget == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
            slots.append(None)
        elif widget == "COMBO" and options.get("control_after_generate"):
            slots += [None, None]
    required = node_info["input"].get("required", {})
    if any(len(spec) > 1 and any(spec[1].get(k) for k in MEDIA_UPLOADS) for spec in required.values()):
        slots.append(None)
    return slots


def widget_inputs(node: dict, node_info: dict) -> dict:
    """The API inputs a node's widgets give (list values wrapped as ``{"__value__": [...]}``, as the frontend does)."""
    values = node.get("widgets_values") or []
    if isinstance(values, dict):
        return {name: wrap(values[name]) for name in widget_slots(node_info) if name in values}
    slots = widget_slots(node_info)
    missing = [name for name in slots[len(values):] if name is not None]
    optional = node_info["input"].get("optional", {})
    if any(name not in optional for name in missing):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widgets_values, but its inputs make "
                         f"{len(slots)} widgets {slots}")
    # Saved before the node gained trailing optional inputs: they take their defaults, as in the frontend.
    inputs = {name: wrap(value) for name, value in zip(slots, values, strict=False) if name is not None}
    return {**inputs, **{name: wrap(input_default(optional[name])) for name in missing}}


def input_default(spec: list) -> object:
    """An input's default as the frontend sets a new widget: its ``default``, else a combo's first option."""
    options = spec[1] if len(spec) > 1 else {}
    choices = spec[0] if isinstance(spec[0], list) else options.get("options")
    return options.get("default", choices[0] if choices else None)


def wrap(value: object) -> object:
    """A widget value as the API format wants it: lists wrapped so that they do not read as links."""
    return {"__value__": value} if isinstance(value, list) else value


LINK_KEYS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def link_fields(link: list | dict) -> tuple[int, list]:
    """``(id, [origin_id, origin_slot, target_id, target_slot, type])`` of a saved link, list (0.4) or dict (1)."""
    fields = list(link) if isinstance(link, list) else [link[key] for key in LINK_KEYS]
    return fields[0], fields[1:6]


class UIGraph:
    """A UI-format workflow, indexed for resolving links through reroutes, primitives and bypassed nodes."""

    def __init__(self, workflow: dict):
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links = dict(map(link_fields, workflow.get("links", [])))
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.subgraph_ids = {subgraph["id"] for subgraph in subgraphs}

    def resolve(self, link_id: int | None) -> list | tuple | None:
        """What a link delivers: ``[node_id, slot]``, ``("value", v)`` from a PrimitiveNode, or None (nothing)."""
        if link_id is None or link_id not in self.links:
            return None
        origin_id, origin_slot, _, _, kind = self.links[link_id]
        origin = self.nodes[origin_id]
        if origin["type"] == "Reroute":
            return self.resolve(origin["inputs"][0].get("link"))
        if origin["type"] == "PrimitiveNode":
            return ("value", origin["widgets_values"][0])
        if origin.get("mode") == BYPASSED:
            return self.resolve(self.bypass_input(origin, origin_slot, kind))
        if origin.get("mode") == MUTED:
            return None
        return [str(origin_id), origin_slot]

    @staticmethod
    def bypass_input(node: dict, slot: int, kind: str) -> int | None:
        """The link that a bypassed node passes on for output ``slot`` of type ``kind``: same slot first."""
        inputs = node.get("inputs", [])
        for index in [slot, *range(len(inputs))]:
            if index < len(inputs) and inputs[index].get("type") == kind:
                return inputs[index].get("link")
        return None


def ui_to_api(workflow: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """Convert a workflow saved by the frontend (UI format) to the API format that ``/prompt`` takes.

    ``overrides`` maps class_type -> {input: value}, applied to every node of that type (e.g. the checkpoint name).
    Notes, reroutes and primitives are resolved away; muted and bypassed nodes are left out as the frontend does.
    """
    graph = UIGraph(workflow)
    api = {}
    for node in graph.nodes.values():
        kind = node["type"]
        if node.get("mode") in (MUTED, BYPASSED) or kind in NOTE_TYPES | {"Reroute", "PrimitiveNode"}:
            continue
        if kind in graph.subgraph_ids:
            raise ValueError(f"node {node['id']} is a subgraph: subgraphs are not supported; unpack it in the UI")
        if kind not in object_info:
            raise ValueError(f"node {node['id']} has type {kind!r}, which this server does not have")
        inputs = widget_inputs(node, object_info[kind])
        for socket_input in node.get("inputs", []):
            source = graph.resolve(socket_input.get("link"))
            if isinstance(source, tuple):
                inputs[socket_input["name"]] = wrap(source[1])
            elif source is not None:
                inputs[socket_input["name"]] = source
        api[str(node["id"])] = {"class_type": kind, "inputs": {**inputs, **(overrides or {}).get(kind, {})}}
    return api


# ---------------------------------------------------------------------------------------------------------------------
# Example workflows on a test server: tiny files, and seeded conditioning in place of text encoders
#
# A Flux, SD3.5 or Wan workflow names the files users have (tools/families.py); a test server carries tiny files of
# those families under the same names, but no text encoder: none exists small enough for a test (their configs are
# fixed and full-size). So each prompt's CLIPTextEncode becomes the test-only ErrorControlTestConditioning of the
# workflow's family (tests/host/conditioning_pack: seeded tensors of the encoders' shapes) and the text-encoder loaders
# go. ``tiny_api_graph`` does it on the API graph; the browser test does the same in the page from the same plan.

TEXT_ENCODER_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"}
TEXT_ENCODERS = {"CLIPTextEncode"}
TEST_CONDITIONING = "ErrorControlTestConditioning"


def workflow_family(workflow: dict) -> str | None:
    """The model family (tools/families.py) whose files a UI workflow's loaders name; None for the SD1.5 examples,
    which run on the tiny SD1.5 checkpoint with its own tiny CLIP."""
    from tools import families

    by_file = {tiny.name: name for name, family in families.FAMILIES.items() for tiny in family.files}
    found = {by_file[value] for node in workflow["nodes"] for value in saved_widget_values(node)
             if isinstance(value, str) and value in by_file}
    if len(found) > 1:
        raise ValueError(f"the workflow loads files of several families: {sorted(found)}")
    return found.pop() if found else None


def saved_widget_values(node: dict) -> list:
    """A UI node's saved widget values, whether saved as a list or by name."""
    values = node.get("widgets_values") or []
    return list(values.values()) if isinstance(values, dict) else values


def conditioning_stand_ins(workflow: dict) -> dict | None:
    """How a test server runs a family's workflow without text encoders: None for a workflow of no family; else
    ``{"family": ..., "encoders": {node id: seed}, "loaders": [node id, ...]}``: each encoder becomes the test
    conditioning of the family from its seed (its node id, so that different prompts differ), each loader goes."""
    family = workflow_family(workflow)
    if family is None:
        return None
    return {"family": family,
            "encoders": {str(node["id"]): node["id"] for node in workflow["nodes"] if node["type"] in TEXT_ENCODERS},
            "loaders": [str(node["id"]) for node in workflow["nodes"] if node["type"] in TEXT_ENCODER_LOADERS]}


def tiny_overrides(workflow: dict) -> dict:
    """TINY_OVERRIDES for one workflow: a family's workflow keeps its checkpoint name (the test server has the family's
    tiny file under it), the SD1.5 examples load the tiny SD1.5 checkpoint."""
    if workflow_family(workflow) is None:
        return TINY_OVERRIDES
    return {kind: values for kind, values in TINY_OVERRIDES.items() if kind != "CheckpointLoaderSimple"}


def why_host_cannot_run(workflow: dict, host: Host) -> str | None:
    """Why a test server of ``host`` cannot run a workflow (its family's tiny file does not load there), or None."""
    from tools import families

    family = workflow_family(workflow)
    if family is None or families.host_supports(family, host.version):
        return None
    return f"the tiny {family} file loads only on ComfyUI >= {families.FAMILIES[family].min_comfyui}, not on {host.id}"


def tiny_api_graph(workflow: dict, object_info: dict) -> dict:
    """A UI workflow as a test or demo server runs it: the API graph with ``tiny_overrides``, and for a family's workflow
    the text encoders replaced by seeded conditioning (``conditioning_stand_ins``)."""
    graph = ui_to_api(workflow, object_info, tiny_overrides(workflow))
    stand_ins = conditioning_stand_ins(workflow)
    if stand_ins is None:
        return graph
    for node_id, seed in stand_ins["encoders"].items():
        graph[node_id] = {"class_type": TEST_CONDITIONING, "inputs": {"family": stand_ins["family"], "seed": seed,
                                                                       "length": 0}}
    for node_id in stand_ins["loaders"]:
        del graph[node_id]
    return graph
