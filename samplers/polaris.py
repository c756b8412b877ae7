"""POLARIS: Projection-Orthogonal Least Squares for Robust and Adaptive Inversion (Chen, Li, et al. 2025, arXiv 2512.00369).

DDIM inversion steps from σ_k to σ_{k+1} with a noise estimate taken at the previous point (the "approximate-noise
error", :mod:`samplers.inversion`). POLARIS makes the guidance scale a per-step variable ω_k and picks it so that the
guided noise ``ε̂_k = ε_u + ω_k·(ε_c - ε_u)`` changes as little as possible between consecutive steps:

    ω_k = argmin_ω ‖d_u + ω·(d_c - d_u)‖² = (⟨d_u, d_u⟩ - ⟨d_u, d_c⟩) / ‖d_u - d_c‖²,   d = ε_k - ε_{k-1},

clamped to [0, 15], with ω_0 = 1. The residual ``d_u + ω·(d_c - d_u)`` is orthogonal to ``d_c - d_u`` (a projection).
The ω of every step is recorded in a :class:`PolarisTrace` and replayed at the same σ when denoising, so the denoising
walk is the mirror image of the inversion. Same model calls as CFG inversion: cond and uncond in one batched call.

Conventions (docs/methods.md#polaris-choices): inner products are taken per sample (the authors' code reduces over the whole
batch, which is the same for a batch of one); ``space="v"`` runs the least squares on the velocity ``(x - D)/σ`` that a
flow model's Euler step integrates (for EPS/V models it equals ε); ``solver="dynamic"`` is the incremental update of the
authors' code; ``solver="fixed"`` keeps ω constant, which is plain CFG inversion.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .artefact import ArtefactFormat
from .core import Denoiser, PairDenoiser, append_dims, cfg_mix, check_sigmas, ddim_step, eps_from_denoised, inner
from .inversion import (
    LEGACY_EVAL_AT,
    EvalAt,
    StepCallback,
    carried_prediction,
    check_finite_steps,
    ddim,
    evaluation_point,
    resolve_eval_at,
)

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
        if self.eval_at in LEGACY_EVAL_AT:  # a long label of an older workflow: store what it meant
            self.eval_at = resolve_eval_at(self.eval_at, self.flow, "PolarisTrace")
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
    eval_at = resolve_eval_at(eval_at, flow, "POLARIS inversion")
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


class Replay:
    """The ω of one denoising run of a trace (time-aligned: the step from σ_{k+1} to σ_k mirrors inversion step k and
    replays ω_k), plus ``blend·(cfg - 1)`` so an edit can follow the user's cfg (docs/methods.md#polaris-choices).

    Each lookup finds its level among the trace's on the sampler's device, with no host read; how far the farthest
    asked level was from any of the trace's is kept, and :meth:`check` reads it once, after the run: a level the
    inversion never reached means the replay did not undo it (an error naming ``who``).
    """

    def __init__(self, trace: PolarisTrace, cfg: float = 1.0, blend: float = 0.0, who: str = "POLARIS replay"):
        self.trace, self.offset, self.who = trace, blend * (cfg - 1.0), who
        self.tables: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.worst: tuple[Tensor, Tensor] | None = None  # (relative distance, the level asked)

    def table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The trace's levels σ_1 … σ_N and its ω ``[N, B]``, moved to ``device`` once."""
        if device not in self.tables:
            dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
            self.tables[device] = (self.trace.sigmas[1:].to(device, dtype), self.trace.omega.to(device))
        return self.tables[device]

    def omega(self, sigma: Tensor, batch: int) -> Tensor:
        """The ω ``[B]`` to denoise with at level ``sigma`` (its first entry), on ``sigma``'s device."""
        if batch != self.trace.omega.shape[1]:
            raise ValueError(f"{self.who}: the latent batch has {batch} samples but the trace was made for "
                             f"{self.trace.omega.shape[1]}. Replay with the inverted latent of the same trace.")
        levels, omega = self.table(sigma.device)
        level = sigma.reshape(-1)[:1].to(levels.dtype)
        distance = (levels - level).abs()
        k = distance.argmin()
        off = (distance[k] / level.clamp_min(1e-3)).reshape(1)
        if self.worst is None:
            self.worst = (off, level)
        else:
            farther = off > self.worst[0]
            self.worst = (torch.where(farther, off, self.worst[0]), torch.where(farther, level, self.worst[1]))
        return omega[k] + self.offset

    def reset(self) -> None:
        """Forget the lookups so far (a run that ended early leaves them behind)."""
        self.worst = None

    def check(self) -> None:
        """Raise if a lookup since the last check asked for a level the trace does not have (one host read)."""
        worst, self.worst = self.worst, None
        if worst is not None and float(worst[0]) > 1e-4:
            trace = self.trace
            raise ValueError(f"{self.who}: the sampler asked for σ = {float(worst[1]):.6g}, which is not a level of the "
                             f"trace ({trace.steps} steps, σ {float(trace.sigmas[1]):.4g} … {float(trace.sigmas[-1]):.4g}). "
                             "Sample with euler on the trace's own sigmas ('POLARIS Trace Sigmas').")


def replay_denoiser(pair_denoiser: PairDenoiser, replay: Replay) -> Denoiser:
    """``D(x, σ) = D_u + ω(σ)·(D_c - D_u)`` with ω of ``replay``; the pair may hold an edited prompt."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        cond, uncond = pair_denoiser(x, sigma)
        return cfg_mix(cond, uncond, replay.omega(sigma, x.shape[0]).to(dtype=cond.dtype))

    return denoiser


REFERENCE_STOP = 0.25
"""The share of the denoising steps the reference controller acts on (RF-Inversion's τ = 7 of 28 steps)."""


def reference_controller(denoiser: Denoiser, reference: Tensor, eta: float, sigmas: Tensor,
                         stop: float = REFERENCE_STOP) -> Denoiser:
    """RF-Inversion's controller (Rout et al. 2024, arXiv 2410.10792, eq. 15 and Algorithm 2) on any denoiser: on the
    first ``⌈stop·N⌉`` of the ``N`` steps down the descending ``sigmas`` the x̂0 becomes ``D + η·(y0 - D)``, a pull
    towards the reference image y0 (the source latent). For flow models the Euler step on that x̂0 is the paper's
    controlled field ``v + η·(v(·|y0) - v)``; for EPS/V models it is the same blend of x̂0 in a DDIM step."""
    pulled = math.ceil(stop * (len(sigmas) - 1))
    if eta == 0 or pulled == 0:
        return denoiser
    lowest = float(sigmas[pulled - 1]) * (1 - 1e-4)  # a host may hand the levels back in float32

    def controlled(x: Tensor, sigma: Tensor) -> Tensor:
        denoised = denoiser(x, sigma)
        on = append_dims(sigma.reshape(-1).expand(x.shape[0]) >= lowest, x.ndim)
        return torch.where(on, denoised + eta * (reference.to(denoised) - denoised), denoised)

    return controlled


def polaris_denoise(pair_denoiser: PairDenoiser, z: Tensor, trace: PolarisTrace, cfg: float = 1.0, blend: float = 0.0,
                    callback: StepCallback | None = None, reference: Tensor | None = None, eta: float = 0.0,
                    stop: float = REFERENCE_STOP) -> Tensor:
    """Denoise ``z`` (usually ``trace.latent``) down the trace's levels with the recorded ω, time-aligned.

    DDIM/Euler steps (:func:`samplers.inversion.ddim`), the mirror image of the inversion; ``blend > 0`` adds
    ``blend·(cfg - 1)`` to every ω for edits (docs/methods.md#polaris-choices).
    With a ``reference`` (the source latent) and ``eta > 0``, RF-Inversion's controller pulls the first ``stop`` of the
    steps towards it (:func:`reference_controller`).
    """
    replay, sigmas = Replay(trace, cfg, blend), trace.replay_sigmas()
    denoiser = replay_denoiser(pair_denoiser, replay)
    if reference is not None:
        denoiser = reference_controller(denoiser, reference, eta, sigmas, stop)
    x = ddim(denoiser, z, sigmas, trace.flow, callback=callback)
    replay.check()
    return x
