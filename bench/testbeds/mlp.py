"""An imperfect denoiser for the analytic testbed: a small MLP trained on mixture samples for a fixed budget (EVAL.md).

EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space...", Table 1): ``D(x, σ) = c_skip·x + c_out·F(c_in·x,
log σ / 4, class)``, trained in VE space with the F-target MSE; a flow state is mapped to VE first, so one network serves
both parametrisations. A null class (label dropout) gives the unconditional branch, so classifier-free guidance exists.
Its errors are natural (not injected) and deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from samplers.core import PairDenoiser, flow_to_ve

from .gmm import GaussianMixture


class MLPDenoiser(nn.Module):
    def __init__(self, dim: int, n_classes: int, sigma_data: float, hidden: int = 128):
        super().__init__()
        self.n_classes, self.sigma_data = n_classes, sigma_data
        self.embed = nn.Embedding(n_classes + 1, hidden)  # the last index is "no class"
        self.inp = nn.Linear(dim + 1, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, dim))

    def forward(self, x: Tensor, sigma_ve: Tensor, labels: Tensor) -> Tensor:
        """``D(x, σ)`` in VE space; ``labels`` may hold ``n_classes`` for the unconditional branch."""
        s2, d2 = sigma_ve[:, None] ** 2, self.sigma_data**2
        c_in, c_skip, c_out = (s2 + d2).rsqrt(), d2 / (s2 + d2), sigma_ve[:, None] * self.sigma_data * (s2 + d2).rsqrt()
        h = self.inp(torch.cat([c_in * x, sigma_ve.log()[:, None] / 4], -1)) + self.embed(labels)
        return c_skip * x + c_out * self.body(h)

    def _call(self, x: Tensor, sigma: Tensor, labels: Tensor, flow: bool) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if flow:
            x, sigma = flow_to_ve(x, sigma.clamp_max(1 - 1e-6))
        with torch.no_grad():
            return self(x.float(), sigma.float().clamp_min(1e-4), labels).to(x.dtype)

    def denoiser(self, cls: int | None = None, flow: bool = False):
        """``D(x, σ)`` for class ``cls`` (None: the unconditional branch)."""
        label = self.n_classes if cls is None else cls
        return lambda x, sigma: self._call(x, sigma, torch.full((x.shape[0],), label), flow)

    def pair_denoiser(self, cls: int, flow: bool = False) -> PairDenoiser:
        """``(D_cond, D_uncond)`` from one batched call, as the host does for cond and uncond."""

        def pair(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
            labels = torch.tensor([cls, self.n_classes]).repeat_interleave(x.shape[0])
            both = self._call(torch.cat([x, x]), torch.as_tensor(sigma).expand(x.shape[0]).repeat(2), labels, flow)
            return both.chunk(2)

        return pair


def train_mlp_denoiser(mixture: GaussianMixture, steps: int = 1500, batch: int = 512, seed: int = 0,
                       label_dropout: float = 0.1, cache: Path | None = None) -> MLPDenoiser:
    """Train for a fixed budget (seconds on 2 cores); σ log-uniform on [0.002, 80]. Cached as safetensors if asked."""
    n_classes = int(mixture.labels.max()) + 1
    sigma_data = float(mixture.sample(4096, torch.Generator().manual_seed(seed)).std())
    with torch.random.fork_rng():  # seeded initial weights without touching the caller's global RNG
        torch.manual_seed(seed)
        model = MLPDenoiser(mixture.dim, n_classes, sigma_data)
    if cache is not None and cache.exists():
        model.load_state_dict(load_file(str(cache)))
        return model.eval()
    g = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    component_class = mixture.labels
    for _ in range(steps):
        k = torch.multinomial(mixture.weights, batch, replacement=True, generator=g)
        x0 = (mixture.means[k] + mixture.stds[k, None] * torch.randn(batch, mixture.dim, generator=g,
                                                                     dtype=mixture.means.dtype)).float()
        sigma = (torch.rand(batch, generator=g) * (torch.tensor(80.0).log() - torch.tensor(0.002).log())
                 + torch.tensor(0.002).log()).exp()
        labels = torch.where(torch.rand(batch, generator=g) < label_dropout, n_classes, component_class[k])
        x = x0 + sigma[:, None] * torch.randn(batch, mixture.dim, generator=g)
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        loss = (weight[:, None] * (model(x, sigma, labels) - x0) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(cache))
    return model.eval()
