"""DiffIER (arXiv 2508.13628), reconstructed from the paper's abstract: per step, the guidance weight that agrees best
with the model's own guided prediction at the step's next state, found by K damped iterations. Math in
``samplers/diffier.py``.

``diffier`` in every sampler dropdown (K = 1, λ = 1), a SAMPLER node with K and λ for SamplerCustomAdvanced (with
CFGGuider), and a Gap Meter that plots the per-step gap diagnostic of plain CFG against DiffIER. The sampler needs the
positive and negative predictions separately: it reads them from the guider's CFG combination in the same batched model
call (``comfy_seam.sampler_pair_denoiser``), with KSampler and CFGGuider; the user's CFG function and post-CFG
patches keep acting, carried by the pair.
At cfg 1 (BasicGuider, a guidance-distilled model such as Flux-dev) there is no guidance to correct: it is plain euler
on the conditional prediction, one model call a step.
"""

from __future__ import annotations

import torch

from ..plots.figures import diffier_figures
from ..samplers.core import conditional_pair
from ..samplers.diffier import diffier, prediction_drift
from .comfy_seam import (
    EXPERT,
    aliases,
    io,
    ksampler,
    recorded_ksampler_run,
    sampler_call,
    sampler_cfg,
    sampler_pair_denoiser,
    scheduler_names,
    scheduler_sigmas,
)

CATEGORY = "sampling/error_control/diffier"
SAMPLER_NAME = "diffier"
SAMPLER_LABEL = "DiffIER (sampler diffier)"
MAX_ITERATIONS = 8


def check_settings(node: str, iterations: int, damping: float) -> None:
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"{node}: input 'iterations' must be between 0 and {MAX_ITERATIONS}, got {iterations}. "
                         "Use 1 (tested 0–3); 0 is plain CFG euler.")
    if not 0 < damping <= 1:
        raise ValueError(f"{node}: input 'damping' must be in (0, 1], got {damping}. Use 1.0 (tested 0.5–1.0).")


def run_diffier(model, x, sigmas, extra_args, callback, iterations: int, damping: float,
                node: str = SAMPLER_LABEL) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`samplers.diffier.diffier` on the wrapped model a sampler function receives; the samples and the weights ω."""
    check_settings(node, iterations, damping)
    run, cfg = sampler_call(model, x, sigmas, extra_args, callback, node), sampler_cfg(model)
    # cfg 1 (a guidance-distilled model's): no guidance to correct, so plain euler at one model call a step
    pair = sampler_pair_denoiser(model, extra_args, node) if cfg != 1 else conditional_pair(run.denoiser)
    return diffier(pair, x, sigmas, cfg, iterations, damping, run.flow, run.on_step)


def sample_diffier(model, x, sigmas, extra_args=None, callback=None, disable=None, iterations: int = 1, damping: float = 1.0,
                   **_):
    """k-diffusion sampler function: DiffIER with ``iterations`` (K) and ``damping`` (λ) at the guider's cfg."""
    return run_diffier(model, x, sigmas, extra_args, callback, iterations, damping)[0]


def settings_inputs() -> list:
    return [
        io.Int.Input("iterations", default=1, min=0, max=MAX_ITERATIONS,
                     tooltip="K, iterations of the per-step weight (tested 0–3; 1 is the tested default). Each costs "
                             "one more guided model call a step; 0 is plain CFG euler, and so is any K on a flow "
                             "model, where plain euler given the same calls measured better."),
        io.Float.Input("damping", default=1.0, min=0.05, max=1.0, step=0.05,
                       tooltip="λ, how far each iteration moves the weight towards its closed-form value (tested "
                               "0.5–1.0; 1 is the tested default).", **EXPERT),
    ]


class DiffIERSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlDiffIERSampler",
            **aliases("high cfg", "guidance", "error reduction", "cfg artifacts"),
            display_name="DiffIER Sampler",
            category=CATEGORY,
            description="DiffIER, reconstructed from the paper's abstract: an euler sampler that, at every step, lowers "
                        "the cfg weight where it overshoots what the model itself predicts at the step's next state "
                        "(never below 1, never above your cfg), with K iterations. Use with CFGGuider in "
                        "SamplerCustomAdvanced; 2·(1+K) model calls a step. At cfg 1 (a guidance-distilled model "
                        "such as Flux-dev) there is no guidance to correct: it is plain euler at one call a step. "
                        "On flow models (SD3, Flux, Wan) it is plain euler at every cfg: there euler given the "
                        "same calls measured better. On EPS models it composes with an APG node before it (at cfg 5 "
                        "that stack tied APG, the best peer, and beat DiffIER alone; at cfg 12 it tied DiffIER alone "
                        "and beat APG); not with CFG-Zero* (worse than DiffIER alone).",
            inputs=settings_inputs(),
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, iterations, damping) -> io.NodeOutput:
        check_settings("DiffIER sampler", iterations, damping)
        options = {"iterations": iterations, "damping": damping}
        return io.NodeOutput(ksampler(sample_diffier, options))


def recorded_run(model, positive, negative, latent: dict, seed: int, sigmas: torch.Tensor, cfg: float, iterations: int,
                 damping: float, node: str) -> tuple[torch.Tensor, list, torch.Tensor]:
    """One DiffIER pass (K = 0: plain CFG euler) through ComfyUI's sampling; the samples, each step's prediction, ω."""
    predictions, weights = [], []

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        samples, omega = run_diffier(model, x, sigmas, extra_args, callback, iterations, damping, node)
        weights.append(omega)
        return samples

    samples = recorded_ksampler_run(model, latent, seed, sampler_function, sigmas, cfg, positive, negative, node,
                                    record=predictions.append)
    return samples, predictions, weights[0]


class DiffIERGapMeter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ErrorControlDiffIERGapMeter",
            **aliases("high cfg", "guidance", "diagnostic"),
            display_name="DiffIER Gap Meter",
            category=CATEGORY,
            description="DiffIER (reconstructed from the paper's abstract) Gap Meter. "
                        "Samples the same latent twice, with plain CFG euler and with DiffIER, and plots the per-step gap "
                        "diagnostic (how far each step's clean prediction moves by the next step: the error DiffIER "
                        "reduces) and the cfg weight DiffIER used at each step. Outputs DiffIER's latent too.",
            is_output_node=True,
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Latent.Input("latent_image"),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                                 tooltip="Seed of the starting noise, the same for both passes."),
                    io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps (tested 4–30)."),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="Classifier-free guidance scale, DiffIER's upper bound (tested 1.5–12)."),
                    io.Combo.Input("scheduler", options=scheduler_names(), default="normal",
                                   tooltip="The schedule of both passes (tested normal, karras, simple)."),
                    *settings_inputs()],
            outputs=[io.Latent.Output(display_name="samples"), io.Image.Output(display_name="gap_plot"),
                     io.Image.Output(display_name="weight_plot")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, scheduler, iterations,
                damping) -> io.NodeOutput:
        node = "DiffIER Gap Meter"
        check_settings(node, iterations, damping)
        sigmas = scheduler_sigmas(model, scheduler, steps, 1.0, node)
        run = dict(model=model, positive=positive, negative=negative, latent=latent_image, seed=seed, sigmas=sigmas,
                   cfg=cfg, damping=damping, node=node)
        _, plain, _ = recorded_run(**run, iterations=0)
        samples, corrected, weights = recorded_run(**run, iterations=iterations)
        gap_plot, weight_plot, ui = diffier_figures(prediction_drift(plain).mean(-1), prediction_drift(corrected).mean(-1),
                                                    weights.float().mean(-1), cfg, iterations, damping)
        return io.NodeOutput({**latent_image, "samples": samples}, gap_plot.image, weight_plot.image, ui=ui)


NODES = [DiffIERSampler, DiffIERGapMeter]
REGISTRATIONS = {"samplers": {SAMPLER_NAME: sample_diffier}}
