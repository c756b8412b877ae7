"""The host's sampling objects as the plain callables of ``samplers/``: denoisers, parametrisation, step callbacks."""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import torch
from torch import Tensor

from ..samplers.core import Denoiser


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


def with_guided_denoiser(model_patcher, positive, negative, cfg: float, latent: Tensor, seed: int,
                         work: Callable[[Denoiser, Tensor], None]) -> None:
    """Run ``work(D, x0)`` inside ComfyUI's own sampling setup: the model loaded by the host's model management,
    conditioning prepared, cfg and the model's patches applied; ``x0`` is ``latent`` in the model's latent space.

    The measurement runs as the sampler of a zero-step-size schedule ``[0, 0]``, at which ComfyUI's noise scaling leaves
    the latent as it is for every model family.
    """
    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        work(sampler_denoiser(model, extra_args), x)
        return x

    sampler = comfy.samplers.KSAMPLER(sampler_function)
    zeros = torch.zeros_like(latent)
    comfy.sample.sample_custom(model_patcher, zeros, cfg, sampler, torch.zeros(2), positive, negative, latent,
                               disable_pbar=True, seed=seed)
