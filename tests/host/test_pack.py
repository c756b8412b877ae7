"""The pack inside a real ComfyUI server: registration, dropdowns, example workflows, errors, round trips."""

import json
import re
from pathlib import Path

import pytest
import torch

from tools.api_graphs import (
    PARAMETRISATION_PATCHES,
    api_node,
    base_graph,
    model_of,
    patched,
    sampler_custom_advanced,
    save_latents,
    txt2img,
)
from tools.comfy_host import PromptFailed
from tools.ui_to_api import NOTE_TYPES, tiny_api_graph, why_host_cannot_run

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK_NODES = {"ErrorControlDDIMInversionSampler", "ErrorControlInversionSigmas", "ErrorControlVRGCalibrate",
              "ErrorControlVRGLoadProfile", "ErrorControlVRGScheduler", "ErrorControlVRGOptimizeSigmas",
              "ErrorControlPolarisInversion", "ErrorControlPolarisDenoise", "ErrorControlPolarisInversionSampler",
              "ErrorControlPolarisReplay", "ErrorControlPolarisTraceSigmas", "ErrorControlPolarisSaveTrace",
              "ErrorControlPolarisLoadTrace", "ErrorControlNoiseAwarenessGuidance", "ErrorControlNoiseAwarenessGuider",
              "ErrorControlNoiseShiftMeter", "ErrorControlDiffIERSampler", "ErrorControlDiffIERGapMeter",
              "ErrorControlTrainNoiseEstimator", "ErrorControlLoadNoiseEstimator"}
LINK_TYPES = {"MODEL", "CONDITIONING", "LATENT", "SIGMAS", "IMAGE", "GUIDER", "SAMPLER", "VRG_PROFILE", "POLARIS_TRACE",
              "NOISE_AWARENESS_ESTIMATOR"}


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


def test_every_pack_node_is_registered_in_its_category(object_info):
    assert PACK_NODES <= object_info.keys()
    for node in PACK_NODES:
        assert object_info[node]["category"].startswith("sampling/error_control")
        assert object_info[node]["description"]


def test_every_pack_node_has_a_doc_page_and_every_widget_a_tooltip(object_info):
    ours = {name for name, info in object_info.items() if info["category"].startswith("sampling/error_control")}
    assert PACK_NODES <= ours
    for node in ours:
        doc = REPO / "web" / "docs" / f"{node}.md"
        assert doc.is_file(), node
        inputs = {**object_info[node]["input"]["required"], **object_info[node]["input"].get("optional", {})}
        settings = doc.read_text().split("## Settings", 1)[-1].split("\n## ", 1)[0]
        documented = {name for line in settings.splitlines() if line.startswith("| `")
                      for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
        assert set(inputs) <= documented, f"{node}: inputs missing from its doc's Settings table"
        for name, spec in inputs.items():
            if spec[0] not in LINK_TYPES:
                assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


EXPERT_INPUTS = {"ErrorControlDDIMInversionSampler": {"eval_at"},
                 "ErrorControlPolarisInversion": {"solver", "eval_at", "space", "omega_start"},
                 "ErrorControlPolarisInversionSampler": {"solver", "eval_at", "space", "omega_start"},
                 "ErrorControlNoiseAwarenessGuidance": {"delta", "start_percent", "end_percent"},
                 "ErrorControlNoiseAwarenessGuider": {"delta", "start_percent", "end_percent"},
                 "ErrorControlNoiseShiftMeter": {"delta", "start_percent", "end_percent"},
                 "ErrorControlDiffIERSampler": {"damping"},
                 "ErrorControlDiffIERGapMeter": {"damping"},
                 "ErrorControlVRGCalibrate": {"grid_points", "search_bank"},
                 "ErrorControlTrainNoiseEstimator": {"batch_size"},
                 "ErrorControlVRGScheduler": {"lp", "fix_sigma_max"},
                 "ErrorControlVRGOptimizeSigmas": {"lp", "fix_sigma_max"}}


def advanced_inputs(info: dict) -> set[str]:
    inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
    return {name for name, spec in inputs.items() if len(spec) > 1 and spec[1].get("advanced")}


def test_expert_inputs_are_advanced_and_nodes_have_search_aliases_where_the_host_has_them(object_info):
    """ComfyUI 0.33's node API folds ``advanced`` inputs away and searches ``search_aliases``; on a host without them
    (0.3.75) the pack leaves both out and still loads. Whether the host has them: its own nodes have search aliases
    (a V1 node may carry "advanced" on any host; V3 inputs take it where schemas take aliases)."""
    host_has_them = any(info.get("search_aliases") for name, info in object_info.items() if not name.startswith("ErrorControl"))
    for node in PACK_NODES:
        assert advanced_inputs(object_info[node]) == (EXPERT_INPUTS.get(node, set()) if host_has_them else set()), node
        aliases = object_info[node].get("search_aliases") or []
        assert (len(aliases) >= 2) if host_has_them else not aliases, node


def combo(object_info: dict, node: str, name: str) -> list:
    """A combo's options, whether the node declares it V1-style (a list) or V3-style (``COMBO`` + options)."""
    spec = object_info[node]["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_ddim_inversion_is_appended_to_the_sampler_dropdowns(object_info):
    for node in ("KSampler", "KSamplerAdvanced", "KSamplerSelect"):
        samplers = combo(object_info, node, "sampler_name")
        assert samplers[-1] == "ddim_inversion" and samplers.count("ddim_inversion") == 1


def test_the_pack_serves_its_workflows_as_templates(comfy):
    templates = comfy.get("/api/workflow_templates").json()
    pack = templates["error-control-samplers"]
    assert sorted(pack) == sorted(p.stem for p in WORKFLOWS)
    for workflow in WORKFLOWS:
        served = comfy.get(f"/api/workflow_templates/error-control-samplers/{workflow.name}").json()
        assert served == json.loads(workflow.read_text())
        thumbnail = comfy.get(f"/api/workflow_templates/error-control-samplers/{workflow.stem}.jpg")
        assert thumbnail.headers["Content-Type"] == "image/jpeg" and thumbnail.content[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_runs_on_the_tiny_checkpoint(comfy, object_info, workflow):
    """Every node of every workflow exists on the host, and the workflow runs on the tiny files. No tiny text encoder
    exists for Flux, SD3.5 or Wan, so their workflows run with seeded conditioning in place of the encoders
    (``tiny_api_graph``); the tiny Flux file loads only on ComfyUI 0.33, so 0.3.75 only checks its workflows' nodes."""
    saved = json.loads(workflow.read_text())
    assert {node["type"] for node in saved["nodes"]} - NOTE_TYPES <= object_info.keys()
    if reason := why_host_cannot_run(saved, comfy.host):
        pytest.skip(reason)
    images = comfy.output_images(comfy.run(tiny_api_graph(saved, object_info)))
    assert images and all(p.stat().st_size > 0 for p in images)


def test_ddim_inversion_in_a_plain_ksampler_says_how_to_use_it(comfy):
    graph = txt2img(sampler_name="ddim_inversion")
    with pytest.raises(PromptFailed, match=r"DDIM Inversion.*'sigmas' must be strictly ascending"):
        comfy.run(graph)
    assert comfy.run(txt2img(sampler_name="euler"))  # the server keeps serving


def round_trip_graph(steps: int, model_patch: dict | None, eval_at: str, prefix: str) -> dict:
    """Encode the example image, invert with DDIM at cfg 1, sample back; save both latents."""
    graph = base_graph({"text": "a photo"}, empty_latent=False, encoded_image=True, patch=model_patch)
    model = model_of(graph)
    graph.update({
        "guider": api_node("CFGGuider", model=model, positive=["text", 0], negative=["text", 0], cfg=1.0),
        "schedule": api_node("BasicScheduler", model=model, scheduler="normal", steps=steps, denoise=1.0),
        "levels": api_node("ErrorControlInversionSigmas", model=model, sigmas=["schedule", 0]),
        "noise": api_node("DisableNoise"),
        "inverter": api_node("ErrorControlDDIMInversionSampler", eval_at=eval_at),
        "euler": api_node("KSamplerSelect", sampler_name="euler"),
        "invert": sampler_custom_advanced(["noise", 0], ["guider", 0], ["inverter", 0], ["levels", 0], ["latent", 0]),
        "rebuild": sampler_custom_advanced(["noise", 0], ["guider", 0], ["euler", 0], ["levels", 1], ["invert", 0]),
    })
    return save_latents(graph, prefix, **{"in": ["latent", 0], "noise": ["invert", 0], "out": ["rebuild", 0]})


@pytest.mark.parametrize("family", PARAMETRISATION_PATCHES)
def test_inversion_round_trip_converges_with_steps_for_every_family(comfy, family):
    errors = {}
    for steps in (5, 40):
        prefix = f"roundtrip_{family}_{steps}"
        history = comfy.run(round_trip_graph(steps, PARAMETRISATION_PATCHES[family], "current", prefix))
        latents = comfy.output_latents(history)
        x0, noise, x0_back = (latents[f"{prefix}_{part}"] for part in ("in", "noise", "out"))
        assert torch.isfinite(noise).all() and noise.std() > x0.std()  # it really went up to noise
        errors[steps] = ((x0_back - x0) ** 2).mean().item()
    assert errors[40] < errors[5], errors


def test_vrg_is_appended_to_every_scheduler_dropdown(object_info):
    for node in ("KSampler", "KSamplerAdvanced", "BasicScheduler"):
        schedulers = combo(object_info, node, "scheduler")
        assert schedulers[-1] == "vrg" and schedulers.count("vrg") == 1


def calibration_graph(name: str, batch: int, points: int) -> dict:
    return {
        **base_graph({"text": ""}, empty_latent=False, encoded_image=True),
        "batch": api_node("RepeatLatentBatch", samples=["latent", 0], amount=batch),
        "calibrate": api_node("ErrorControlVRGCalibrate", model=["ckpt", 0], latent=["batch", 0], positive=["text", 0],
                              cfg=1.0, grid_points=points, seed=0, profile_name=name),
        "plot": api_node("PreviewImage", images=["calibrate", 2]),
    }


def test_calibration_of_8_latents_on_32_levels_writes_one_profile_file(comfy):
    folder = comfy.base_dir / "models" / "vrg_profiles"
    before = set(folder.glob("*")) if folder.exists() else set()
    comfy.run(calibration_graph("calibration_test", batch=8, points=32))
    assert {p.name for p in set(folder.glob("*")) - before} == {"calibration_test.safetensors"}
    graph = {
        **base_graph({}, empty_latent=False),
        "load": {"class_type": "ErrorControlVRGLoadProfile", "inputs": {"model": ["ckpt", 0],
                                                                        "profile_name": "calibration_test.safetensors"}},
        "schedule": {"class_type": "ErrorControlVRGScheduler", "inputs": {
            "model": ["ckpt", 0], "profile": ["load", 1], "scheduler": "karras", "steps": 10, "denoise": 1.0,
            "lp": 0.01, "fix_sigma_max": True}},
        "plot": {"class_type": "PreviewImage", "inputs": {"images": ["schedule", 1]}},
    }
    assert comfy.run(graph)["status"]["status_str"] == "success"


def test_vrg_scheduler_without_a_profile_says_what_to_run(comfy):
    # A flow model has a noise schedule no profile on disk was calibrated for, and no profile travels with it.
    graph = txt2img(prefix="vrg_without_profile")
    graph["flow"] = patched(PARAMETRISATION_PATCHES["flow"], ["ckpt", 0])
    graph["sample"]["inputs"].update(model=["flow", 0], scheduler="vrg")
    with pytest.raises(PromptFailed, match="no VRG error profile for this model. Run 'VRG Calibrate'"):
        comfy.run(graph)


@pytest.mark.parametrize("name, message", [
    ("../escape", "must be a plain file name"),
    ("/etc/passwd", "must be a plain file name"),
    ("", "must be a plain file name"),
])
def test_calibration_refuses_names_that_leave_the_profile_folder(comfy, name, message):
    with pytest.raises(PromptFailed, match=f"VRG Calibrate: input 'profile_name' {message}"):
        comfy.run(calibration_graph(name, batch=1, points=8))
