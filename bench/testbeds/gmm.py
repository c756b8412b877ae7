"""Testbed 1 (docs/evaluation.md#testbed-1-analytic-mixture): a class-conditional isotropic Gaussian mixture, its exact denoiser
and imperfect variants of it.

Data ``x0 ~ Σ_k π_k N(μ_k, s_k² I)``; each component belongs to one class, the unconditional model is the marginal.
For the state ``x = a(σ)·x0 + σ·ε`` (``a = 1`` for EPS/VE, ``a = 1 - σ`` for flow; samplers/core.py):

    p(x | k) = N(a·μ_k, v_k I),   v_k = a²·s_k² + σ²,   r_k(x) ∝ π_k·p(x | k)
    E[x0 | x, k] = (s_k²·a·x + σ²·μ_k) / v_k          (= μ_k + a·s_k²/v_k·(x - a·μ_k))
    D*(x, σ) = Σ_k r_k(x)·E[x0 | x, k]

D* is the posterior mean, the minimiser of the x0-MSE, so any other denoiser is an imperfect one. The written form of
E[x0 | x, k] is exact at both ends: ``x/a`` at σ = 0 and ``μ_k`` at a = 0 (flow, s = 1), where ``r_k = π_k``.

Imperfect denoisers with a knob (docs/evaluation.md#testbed-1-analytic-mixture): :class:`ErrorField` (smooth injected error),
:meth:`GaussianMixture.scaled` (variance mis-specification), :func:`miscalibrated` (noise-level miscalibration) and
:func:`train_mlp_denoiser` (a small trained network, natural errors).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from samplers.core import Denoiser, PairDenoiser, alpha, model_sigma

from .common import batch_levels, log_uniform_levels, seeded_init, torch_threads, write_cache

Classes = int | Tensor | None
"""A class choice: None (unconditional), one class for the batch, or a ``[B]`` tensor of classes."""


# ---------------------------------------------------------------------------------------------------------------------
# The mixture and its exact quantities


@dataclass(frozen=True)
class GaussianMixture:
    """``x0 ~ Σ_k π_k N(μ_k, s_k² I)``; ``labels[k]`` is the class of component k (classes are ``0 … C-1``)."""

    means: Tensor  # [K, d]
    stds: Tensor  # [K]
    weights: Tensor  # [K], sums to 1
    labels: Tensor  # [K], long

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    def scaled(self, factor: float) -> GaussianMixture:
        """The same mixture with every ``s_k`` times ``factor``: an under-dispersed model for ``factor < 1``
        (docs/evaluation.md#testbed-1-analytic-mixture, knob 2)."""
        return GaussianMixture(self.means, self.stds * factor, self.weights, self.labels)

    def log_prior(self, cls: Classes = None) -> Tensor:
        """``log π_k`` renormalised inside ``cls``: ``[K]``, or ``[B, K]`` for a tensor of classes; -inf off the class."""
        if cls is None:
            return self.weights.log()
        member = self.labels == torch.as_tensor(cls, device=self.labels.device)[..., None]
        masked = torch.where(member, self.weights.log(), -math.inf)
        return masked - masked.logsumexp(-1, keepdim=True)

    def variance(self, cls: int | None = None) -> Tensor:
        """Exact per-dimension variance of ``x0`` (of one class, or of the marginal): ``tr Cov[x0] / d``."""
        p = self.log_prior(cls).exp()
        mean = p @ self.means
        return p @ (self.stds**2 + ((self.means - mean) ** 2).sum(-1) / self.dim)

    def sample(self, n: int, generator: torch.Generator, cls: Classes = None) -> Tensor:
        """``n`` draws of x0 ``[n, d]``: from the marginal (None), one class (int) or per-draw classes (``[n]`` tensor)."""
        p = self.log_prior(cls).exp()
        k = torch.multinomial(p, n if p.ndim == 1 else 1, replacement=True, generator=generator).reshape(n)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[k] + self.stds[k, None] * noise

    def _components(self, x: Tensor, sigma: Tensor, flow: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``log p(x | k)`` ``[B, K]``, ``a`` ``[B, 1]`` and ``v_k = a²s_k² + σ²`` ``[B, K]`` (module doc).

        ``‖x - a·μ_k‖²`` is expanded into matrix products (no ``[B, K, d]`` intermediate); in float64 the cancellation
        error stays ~1e-14 nats on the testbed's scales.
        """
        a = alpha(sigma, flow)[:, None]
        var = a**2 * self.stds**2 + sigma[:, None] ** 2
        sq = (x**2).sum(-1, keepdim=True) - 2 * a * (x @ self.means.T) + a**2 * (self.means**2).sum(-1)
        return -0.5 * (sq.clamp_min(0) / var + self.dim * (2 * math.pi * var).log()), a, var

    def _flat(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """``x`` as ``[B, d]`` in the mixture's dtype and device, and σ as ``[B]``."""
        x = x.reshape(x.shape[0], self.dim).to(self.means)
        return x, batch_levels(sigma, x)

    def log_prob(self, x: Tensor, sigma: Tensor | float, cls: Classes = None, flow: bool = False) -> Tensor:
        """Exact log density of the forward marginal, ``log p_σ(x | cls) = logsumexp_k(log π_k + log p(x | k))``, ``[B]``."""
        x, sigma = self._flat(x, sigma)
        return (self.log_prior(cls) + self._components(x, sigma, flow)[0]).logsumexp(-1)

    def _posterior_means(self, x: Tensor, sigma: Tensor | float, classes: list[Classes], flow: bool) -> list[Tensor]:
        """``D*(x, σ | c)`` for each class choice, sharing the per-component terms (one pass for cond + uncond)."""
        like, (x, sigma) = x, self._flat(x, sigma)
        log_p, a, var = self._components(x, sigma, flow)
        outs = []
        for cls in classes:
            r = (self.log_prior(cls) + log_p).softmax(-1)  # responsibilities r_k(x), [B, K]
            d = a * x * (r * self.stds**2 / var).sum(-1, keepdim=True) + sigma[:, None] ** 2 * ((r / var) @ self.means)
            outs.append(d.reshape(like.shape).to(like))
        return outs

    def posterior_mean(self, x: Tensor, sigma: Tensor | float, cls: Classes = None, flow: bool = False) -> Tensor:
        """The exact denoiser ``D*(x, σ) = E[x0 | x_σ = x, cls]`` (module doc); ``x`` is ``[B, ...]``, σ ``[B]`` or scalar.

        Computed in the mixture's dtype (float64 by default), returned in the dtype and device of ``x``.
        """
        return self._posterior_means(x, sigma, [cls], flow)[0]

    def denoiser(self, cls: Classes = None, flow: bool = False) -> Denoiser:
        """``D(x, σ)`` conditioned on ``cls`` (None: the unconditional model, the marginal), k-diffusion convention."""
        return lambda x, sigma: self.posterior_mean(x, sigma, cls, flow)

    def pair_denoiser(self, cls: Classes, flow: bool = False) -> PairDenoiser:
        """``D(x, σ) -> (D_cond, D_uncond)``: the exact class-conditional and marginal denoisers, one shared pass."""
        return lambda x, sigma: tuple(self._posterior_means(x, sigma, [cls, None], flow))

    def class_posterior(self, x0: Tensor) -> Tensor:
        """Exact Bayes ``p(c | x0) ∝ Σ_{k ∈ c} π_k N(x0; μ_k, s_k² I)``, ``[B, C]``."""
        x0, sigma = self._flat(x0, 0.0)
        log_joint = self.log_prior() + self._components(x0, sigma, False)[0]
        member = self.labels == torch.arange(self.n_classes, device=self.labels.device)[:, None]  # [C, K]
        return torch.where(member, log_joint[:, None, :], -math.inf).logsumexp(-1).softmax(-1)


def _class_centres(n_classes: int, dim: int, spacing: float, g: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Class centres ``[C, d]``, neighbouring ones ``spacing`` apart.

    A regular simplex (all pairs equally far) in a random orientation when ``d ≥ C - 1``; otherwise a regular polygon in a
    random 2-plane (d = 2 for plots). The simplex is the centred standard basis ``I - 1/C`` (edge √2) written in an
    orthonormal basis of its (C-1)-dim span, then embedded by a random isometry.
    """
    if dim >= n_classes - 1:
        vertices = torch.eye(n_classes, dtype=dtype) - 1.0 / n_classes
        basis = torch.linalg.svd(vertices).U[:, : n_classes - 1]  # [C, C-1]
        coords, edge = vertices @ basis, math.sqrt(2.0)
    else:
        angle = 2 * math.pi * torch.arange(n_classes, dtype=dtype) / n_classes
        coords, edge = torch.stack([angle.cos(), angle.sin()], -1), 2 * math.sin(math.pi / n_classes)
    isometry = torch.linalg.qr(torch.randn(dim, coords.shape[1], generator=g, dtype=dtype)).Q  # [d, m], orthonormal columns
    return coords @ isometry.T * (spacing / edge)


def make_mixture(dim: int, n_classes: int, components_per_class: int, seed: int, dtype: torch.dtype = torch.float64,
                 std: float = 0.5, separation: float = 4.0, spread: float = 1.5) -> GaussianMixture:
    """A seeded class-conditional mixture, in units of the typical component std ``std`` (0.5: EDM's σ_data).

    * class centres: ``separation·std`` apart (neighbours), see :func:`_class_centres`;
    * each class's components sit at ``spread·std`` from its centre in random directions, so a class is multimodal and
      its components overlap;
    * stds ``std·e^u``, ``u ~ U(-0.2, 0.2)``; equal class priors, within-class weights ∝ ``U(0.5, 1.5)``.

    The defaults keep classes well separated at σ = 0 yet overlapping: the exact Bayes classifier errs on ~4–7% of draws
    (d = 2…16, 2–3 classes; ~10% with 10 classes), and at mid σ the marginal and conditional denoisers differ strongly,
    so classifier-free guidance matters.
    """
    g = torch.Generator().manual_seed(seed)
    k = n_classes * components_per_class
    labels = torch.arange(n_classes).repeat_interleave(components_per_class)
    centres = _class_centres(n_classes, dim, separation * std, g, dtype)
    directions = torch.randn(k, dim, generator=g, dtype=dtype)
    means = centres[labels] + spread * std * directions / directions.norm(dim=-1, keepdim=True)
    stds = std * (0.4 * torch.rand(k, generator=g, dtype=dtype) - 0.2).exp()
    within = (0.5 + torch.rand(n_classes, components_per_class, generator=g, dtype=dtype))
    weights = (within / within.sum(-1, keepdim=True) / n_classes).reshape(k)
    return GaussianMixture(means, stds, weights, labels)


class NoisePosterior:
    """The exact noise posterior ``log p(σ | x)`` of a mixture: the oracle noise-level estimator of classifier-based Noise
    Awareness Guidance (arXiv 2510.12497; docs/methods.md#estimator-mode), a ``samplers.nag.LevelLogPosterior``.

        log p_σ(x) = logsumexp_k [log π_k + log N(x; a(σ)·μ_k, (a(σ)²·s_k² + σ²)·I)]
        log p(σ | x) = log p_σ(x) - log ∫ p_σ'(x) dλ',    λ = log σ_ve

    A density in ``λ = log σ_ve`` under a prior uniform in λ on ``[sigma_min, sigma_max]`` (VE levels; the
    log-uniform prior on a grid of docs/methods.md#estimator-mode), so it is defined at any σ in that range, not only on the grid.
    The normaliser is the trapezoid rule on ``points`` levels equally spaced in λ: spacing 0.021 at the defaults, about the
    posterior's width at high σ for d = 1024 (``√(1/(2d))`` in λ), where the rule's error on a Gaussian bump is ``~e^(-2π²)``;
    below the data's scale the likelihood is flat down to the range's end, hence trapezoid end weights.

    Every level shares ``x·μ_k`` (``‖x - a·μ_k‖²`` expanded), so the grid costs ``[B, levels, K]`` scalars, not a pass
    over ``d`` per level. Differentiable in ``x``; computed in the mixture's dtype.
    """

    def __init__(self, mixture: GaussianMixture, cls: Classes = None, flow: bool = False, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, points: int = 512):
        self.mixture, self.cls, self.flow = mixture, cls, flow
        means = mixture.means
        self.log_levels = torch.linspace(math.log(sigma_min), math.log(sigma_max), points, dtype=means.dtype,
                                         device=means.device)
        self.grid = self.level_of(self.log_levels)
        spacing = torch.full_like(self.log_levels, (math.log(sigma_max) - math.log(sigma_min)) / (points - 1))
        spacing[[0, -1]] /= 2
        self.log_weights = spacing.log()

    def level_of(self, log_sigma_ve: Tensor) -> Tensor:
        """The level of ``λ = log σ_ve`` in the model's parametrisation (flow: ``s = σ/(1+σ)``)."""
        return model_sigma(log_sigma_ve.exp(), self.flow)

    def log_marginals(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``log p_σ(x | cls)`` ``[B, J]`` at levels ``sigma`` ``[B, J]`` or ``[J]`` (the model's parametrisation)."""
        m = self.mixture
        x = x.reshape(x.shape[0], m.dim).to(m.means)
        a = alpha(sigma, self.flow)[..., None]  # [B|1, J, 1]
        var = a**2 * m.stds**2 + sigma[..., None] ** 2  # [B|1, J, K]
        cross = (x @ m.means.T)[:, None, :]  # [B, 1, K]
        sq = (x**2).sum(-1)[:, None, None] - 2 * a * cross + a**2 * (m.means**2).sum(-1)
        log_like = -0.5 * (sq.clamp_min(0) / var + m.dim * (2 * math.pi * var).log())
        return (m.log_prior(self.cls) + log_like).logsumexp(-1)

    def grid_posterior(self, x: Tensor) -> Tensor:
        """The posterior mass of each grid level (quadrature weight included), ``[B, J]``, rows summing to 1."""
        return (self.log_marginals(x, self.grid) + self.log_weights).softmax(-1)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``log p(σ | x)`` ``[B]`` (a density in ``log σ_ve``) for states ``x`` ``[B, ...]`` at levels ``sigma`` ``[B]``."""
        sigma = batch_levels(sigma, x).to(self.mixture.means)
        at_sigma = self.log_marginals(x, sigma[:, None])[:, 0]
        evidence = (self.log_marginals(x, self.grid) + self.log_weights).logsumexp(-1)
        return (at_sigma - evidence).to(x.dtype)

    @torch.no_grad()
    def estimate(self, x: Tensor) -> Tensor:
        """σ̂ = ``√E[σ_ve² | x]``, the posterior RMS level, in the model's parametrisation, ``[B]``.

        The RMS, not ``exp E[log σ]``: below the data's scale the likelihood is flat in σ and a log-mean follows the
        prior's lower end, while the RMS reads the noise energy the state carries (bench/nag.py's ``shift`` convention).
        """
        mean_square = self.grid_posterior(x) @ (2 * self.log_levels).exp()
        return self.level_of(0.5 * mean_square.log()).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Imperfect denoisers with a knob (docs/evaluation.md#testbed-1-analytic-mixture): 1 error field,
# 2 GaussianMixture.scaled, 3 miscalibrated, 4 MLP


class ErrorField:
    """A smooth, deterministic, σ-dependent error ``e(x, σ) = m(σ)·B·tanh(W·u + b)`` added to x̂0
    (docs/evaluation.md#testbed-1-analytic-mixture, knob 1).

    * ``u = x / √(a² + σ²)``: the state at unit scale. In VE it is ``x/√(1+σ²)`` (an EPS network's input); for
      flow it is the same quantity of the mapped VE state, so ``e_flow(x, s) = e_ve(x/(1-s), s/(1-s))`` and the flow
      model equals the VE model through samplers.core.flow_to_ve, like the exact denoisers.
    * ``m(σ) = amplitude·σ_ve/√(σ_ve² + knee²) = amplitude·σ/√(σ² + knee²·a²)``: the shape of EDM's ``c_out``
      (Karras et al. 2022, Table 1), i.e. a network whose error has a constant size in its own output space. The x0
      error is 0 at σ = 0 and tends to ``amplitude`` (times the RMS of the tanh features) at large σ; the implied eps
      error ``m/σ_ve`` is largest, flat at ``amplitude/knee``, for σ ≪ knee and falls like 1/σ above it: the realistic
      profile of measured eps-MSE (large at small σ; VRG, arXiv 2510.21792).
    * ``W ~ N(0, frequency²/d)`` (variation over the data's scale), ``b ~ N(0, 1)``, ``B ~ N(0, 1/hidden)``.
    """

    def __init__(self, dim: int, seed: int, amplitude: float, hidden: int = 16, frequency: float = 2.0,
                 knee: float = 0.5, dtype: torch.dtype = torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(hidden, dim, generator=g, dtype=dtype) * (frequency / math.sqrt(dim))
        self.bias = torch.randn(hidden, generator=g, dtype=dtype)
        self.readout = torch.randn(dim, hidden, generator=g, dtype=dtype) / math.sqrt(hidden)
        self.amplitude, self.knee = amplitude, knee

    def __call__(self, x: Tensor, sigma: Tensor | float, flow: bool = False) -> Tensor:
        """The error ``e(x, σ)``, shaped like ``x`` (``[B, ...]``); σ ``[B]`` or scalar."""
        flat = x.reshape(x.shape[0], -1).to(self.weight)
        sigma = batch_levels(sigma, flat)[:, None]
        a = alpha(sigma, flow)
        scale = self.amplitude * sigma / (sigma**2 + (self.knee * a) ** 2).sqrt()
        features = torch.tanh(flat @ self.weight.T / (a**2 + sigma**2).sqrt() + self.bias)
        return (scale * features @ self.readout.T).reshape(x.shape).to(x)

    def wrap(self, denoiser: Denoiser, flow: bool = False) -> Denoiser:
        """``D(x, σ) + e(x, σ)``."""
        return lambda x, sigma: denoiser(x, sigma) + self(x, sigma, flow)


def perturbed_pair(pair_denoiser: PairDenoiser, dim: int, seed: int, amplitude: float, flow: bool = False,
                   **field_options: float) -> PairDenoiser:
    """``(D_c + e_c, D_u + e_u)`` with independent fields (seeds ``2·seed``, ``2·seed + 1``): CFG amplifies their
    difference, as with real models (docs/evaluation.md#principles). ``field_options`` go to :class:`ErrorField`."""
    cond = ErrorField(dim, 2 * seed, amplitude, **field_options)
    uncond = ErrorField(dim, 2 * seed + 1, amplitude, **field_options)

    def pair(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        d_c, d_u = pair_denoiser(x, sigma)
        return d_c + cond(x, sigma, flow), d_u + uncond(x, sigma, flow)

    return pair


def miscalibrated(denoiser: Callable, kappa: float | Callable[[Tensor], Tensor], flow: bool = False) -> Callable:
    """The model believes the wrong noise level: ``D(x, σ̃)`` with ``σ̃_ve = σ_ve·(1 + κ)``
    (docs/evaluation.md#testbed-1-analytic-mixture, knob 3).

    VE: ``σ̃ = σ·(1 + κ)``. Flow: the same miscalibration of the VE level, ``s̃ = s(1+κ)/(1+κs)``, which stays in [0, 1]
    (s = 1 maps to 1). ``kappa`` (> -1) is a number or a function of σ (the denoiser's own level, ``[B]``). Works for a
    pair denoiser too (both branches see the same σ̃).
    """

    def shifted(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_levels(sigma, x)
        k = kappa(sigma) if callable(kappa) else kappa
        return denoiser(x, sigma * (1 + k) / (1 + k * sigma) if flow else sigma * (1 + k))

    return shifted


class LabelledDenoiser:
    """The testbeds' class-conditional networks as ``samplers.core`` denoisers: a subclass has ``_labels(cls, batch)``
    (None: the null class of label dropout) and ``_predict(x, sigma, labels)``."""

    def denoiser(self, cls: Classes = None) -> Denoiser:
        """``D(x, σ)`` for ``cls`` (None: the unconditional branch), in the parametrisation it was trained for."""
        return lambda x, sigma: self._predict(x, sigma, self._labels(cls, x.shape[0]))

    def pair_denoiser(self, cls: Classes) -> PairDenoiser:
        """``(D_cond, D_uncond)`` from one batched call (cond and uncond stacked, as the host batches them)."""

        def pair(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
            n = x.shape[0]
            labels = torch.cat([self._labels(cls, n), self._labels(None, n)])
            return self._predict(torch.cat([x, x]), batch_levels(sigma, x).repeat(2), labels).chunk(2)

        return pair


class MLPDenoiser(LabelledDenoiser, nn.Module):
    """A small x0-predicting MLP with EDM preconditioning written for ``x = a·x0 + σ·ε``
    (docs/evaluation.md#testbed-1-analytic-mixture, knob 4):

        D(x, σ, c) = c_skip·x + c_out·F(c_in·x, c_noise, c)
        c_in = 1/√(a²σ_d² + σ²),  c_skip = a·σ_d²/(a²σ_d² + σ²),  c_out = σ·σ_d/√(a²σ_d² + σ²)

    (Karras et al. 2022, Table 1, with their signal scale s(t) = a: c_skip·x is the best linear estimate of x0 for data
    variance σ_d² and c_out makes F's target unit-variance), finite at σ = 0 and at a = 0 (flow s = 1).
    ``c_noise = log(σ/a)/4`` (the VE level, clamped to [1e-4, 1e4]) enters through sin/cos features; the class through an
    embedding whose last row is the null class of label dropout, so the network is also its own unconditional model.
    """

    def __init__(self, dim: int, n_classes: int, sigma_data: float, flow: bool, cond: bool = True, hidden: int = 128):
        super().__init__()
        self.dim, self.n_classes, self.sigma_data, self.flow, self.cond = dim, n_classes, sigma_data, flow, cond
        self.register_buffer("freqs", 2.0 ** torch.arange(4.0), persistent=False)
        self.inp = nn.Linear(dim, hidden)
        self.noise = nn.Linear(2 * len(self.freqs) + 1, hidden)
        self.label = nn.Embedding(n_classes + 1, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, dim))

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """x̂0 for ``x`` ``[B, d]``, σ ``[B]`` and ``labels`` ``[B]`` (``n_classes`` = unconditional)."""
        sigma = sigma[:, None]
        a = alpha(sigma, self.flow)
        var = (a * self.sigma_data) ** 2 + sigma**2
        c_noise = (sigma / a).clamp(1e-4, 1e4).log() / 4
        noise = torch.cat([c_noise, (c_noise * self.freqs).sin(), (c_noise * self.freqs).cos()], -1)
        h = self.inp(x * var.rsqrt()) + self.noise(noise) + self.label(labels)
        return a * self.sigma_data**2 / var * x + sigma * self.sigma_data * var.rsqrt() * self.body(h)

    def _labels(self, cls: Classes, batch: int) -> Tensor:
        """``[B]`` labels of a class choice; None is the null class."""
        if cls is None:
            return torch.full((batch,), self.n_classes)
        if not self.cond:
            raise ValueError("MLPDenoiser: this model was trained without classes (cond=False); use cls=None.")
        return torch.as_tensor(cls).expand(batch)

    @torch.no_grad()
    def _predict(self, x: Tensor, sigma: Tensor | float, labels: Tensor) -> Tensor:
        """Run the network in float32 on ``[B, ...]`` states, answer in the caller's dtype and shape."""
        flat = x.reshape(x.shape[0], self.dim)
        out = self(flat.float(), batch_levels(sigma, flat).float(), labels)
        return out.to(x.dtype).reshape(x.shape)



def train_mlp_denoiser(mixture: GaussianMixture, flow: bool = False, steps: int = 1500, seed: int = 0,
                       cond: bool = True, batch: int = 512, lr: float = 2e-3, hidden: int = 128,
                       label_dropout: float = 0.1, threads: int = 1, cache_dir: str | Path | None = None) -> MLPDenoiser:
    """Train an :class:`MLPDenoiser` for a fixed budget of ``steps`` Adam steps on fresh mixture draws.

    Loss: the x0-prediction MSE with EDM's weight ``1/c_out²`` (unit-weighted in F space). Classes are dropped to the
    null class with probability ``label_dropout`` (always, for ``cond=False``). Deterministic for a seed: the data come
    from a local generator, the initial weights from a forked global RNG (the caller's RNG state is untouched), and the
    work runs on ``threads`` threads (restored afterwards; one is as fast for this size and cannot oversubscribe a busy
    machine). The defaults take ~5–10 s at d = 16 on one CPU core and leave an x0-MSE within a few % of the exact one.
    With ``cache_dir``, the weights are kept there as safetensors under a hash of the mixture and every setting that
    changes them, and loaded instead of training when present.
    """
    sigma_data = float(mixture.variance().sqrt())
    model = seeded_init(lambda: MLPDenoiser(mixture.dim, mixture.n_classes, sigma_data, flow, cond, hidden), seed)
    settings = dict(flow=flow, steps=steps, seed=seed, cond=cond, batch=batch, lr=lr, hidden=hidden,
                    label_dropout=label_dropout, version=1)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for t in (mixture.means, mixture.stds, mixture.weights, mixture.labels):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        path = Path(cache_dir) / f"mlp_denoiser_{digest.hexdigest()[:20]}.safetensors"
        if path.exists():
            model.load_state_dict(load_file(str(path)))
            return model.eval()

    g = torch.Generator().manual_seed(seed)
    class_prior = torch.stack([mixture.weights[mixture.labels == c].sum() for c in range(mixture.n_classes)])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    with torch_threads(threads):
        for _ in range(steps):
            classes = torch.multinomial(class_prior, batch, replacement=True, generator=g)
            x0 = mixture.sample(batch, g, classes).float()
            sigma = log_uniform_levels(batch, flow, g)
            a = alpha(sigma, flow)
            x = a[:, None] * x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
            dropped = torch.rand(batch, generator=g) < (label_dropout if cond else 1.0)
            labels = torch.where(dropped, mixture.n_classes, classes)
            weight = ((a * sigma_data) ** 2 + sigma**2) / (sigma * sigma_data) ** 2  # 1 / c_out²
            loss = (weight[:, None] * (model(x, sigma, labels) - x0) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    if path is not None:
        write_cache(path, model, settings, sigma_data=str(sigma_data))
    return model
