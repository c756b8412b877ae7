"""The host's sampling objects as the plain callables of ``samplers/``: denoisers, parametrisation, step callbacks."""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import latent_preview
import torch
from comfy_api.latest import io
from torch import Tensor

from ..samplers.core import Denoiser, PairDenoiser, effective_uncond

PACK_VERSION = "0.2.0"  # as in pyproject.toml; artefacts record it


def newer_api(cls: type, **kwargs) -> dict:
    """The keyword arguments of ``kwargs`` that ``cls`` takes on this host. Today's node API (``advanced`` inputs and
    ``search_aliases``, ComfyUI 0.33) is left out where the io classes lack it, so the same schema loads on 0.3.75."""
    accepted = inspect.signature(cls).parameters
    return {name: value for name, value in kwargs.items() if name in accepted}


EXPERT = newer_api(io.Float.Input, advanced=True)
"""``**EXPERT`` marks an input as an expert setting, which the frontend folds away (where the host supports it)."""


def aliases(*words: str) -> dict:
    """``**aliases(...)`` in a schema: the words the node search also finds the node by (where the host supports it)."""
    return newer_api(io.Schema, search_aliases=list(words))


def is_flow(model_sampling: object) -> bool:
    """True for CONST (rectified-flow) models, whose state is ``(1-σ)·x0 + σ·ε``; EPS and V models sample in VE space."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def sampler_model_sampling(model) -> object:
    """The ``model_sampling`` of the model a k-diffusion-style sampler function receives from ComfyUI."""
    return model.inner_model.model_patcher.get_model_object("model_sampling")


def sampler_denoiser(model, extra_args: dict | None) -> Denoiser:
    """``D(x, σ)`` from the wrapped model a sampler function receives (guidance, patches and masks already applied)."""
    extra_args = extra_args or {}
    return lambda x, sigma: model(x, sigma, **extra_args)


def step_callback(callback: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """Forward k-diffusion's step dict to ComfyUI (progress bar, previews) and stop at once when the user interrupts."""

    def on_step(step: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback(step)

    return on_step


def model_is_flow(model_patcher) -> bool:
    """:func:`is_flow` for a MODEL input of a node."""
    return is_flow(model_patcher.get_model_object("model_sampling"))


def scheduler_sigmas(model_patcher, scheduler: str, steps: int, denoise: float, node: str) -> Tensor:
    """A schedule as BasicScheduler builds it (``denoise < 1`` keeps the last ``steps`` levels of a longer one), on CPU."""
    if steps < 1:
        raise ValueError(f"{node}: input 'steps' must be >= 1, got {steps}.")
    if not 0 < denoise <= 1:
        raise ValueError(f"{node}: input 'denoise' must be in (0, 1], got {denoise}.")
    model_sampling = model_patcher.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, int(steps / denoise)).cpu()[-(steps + 1):]


def composed_uncond(cond: Tensor, uncond: Tensor, guided: Tensor | None, scale: float) -> Tensor:
    """The unconditional half of the pair a method re-weights: the model's own ``uncond`` where the guider's combination
    is plain CFG (``guided`` None) or its scale is 1, else the one that reproduces the user's ``guided`` prediction at
    ``scale`` (:func:`samplers.core.effective_uncond`), so their CFG function and post-CFG patches keep acting."""
    return uncond if guided is None or scale == 1 else effective_uncond(cond, guided, scale)


def sampler_pair_denoiser(model, extra_args: dict | None, node: str) -> PairDenoiser:
    """``D(x, σ) -> (D_cond, D_uncond)`` from the wrapped model a sampler function receives: one batched call of the
    guider with the uncond always computed, recorded by a post-CFG function that runs after the user's own and passes
    the guided prediction through. The user's CFG function and post-CFG patches stay in place; where there are any,
    ``D_uncond`` is :func:`composed_uncond`, so the method's own mix of the pair still carries them.

    Needs a guider with a negative prompt (CFGGuider, KSampler).
    """
    extra_args = dict(extra_args or {})
    options = dict(extra_args.get("model_options", {}))
    post_cfg = options.get("sampler_post_cfg_function", [])
    plain = "sampler_cfg_function" not in options and not post_cfg
    captured: dict = {}

    def record(args: dict) -> Tensor:
        if args.get("uncond") is None:
            raise ValueError(f"{node}: needs the negative prompt's prediction too. Use CFGGuider (positive and "
                             "negative) or a KSampler-style node, not BasicGuider.")
        cond = args["cond_denoised"]
        captured["pair"] = (cond, composed_uncond(cond, args["uncond_denoised"], None if plain else args["denoised"],
                                                  args["cond_scale"]))
        return args["denoised"]

    options.update(sampler_post_cfg_function=[*post_cfg, record], disable_cfg1_optimization=True)
    extra_args["model_options"] = options

    def pair(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        model(x, sigma, **extra_args)
        if "pair" not in captured:
            raise ValueError(f"{node}: the guider did not combine a positive and a negative prediction. Use CFGGuider.")
        return captured.pop("pair")

    return pair


def cfg_guider(model_patcher, positive, negative, cfg: float) -> comfy.samplers.CFGGuider:
    """ComfyUI's own CFGGuider, as KSampler builds it."""
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def sample_with(guider: comfy.samplers.CFGGuider, latent: Tensor, sigmas: Tensor, sampler_function: Callable,
                preview: bool = True, seed: int = 0) -> Tensor:
    """Run a k-diffusion-style ``sampler_function`` inside ComfyUI's own sampling setup: the model loaded by the host's
    model management, conditioning prepared, the model's patches applied, zero noise added to ``latent`` (a LATENT's
    samples). With ``preview`` the step callbacks drive a progress bar and latent previews. Returns the LATENT samples
    as SamplerCustomAdvanced would.
    """
    callback = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1) if preview else None
    samples = guider.sample(torch.zeros_like(latent), latent, comfy.samplers.KSAMPLER(sampler_function), sigmas,
                            callback=callback, disable_pbar=not preview, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())


def with_guided_denoiser(model_patcher, positive, negative, cfg: float, latent: Tensor, seed: int,
                         work: Callable[[Denoiser, Tensor], None]) -> None:
    """Run ``work(D, x0)`` inside ComfyUI's own sampling setup (:func:`sample_with`, cfg applied); ``x0`` is ``latent``
    in the model's latent space.

    The measurement runs as the sampler of a zero-step-size schedule ``[0, 0]``, at which ComfyUI's noise scaling leaves
    the latent as it is for every model family.
    """
    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        work(sampler_denoiser(model, extra_args), x)
        return x

    sample_with(cfg_guider(model_patcher, positive, negative, cfg), latent, torch.zeros(2), sampler_function, False, seed)


def sampling_fingerprint(model_sampling) -> str:
    """What a profile's σ levels depend on: the sampling class and its σ table (or shift), as a short hash."""
    parts = [type(model_sampling).__name__, f"{float(model_sampling.sigma_min):.6g}", f"{float(model_sampling.sigma_max):.6g}"]
    table = getattr(model_sampling, "sigmas", None)
    if isinstance(table, torch.Tensor):
        parts.append(hashlib.sha256(table.detach().float().cpu().numpy().tobytes()).hexdigest()[:16])
    return "sampling:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def weights_fingerprint(model_patcher) -> str:
    """A cheap identity of the weights: shapes and sums of the first tensors of the state dict (patches not applied)."""
    digest = hashlib.sha256(type(model_patcher.model).__name__.encode())
    for index, (key, value) in enumerate(sorted(model_patcher.model.state_dict().items())):
        if index >= 8:
            break
        digest.update(f"{key}{tuple(value.shape)}{float(value.detach().float().sum()):.6e}".encode())
    return "weights:" + digest.hexdigest()[:16]


FAMILY_TAG = "family:"


def model_family(model_patcher) -> str:
    """The model family as ComfyUI's detection named it: its supported-model class (SD15, SDXL, SD3, Flux, WAN21_T2V, ...)."""
    return type(model_patcher.model.model_config).__name__


def model_fingerprint(model_patcher) -> str:
    """What an artefact made with this MODEL records: its sampling and weights fingerprints and its family."""
    return (f"{sampling_fingerprint(model_patcher.get_model_object('model_sampling'))} {weights_fingerprint(model_patcher)} "
            f"{FAMILY_TAG}{model_family(model_patcher)}")


def check_made_for(made_for: str, made_flow: bool, model_patcher, node: str, input_name: str, made: str, remake: str
                   ) -> None:
    """An artefact against the MODEL it is used with. ``made_for`` is its :func:`model_fingerprint`, ``made_flow`` its
    parametrisation, ``made`` how it came about ("made with", "calibrated for"), ``remake`` what to do instead.
    Another parametrisation or family is refused, naming both; other weights of the same family get a warning only.
    Files from before families were recorded carry none and are checked by parametrisation alone."""
    flow = model_is_flow(model_patcher)
    if made_flow != flow:
        raise ValueError(f"{node}: input '{input_name}' was {made} {'a flow' if made_flow else 'an EPS/V'} model, but this "
                         f"model is {'flow' if flow else 'EPS/V'}. {remake}")
    family = model_family(model_patcher)
    made_family = next((part.removeprefix(FAMILY_TAG) for part in made_for.split() if part.startswith(FAMILY_TAG)), family)
    if made_family != family:
        raise ValueError(f"{node}: input '{input_name}' was {made} a {made_family} model, but this model is {family}. "
                         f"{remake}")
    if weights_fingerprint(model_patcher) not in made_for:
        logging.warning(f"{node}: input '{input_name}' was {made} other weights of the {family} family ({made_for}); "
                        f"it still applies, but the result is best with this model's own. {remake}")


def check_latent_fits(model_patcher, samples: Tensor, node: str, input_name: str) -> None:
    """A latent must have the channels and dimensions of this model's latent space (4-channel SD1/SDXL images,
    16-channel SD3/Flux images, 16-channel Wan video ``[B, C, T, H, W]``); else a ValueError naming both and the fix.
    (ComfyUI's own sampling resizes an all-zero latent's channels first: ``comfy.sample.fix_empty_latent_channels``.)"""
    latent_format = model_patcher.get_model_object("latent_format")
    channels, dims = latent_format.latent_channels, getattr(latent_format, "latent_dimensions", 2)
    if samples.ndim == dims + 2 and samples.shape[1] == channels:
        return
    kind = {4: "image", 5: "video"}.get(samples.ndim, f"{samples.ndim}-D")
    got = f"{samples.shape[1]}-channel {kind}" if samples.ndim >= 2 else kind
    wanted = "video [B, C, T, H, W]" if dims == 3 else "image [B, C, H, W]"
    raise ValueError(f"{node}: input '{input_name}' is a {got} latent {tuple(samples.shape)}, but this "
                     f"{model_family(model_patcher)} model takes {channels}-channel {wanted} latents. Encode with this "
                     "model's VAE (VAE Encode), or start from this family's empty latent node.")


def check_clean_latent(model_patcher, samples: Tensor, node: str, source: str) -> None:
    """Clean latents to invert or calibrate on: not empty (``source`` says what to connect), finite, this model's."""
    if samples.numel() == 0:
        raise ValueError(f"{node}: input 'latent' is empty. Connect {source}.")
    if not torch.isfinite(samples).all():
        raise ValueError(f"{node}: input 'latent' contains NaN/inf. Re-encode the images.")
    check_latent_fits(model_patcher, samples, node, "latent")


def check_sampler_latent(model, x: Tensor, node: str) -> None:
    """:func:`check_latent_fits` for the latent a k-diffusion-style sampler function receives."""
    check_latent_fits(model.inner_model.model_patcher, x, node, "latent_image")


def guidance_distilled(model_patcher) -> bool:
    """Whether the model takes its guidance strength as an input (Flux-dev: FluxGuidance) instead of a negative prompt."""
    params = getattr(model_patcher.model.diffusion_model, "params", None)
    return bool(getattr(params, "guidance_embed", False))
