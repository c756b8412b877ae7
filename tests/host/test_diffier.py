"""DiffIER inside a real ComfyUI: the ``diffier`` dropdown entry in KSampler, the SAMPLER node in SamplerCustomAdvanced,
the Gap Meter's plots, clear errors after which the server keeps serving, and the example workflow."""

import json
from pathlib import Path

import pytest
import torch

from tools.api_graphs import (
    PARAMETRISATION_PATCHES,
    api_node,
    patched,
    sampler_custom_advanced,
    save_latent,
    txt2img,
    with_encoded_image,
)
from tools.comfy_host import sampler_names
from tools.ui_to_api import TINY_OVERRIDES, ui_to_api

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "DiffIER - euler vs DiffIER at cfg 4 and 10 (SD1.5).json"
DOCS = REPO / "web" / "docs"
DIFFIER_NODES = {"ErrorControlDiffIERSampler", "ErrorControlDiffIERGapMeter"}


def dropdown(info: dict, node: str) -> list:
    spec = info[node]["input"]["required"]["sampler_name"]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_diffier_is_in_every_sampler_dropdown_after_the_built_in_ones(comfy):
    built_in = sampler_names(comfy.host)["samplers"]  # this ComfyUI without any custom node
    info = comfy.object_info()
    for node in ("KSampler", "KSamplerAdvanced", "KSamplerSelect"):
        names = dropdown(info, node)
        assert names.count("diffier") == 1 and "diffier" not in built_in
        assert names[: len(built_in)] == built_in, node


def test_nodes_have_short_titles_and_say_they_are_a_reconstruction(comfy):
    info = comfy.object_info()
    assert {node: info[node]["display_name"] for node in DIFFIER_NODES} == {
        "ErrorControlDiffIERSampler": "DiffIER Sampler", "ErrorControlDiffIERGapMeter": "DiffIER Gap Meter"}
    for node in DIFFIER_NODES:
        assert info[node]["category"] == "sampling/error_control/diffier"
        assert "reconstructed from the paper's abstract" in info[node]["description"]
        assert "reconstructed from the paper's abstract" in (DOCS / f"{node}.md").read_text().split("\n\n")[1].lower()


@pytest.mark.parametrize("cfg", [1.0, 7.0])
def test_ksampler_runs_with_diffier(comfy, cfg):
    graph = txt2img(steps=4, prefix=f"diffier_ksampler_{cfg:g}", sampler_name="diffier")
    graph["sample"]["inputs"]["cfg"] = cfg
    assert comfy.output_images(comfy.run(graph))


def custom_advanced(prefix: str, iterations: int = 1, damping: float = 1.0, model: list | None = None) -> dict:
    graph = txt2img(prefix=prefix)
    del graph["sample"]
    model = model or ["ckpt", 0]
    graph.update({
        "guider": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["pos", 0], "negative": ["neg", 0],
                                                         "cfg": 6.0}},
        "noise": api_node("RandomNoise", noise_seed=1),
        "sampler": api_node("ErrorControlDiffIERSampler", iterations=iterations, damping=damping),
        "sigmas": api_node("BasicScheduler", model=model, scheduler="normal", steps=4, denoise=1.0),
        "sample": sampler_custom_advanced(["noise", 0], ["guider", 0], ["sampler", 0], ["sigmas", 0], ["empty", 0]),
    })
    return graph


def test_sampler_node_runs_in_sampler_custom_advanced(comfy):
    assert comfy.output_images(comfy.run(custom_advanced("diffier_custom", iterations=2, damping=0.5)))


def test_sampler_node_runs_on_a_flow_model(comfy):
    graph = custom_advanced("diffier_flow", model=["flow", 0])
    graph["flow"] = patched(PARAMETRISATION_PATCHES["flow"], ["ckpt", 0])
    assert comfy.output_images(comfy.run(graph))


def test_with_basic_guider_it_is_plain_euler(comfy):
    """BasicGuider (positive only, the usual Flux graph) is cfg 1: no guidance for DiffIER to correct, so it samples as
    euler with the same guider, at one model call a step."""
    latents = {}
    for sampler in ("diffier", "euler"):
        graph = custom_advanced(f"diffier_basic_{sampler}")
        graph["guider"] = {"class_type": "BasicGuider", "inputs": {"model": ["ckpt", 0], "conditioning": ["pos", 0]}}
        if sampler == "euler":
            graph["sampler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        graph["latent"] = save_latent(["sample", 0], sampler)
        latents.update(comfy.output_latents(comfy.run(graph)))
    plain = latents["euler"]
    torch.testing.assert_close(latents["diffier"], plain, rtol=0, atol=1e-4 * float(plain.abs().max()))


def test_gap_meter_outputs_both_plots_and_a_latent(comfy):
    graph = txt2img(prefix="diffier_meter")
    graph["meter"] = {"class_type": "ErrorControlDiffIERGapMeter", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0], "seed": 3,
        "steps": 4, "cfg": 6.0, "scheduler": "normal", "iterations": 1, "damping": 1.0}}
    graph["decode"]["inputs"]["samples"] = ["meter", 0]
    graph["gap"] = api_node("SaveImage", images=["meter", 1], filename_prefix="diffier_gap")
    graph["weight"] = api_node("SaveImage", images=["meter", 2], filename_prefix="diffier_weight")
    del graph["sample"]
    assert len(comfy.output_images(comfy.run(graph))) == 3


def test_example_workflow_runs_on_the_tiny_checkpoint(comfy):
    graph = ui_to_api(json.loads(WORKFLOW.read_text()), comfy.object_info(), TINY_OVERRIDES)
    samplers = [node["inputs"].get("sampler_name") for node in graph.values() if node["class_type"] == "KSampler"]
    assert "diffier" in samplers and "euler" in samplers
    assert comfy.output_images(comfy.run(graph))


def test_gap_meter_honours_the_latents_inpainting_mask(comfy):
    """A mask of zeros (regenerate nothing): the meter's samples are the input latent, as KSampler's would be."""
    graph = with_encoded_image(txt2img(prefix="diffier_meter_mask"))
    graph["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    graph["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    graph["meter"] = {"class_type": "ErrorControlDiffIERGapMeter", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["masked", 0], "seed": 3,
        "steps": 4, "cfg": 6.0, "scheduler": "normal", "iterations": 1, "damping": 1.0}}
    graph["kept"] = save_latent(["meter", 0], "gap_mask_out")
    graph["source"] = save_latent(["latent", 0], "gap_mask_in")
    for name in ("sample", "decode", "save"):
        del graph[name]
    latents = comfy.output_latents(comfy.run(graph))
    source = latents["gap_mask_in"]
    torch.testing.assert_close(latents["gap_mask_out"], source, rtol=0, atol=1e-5 * float(source.abs().max()))
