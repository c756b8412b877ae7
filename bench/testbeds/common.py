"""What the testbeds share (docs/evaluation.md): noise levels as batch tensors and their training draws, seeded and
thread-bounded training, the safetensors cache of trained networks, and the image metrics (PSNR, Fréchet distance).

The cache keeps every network as safetensors under ``bench/out/cache/`` (git-ignored) with the settings that made it in
the file's metadata: a file made with other settings is not read, so changed settings retrain. Pickles are never loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CACHE_DIR = Path(__file__).resolve().parents[1] / "out" / "cache"


# ---------------------------------------------------------------------------------------------------------------------
# Noise levels


def batch_levels(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A noise level as a ``[B]`` tensor in the dtype and device of ``x`` (a scalar is broadcast over the batch)."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])


def log_uniform_levels(n: int, flow: bool, g: torch.Generator) -> Tensor:
    """Training levels of the MLP denoisers: VE σ log-uniform on [0.002, 80] (EDM's range); flow s uniform on [0.001, 1]."""
    u = torch.rand(n, generator=g)
    return 1e-3 + (1 - 1e-3) * u if flow else 0.002 * (80 / 0.002) ** u


# ---------------------------------------------------------------------------------------------------------------------
# Reproducible training


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block and restore the caller's setting after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seeded_init(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its initial weights from ``seed``, leaving the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


# ---------------------------------------------------------------------------------------------------------------------
# The cache of trained networks


def cache_path(cache_dir: str | Path | None, name: str) -> Path:
    """Where the network ``name`` is cached: ``cache_dir`` or :data:`CACHE_DIR`."""
    return Path(CACHE_DIR if cache_dir is None else cache_dir) / f"{name}.safetensors"


def read_cache(path: Path, settings: dict) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """The tensors and metadata of ``path`` if it exists and was made with exactly ``settings``; else None."""
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("settings") != json.dumps(settings, sort_keys=True):
        return None
    return load_file(str(path)), metadata


def write_cache(path: Path, module: nn.Module, settings: dict, **metadata: str) -> None:
    """Save ``module``'s weights (on the CPU) with its ``settings`` and further ``metadata`` (training time, loss, …);
    written to a temporary name, then renamed, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(partial), metadata={"settings": json.dumps(settings, sort_keys=True), **metadata})
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def frechet_distance_gaussians(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """The squared 2-Wasserstein distance of two Gaussians (Dowson & Landau 1982; Heusel et al. 2017 for FID):

        ‖μ_a - μ_b‖² + tr Σ_a + tr Σ_b - 2·tr (Σ_a^½ Σ_b Σ_a^½)^½

    with the trace term from the eigenvalues of the symmetric PSD ``Σ_a^½ Σ_b Σ_a^½`` (no complex ``sqrtm`` round-off).
    """
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance of two feature sets ``[N, F]`` and ``[M, F]``: :func:`frechet_distance_gaussians` of their sample
    means and unbiased sample covariances, in float64."""
    a, b = features_a.double(), features_b.double()
    return frechet_distance_gaussians(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def psnr(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10·log10(range² / MSE)`` in dB, for ``[B, ...]`` images in [-1, 1]
    (range 2); ``inf`` where an image is reproduced exactly."""
    mse = (a.double() - b.double()).reshape(a.shape[0], -1).pow(2).mean(-1)
    return 10 * torch.log10(data_range**2 / mse)
