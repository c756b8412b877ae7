"""Every node of the pack on today's model families in the real host: SDXL (EPS), SD3.5 (flow, MMDiT), Flux.1-dev
(flow, guidance-distilled) and Wan 2.1 (flow, video latents), each from tiny random-weight files that ComfyUI's own
loaders detect as that family (tools/families.py), loaded by the family's real loader nodes.

No tiny text encoder exists for these families (their configs are fixed and full-size), so the conditioning comes from
the test-only node ``ErrorControlTestConditioning`` (tests/host/conditioning_pack): seeded tensors of the shapes the
family's encoders give. Flux runs as users run it: cfg 1 and FluxGuidance. Flux's tiny file loads only on ComfyUI 0.33
(0.3.75 fixes its width at 3072: a 385 MB file); there its tests are skipped with that reason.
"""

import pytest
import torch
from safetensors.torch import load_file

from tools.api_graphs import EXAMPLE_IMAGE, ksampler, patched, sampler_custom_advanced, save_latents
from tools.comfy_host import PromptFailed
from tools.families import FAMILIES, host_supports

FLOW_SHIFT_PATCHES = {  # each flow family's own shift node, at a shift other than the loader's
    "sd35": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 6.0}},
    "flux": {"class_type": "ModelSamplingFlux", "inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": 256,
                                                           "height": 256}},  # 1024 px gives the loader's 1.15
    "wan": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 4.0}},
}
DISTILLED = {"flux"}  # guidance-distilled: cfg 1 + FluxGuidance, no real negative
FOREIGN_LATENT = {  # a latent of another family: 16-channel image into SDXL, 4-channel into SD3/Flux, image into Wan
    "sdxl": ("EmptySD3LatentImage", "is a 16-channel image latent"),
    "sd35": ("EmptyLatentImage", "is a 4-channel image latent"),
    "flux": ("EmptyLatentImage", "is a 4-channel image latent"),
    "wan": ("EmptySD3LatentImage", r"is a 16-channel image latent \(1, 16, 8, 8\), but this WAN21_T2V model takes "
                                   r"16-channel video"),
}


@pytest.fixture(params=list(FAMILIES))
def family(request, comfy) -> str:
    if not host_supports(request.param, comfy.host.version):
        pytest.skip(f"{request.param}'s tiny file does not load on {comfy.host.id} (needs ComfyUI "
                    f"{FAMILIES[request.param].min_comfyui}; docs/contributing.md#the-hosts)")
    return request.param


def cfg_of(family: str) -> float:
    """The cfg a user runs the family at: 1 for a guidance-distilled model, 4 otherwise."""
    return 1.0 if family in DISTILLED else 4.0


def family_graph(family: str, width: int = 64, height: int = 64, batch_images: bool = False) -> dict:
    """The family's loaders, a positive and a negative from the test conditioning (FluxGuidance on Flux's positive),
    and ``latent``: the example image VAE-encoded by the family's VAE (Wan: a 5-frame clip, a [1, 16, 2, H, W] video
    latent). ``batch_images``: a batch of two different images, the example and its inverse."""
    spec = FAMILIES[family]
    graph = {**spec.loaders,
             "pos": {"class_type": "ErrorControlTestConditioning", "inputs": {"family": family, "seed": 1, "length": 0}},
             "neg": {"class_type": "ErrorControlTestConditioning", "inputs": {"family": family, "seed": 2, "length": 0}},
             "image": {"class_type": "LoadImage", "inputs": {"image": EXAMPLE_IMAGE}},
             "scaled": {"class_type": "ImageScale", "inputs": {"image": ["image", 0], "upscale_method": "bilinear",
                                                               "width": width, "height": height, "crop": "disabled"}}}
    if family in DISTILLED:
        graph["guided"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 3.5}}
    sources = {"one": ["scaled", 0]}
    if batch_images:
        graph["inverse"] = {"class_type": "ImageInvert", "inputs": {"image": ["scaled", 0]}}
        sources["two"] = ["inverse", 0]
    for name, pixels in sources.items():
        if spec.latent_shape[2:-2]:  # video: the image as a 5-frame clip
            graph[f"clip_{name}"] = {"class_type": "RepeatImageBatch", "inputs": {"image": pixels, "amount": 5}}
            pixels = [f"clip_{name}", 0]
        graph[f"latent_{name}"] = {"class_type": "VAEEncode", "inputs": {"pixels": pixels, "vae": list(spec.vae_output)}}
    graph["latent"] = ({"class_type": "LatentBatch", "inputs": {"samples1": ["latent_one", 0], "samples2": ["latent_two", 0]}}
                       if batch_images else graph.pop("latent_one"))
    return graph


def model(family: str) -> list:
    return list(FAMILIES[family].model_output)


def conds(family: str) -> dict:
    return {"positive": ["guided" if family in DISTILLED else "pos", 0], "negative": ["neg", 0]}


POLARIS_OPTIONS = {"solver": "least_squares", "eval_at": "current", "space": "v",
                   "omega_start": 1.0}


def round_trip_graph(family: str, steps: int, prefix: str, graph: dict | None = None, model_source: list | None = None
                     ) -> dict:
    """POLARIS Inversion → POLARIS Denoise, and DDIM inversion (the ``ddim_inversion`` dropdown entry, CFGGuider at
    cfg 1) → euler back down the same levels; the trace saved as ``prefix``; latents ``in``, ``noise``, ``polaris``,
    ``ddim``."""
    graph = graph or family_graph(family)
    model_source = model_source or model(family)
    graph.update({
        "invert": {"class_type": "ErrorControlPolarisInversion", "inputs": {
            "model": model_source, **conds(family), "latent": ["latent", 0], "steps": steps, "scheduler": "simple",
            **POLARIS_OPTIONS}},
        "denoise": {"class_type": "ErrorControlPolarisDenoise", "inputs": {
            "model": model_source, **conds(family), "trace": ["invert", 1], "cfg": cfg_of(family), "blend": 0.0}},
        "save_trace": {"class_type": "ErrorControlPolarisSaveTrace", "inputs": {"trace": ["invert", 1], "trace_name": prefix}},
        "schedule": {"class_type": "BasicScheduler", "inputs": {"model": model_source, "scheduler": "simple", "steps": steps,
                                                                "denoise": 1.0}},
        "levels": {"class_type": "ErrorControlInversionSigmas", "inputs": {"model": model_source, "sigmas": ["schedule", 0]}},
        "plain": {"class_type": "CFGGuider", "inputs": {"model": model_source, **conds(family), "cfg": 1.0}},
        "nonoise": {"class_type": "DisableNoise", "inputs": {}},
        "ddim_up": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim_inversion"}},
        "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "up": sampler_custom_advanced(["nonoise", 0], ["plain", 0], ["ddim_up", 0], ["levels", 0], ["latent", 0]),
        "down": sampler_custom_advanced(["nonoise", 0], ["plain", 0], ["euler", 0], ["levels", 1], ["up", 0]),
    })
    return save_latents(graph, prefix, **{"in": ["latent", 0], "noise": ["invert", 0], "polaris": ["denoise", 0],
                                  "ddim": ["down", 0]})


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def test_inversion_round_trips_converge_with_steps_in_latent_space(comfy, family):
    errors = {}
    for steps in (5, 20):
        prefix = f"family_{family}_{steps}"
        latents = comfy.output_latents(comfy.run(round_trip_graph(family, steps, prefix)))
        x0 = latents[f"{prefix}_in"]
        assert tuple(x0.shape) == FAMILIES[family].latent_shape  # the family's own latent, Wan's a video
        assert torch.isfinite(latents[f"{prefix}_noise"]).all() and latents[f"{prefix}_noise"].std() > x0.std()
        errors[steps] = {method: mse(latents[f"{prefix}_{method}"], x0) for method in ("polaris", "ddim")}
    print(family, errors)
    for method in ("polaris", "ddim"):
        assert errors[20][method] < errors[5][method], (method, errors)


def test_every_other_node_runs_on_the_family(comfy, family):
    """Noise Awareness Guidance (patch, meter, and the guider in estimator mode on an estimator trained on the family's
    latent), DiffIER (dropdown, SAMPLER node, Gap Meter), VRG (calibrate,
    the vrg dropdown, VRG Scheduler, VRG Optimize Sigmas), POLARIS Load Trace + Replay: one prompt, 4 steps each."""
    comfy.run(round_trip_graph(family, 4, f"family_{family}_trace"))
    graph = family_graph(family)
    cfg = cfg_of(family)
    sampling = {"latent_image": ["empty", 0], "seed": 3, "steps": 4, "cfg": cfg, "scheduler": "simple"}
    nag = {"strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.0, "end_percent": 1.0}
    empty = dict(FAMILIES[family].empty_latent)
    graph.update({
        "empty": empty,
        "calibrate": {"class_type": "ErrorControlVRGCalibrate", "inputs": {
            "model": model(family), "latent": ["latent", 0], "positive": conds(family)["positive"], "cfg": 1.0,
            "grid_points": 8, "seed": 0, "profile_name": f"family_{family}"}},
        "nag": {"class_type": "ErrorControlNoiseAwarenessGuidance", "inputs": {"model": model(family), **nag}},
        "k_nag": ksampler(["nag", 0], **conds(family), **sampling),
        "k_diffier": ksampler(model(family), **conds(family), **sampling, sampler_name="diffier"),
        "k_vrg": ksampler(["calibrate", 0], **conds(family), **{**sampling, "scheduler": "vrg"}),
        "meter": {"class_type": "ErrorControlNoiseShiftMeter", "inputs": {
            "model": ["calibrate", 0], **conds(family), **sampling, "sampler_name": "euler", **nag}},
        "gap": {"class_type": "ErrorControlDiffIERGapMeter", "inputs": {
            "model": model(family), **conds(family), **sampling, "iterations": 1, "damping": 1.0}},
        "estimator": {"class_type": "ErrorControlTrainNoiseEstimator", "inputs": {
            "model": model(family), "latent": ["latent", 0], "iterations": 30, "batch_size": 4, "seed": 0,
            "estimator_name": f"family_{family}_estimator"}},
        "nag_guider": {"class_type": "ErrorControlNoiseAwarenessGuider", "inputs": {
            "model": model(family), **conds(family), "cfg": cfg, **nag, "mode": "estimator", "strength": 0.1,
            "estimator": ["estimator", 0]}},
        "vrg_sigmas": {"class_type": "ErrorControlVRGScheduler", "inputs": {
            "model": model(family), "profile": ["calibrate", 1], "scheduler": "simple", "steps": 4, "denoise": 1.0,
            "lp": 0.01, "fix_sigma_max": True}},
        "base_sigmas": {"class_type": "BasicScheduler", "inputs": {"model": model(family), "scheduler": "simple",
                                                                   "steps": 4, "denoise": 1.0}},
        "vrg_optimized": {"class_type": "ErrorControlVRGOptimizeSigmas", "inputs": {
            "profile": ["calibrate", 1], "sigmas": ["base_sigmas", 0], "lp": 0.01, "fix_sigma_max": True}},
        "diffier_sampler": {"class_type": "ErrorControlDiffIERSampler", "inputs": {"iterations": 1, "damping": 1.0}},
        "cfg_guider": {"class_type": "CFGGuider", "inputs": {"model": model(family), **conds(family), "cfg": cfg}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "s_nag": sampler_custom_advanced(["noise", 0], ["nag_guider", 0], ["euler", 0], ["vrg_sigmas", 0], ["empty", 0]),
        "s_diffier": sampler_custom_advanced(["noise", 0], ["cfg_guider", 0], ["diffier_sampler", 0], ["vrg_optimized", 0],
                                             ["empty", 0]),
        "load": {"class_type": "ErrorControlPolarisLoadTrace", "inputs": {
            "model": model(family), "trace_name": f"family_{family}_trace.safetensors"}},
        "replay": {"class_type": "ErrorControlPolarisReplay", "inputs": {
            "model": model(family), **conds(family), "trace": ["load", 0], "cfg": cfg, "blend": 0.0}},
        "trace_sigmas": {"class_type": "ErrorControlPolarisTraceSigmas", "inputs": {"trace": ["load", 0]}},
        "nonoise": {"class_type": "DisableNoise", "inputs": {}},
        "s_replay": sampler_custom_advanced(["nonoise", 0], ["replay", 0], ["euler", 0], ["trace_sigmas", 0], ["load", 1]),
        "plots": {"class_type": "PreviewImage", "inputs": {"images": ["meter", 0]}},
        "gap_plot": {"class_type": "PreviewImage", "inputs": {"images": ["gap", 1]}},
    })
    prefix = f"family_{family}_nodes"
    outputs = {name: [name, 0] for name in ("k_nag", "k_diffier", "k_vrg", "gap", "s_nag", "s_diffier", "s_replay")}
    latents = comfy.output_latents(comfy.run(save_latents(graph, prefix, **outputs)))
    shape = FAMILIES[family].latent_shape
    for name in outputs:
        assert tuple(latents[f"{prefix}_{name}"].shape) == shape, name
        assert torch.isfinite(latents[f"{prefix}_{name}"]).all(), name
    assert (comfy.base_dir / "models" / "vrg_profiles" / f"family_{family}.safetensors").is_file()
    assert (comfy.base_dir / "models" / "noise_awareness_estimators" / f"family_{family}_estimator.safetensors").is_file()


def test_batch_of_two_images_at_a_non_square_size_gets_one_omega_per_image(comfy, family):
    prefix = f"family_{family}_batch"
    graph = round_trip_graph(family, 6, prefix, family_graph(family, width=96, height=64, batch_images=True))
    latents = comfy.output_latents(comfy.run(graph))
    shape = (2, *FAMILIES[family].latent_shape[1:-2], 8, 12)
    for part in ("in", "noise", "polaris", "ddim"):
        assert tuple(latents[f"{prefix}_{part}"].shape) == shape and torch.isfinite(latents[f"{prefix}_{part}"]).all()
    assert not torch.equal(latents[f"{prefix}_in"][0], latents[f"{prefix}_in"][1])
    omega = load_file(str(comfy.base_dir / "models" / "polaris_traces" / f"{prefix}.safetensors"))["omega"]
    assert omega.shape == (6, 2)
    if family in DISTILLED:
        assert torch.all(omega == 1)  # no negative branch on a distilled model: plain inversion, ω ≡ 1
    else:
        assert not torch.equal(omega[1:, 0], omega[1:, 1])  # each image solves its own least squares


def test_a_latent_of_another_family_gets_a_clear_error(comfy, family):
    node, message = FOREIGN_LATENT[family]
    graph = family_graph(family)
    graph["foreign"] = {"class_type": node, "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["invert"] = {"class_type": "ErrorControlPolarisInversion", "inputs": {
        "model": model(family), **conds(family), "latent": ["foreign", 0], "steps": 3, "scheduler": "simple",
        **POLARIS_OPTIONS}}
    save_latents(graph, f"family_{family}_foreign", noise=["invert", 0])
    with pytest.raises(PromptFailed, match=f"POLARIS Inversion: input 'latent' {message}.*Encode with this model's VAE"):
        comfy.run(graph)


@pytest.mark.parametrize("made_on, used_on", [("sd35", "wan"), ("sd35", "flux"), ("wan", "sdxl")])
def test_an_artefact_of_one_family_is_refused_by_another_naming_both(comfy, made_on, used_on):
    for name in (made_on, used_on):
        if not host_supports(name, comfy.host.version):
            pytest.skip(f"{name}'s tiny file does not load on {comfy.host.id}")
    prefix = f"family_{made_on}_for_{used_on}"
    comfy.run(round_trip_graph(made_on, 3, prefix))
    graph = family_graph(used_on)
    graph["load"] = {"class_type": "ErrorControlPolarisLoadTrace", "inputs": {
        "model": model(used_on), "trace_name": f"{prefix}.safetensors"}}
    save_latents(graph, prefix + "_loaded", noise=["load", 1])
    made, used = FAMILIES[made_on].detected_class, FAMILIES[used_on].detected_class
    flow_mismatch = FAMILIES[made_on].prediction != FAMILIES[used_on].prediction
    expected = ("was made with a flow model, but this model is EPS/V" if flow_mismatch
                else f"was made with a {made} model, but this model is {used}")
    with pytest.raises(PromptFailed, match=f"POLARIS Load Trace: input 'trace' {expected}"):
        comfy.run(graph)


@pytest.mark.parametrize("flow_family", list(FLOW_SHIFT_PATCHES))
def test_a_trace_replays_unchanged_at_another_shift(comfy, flow_family):
    """A trace records its σ levels; a flow model's time input is σ itself, whatever its shift (or Flux resolution), so
    the same trace replays bit-identically on the model with another shift."""
    if not host_supports(flow_family, comfy.host.version):
        pytest.skip(f"{flow_family}'s tiny file does not load on {comfy.host.id}")
    prefix = f"family_{flow_family}_shift"
    first = comfy.output_latents(comfy.run(round_trip_graph(flow_family, 6, prefix)))
    graph = family_graph(flow_family)
    graph["shifted"] = patched(FLOW_SHIFT_PATCHES[flow_family], model(flow_family))
    graph["load"] = {"class_type": "ErrorControlPolarisLoadTrace", "inputs": {
        "model": ["shifted", 0], "trace_name": f"{prefix}.safetensors"}}
    graph["denoise"] = {"class_type": "ErrorControlPolarisDenoise", "inputs": {
        "model": ["shifted", 0], **conds(flow_family), "trace": ["load", 0], "cfg": cfg_of(flow_family), "blend": 0.0}}
    graph["invert"] = {"class_type": "ErrorControlPolarisInversion", "inputs": {  # the shift really acts: other levels
        "model": ["shifted", 0], **conds(flow_family), "latent": ["latent", 0], "steps": 6, "scheduler": "simple",
        **POLARIS_OPTIONS}}
    second = comfy.output_latents(comfy.run(save_latents(graph, prefix + "_replayed", polaris=["denoise", 0],
                                                 noise=["invert", 0])))
    assert not torch.equal(second[f"{prefix}_replayed_noise"], first[f"{prefix}_noise"])
    assert torch.equal(second[f"{prefix}_replayed_polaris"], first[f"{prefix}_polaris"])


def test_on_a_guidance_distilled_model_diffier_is_plain_euler_and_nag_and_vrg_apply(comfy):
    """Flux-dev at cfg 1 + FluxGuidance, as users run it: DiffIER has no guidance to correct (plain euler); Noise
    Awareness Guidance (a model patch on the conditional prediction) and a VRG schedule change the sample.
    (POLARIS' ω ≡ 1 there: test_batch_of_two_images_at_a_non_square_size_gets_one_omega_per_image.)"""
    if not host_supports("flux", comfy.host.version):
        pytest.skip(f"flux's tiny file does not load on {comfy.host.id}")
    graph = family_graph("flux")
    graph["empty"] = dict(FAMILIES["flux"].empty_latent)
    graph["calibrate"] = {"class_type": "ErrorControlVRGCalibrate", "inputs": {
        "model": model("flux"), "latent": ["latent", 0], "positive": conds("flux")["positive"], "cfg": 1.0,
        "grid_points": 8, "seed": 0, "profile_name": "flux_distilled"}}
    graph["nag"] = {"class_type": "ErrorControlNoiseAwarenessGuidance", "inputs": {
        "model": model("flux"), "strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.0, "end_percent": 1.0}}
    runs = {"euler": (model("flux"), "euler", "simple"), "diffier": (model("flux"), "diffier", "simple"),
            "nag": (["nag", 0], "euler", "simple"), "vrg": (["calibrate", 0], "euler", "vrg")}
    for name, (source, sampler, scheduler) in runs.items():
        graph[f"k_{name}"] = ksampler(source, **conds("flux"), latent_image=["empty", 0], seed=5, steps=6, cfg=1.0,
                                      sampler_name=sampler, scheduler=scheduler)
    latents = comfy.output_latents(comfy.run(save_latents(graph, "flux_cfg1", **{name: [f"k_{name}", 0] for name in runs})))
    plain = latents["flux_cfg1_euler"]
    # DiffIER's DDIM step and euler's x + d·Δσ are the same step in different float32 rounding
    torch.testing.assert_close(latents["flux_cfg1_diffier"], plain, rtol=0, atol=1e-4 * float(plain.abs().max()))
    for name in ("nag", "vrg"):
        change = mse(latents[f"flux_cfg1_{name}"], plain) / float(plain.square().mean())
        print(f"flux cfg 1: {name} changes the sample by {change:.3g} (relative MSE)")
        assert change > 1e-4, name
