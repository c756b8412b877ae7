"""POLARIS: Projection-Orthogonal Least Squares for Robust and Adaptive Inversion (Chen, Li, et al. 2025, arXiv 2512.00369).

DDIM inversion steps from σ_k to σ_{k+1} with a noise estimate taken at the previous point (the "approximate-noise
error", :mod:`samplers.inversion`). POLARIS makes the guidance scale a per-step variable ω_k and picks it so that the
guided noise ``ε̂_k = ε_u + ω_k·(ε_c - ε_u)`` changes as little as possible between consecutive steps:

    ω_k = argmin_ω ‖d_u + ω·(d_c - d_u)‖² = (⟨d_u, d_u⟩ - ⟨d_u, d_c⟩) / ‖d_u - d_c‖²,   d = ε_k - ε_{k-1},

clamped to [0, 15], with ω_0 = 1. The residual ``d_u + ω·(d_c - d_u)`` is orthogonal to ``d_c - d_u`` (a projection).
The ω of every step is recorded in a :class:`PolarisTrace` and replayed at the same σ when denoising, so the denoising
walk is the mirror image of the inversion. Same model calls as CFG inversion: cond and uncond in one batched call.

Conventions (METHODS.md "POLARIS"): inner products are taken per sample (the authors' code reduces over the whole
batch, which is the same for a batch of one); ``space="v"`` runs the least squares on the velocity ``(x - D)/σ`` that a
flow model's Euler step integrates (for EPS/V models it equals ε); ``solver="dynamic"`` is the incremental update of the
authors' code; ``solver="fixed"`` keeps ω constant, which is plain CFG inversion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .artefact import ArtefactFormat
from .core import Denoiser, PairDenoiser, append_dims, cfg_mix, check_sigmas, ddim_step, eps_from_denoised, inner
from .inversion import EvalAt, StepCallback, carried_prediction, check_finite_steps, ddim, evaluation_point

Solver = Literal["least_squares", "dynamic", "fixed"]
Space = Literal["eps", "v"]
SOLVERS = ("least_squares", "dynamic", "fixed")
SPACES = ("eps", "v")
OMEGA_MAX = 15.0
FLAT = 1e-6
"""Below this ‖d_c - d_u‖² the least squares has no direction to act on, and ω_k = 1 (the authors' threshold)."""


def least_squares_omega(d_u: Tensor, d_c: Tensor) -> Tensor:
    """``argmin_ω ‖d_u + ω·(d_c - d_u)‖²`` per sample, clamped to [0, 15]; 1 where ``‖d_c - d_u‖² < 1e-6``.

    POLARIS (arXiv 2512.00369), the projection-orthogonal least squares: ``(⟨d_u,d_u⟩ - ⟨d_u,d_c⟩)/‖d_u - d_c‖²``.
    """
    direction = d_c - d_u
    norm = inner(direction, direction)
    omega = -inner(d_u, direction) / norm.clamp_min(FLAT)
    return torch.where(norm < FLAT, torch.ones_like(omega), omega.clamp(0.0, OMEGA_MAX))


def dynamic_omega(omega: Tensor, d_u: Tensor, d_c: Tensor, guidance_prev: Tensor) -> Tensor:
    """The authors' incremental ("dynamic") update: ``ω + ⟨a, b⟩/(‖b‖² + 1e-6)``, clamped to [0, 15].

    ``a = (1-ω)·d_u + ω·d_c`` is the change of the guided noise at the current ω, ``b = ε_c - ε_u`` of the previous step.
    """
    change = d_u + append_dims(omega, d_u.ndim).to(d_u.dtype) * (d_c - d_u)
    step = inner(change, guidance_prev) / (inner(guidance_prev, guidance_prev) + FLAT)
    return (omega + step).clamp(0.0, OMEGA_MAX)


def noise_prediction(feed: Tensor, level: Tensor, denoised: Tensor, flow: bool, space: Space) -> Tensor:
    """The vector the least squares acts on: ε̂ = (x - a·D)/σ, or the velocity (x - D)/σ (``space="v"``)."""
    if space == "eps":
        return eps_from_denoised(feed, denoised, level, flow)
    if space == "v":
        return (feed - denoised) / append_dims(level, feed.ndim)
    raise ValueError(f"space must be one of {SPACES}, got {space!r}")


def next_omega(solver: Solver, omega: Tensor, pred: tuple[Tensor, Tensor], pred_prev: tuple[Tensor, Tensor]) -> Tensor:
    """ω of this step from the (cond, uncond) noise predictions of this step and the previous one."""
    (cond, uncond), (cond_prev, uncond_prev) = pred, pred_prev
    if solver == "least_squares":
        return least_squares_omega(uncond - uncond_prev, cond - cond_prev)
    if solver == "dynamic":
        return dynamic_omega(omega, uncond - uncond_prev, cond - cond_prev, cond_prev - uncond_prev)
    if solver == "fixed":
        return omega
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


# ---------------------------------------------------------------------------------------------------------------------
# The trace


_RECORD = {"flow": bool, "space": str, "eval_at": str, "solver": str, "model": str, "pack_version": str}
TRACE_FORMAT = ArtefactFormat("error_control_samplers.polaris_trace", "1", ("sigmas", "omega", "latent"), _RECORD,
                              "POLARIS trace", "Choose a trace written by POLARIS Inversion, or invert the image again.")


@dataclass(eq=False)
class PolarisTrace:
    """What an inversion recorded, enough to replay it: the ascending levels it walked (``sigmas``, ``[N+1]``), the ω of
    every step and sample (``omega``, ``[N, B]``: step k went from ``sigmas[k]`` to ``sigmas[k+1]``), the inverted
    state ``latent`` (z_N in the sampler's space, ``[B, ...]``), and how it was made. ``model`` and ``pack_version``
    are filled by the node layer."""

    sigmas: Tensor
    omega: Tensor
    latent: Tensor
    flow: bool = False
    space: str = "v"
    eval_at: str = "current"
    solver: str = "least_squares"
    model: str = ""
    pack_version: str = ""

    def __post_init__(self) -> None:
        self.sigmas = self.sigmas.detach().to("cpu", torch.float64, copy=True)
        self.omega = self.omega.detach().to("cpu", copy=True)
        self.latent = self.latent.detach().to("cpu", copy=True)
        check_sigmas(self.sigmas, "PolarisTrace", "sigmas", ascending=True)
        steps, batch = len(self.sigmas) - 1, self.latent.shape[0] if self.latent.ndim else 0
        if self.omega.shape != (steps, batch):
            raise ValueError(f"PolarisTrace: 'omega' has shape {tuple(self.omega.shape)}, expected {(steps, batch)} "
                             "(one ω per step and sample).")
        if not (torch.isfinite(self.omega).all() and torch.isfinite(self.latent).all()):
            raise ValueError("PolarisTrace: 'omega' and 'latent' must be finite. Invert the image again.")
        if self.space not in SPACES or self.solver not in SOLVERS or self.eval_at not in ("current", "next"):
            raise ValueError(f"PolarisTrace: unknown space/solver/eval_at {self.space!r}/{self.solver!r}/{self.eval_at!r}.")

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def replay_sigmas(self, end: float = 0.0) -> Tensor:
        """The descending levels that undo the inversion step by step, landing at ``end`` instead of σ_0."""
        sigmas = self.sigmas.flip(0).clone()
        sigmas[-1] = end
        return sigmas

    def omega_at(self, sigma: Tensor, batch: int, who: str = "POLARIS replay") -> Tensor:
        """The ω ``[B]`` to denoise with at level ``sigma``: that of the inversion step that ended there (time-aligned).

        The denoising step from σ_{k+1} to σ_k mirrors inversion step k, so it replays ω_k. A level the inversion never
        reached, or a batch of another size, is an error (naming ``who``): the replay would not undo the inversion.
        """
        level = float(torch.as_tensor(sigma).flatten()[0])
        targets = self.sigmas[1:]
        k = int((targets - level).abs().argmin())
        if abs(float(targets[k]) - level) > 1e-4 * max(level, 1e-3):
            raise ValueError(f"{who}: the sampler asked for σ = {level:.6g}, which is not a level of the trace "
                             f"({self.steps} steps, σ {float(self.sigmas[1]):.4g} … {float(self.sigmas[-1]):.4g}). "
                             "Sample with euler on the trace's own sigmas ('POLARIS Trace Sigmas').")
        if batch != self.omega.shape[1]:
            raise ValueError(f"{who}: the latent batch has {batch} samples but the trace was made for "
                             f"{self.omega.shape[1]}. Replay with the inverted latent of the same trace.")
        return self.omega[k]

    def save(self, path: str | os.PathLike) -> None:
        """Write the trace as safetensors with JSON metadata, atomically."""
        TRACE_FORMAT.save(path, {"sigmas": self.sigmas, "omega": self.omega, "latent": self.latent},
                          {k: getattr(self, k) for k in _RECORD})

    @classmethod
    def load(cls, path: str | os.PathLike) -> PolarisTrace:
        """Read a trace written by :meth:`save`. Never unpickles; a corrupt or foreign file raises ``ValueError``."""
        tensors, record = TRACE_FORMAT.load(path, "PolarisTrace.load")
        try:
            return cls(**tensors, **record)
        except ValueError as e:
            raise ValueError(f"PolarisTrace.load: {os.fspath(path)} is a damaged POLARIS trace: {e} "
                             f"{TRACE_FORMAT.fix}") from e


# ---------------------------------------------------------------------------------------------------------------------
# Inversion and replay


def polaris_invert(pair_denoiser: PairDenoiser, x0: Tensor, sigmas: Tensor, flow: bool = False,
                   solver: Solver = "least_squares", space: Space = "v", eval_at: EvalAt = "current",
                   omega_start: float = 1.0, callback: StepCallback | None = None) -> tuple[Tensor, PolarisTrace]:
    """POLARIS inversion of ``x0`` along ascending ``sigmas``: the inverted state and the trace of ω.

    Each step makes one call of ``pair_denoiser`` (cond and uncond batched), picks ω_k (:func:`next_omega`; ω_0 =
    ``omega_start``, and every ω for ``solver="fixed"``), mixes ``D_u + ω_k·(D_c - D_u)`` and takes the DDIM step of
    :func:`samplers.inversion.ddim` at the same evaluation point (``eval_at``). With ``solver="fixed"`` this is exactly
    ``ddim(guided(pair_denoiser, omega_start), ...)``. ``callback`` gets k-diffusion's step dict after each call.
    """
    check_sigmas(sigmas, "POLARIS inversion", "sigmas", ascending=True)
    eval_at = ("current" if flow else "next") if eval_at == "auto" else eval_at
    x, omegas, finite, pred_prev = x0, [], [], None
    omega = torch.full((x0.shape[0],), float(omega_start), dtype=torch.promote_types(x0.dtype, torch.float32),
                       device=x0.device)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        feed, level = evaluation_point(x, sigma, sigma_next, flow, eval_at)
        cond, uncond = pair_denoiser(feed, level)
        pred = (noise_prediction(feed, level, cond, flow, space), noise_prediction(feed, level, uncond, flow, space))
        if pred_prev is not None:
            omega = next_omega(solver, omega, pred, pred_prev)
        pred_prev = pred
        denoised = carried_prediction(x, sigma, feed, level, cfg_mix(cond, uncond, omega.to(cond.dtype)), flow)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = ddim_step(x, denoised, sigma, sigma_next, flow)
        omegas.append(omega.to(cond.dtype))
        finite.append(torch.isfinite(x).all())
    check_finite_steps(finite, sigmas, "POLARIS inversion")
    return x, PolarisTrace(sigmas, torch.stack(omegas), x, flow, space, eval_at, solver)


def replay_omega(trace: PolarisTrace, sigma: Tensor, batch: int, cfg: float = 1.0, blend: float = 0.0,
                 who: str = "POLARIS replay") -> Tensor:
    """ω to denoise with at ``sigma``: the recorded one, plus ``blend·(cfg - 1)`` so an edit can follow the user's cfg."""
    return trace.omega_at(sigma, batch, who) + blend * (cfg - 1.0)


def replay_denoiser(pair_denoiser: PairDenoiser, trace: PolarisTrace, cfg: float = 1.0, blend: float = 0.0) -> Denoiser:
    """``D(x, σ) = D_u + ω(σ)·(D_c - D_u)`` with ω of :func:`replay_omega`; the pair may hold an edited prompt."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        cond, uncond = pair_denoiser(x, sigma)
        omega = replay_omega(trace, sigma, x.shape[0], cfg, blend).to(device=cond.device, dtype=cond.dtype)
        return cfg_mix(cond, uncond, omega)

    return denoiser


def polaris_denoise(pair_denoiser: PairDenoiser, z: Tensor, trace: PolarisTrace, cfg: float = 1.0, blend: float = 0.0,
                    callback: StepCallback | None = None) -> Tensor:
    """Denoise ``z`` (usually ``trace.latent``) down the trace's levels with the recorded ω, time-aligned.

    DDIM/Euler steps (:func:`samplers.inversion.ddim`), the mirror image of the inversion; ``blend > 0`` adds
    ``blend·(cfg - 1)`` to every ω for edits (METHODS.md).
    """
    return ddim(replay_denoiser(pair_denoiser, trace, cfg, blend), z, trace.replay_sigmas(), trace.flow,
                callback=callback)
