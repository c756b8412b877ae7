"""VRG Calibrate's schedule search in the real host, on the tiny SD1.5 checkpoint and on every family file: it runs,
its choice per step count is stored with the profile, reloaded, and handed out by the 'vrg' dropdown entry (no other
schedule: the KSampler's result equals sampling the stored SIGMAS); a step count never searched falls back with a log
line; a bad step list, a damaged file and a foreign file get clear errors; an interrupt stops a running search."""

import json
import time

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from samplers.vrg import ErrorProfile
from tests.host.test_families import cfg_of, conds, family, family_graph, model  # noqa: F401 (family: a fixture)
from tests.host.test_reliability import run_and_interrupt
from tools.api_graphs import api_node, base_graph, ksampler, save_latents, txt2img
from tools.comfy_host import PromptFailed
from tools.families import FAMILIES

SEARCH = {"sampler_name": "euler", "search_steps": "4, 3", "search_bank": 2}


def sd15_graph() -> dict:
    """The tiny SD1.5 checkpoint, an empty prompt, the example image encoded (the family graphs' names)."""
    return base_graph({"pos": "", "neg": "blurry"}, encoded_image=True)


def search_graph(graph: dict, model_source: list, positive: list, negative: list, cfg: float, name: str) -> dict:
    """Calibrate + search ("4, 3" steps); KSampler 'vrg' at 4 steps; SamplerCustom on the SIGMAS output (4 steps), same
    seed; KSampler 'vrg' at 5 steps (never searched); both results saved as latents ``<name>_dropdown`` / ``_sigmas``."""
    sampling = {"positive": positive, "negative": negative, "cfg": cfg, "latent_image": ["empty", 0]}
    graph.update({
        "calibrate": {"class_type": "ErrorControlVRGCalibrate", "inputs": {
            "model": model_source, "latent": ["latent", 0], "positive": positive, "cfg": 1.0, "grid_points": 8,
            "seed": 0, "profile_name": name, **SEARCH}},
        "dropdown": ksampler(["calibrate", 0], **sampling, seed=3, steps=4, scheduler="vrg"),
        "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "custom": {"class_type": "SamplerCustom", "inputs": {
            "model": ["calibrate", 0], **sampling, "add_noise": True, "noise_seed": 3, "sampler": ["euler", 0],
            "sigmas": ["calibrate", 3]}},
        "fallback": ksampler(["calibrate", 0], **sampling, seed=3, steps=5, scheduler="vrg"),
        "search_plot": {"class_type": "PreviewImage", "inputs": {"images": ["calibrate", 4]}},
    })
    return save_latents(graph, name, dropdown=["dropdown", 0], sigmas=["custom", 0], fallback=["fallback", 0])


def check_search(comfy, graph: dict, name: str, tables: set[str]) -> ErrorProfile:
    """Run ``graph``; the stored choices, the dropdown's use of them and the fallback's log line."""
    latents = comfy.output_latents(comfy.run(graph))
    assert latents[f"{name}_dropdown"].equal(latents[f"{name}_sigmas"]), sorted(latents)
    profile = ErrorProfile.load(comfy.base_dir / "models" / "vrg_profiles" / f"{name}.safetensors")
    assert set(profile.schedules) == {"3", "4"}
    errors = profile.schedules["4"]["errors"]
    assert {"normal", "normal+vrg", "karras", "karras+vrg"} | tables | {t + "+vrg" for t in tables} <= set(errors)
    assert profile.schedules["4"]["name"] == min(errors, key=errors.get)
    assert "scheduler 'vrg': no schedule search stored for 5 steps" in comfy.log_tail(200_000)
    return profile


def test_the_search_on_sd15_is_stored_and_handed_out_by_the_dropdown(comfy):
    graph = search_graph(sd15_graph(), ["ckpt", 0], ["pos", 0], ["neg", 0], 4.0, "search_sd15")
    check_search(comfy, graph, "search_sd15", {"AYS (SD1)", "GITS (1.2)"})


def test_the_search_on_each_family_is_stored_and_handed_out_by_the_dropdown(comfy, family):  # noqa: F811
    tables = {"flux": {"OptimalSteps (FLUX)"}, "wan": {"OptimalSteps (Wan)"}, "sdxl": {"AYS (SDXL)"}}.get(family, set())
    name = f"search_{family}"
    graph = {**family_graph(family), "empty": dict(FAMILIES[family].empty_latent)}
    graph = search_graph(graph, model(family), *conds(family).values(), cfg_of(family), name)
    check_search(comfy, graph, name, tables)


@pytest.mark.parametrize("steps", [",", "10, x", "1", "20 30", "0, 10"])
def test_a_bad_step_list_says_what_to_write(comfy, steps):
    graph = search_graph(sd15_graph(), ["ckpt", 0], ["pos", 0], ["neg", 0], 4.0, "search_bad_steps")
    graph["calibrate"]["inputs"]["search_steps"] = steps
    with pytest.raises(PromptFailed, match="VRG Calibrate: input 'search_steps' must list step counts from 2 to 1000"):
        comfy.run(graph)


def load_graph(file_name: str) -> dict:
    return {**base_graph({}, empty_latent=False),
            "load": api_node("ErrorControlVRGLoadProfile", model=["ckpt", 0], profile_name=file_name),
            "plot": api_node("PreviewImage", images=["load", 2])}


def test_a_damaged_or_foreign_file_is_refused(comfy):
    """A stored choice whose levels are not a schedule of its step count, and a safetensors file of something else."""
    folder = comfy.base_dir / "models" / "vrg_profiles"
    comfy.run(search_graph(sd15_graph(), ["ckpt", 0], ["pos", 0], ["neg", 0], 4.0, "search_damaged"))
    with safe_open(str(folder / "search_damaged.safetensors"), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    record = json.loads(metadata["record"])
    record["schedules"]["4"]["sigmas"] = record["schedules"]["4"]["sigmas"][::-1]
    save_file(tensors, str(folder / "damaged_search.safetensors"), metadata={**metadata, "record": json.dumps(record)})
    with pytest.raises(PromptFailed, match="damaged VRG error profile.*schedule stored for '4' steps"):
        comfy.run(load_graph("damaged_search.safetensors"))
    save_file({"weights": tensors["sigmas"]}, str(folder / "foreign.safetensors"))
    with pytest.raises(PromptFailed, match="is a safetensors file but not a VRG error profile"):
        comfy.run(load_graph("foreign.safetensors"))


def test_an_interrupt_stops_a_running_search_and_leaves_no_file(comfy):
    """A calibration alone is timed first; the search (300 steps, a bank of 16: minutes on the tiny model) is interrupted
    at twice that plus 2 s, inside the search (the host's layers and the search's progress callback both check for an
    interrupt): it ends within moments, no profile is written and the server answers the next prompt."""
    folder = comfy.base_dir / "models" / "vrg_profiles"
    graph = {**sd15_graph(), "calibrate": api_node("ErrorControlVRGCalibrate", model=["ckpt", 0], latent=["latent", 0],
                                                   positive=["pos", 0], cfg=1.0, grid_points=8, seed=0,
                                                   profile_name="search_timing", sampler_name="euler"),
             "plot": api_node("PreviewImage", images=["calibrate", 4])}
    began = time.monotonic()
    comfy.run(graph)
    calibration = time.monotonic() - began
    graph["calibrate"]["inputs"].update(profile_name="search_interrupted", search_steps="300", search_bank=16)
    before = {p.name for p in folder.iterdir()}
    seconds = run_and_interrupt(comfy, graph, after=2 * calibration + 2)
    assert seconds < 10, seconds
    assert {p.name for p in folder.iterdir()} == before
    assert comfy.output_images(comfy.run(txt2img(steps=1, prefix="after_search_interrupt")))
