"""Noise Awareness Guidance inside a real ComfyUI: the patch in a plain KSampler and stacked with core patches, the guider
in SamplerCustomAdvanced, the Noise Shift Meter's plot, and clear errors after which the server keeps serving."""

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from plots.line import UI_KEY
from tools.api_graphs import (
    PARAMETRISATION_PATCHES,
    api_node,
    base_graph,
    patched,
    sampler_custom_advanced,
    save_decoded,
    txt2img,
    with_encoded_image,
    with_input,
)
from tools.comfy_host import PromptFailed, PromptRejected
from tools.ui_to_api import TINY_OVERRIDES, ui_to_api

WORKFLOW = (Path(__file__).resolve().parents[2] / "workflows"
            / "Noise Awareness Guidance - plain vs guided, with its estimator (SD1.5).json")

GUIDANCE = {"strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.3, "end_percent": 1.0}
NAG_NODES = {"ErrorControlNoiseAwarenessGuidance", "ErrorControlNoiseAwarenessGuider", "ErrorControlNoiseShiftMeter",
             "ErrorControlTrainNoiseEstimator", "ErrorControlLoadNoiseEstimator"}


def patched_txt2img(prefix: str, **guidance) -> dict:
    """txt2img with the KSampler's model through the Noise Awareness Guidance patch."""
    graph = txt2img(steps=6, prefix=prefix)
    graph["nag"] = {"class_type": "ErrorControlNoiseAwarenessGuidance",
                    "inputs": {"model": ["ckpt", 0], **GUIDANCE, **guidance}}
    graph["sample"]["inputs"]["model"] = ["nag", 0]
    return graph


def test_nodes_are_registered_with_full_names_and_tooltips(comfy):
    info = comfy.object_info()
    for node in NAG_NODES:
        assert info[node]["category"].startswith("sampling/error_control/")
        assert "Noise Awareness Guidance" in info[node]["display_name"] + info[node]["description"]
        assert info[node]["display_name"] != "NAG"
        for name, spec in {**info[node]["input"]["required"], **info[node]["input"].get("optional", {})}.items():
            if name in GUIDANCE or name in ("cfg", "steps", "profile", "estimator", "iterations", "estimator_name"):
                assert spec[1].get("tooltip"), (node, name)


def test_patch_runs_in_a_plain_ksampler(comfy):
    assert comfy.output_images(comfy.run(patched_txt2img("nag_patch")))


@pytest.mark.parametrize("second", [
    {"class_type": "FreeU", "inputs": {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}},
    {"class_type": "RescaleCFG", "inputs": {"multiplier": 0.7}},
], ids=["FreeU", "RescaleCFG"])
def test_patch_composes_with_a_second_model_patch(comfy, second):
    graph = patched_txt2img(f"nag_with_{second['class_type']}")
    graph["second"] = {**second, "inputs": {**second["inputs"], "model": ["nag", 0]}}
    graph["sample"]["inputs"]["model"] = ["second", 0]
    assert comfy.output_images(comfy.run(graph))


def test_patch_runs_on_a_flow_model(comfy):
    graph = patched_txt2img("nag_flow")
    graph["flow"] = patched(PARAMETRISATION_PATCHES["flow"], ["ckpt", 0])
    graph["nag"]["inputs"]["model"] = ["flow", 0]
    assert comfy.output_images(comfy.run(graph))


def test_guider_runs_in_sampler_custom_advanced(comfy):
    graph = txt2img(prefix="nag_guider")
    del graph["sample"]
    graph.update({
        "guider": {"class_type": "ErrorControlNoiseAwarenessGuider", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 5.0, **GUIDANCE}},
        "noise": api_node("RandomNoise", noise_seed=1),
        "sampler": api_node("KSamplerSelect", sampler_name="euler"),
        "sigmas": api_node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=6, denoise=1.0),
        "sample": sampler_custom_advanced(["noise", 0], ["guider", 0], ["sampler", 0], ["sigmas", 0], ["empty", 0]),
    })
    assert comfy.output_images(comfy.run(graph))


def meter_graph(prefix: str, **guidance) -> dict:
    """Calibrate VRG on the example image, then meter a 6-step euler pass with that profile."""
    return {
        **base_graph({"pos": "a red circle", "neg": ""}, encoded_image=True),
        "calibrate": {"class_type": "ErrorControlVRGCalibrate", "inputs": {
            "model": ["ckpt", 0], "latent": ["latent", 0], "positive": ["neg", 0], "cfg": 1.0, "grid_points": 16,
            "seed": 0, "profile_name": f"{prefix}_profile"}},
        "meter": {"class_type": "ErrorControlNoiseShiftMeter", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "seed": 3, "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", **GUIDANCE,
            "profile": ["calibrate", 1], **guidance}},
        "save": api_node("SaveImage", images=["meter", 0], filename_prefix=prefix),
    }


def test_meter_outputs_a_plot_for_both_modes(comfy):
    images = comfy.output_images(comfy.run(meter_graph("nag_meter", mode="adaptive", delta=0.0)))
    assert images and all(p.stat().st_size > 0 for p in images)


def test_adaptive_mode_without_a_profile_says_what_to_connect(comfy):
    with pytest.raises(PromptFailed, match=r"Noise Awareness Guidance \(model patch\): input 'profile'.*VRG Calibrate"):
        comfy.run(patched_txt2img("nag_no_profile", mode="adaptive"))
    assert comfy.run(txt2img(prefix="nag_after_error"))  # the server keeps serving


def test_an_empty_window_is_refused_with_the_fix(comfy):
    graph = with_input(patched_txt2img("nag_bad_window"), "nag", start_percent=0.8, end_percent=0.4)
    with pytest.raises(PromptFailed, match=r"'start_percent' \(0.8\) and 'end_percent' \(0.4\) must satisfy"):
        comfy.run(graph)
    assert comfy.run(txt2img(prefix="nag_after_bad_window"))


def test_example_workflow_runs_on_the_tiny_checkpoint(comfy):
    info = comfy.object_info()
    graph = ui_to_api(json.loads(WORKFLOW.read_text()), info, TINY_OVERRIDES)
    used = {node["class_type"] for node in graph.values()}
    assert NAG_NODES - {"ErrorControlNoiseAwarenessGuider", "ErrorControlLoadNoiseEstimator"} <= used
    assert len(comfy.output_images(comfy.run(graph))) == 4  # estimator check, plain, guided, noise-shift plot


# ---------------------------------------------------------------------------------------------------------------------
# The classifier-based form: Train Noise Estimator → its file → guidance in a KSampler and the meter

ESTIMATOR = "nag_test_estimator"


def estimator_graph(prefix: str, source: dict, model: list | None = None, **guidance) -> dict:
    """A 6-step KSampler on the patch in estimator mode with the estimator from ``source`` (a node reading ``ckpt``'s
    model), and a plain one from the same seed."""
    graph = patched_txt2img(prefix, mode="estimator", strength=1.0, estimator=["estimator", 0], **guidance)
    graph["estimator"] = source
    graph["plain"] = {**graph["sample"], "inputs": {**graph["sample"]["inputs"], "model": ["ckpt", 0]}}
    save_decoded(graph, ["plain", 0], f"{prefix}_plain", ids=("plain_decode", "plain_save"))
    if model is not None:
        graph["nag"]["inputs"]["model"] = model
    return graph


def training(iterations: int = 120, name: str = ESTIMATOR) -> dict:
    return {"class_type": "ErrorControlTrainNoiseEstimator", "inputs": {
        "model": ["ckpt", 0], "latent": ["batch", 0], "iterations": iterations, "batch_size": 8, "seed": 0,
        "estimator_name": name}}


def pixels(path: Path) -> bytes:
    """An image's pixels (a PNG's bytes also hold the prompt that made it)."""
    with Image.open(path) as image:
        return image.tobytes()


def with_clean_latents(graph: dict) -> dict:
    """``graph`` with the example image encoded (``latent``) and repeated 4 times (``batch``)."""
    with_encoded_image(graph)["batch"] = api_node("RepeatLatentBatch", samples=["latent", 0], amount=4)
    return graph


def test_a_trained_estimator_is_saved_loaded_and_guides_a_ksampler(comfy):
    folder = comfy.base_dir / "models" / "noise_awareness_estimators"
    trained = comfy.output_images(comfy.run(with_clean_latents(estimator_graph("nag_est_trained", training()))))
    assert (folder / f"{ESTIMATOR}.safetensors").stat().st_size > 10_000
    loaded = estimator_graph("nag_est_loaded", {"class_type": "ErrorControlLoadNoiseEstimator", "inputs": {
        "model": ["ckpt", 0], "estimator_name": f"{ESTIMATOR}.safetensors"}})
    images = comfy.output_images(comfy.run(loaded))
    guided = pixels(next(p for p in images if "nag_est_loaded_" in p.name and "plain" not in p.name))
    plain = pixels(next(p for p in images if "nag_est_loaded_plain" in p.name))
    assert guided != plain  # the guidance acts
    first = pixels(next(p for p in trained if "nag_est_trained_" in p.name and "plain" not in p.name))
    assert first == guided  # the file holds exactly the trained estimator


def test_the_meter_reads_levels_with_the_estimator_and_needs_no_profile(comfy):
    graph = with_clean_latents(meter_graph("nag_meter_estimator", mode="estimator", strength=1.0,
                                           estimator=["estimator", 0]))
    del graph["meter"]["inputs"]["profile"], graph["calibrate"]
    graph["estimator"] = training(60, "nag_meter_estimator")
    assert comfy.output_images(comfy.run(graph))


def test_the_default_mode_without_an_estimator_is_refused_before_the_run_saying_what_to_connect(comfy):
    graph = txt2img(steps=2, prefix="nag_default")
    graph["nag"] = {"class_type": "ErrorControlNoiseAwarenessGuidance", "inputs": {
        "model": ["ckpt", 0], "strength": 0.1, "mode": "estimator", "delta": 0.15, "start_percent": 0.5,
        "end_percent": 1.0}}
    graph["sample"]["inputs"]["model"] = ["nag", 0]
    with pytest.raises(PromptRejected, match=r"Noise Awareness Guidance \(model patch\): input 'estimator': mode "
                                             r"'estimator' \(the default\) needs a noise-level estimator, and none is "
                                             r"connected. Train one"):
        comfy.queue(graph)
    assert comfy.run(with_input(graph, "nag", mode="fixed"))  # the training-free mode runs bare
    with pytest.raises(PromptRejected, match=r"input 'mode' must be one of \['estimator', 'adaptive', 'fixed'\]"):
        comfy.queue(with_input(graph, "nag", mode="bogus"))  # the mode's options are still checked


OLD_NAMES = Path(__file__).resolve().parent / "data" / "old_names_noise_awareness_guidance.json"
"""A workflow saved before the renames: the estimator's link type NAG_NOISE_ESTIMATOR, and it loads
``old_estimator.safetensors``, which sits in the estimator folder's former name, models/nag_noise_estimators."""


def test_a_workflow_and_an_estimator_file_of_the_old_names_still_load_and_run(comfy):
    trained = comfy.base_dir / "models" / "noise_awareness_estimators" / "nag_old_source.safetensors"
    if not trained.exists():
        comfy.run(with_clean_latents(estimator_graph("nag_old_source", training(50, "nag_old_source"))))
    former = comfy.base_dir / "models" / "nag_noise_estimators"
    former.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained, former / "old_estimator.safetensors")
    saved = json.loads(OLD_NAMES.read_text())
    assert {link[5] for link in saved["links"]} >= {"NAG_NOISE_ESTIMATOR"}
    info = comfy.object_info()
    spec = info["ErrorControlLoadNoiseEstimator"]["input"]["required"]["estimator_name"]
    assert "old_estimator.safetensors" in (spec[0] if isinstance(spec[0], list) else spec[1]["options"])
    images = comfy.output_images(comfy.run(ui_to_api(saved, info, TINY_OVERRIDES)))
    assert len(images) == 1


def test_no_name_of_the_pack_says_nag(comfy):
    """ComfyUI's own Normalized Attention Guidance is "NAG": no title, alias, type, folder, template or output folder of
    the pack says NAG alone."""
    nag = re.compile(r"(?<![A-Za-z])nag(?![A-Za-z])", re.IGNORECASE)
    info = comfy.object_info()
    ours = {node: i for node, i in info.items() if i["category"].startswith("sampling/error_control")}
    for node, i in ours.items():
        types = [spec[0] for spec in {**i["input"]["required"], **i["input"].get("optional", {})}.values()
                 if isinstance(spec[0], str)] + list(i["output"])
        names = [i["display_name"], i["category"], *(i.get("search_aliases") or []), *types]
        assert not [name for name in names if nag.search(name.replace("_", " "))], node
    workflows = Path(__file__).resolve().parents[2] / "workflows"
    assert not [p.name for p in workflows.iterdir() if nag.search(p.stem.replace("_", " "))]
    for path in workflows.glob("*.json"):
        saved = json.loads(path.read_text())
        words = [str(v) for n in saved["nodes"] for v in n.get("widgets_values") or [] if isinstance(v, str)]
        words += [str(link[5]) for link in saved["links"]]
        assert not [w for w in words if nag.search(w.replace("_", " ").replace("/", " "))], path.name
    assert not [p.name for p in (comfy.base_dir / "models").iterdir()
                if nag.search(p.name.replace("_", " ")) and p.name != "nag_noise_estimators"]


def test_an_estimator_for_another_parametrisation_is_refused(comfy):
    graph = with_clean_latents(estimator_graph("nag_est_flow", training(50, "nag_eps_estimator"), model=["flow", 0]))
    graph["flow"] = patched(PARAMETRISATION_PATCHES["flow"], ["ckpt", 0])
    with pytest.raises(PromptFailed, match=r"input 'estimator' was trained for an EPS/V model, but this model is flow"):
        comfy.run(graph)


@pytest.mark.parametrize("name, message", [
    ("../escape", r"Train Noise Estimator: input 'estimator_name' must be a plain file name"),
    ("", r"Train Noise Estimator: input 'estimator_name' must be a plain file name"),
])
def test_bad_estimator_names_write_nothing(comfy, name, message):
    folder = comfy.base_dir / "models" / "noise_awareness_estimators"
    before = sorted(folder.iterdir()) if folder.exists() else []
    with pytest.raises(PromptFailed, match=message):
        comfy.run(with_clean_latents(estimator_graph("nag_bad_name", training(50, name))))
    assert (sorted(folder.iterdir()) if folder.exists() else []) == before


def meter_readings(history: dict) -> dict[str, list]:
    """The Noise Shift Meter's plotted series (label -> y values) from its UI output."""
    (spec,) = history["outputs"]["meter"][UI_KEY]
    return {series["label"]: series["y"] for series in spec["series"]}


def test_the_meter_honours_the_latents_inpainting_mask(comfy):
    """With a mask of zeros (regenerate nothing) every model call sees the source latent noised to the scheduled level,
    so guidance cannot move what the plain and guided passes read: the two readings are the same. Unmasked, the guided
    pass reads other levels (the check can fail)."""
    graph = meter_graph("nag_meter_mask")
    graph["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    graph["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    unmasked = meter_readings(comfy.run(with_input(graph, "meter", latent_image=["latent", 0])))
    masked = meter_readings(comfy.run(with_input(graph, "meter", latent_image=["masked", 0])))
    assert unmasked["estimated, plain"] != unmasked["estimated, guided"]
    assert masked["estimated, plain"] == pytest.approx(masked["estimated, guided"], rel=1e-6)
