"""POLARIS in a real ComfyUI: inversion → replay for every parametrisation, both replay paths, traces across prompts."""

import pytest
import torch

from tools.api_graphs import (
    PARAMETRISATION_PATCHES,
    PHOTO_PROMPTS,
    base_graph,
    model_of,
    sampler_custom_advanced,
    save_latent,
    save_latents,
)
from tools.comfy_host import PromptFailed


def photo_graph(family_patch: dict | None) -> dict:
    """Tiny checkpoint (patched to a parametrisation), the encoded example image, a prompt and an empty negative."""
    return base_graph(PHOTO_PROMPTS, empty_latent=False, encoded_image=True, patch=family_patch)


def polaris_graph(steps: int, family_patch: dict | None, prefix: str) -> dict:
    """Invert with POLARIS, denoise with POLARIS Denoise and with POLARIS Replay + SamplerCustomAdvanced; save the
    trace as ``prefix`` and the latents as ``prefix_in``, ``_noise``, ``_out``, ``_custom``."""
    graph = photo_graph(family_patch)
    model, conds = model_of(graph), {"positive": ["text", 0], "negative": ["empty", 0]}
    replay = {"model": model, **conds, "trace": ["invert", 1], "cfg": 7.0, "blend": 0.0}
    graph.update({
        "invert": {"class_type": "ErrorControlPolarisInversion", "inputs": {
            "model": model, **conds, "latent": ["latent", 0], "steps": steps, "scheduler": "normal",
            "solver": "least_squares", "eval_at": "current", "space": "v",
            "omega_start": 1.0}},
        "denoise": {"class_type": "ErrorControlPolarisDenoise", "inputs": replay},
        "guider": {"class_type": "ErrorControlPolarisReplay", "inputs": replay},
        "sigmas": {"class_type": "ErrorControlPolarisTraceSigmas", "inputs": {"trace": ["invert", 1]}},
        "nonoise": {"class_type": "DisableNoise", "inputs": {}},
        "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "custom": sampler_custom_advanced(["nonoise", 0], ["guider", 0], ["euler", 0], ["sigmas", 0], ["invert", 0]),
        "save_trace": {"class_type": "ErrorControlPolarisSaveTrace", "inputs": {"trace": ["invert", 1],
                                                                                "trace_name": prefix}},
        "plot": {"class_type": "PreviewImage", "inputs": {"images": ["invert", 2]}},
    })
    return save_latents(graph, prefix, **{"in": ["latent", 0], "noise": ["invert", 0], "out": ["denoise", 0],
                                          "custom": ["custom", 0]})


@pytest.mark.parametrize("family", PARAMETRISATION_PATCHES)
def test_polaris_round_trip_converges_and_both_replay_paths_agree(comfy, family):
    errors = {}
    for steps in (4, 20):
        prefix = f"polaris_{family}_{steps}"
        latents = comfy.output_latents(comfy.run(polaris_graph(steps, PARAMETRISATION_PATCHES[family], prefix)))
        x0, noise, out, custom = (latents[f"{prefix}_{part}"] for part in ("in", "noise", "out", "custom"))
        assert torch.isfinite(noise).all() and noise.std() > x0.std()  # it really went up to noise
        # POLARIS Denoise and POLARIS Replay + SamplerCustomAdvanced walk the same levels with the same ω; they differ
        # only in float32 rounding (DDIM's a'·x̂0 + σ'·ε̂ against euler's x + d·Δσ, and the LATENT scaling in between)
        torch.testing.assert_close(custom, out, rtol=0, atol=1e-3 * float(x0.abs().max()))
        errors[steps] = ((out - x0) ** 2).mean().item()
    assert errors[20] < errors[4], errors


def load_and_denoise(name: str, prefix: str, family_patch: dict | None = None) -> dict:
    graph = photo_graph(family_patch)
    graph.update({
        "load": {"class_type": "ErrorControlPolarisLoadTrace", "inputs": {"model": model_of(graph),
                                                                          "trace_name": f"{name}.safetensors"}},
        "denoise": {"class_type": "ErrorControlPolarisDenoise", "inputs": {
            "model": model_of(graph), "positive": ["text", 0], "negative": ["empty", 0], "trace": ["load", 0],
            "cfg": 7.0, "blend": 0.0}},
    })
    return save_latents(graph, prefix, out=["denoise", 0], noise=["load", 1])


def test_a_trace_saved_in_one_prompt_is_replayed_in_another(comfy):
    first = comfy.output_latents(comfy.run(polaris_graph(8, None, "polaris_shared")))
    assert (comfy.base_dir / "models" / "polaris_traces" / "polaris_shared.safetensors").is_file()
    second = comfy.output_latents(comfy.run(load_and_denoise("polaris_shared", "polaris_loaded")))
    assert torch.equal(second["polaris_loaded_out"], first["polaris_shared_out"])
    assert torch.equal(second["polaris_loaded_noise"], first["polaris_shared_noise"])


def test_a_trace_made_with_a_flow_model_is_refused_by_an_eps_model(comfy):
    comfy.run(polaris_graph(3, PARAMETRISATION_PATCHES["flow"], "polaris_flow_trace"))
    with pytest.raises(PromptFailed, match="POLARIS Load Trace: input 'trace' was made with a flow model, but this "
                                           "model is EPS/V. Invert the image with this model"):
        comfy.run(load_and_denoise("polaris_flow_trace", "polaris_refused"))
    assert comfy.run(load_and_denoise("polaris_flow_trace", "polaris_flow_ok", PARAMETRISATION_PATCHES["flow"]))


def test_load_trace_offers_only_files_of_its_folder(comfy):
    comfy.refused(load_and_denoise("../../user/default/comfy.settings", "polaris_escape"), PromptFailed,
                  "POLARIS Load Trace: input 'trace_name': no file '../../user")


def sampler_graph(guider: dict, trace_name: str) -> dict:
    graph = photo_graph(None)
    graph.update({
        "guider": guider,
        "schedule": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "normal", "steps": 4,
                                                                "denoise": 1.0}},
        "levels": {"class_type": "ErrorControlInversionSigmas", "inputs": {"model": ["ckpt", 0], "sigmas": ["schedule", 0]}},
        "nonoise": {"class_type": "DisableNoise", "inputs": {}},
        "inverter": {"class_type": "ErrorControlPolarisInversionSampler", "inputs": {
            "solver": "least_squares", "eval_at": "current", "space": "v",
            "omega_start": 1.0, "trace_name": trace_name}},
        "invert": sampler_custom_advanced(["nonoise", 0], ["guider", 0], ["inverter", 0], ["levels", 0], ["latent", 0]),
        "save": save_latent(["invert", 0], trace_name),
    })
    return graph


def test_the_inversion_sampler_writes_its_trace_and_needs_a_negative_prompt(comfy):
    cfg_guider = {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["text", 0],
                                                        "negative": ["empty", 0], "cfg": 1.0}}
    comfy.run(sampler_graph(cfg_guider, "polaris_sampler_trace"))
    assert comfy.run(load_and_denoise("polaris_sampler_trace", "polaris_sampler_replayed"))
    basic = {"class_type": "BasicGuider", "inputs": {"model": ["ckpt", 0], "conditioning": ["text", 0]}}
    with pytest.raises(PromptFailed, match="POLARIS Inversion \\(sampler\\): needs the negative prompt's prediction"):
        comfy.run(sampler_graph(basic, "polaris_basic_guider"))


def test_replaying_on_a_latent_of_another_size_says_so(comfy):
    graph = polaris_graph(3, None, "polaris_wrong_size")
    graph["other"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}}
    graph["custom"]["inputs"]["latent_image"] = ["other", 0]
    with pytest.raises(PromptFailed, match=r"POLARIS Replay \(guider\): the latent has shape \(1, 4, 8, 16\), the trace was made "
                                           r"for \(1, 4, 8, 8\)"):
        comfy.run(graph)


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_denoise_with_a_reference_pulls_towards_the_source_latent(comfy, family):
    errors = {}
    for strength in (0.0, 0.9):
        prefix = f"polaris_reference_{family}_{int(strength * 10)}"
        graph = polaris_graph(4, PARAMETRISATION_PATCHES[family], prefix)
        graph["denoise"]["inputs"] = {**graph["denoise"]["inputs"], "reference": ["latent", 0],
                                      "reference_strength": strength}  # a copy: the guider shares the dict
        latents = comfy.output_latents(comfy.run(graph))
        x0, out = latents[f"{prefix}_in"], latents[f"{prefix}_out"]
        errors[strength] = ((out - x0) ** 2).mean().item()
    assert errors[0.9] < 0.9 * errors[0.0], errors
