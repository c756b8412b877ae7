"""Noise Awareness Guidance (arXiv 2510.12497), training-free: a MODEL patch for any sampler, a GUIDER for
SamplerCustomAdvanced, and a Noise Shift Meter. Math in ``samplers/nag.py``.

The guidance runs as a post-CFG function, so it stacks with other model patches (FreeU, RescaleCFG, ...): its extra model
call at σ_u is the step's conditional model with the step's model options, patches included
(``comfy_seam.conditional_model``). The adaptive mode and the meter use the VRG error profile given as input, or the one
the MODEL carries (VRG Calibrate / VRG Load Profile attach it).
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..plots.line import line_plot
from ..samplers.nag import estimate_sigma, nag_denoise
from ..samplers.vrg import ErrorProfile
from . import types
from .comfy_seam import (
    EXPERT,
    aliases,
    cfg_guider,
    check_latent_fits,
    conditional_model,
    is_flow,
    model_profile,
    percent_window,
    step_callback,
    step_model_sampling,
    with_post_cfg,
)
from .vrg import check_profile

CATEGORY = "sampling/error_control/noise_awareness_guidance"
MODES = ["fixed", "adaptive"]


def guidance_inputs() -> list:
    """The inputs every Noise Awareness Guidance node shares, with their tested ranges."""
    return [
        io.Float.Input("strength", default=0.5, min=0.0, max=5.0, step=0.05,
                       tooltip="w, the guidance strength (tested 0.3–1.0). Keep w·(1 − e^(−2δ)) around 0.05–0.15; 0 is "
                               "plain sampling."),
        io.Combo.Input("mode", options=MODES, default="fixed",
                       tooltip="fixed: the comparison level is σ·e^δ. adaptive: the noise level the latent actually shows "
                               "(needs a VRG error profile), at least σ·e^δ; with δ = 0 it does nothing where there is no "
                               "noise shift. Both can harm a model without noise shift (fixed at w 0.5: 1.6x the error of "
                               "plain CFG on the 1024-d testbed): check your model with the Noise Shift Meter first."),
        io.Float.Input("delta", default=0.15, min=0.0, max=1.0, step=0.01,
                       tooltip="δ: fixed mode's log step up in σ, adaptive mode's floor (tested 0.1–0.2 fixed, 0–0.1 "
                               "adaptive).", **EXPERT),
        io.Float.Input("start_percent", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Guide from this point of sampling on (0 = first step; tested 0.3–0.7). Early steps "
                               "overshoot and have little noise shift.", **EXPERT),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Guide up to this point of sampling (1 = last step; tested 1.0).", **EXPERT),
        types.VRGProfile.Input("profile", optional=True,
                               tooltip="The model's VRG error profile (VRG Calibrate / VRG Load Profile) for the adaptive "
                                       "mode; without it, the profile the MODEL carries."),
    ]


def resolve_profile(model_patcher, profile: ErrorProfile | None, mode: str, node: str, needed: bool = False):
    """The profile to use (input, else the MODEL's), checked against the model; an error if the mode needs one and none."""
    profile = profile or model_profile(model_patcher)
    if profile is None and (needed or mode == "adaptive"):
        why = "the noise-level estimate" if needed else "mode 'adaptive'"
        raise ValueError(f"{node}: input 'profile': {why} needs the model's VRG error profile. Connect one from "
                         "'VRG Calibrate' or 'VRG Load Profile', or feed the MODEL through one of them"
                         f"{'' if needed else ', or use mode fixed'}.")
    if profile is not None:
        check_profile(profile, model_patcher, node)
    return profile


def check_guidance(node: str, strength: float, mode: str, delta: float, start_percent: float, end_percent: float) -> None:
    if mode not in MODES:
        raise ValueError(f"{node}: input 'mode' must be one of {MODES}, got {mode!r}.")
    if not strength >= 0:
        raise ValueError(f"{node}: input 'strength' must be >= 0 (0 disables the guidance), got {strength}.")
    if mode == "fixed" and delta <= 0 and strength > 0:
        raise ValueError(f"{node}: input 'delta' must be > 0 in mode 'fixed' (σ_u = σ·e^δ equals σ at 0, a no-op "
                         "that still costs a model call); use 0.1–0.2.")
    if not 0 <= start_percent < end_percent <= 1:
        raise ValueError(f"{node}: inputs 'start_percent' ({start_percent}) and 'end_percent' ({end_percent}) must "
                         "satisfy 0 <= start < end <= 1; e.g. 0.5 and 1.0 guide the second half of sampling.")


def guidance_function(strength: float, mode: str, delta: float, start_percent: float, end_percent: float,
                      profile: ErrorProfile | None):
    """A ComfyUI post-CFG function applying :func:`samplers.nag.nag_denoise` to the step's guided prediction."""

    def post_cfg(args: dict) -> torch.Tensor:
        model_sampling = step_model_sampling(args)
        window = percent_window(model_sampling, start_percent, end_percent)
        return nag_denoise(conditional_model(args), args["input"], args["sigma"], args["denoised"], args["cond_denoised"],
                           strength, mode, delta, profile, is_flow(model_sampling), window)

    return post_cfg


def patched(model, node: str, strength: float, mode: str, delta: float, start_percent: float, end_percent: float,
            profile: ErrorProfile | None):
    check_guidance(node, strength, mode, delta, start_percent, end_percent)
    profile = resolve_profile(model, profile, mode, node)
    return with_post_cfg(model, guidance_function(strength, mode, delta, start_percent, end_percent, profile))


class NoiseAwarenessGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlNoiseAwarenessGuidance",
            **aliases("noise shift", "noise awareness", "exposure bias"),
            display_name="Noise Awareness Guidance (model patch)",
            category=CATEGORY,
            description="Noise Awareness Guidance (training-free): steers each step's latent back to the noise level "
                        "the schedule expects, by mixing the model's score with its own score at a slightly higher noise "
                        "level. Works in the plain KSampler and stacks with other model patches; +1 model call per "
                        "guided step.",
            inputs=[io.Model.Input("model"), *guidance_inputs()],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, strength, mode, delta, start_percent, end_percent, profile=None) -> io.NodeOutput:
        node = "Noise Awareness Guidance (model patch)"
        return io.NodeOutput(patched(model, node, strength, mode, delta, start_percent, end_percent, profile))


class NoiseAwarenessGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlNoiseAwarenessGuider",
            **aliases("noise shift", "noise awareness", "guider"),
            display_name="Noise Awareness Guidance (guider)",
            category=CATEGORY,
            description="Classifier-free guidance plus Noise Awareness Guidance, as a GUIDER for SamplerCustomAdvanced.",
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="Classifier-free guidance scale (tested 1–8)."),
                    *guidance_inputs()],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, strength, mode, delta, start_percent, end_percent,
                profile=None) -> io.NodeOutput:
        node = "Noise Awareness Guidance (guider)"
        guided = patched(model, node, strength, mode, delta, start_percent, end_percent, profile)
        return io.NodeOutput(cfg_guider(guided, positive, negative, cfg))


def recorded_run(model, profile: ErrorProfile, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
                 scheduler: str, positive, negative, progress: comfy.utils.ProgressBar, node: str) -> tuple[list, list]:
    """One KSampler pass that records, at every model call, the scheduled level and the RMS over the batch of the level
    the latent shows (:func:`samplers.nag.estimate_sigma` on the conditional prediction)."""
    scheduled, estimated = [], []

    def record(args: dict) -> torch.Tensor:
        sigma = args["sigma"]
        scheduled.append(sigma[0])
        estimated.append(estimate_sigma(args["input"], args["cond_denoised"], sigma, profile).square().mean().sqrt())
        return args["denoised"]

    recorder = with_post_cfg(model, record)
    samples = comfy.sample.fix_empty_latent_channels(recorder, latent["samples"])
    check_latent_fits(recorder, samples, node, "latent_image")
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    start = progress.current
    on_step = step_callback(lambda step: progress.update_absolute(start + step["i"] + 1))
    comfy.sample.sample(recorder, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                        callback=lambda i, denoised, x, total: on_step({"i": i, "denoised": denoised, "x": x}),
                        disable_pbar=True, seed=seed)
    return torch.stack(scheduled).tolist(), torch.stack(estimated).tolist()


class NoiseShiftMeter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlNoiseShiftMeter",
            **aliases("noise shift", "noise level", "diagnostic"),
            display_name="Noise Shift Meter (Noise Awareness Guidance)",
            category=CATEGORY,
            description="Runs the same KSampler pass twice, plain and with Noise Awareness Guidance, and plots the "
                        "scheduled noise level against the level the latent actually shows at every step (estimated "
                        "from the model's residual against its VRG error profile): the noise-shift analysis of the "
                        "paper, for your model. Estimates are reliable where σ is at least the latent's own scale.",
            is_output_node=True,
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Latent.Input("latent_image"),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                                 tooltip="Seed of the starting noise, the same for the plain and the guided pass."),
                    io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps (tested 4–30)."),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="Classifier-free guidance scale (tested 1–8)."),
                    io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                                   tooltip="The sampler to measure (tested euler, dpmpp_2m)."),
                    io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                                   tooltip="The schedule to measure (tested normal, karras)."),
                    *guidance_inputs()],
            outputs=[io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, strength, mode,
                delta, start_percent, end_percent, profile=None) -> io.NodeOutput:
        node = "Noise Shift Meter"
        profile = resolve_profile(model, profile, mode, node, needed=True)
        guided = patched(model, node, strength, mode, delta, start_percent, end_percent, profile)
        progress = comfy.utils.ProgressBar(2 * steps)
        run = dict(profile=profile, latent=latent_image, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                   scheduler=scheduler, positive=positive, negative=negative, progress=progress, node=node)
        scheduled, plain = recorded_run(model, **run)
        _, with_guidance = recorded_run(guided, **run)
        series = {"scheduled sigma": (range(len(scheduled)), scheduled),
                  "estimated, plain": (range(len(plain)), plain),
                  "estimated, guided": (range(len(with_guidance)), with_guidance)}
        title = f"Noise shift: {sampler_name}/{scheduler}, {steps} steps, cfg {cfg:g}, guidance w={strength:g} ({mode})"
        plot = line_plot(series, title, "model call", "sigma")
        return io.NodeOutput(plot.image, ui=plot.ui)


NODES = [NoiseAwarenessGuidance, NoiseAwarenessGuider, NoiseShiftMeter]
