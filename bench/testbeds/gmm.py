"""Testbed 1: a class-conditional isotropic Gaussian mixture with its exact denoiser (EVAL.md).

For ``x = a·x0 + σ·ε`` (``a = 1`` VE, ``a = 1 - σ`` flow) and ``x0 ~ Σ_k π_k N(μ_k, s_k² I)``:

    p(x | k) = N(a·μ_k, (a²s_k² + σ²) I),   r_k(x) ∝ π_k·p(x | k),
    E[x0 | x, k] = μ_k + a·s_k²/(a²s_k² + σ²)·(x - a·μ_k),   D*(x, σ) = Σ_k r_k(x)·E[x0 | x, k].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from samplers.core import alpha


@dataclass(frozen=True)
class GaussianMixture:
    means: Tensor  # [K, d]
    stds: Tensor  # [K]
    weights: Tensor  # [K], sums to 1
    labels: Tensor  # [K], class of each component

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _prior(self, cls: int | None) -> Tensor:
        """Log mixture weights, restricted to the components of ``cls`` (None: the marginal)."""
        weights = self.weights if cls is None else torch.where(self.labels == cls, self.weights, 0.0)
        return (weights / weights.sum()).log()

    def sample(self, n: int, generator: torch.Generator, cls: int | None = None) -> Tensor:
        """``n`` draws of x0 from the marginal or from one class."""
        k = torch.multinomial(self._prior(cls).exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * noise

    def _components(self, x: Tensor, sigma: Tensor, cls: int | None, flow: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Per component: log π_k p(x|k) ``[B, K]``, the signal scale ``a`` ``[B, 1]`` and the variance ``[B, K]``."""
        a = alpha(sigma, flow)[:, None]
        var = a**2 * self.stds**2 + sigma[:, None] ** 2
        sq = ((x[:, None, :] - a[:, :, None] * self.means) ** 2).sum(-1)
        log_p = -0.5 * (sq / var + self.dim * (var * 2 * math.pi).log())
        return self._prior(cls) + log_p, a, var

    def log_prob(self, x: Tensor, sigma: Tensor, cls: int | None = None, flow: bool = False) -> Tensor:
        """Exact log density of the forward marginal ``p_σ(x | cls)``, ``[B]``."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        return self._components(x, sigma, cls, flow)[0].logsumexp(-1)

    def posterior_mean(self, x: Tensor, sigma: Tensor, cls: int | None = None, flow: bool = False) -> Tensor:
        """The exact denoiser ``D*(x, σ) = E[x0 | x]`` (module doc); ``sigma`` is ``[B]``."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        log_joint, a, var = self._components(x, sigma, cls, flow)
        r = log_joint.softmax(-1)
        gain = a * self.stds**2 / var  # [B, K]
        per_component = self.means + gain[..., None] * (x[:, None, :] - a[:, :, None] * self.means)
        return (r[..., None] * per_component).sum(1)

    def denoiser(self, cls: int | None = None, flow: bool = False):
        """``D(x, σ)`` conditioned on ``cls`` (None: unconditional), in the k-diffusion call convention."""
        return lambda x, sigma: self.posterior_mean(x, sigma, cls, flow)

    def pair_denoiser(self, cls: int, flow: bool = False):
        """``D(x, σ) -> (D_cond, D_uncond)``: the class-conditional and the marginal exact denoisers."""
        return lambda x, sigma: (self.posterior_mean(x, sigma, cls, flow), self.posterior_mean(x, sigma, None, flow))

    def class_posterior(self, x0: Tensor) -> Tensor:
        """Exact Bayes ``p(c | x0)``, ``[B, C]``."""
        log_joint, _, _ = self._components(x0, torch.zeros(x0.shape[0], dtype=x0.dtype), None, False)
        classes = range(int(self.labels.max()) + 1)
        return torch.stack([log_joint[:, self.labels == c].logsumexp(-1) for c in classes], -1).softmax(-1)


def make_mixture(dim: int, n_classes: int, components_per_class: int, seed: int,
                 dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """A seeded mixture: component means on a sphere of radius 3 (overlapping classes), stds in [0.3, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    k = n_classes * components_per_class
    means = torch.randn(k, dim, generator=g, dtype=dtype)
    means = 3.0 * means / means.norm(dim=1, keepdim=True)
    stds = 0.3 + 0.5 * torch.rand(k, generator=g, dtype=dtype)
    weights = torch.full((k,), 1.0 / k, dtype=dtype)
    labels = torch.arange(n_classes).repeat_interleave(components_per_class)
    return GaussianMixture(means, stds, weights, labels)
