"""The host itself: a real ComfyUI with the pack mounted serves, samples on the tiny checkpoint, converts UI-format
workflows like the frontend does, and survives bad prompts. The pack's own nodes are tested in test_pack.py."""

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from tools.api_graphs import CHECKPOINT_NAME, txt2img, with_input
from tools.comfy_host import PromptFailed, PromptRejected, sampler_names
from tools.ui_to_api import LINK_KEYS, TINY_OVERRIDES, ui_to_api

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


@pytest.fixture(scope="module")
def builtin_names(comfy) -> dict:
    """KSampler's sampler and scheduler names in the same ComfyUI without the pack (read in a child process)."""
    return sampler_names(comfy.host)


def test_the_server_answers_system_stats_on_the_chosen_device(comfy):
    stats = comfy.get("/system_stats").json()
    assert stats["system"]["comfyui_version"] == comfy.host.version
    assert [device["type"] for device in stats["devices"]] == [os.environ.get("ERROR_CONTROL_DEVICE", "cpu")]


@pytest.mark.parametrize("node, combo", [("KSampler", "sampler_name"), ("KSampler", "scheduler"),
                                         ("KSamplerAdvanced", "sampler_name"), ("KSamplerAdvanced", "scheduler")])
def test_every_builtin_sampler_and_scheduler_is_still_offered_first_and_in_order(object_info, builtin_names, node,
                                                                                  combo):
    builtin = builtin_names["samplers" if combo == "sampler_name" else "schedulers"]
    offered = object_info[node]["input"]["required"][combo][0]
    assert offered[: len(builtin)] == builtin  # the pack may append names, never drop or reorder ComfyUI's own
    assert len(set(offered)) == len(offered)


def test_txt2img_on_the_tiny_checkpoint_writes_a_png(comfy):
    history = comfy.run(txt2img())
    (image,) = comfy.output_images(history)
    with Image.open(image) as png:
        assert (png.format, png.size) == ("PNG", (64, 64))


def ui_workflow() -> dict:
    """A UI-format graph with a reroute, a primitive driving a linked seed widget, a bypassed node, a note and a
    muted output; links as saved by frontend 1.32: [id, from node, from slot, to node, to slot, type]."""
    def node(node_id, kind, widgets=(), inputs=(), mode=0):
        return {"id": node_id, "type": kind, "mode": mode, "widgets_values": list(widgets),
                "inputs": [{"name": name, "type": kind_, "link": link, **({"widget": {"name": name}} if widget else {})}
                           for name, kind_, link, widget in inputs]}

    return {
        "nodes": [
            node(1, "CheckpointLoaderSimple", ["some_model.safetensors"]),
            node(2, "Reroute", inputs=[("", "*", 10, False)]),
            node(3, "CLIPTextEncode", ["a cat"], [("clip", "CLIP", 11, False)]),
            node(4, "PrimitiveNode", [7, "fixed"]),
            node(5, "EmptyLatentImage", [64, 64, 1]),
            node(6, "LatentUpscaleBy", ["nearest-exact", 0.01], [("samples", "LATENT", 13, False)], mode=4),
            node(7, "KSampler", [123, "randomize", 2, 1.0, "euler", "normal", 1.0],
                 [("model", "MODEL", 15, False), ("positive", "CONDITIONING", 16, False),
                  ("negative", "CONDITIONING", 17, False), ("latent_image", "LATENT", 14, False),
                  ("seed", "INT", 12, True)]),
            node(8, "Note", ["not a node of the graph"]),
            node(9, "SaveLatent", ["muted"], [("samples", "LATENT", 18, False)], mode=2),
            node(10, "SaveLatent", ["ui_to_api"], [("samples", "LATENT", 19, False)]),
        ],
        "links": [[10, 1, 1, 2, 0, "CLIP"], [11, 2, 0, 3, 0, "CLIP"], [12, 4, 0, 7, 4, "INT"],
                  [13, 5, 0, 6, 0, "LATENT"], [14, 6, 0, 7, 3, "LATENT"], [15, 1, 0, 7, 0, "MODEL"],
                  [16, 3, 0, 7, 1, "CONDITIONING"], [17, 3, 0, 7, 2, "CONDITIONING"], [18, 7, 0, 9, 0, "LATENT"],
                  [19, 7, 0, 10, 0, "LATENT"]],
    }


UI_WORKFLOW_AS_API = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "7": {"class_type": "KSampler", "inputs": {
        "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["5", 0]}},
    "10": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "ui_to_api"}},
}


MODEL_OVERRIDES = {kind: TINY_OVERRIDES[kind] for kind in ("CheckpointLoaderSimple", "EmptyLatentImage")}


def test_ui_to_api_follows_reroutes_primitives_and_bypasses_and_drops_notes_and_muted_nodes(comfy, object_info):
    workflow = ui_workflow()
    assert ui_to_api(workflow, object_info, MODEL_OVERRIDES) == UI_WORKFLOW_AS_API
    workflow["links"] = [dict(zip(LINK_KEYS, link, strict=True)) for link in workflow["links"]]  # schema version 1
    assert ui_to_api(workflow, object_info, MODEL_OVERRIDES) == UI_WORKFLOW_AS_API
    (latent,) = comfy.output_files(comfy.run(UI_WORKFLOW_AS_API), "latents")
    assert latent.name.startswith("ui_to_api") and latent.stat().st_size > 0


def test_ui_to_api_says_which_node_has_too_few_widget_values(object_info):
    workflow = ui_workflow()
    workflow["nodes"][6]["widgets_values"] = [123, 2, 1.0, "euler", "normal", 1.0]  # no control_after_generate
    with pytest.raises(ValueError, match=r"node 7 \(KSampler\): 6 widgets_values"):
        ui_to_api(workflow, object_info)


def test_ui_to_api_gives_trailing_optional_widgets_missing_from_an_older_save_their_defaults(object_info):
    """A workflow saved before POLARIS Denoise gained its optional ``reference_strength`` has one widget value fewer;
    the frontend loads it with the new widget at its default, and so does ui_to_api."""
    workflow = json.loads(next((REPO / "workflows").glob("POLARIS - invert and reconstruct an image*.json")).read_text())
    (denoise,) = [node for node in workflow["nodes"] if node["type"] == "ErrorControlPolarisDenoise"]
    current = ui_to_api(workflow, object_info)
    assert current[str(denoise["id"])]["inputs"]["reference_strength"] == 0.0
    denoise["widgets_values"] = denoise["widgets_values"][:-1]
    assert ui_to_api(workflow, object_info) == current
    denoise["widgets_values"] = denoise["widgets_values"][:-1]  # 'blend' is required: no default is guessed
    with pytest.raises(ValueError, match=r"ErrorControlPolarisDenoise\): 1 widgets_values"):
        ui_to_api(workflow, object_info)


@pytest.mark.parametrize("node, inputs, message", [
    ("sample", {"steps": 0}, r"KSampler sample: Value 0 smaller than min of 1: steps"),
    ("ckpt", {"ckpt_name": "no_such_model.safetensors"}, r"CheckpointLoaderSimple ckpt: Value not in list"),
])
def test_a_prompt_that_fails_validation_is_rejected_and_the_server_keeps_serving(comfy, node, inputs, message):
    with pytest.raises(PromptRejected, match=message) as rejected:
        comfy.queue(with_input(txt2img(), node, **inputs))
    assert rejected.value.error["node_errors"][node]["class_type"]
    assert comfy.output_images(comfy.run(txt2img(prefix="after_rejection")))


def test_a_prompt_that_fails_while_running_reports_the_exception_and_the_server_keeps_serving(comfy):
    graph = txt2img()
    graph["shrink"] = {"class_type": "LatentUpscaleBy", "inputs": {  # 8x8 latent * 0.01 -> 0x0: torch raises
        "samples": ["empty", 0], "upscale_method": "nearest-exact", "scale_by": 0.01}}
    graph["sample"]["inputs"]["latent_image"] = ["shrink", 0]
    with pytest.raises(PromptFailed, match="output sizes should be greater than 0") as failed:
        comfy.run(graph)
    assert failed.value.node_type == "LatentUpscaleBy"
    assert comfy.is_alive()
    assert comfy.output_images(comfy.run(txt2img(prefix="after_failure")))


def test_interrupt_stops_a_long_prompt_and_the_server_keeps_serving(comfy):
    prompt_id = comfy.queue(txt2img(steps=5000))
    deadline = time.monotonic() + 60
    while not comfy.get("/queue").json()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    comfy.interrupt()
    status = comfy.wait(prompt_id, timeout=60)["status"]
    assert status["status_str"] == "error"
    assert "execution_interrupted" in [event for event, _ in status["messages"]]
    assert comfy.output_images(comfy.run(txt2img(prefix="after_interrupt")))
