"""Testbed 4 (docs/evaluation.md#testbed-4-photo-patches): a class-conditional U-Net diffusion model of 32×32 RGB patches
(d = 3072) of real photos.

* Data: ten photos bundled inside scikit-image's wheel (no download), each downscaled to a short side of 256 pixels and
  scaled to ``[-1, 1]``; the class of a patch is its source photo. A fixed vertical strip at the right of every photo
  (:data:`HELDOUT_FRACTION` of its width) is held out: training crops (random position, random horizontal flip) lie
  wholly left of it, held-out patches wholly inside it, so no held-out pixel is ever trained on.
* Model: :class:`PatchUNet`, a small U-Net (the 32×32 patch folded 2×2 to 16×16, then 16→8 with self-attention at
  8×8; Ho et al. 2020 / Dhariwal & Nichol 2021 blocks with scale-shift conditioning; 1.77 M parameters) under EDM
  preconditioning (Karras et al. 2022, Table 1) written for ``x = a(σ)·x0 + σ·ε``, conditioned on the photo through a
  class embedding whose extra row is the null class of label dropout, so classifier-free guidance (Ho & Salimans 2022)
  works. Two twins (samplers/core.py): eps/VE (``a = 1``) and
  rectified flow (``a = 1 - s``); both answer x̂0 through ``denoiser(cls)`` and ``pair_denoiser(cls)``.
* Metrics: a small CNN classifier (:class:`PatchClassifier`) trained on the same crops gives :func:`embed` features for
  :func:`~bench.testbeds.common.frechet_distance` (FID's recipe with a domain classifier) and its real-vs-real floor,
  k-NN :func:`precision_recall` (Kynkäänniemi et al. 2019), the per-sample :func:`solve_error` to a :func:`fine_solve`
  from the same noise, and the PSNR of DDIM inversion :func:`reconstruction_psnr`.

Every network is trained once (seeded; on CUDA when available) and cached as safetensors under ``bench/out/cache/``
(git-ignored) with its settings, final loss and training time in the metadata; different settings retrain it.
``python -m bench.testbeds.patches --train`` trains or loads every network; without the flag it prints :func:`summary`.
On a CPU shared with other jobs run it with ``OMP_NUM_THREADS=1``: oversubscribed OpenMP threads spin-wait (measured on
2 busy cores: > 5 s a denoiser step with 2 threads, 0.26 s with 1).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F

from samplers.core import Denoiser, alpha, guided, inversion_sigmas
from samplers.inversion import EvalAt, ddim

from ..kit import schedule
from .common import CACHE_DIR, batch_levels, cache_path, frechet_distance, psnr, read_cache, seeded_init, write_cache
from .gmm import Classes, LabelledDenoiser

VERSION = 1
"""Bumped when training code changes in a way the settings do not show: every cached network is then retrained."""
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "motorcycle", "retina", "hubble_deep_field",
          "immunohistochemistry", "brick")
"""The classes: scikit-image's bundled photos (``camera`` and ``brick`` are grey, repeated into RGB; ``motorcycle`` is
the left view of ``stereo_motorcycle``)."""
N_CLASSES = len(PHOTOS)
PATCH = 32
CHANNELS = 3
DIM = CHANNELS * PATCH * PATCH
SHORT_SIDE = 256
HELDOUT_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------------------------------
# Data


def _load_photo(name: str) -> Tensor:
    """One bundled photo as ``[3, H, W]`` float32 in [-1, 1], resized (anti-aliased) to a short side of 256."""
    import numpy as np
    from skimage import data, transform

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = np.asarray(image, dtype=np.float64) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    scale = SHORT_SIDE / min(image.shape[:2])
    shape = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    image = transform.resize(image[..., :3], shape, order=1, anti_aliasing=scale < 1)
    return torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1) * 2 - 1


@dataclass(frozen=True)
class PatchData:
    """The photos, zero-padded to one ``[C, 3, H_max, W_max]`` tensor, with each photo's height, width and the first
    column of its held-out strip (training crops end before it, held-out crops start at it)."""

    photos: Tensor
    heights: Tensor
    widths: Tensor
    heldout_from: Tensor

    def digest(self) -> str:
        """A short hash of the photos and the split, so a cached network is tied to the data it saw."""
        h = hashlib.sha256(self.photos.numpy().tobytes())
        h.update(self.heldout_from.numpy().tobytes())
        return h.hexdigest()[:16]

    def crops(self, labels: Tensor, top: Tensor, left: Tensor, flip: Tensor | None = None) -> Tensor:
        """The ``[B, 3, 32, 32]`` patches of photos ``labels`` at corners ``(top, left)``, mirrored where ``flip``."""
        span = torch.arange(PATCH)
        rows = (top[:, None] + span)[:, None, :, None]
        cols = (left[:, None] + span)[:, None, None, :]
        out = self.photos[labels[:, None, None, None], torch.arange(CHANNELS)[None, :, None, None], rows, cols]
        return out if flip is None else torch.where(flip[:, None, None, None], out.flip(-1), out)

    def _corners(self, labels: Tensor, g: torch.Generator, heldout: bool) -> tuple[Tensor, Tensor]:
        """Uniform random corners inside the training region (or the held-out strip) of each label's photo."""
        first = self.heldout_from[labels] if heldout else torch.zeros_like(labels)
        last = (self.widths[labels] if heldout else self.heldout_from[labels]) - PATCH
        top = (torch.rand(len(labels), generator=g) * (self.heights[labels] - PATCH + 1)).long()
        left = first + (torch.rand(len(labels), generator=g) * (last - first + 1)).long()
        return top, left

    def train_batch(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` training patches (uniform class, position and horizontal flip) and their labels."""
        labels = torch.randint(N_CLASSES, (n,), generator=g)
        top, left = self._corners(labels, g, heldout=False)
        return self.crops(labels, top, left, torch.rand(n, generator=g) < 0.5), labels

    def fixed_set(self, per_class: int, seed: int, heldout: bool) -> tuple[Tensor, Tensor]:
        """A reproducible set of ``per_class`` unflipped patches a class from the training region or the held-out strip."""
        g = torch.Generator().manual_seed(seed)
        labels = balanced_labels(per_class * N_CLASSES)
        top, left = self._corners(labels, g, heldout)
        return self.crops(labels, top, left), labels


def load_patch_data(heldout_fraction: float = HELDOUT_FRACTION) -> PatchData:
    """The ten photos of :data:`PHOTOS` with the rightmost ``heldout_fraction`` of each photo's columns held out."""
    photos = [_load_photo(name) for name in PHOTOS]
    heights = torch.tensor([p.shape[1] for p in photos])
    widths = torch.tensor([p.shape[2] for p in photos])
    padded = torch.zeros(len(photos), CHANNELS, int(heights.max()), int(widths.max()))
    for i, p in enumerate(photos):
        padded[i, :, :p.shape[1], :p.shape[2]] = p
    heldout_from = widths - (widths * heldout_fraction).round().long()
    return PatchData(padded, heights, widths, heldout_from)


def balanced_labels(n: int) -> Tensor:
    """``n`` labels cycling through the classes (equal counts when :data:`N_CLASSES` divides ``n``)."""
    return torch.arange(n) % N_CLASSES


def train_reference(data: PatchData, per_class: int = 500) -> tuple[Tensor, Tensor]:
    """The fixed training-region patches (seed 1) every Fréchet distance is measured against."""
    return data.fixed_set(per_class, seed=1, heldout=False)


def heldout_patches(data: PatchData, per_class: int = 20) -> tuple[Tensor, Tensor]:
    """Fixed patches (seed 2) from the held-out strips, never seen in training: the FD floor and inversion targets."""
    return data.fixed_set(per_class, seed=2, heldout=True)


def sigma_data_of(x0: Tensor) -> float:
    """EDM's ``σ_data`` for data with a non-zero mean: the RMS pixel value ``√E[x0²]`` (as testbed 2)."""
    return float(x0.pow(2).mean().sqrt())


# ---------------------------------------------------------------------------------------------------------------------
# The U-Net


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class _ResBlock(nn.Module):
    """``h + conv(SiLU(norm(conv(SiLU(norm h))) · (1 + scale) + shift))`` with (scale, shift) from the noise-and-class
    embedding: the adaptive group norm of Dhariwal & Nichol 2021 (sec. 3); a 1×1 skip when the width changes."""

    def __init__(self, channels_in: int, channels_out: int, embedding: int):
        super().__init__()
        self.norm_in, self.conv_in = _norm(channels_in), nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.modulation = nn.Linear(embedding, 2 * channels_out)
        self.norm_out, self.conv_out = _norm(channels_out), nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Identity() if channels_in == channels_out else nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:
        r = self.conv_in(F.silu(self.norm_in(h)))
        scale, shift = self.modulation(embedding)[:, :, None, None].chunk(2, dim=1)
        r = self.conv_out(F.silu(self.norm_out(r) * (1 + scale) + shift))
        return self.skip(h) + r


class _SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual, output projection zero-initialised so a
    fresh block is the identity."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads, self.norm = heads, _norm(channels)
        self.qkv, self.proj = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        b, c, height, width = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, self.heads, c // self.heads, height * width).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, height, width)
        return h + self.proj(out)


class PatchUNet(LabelledDenoiser, nn.Module):
    """An x0-predicting U-Net for ``[B, 3, 32, 32]`` states with EDM preconditioning for ``x = a·x0 + σ·ε``:

        D(x, σ, c) = c_skip·x + c_out·F(c_in·x, c_noise, c)
        c_in = 1/√(a²σ_d² + σ²),  c_skip = a·σ_d²/(a²σ_d² + σ²),  c_out = σ·σ_d/√(a²σ_d² + σ²)

    (Karras et al. 2022, Table 1, signal scale s(t) = a), so ``D → x`` as σ → 0 whatever F is, and at flow's ``s = 1``
    (``a = 0``) D is ``σ_d·F``. ``c_noise = log(σ/a)/4`` (the VE level, clamped) enters through Fourier features, the class
    through an embedding whose last row is the null class; both modulate every residual block.

    F: the 32×32 input is folded 2×2 into 12 channels at 16×16 (pixel unshuffle, as a patch size of 2 in DiT, Peebles &
    Xie 2023: a CPU can train it in minutes), then widths ``(w, 2w)`` at 16 and 8 pixels with one residual block a level
    each way (skips concatenated), self-attention at 8×8 and an attention middle; the output convolution starts at 0.
    """

    def __init__(self, sigma_data: float, flow: bool, width: int = 64, embedding: int = 128):
        super().__init__()
        self.sigma_data, self.flow, self.n_classes = sigma_data, flow, N_CLASSES
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(6.0), persistent=False)
        self.noise_embedding = nn.Sequential(nn.Linear(2 * len(self.freqs) + 1, embedding), nn.SiLU(),
                                             nn.Linear(embedding, embedding))
        self.label = nn.Embedding(N_CLASSES + 1, embedding)
        folded = 4 * CHANNELS
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(folded, width, 3, padding=1))
        self.down_fine = _ResBlock(width, width, embedding)
        self.downsample = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down_coarse = _ResBlock(2 * width, 2 * width, embedding)
        self.down_attention = _SelfAttention(2 * width)
        self.middle = _ResBlock(2 * width, 2 * width, embedding)
        self.middle_attention = _SelfAttention(2 * width)
        self.up_coarse = _ResBlock(4 * width, 2 * width, embedding)
        self.up_attention = _SelfAttention(2 * width)
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(2 * width, width, 3, padding=1))
        self.up_fine = _ResBlock(2 * width, width, embedding)
        self.out = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv2d(width, folded, 3, padding=1), nn.PixelShuffle(2))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)
        self.to(memory_format=torch.channels_last)  # oneDNN's fast convolution layout on CPU (and tensor cores on GPU)
        self.train_seconds = self.final_loss = math.nan

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for levels ``[B]``, each ``[B, 1, 1, 1]`` (class doc)."""
        sigma = sigma[:, None, None, None]
        a = alpha(sigma, self.flow)
        var = (a * self.sigma_data) ** 2 + sigma**2
        c_noise = (sigma / a).clamp(1e-4, 1e4).log() / 4
        return a * self.sigma_data**2 / var, sigma * self.sigma_data * var.rsqrt(), var.rsqrt(), c_noise

    def network(self, x: Tensor, c_noise: Tensor, labels: Tensor) -> Tensor:
        """F: the raw U-Net on preconditioned input ``[B, 3, 32, 32]``, ``c_noise`` ``[B]`` and ``labels`` ``[B]``."""
        c_noise = c_noise[:, None]
        fourier = torch.cat([c_noise, (c_noise * self.freqs).sin(), (c_noise * self.freqs).cos()], -1)
        e = F.silu(self.noise_embedding(fourier) + self.label(labels))
        fine = self.down_fine(self.stem(x), e)
        coarse = self.down_attention(self.down_coarse(self.downsample(fine), e))
        h = self.middle_attention(self.middle(coarse, e))
        h = self.up_attention(self.up_coarse(torch.cat([h, coarse], 1), e))
        return self.out(self.up_fine(torch.cat([self.upsample(h), fine], 1), e))

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """x̂0 for ``x`` ``[B, 3, 32, 32]``, σ ``[B]`` and ``labels`` ``[B]`` (``N_CLASSES`` = unconditional)."""
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        network_input = (c_in * x).contiguous(memory_format=torch.channels_last)
        return c_skip * x + c_out * self.network(network_input, c_noise.flatten(), labels)

    def _labels(self, cls: Classes, batch: int) -> Tensor:
        """``[B]`` labels of a class choice; None is the null class."""
        if cls is None:
            return torch.full((batch,), N_CLASSES, device=self.label.weight.device)
        return torch.as_tensor(cls, device=self.label.weight.device).expand(batch)

    @torch.no_grad()
    def _predict(self, x: Tensor, sigma: Tensor | float, labels: Tensor, chunk: int = 256) -> Tensor:
        """Run the network in float32 on ``[B, ...]`` states (``chunk`` at a time), answer in the caller's dtype and shape."""
        device = self.label.weight.device
        images = x.reshape(x.shape[0], CHANNELS, PATCH, PATCH).to(device, torch.float32)
        levels = batch_levels(sigma, images).to(device, torch.float32)
        out = torch.cat([self(images[i:i + chunk], levels[i:i + chunk], labels[i:i + chunk])
                         for i in range(0, len(images), chunk)])
        return out.to(x.device, x.dtype).reshape(x.shape)



# ---------------------------------------------------------------------------------------------------------------------
# Training and the cache


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Weights that ship with the repository (for ``make demo`` on a fresh machine): read when the cache has none with the
same settings."""
SHIP_COMMAND = "OMP_NUM_THREADS=1 python -m bench.testbeds.patches --train --ship"


SHIPPED = ("patches_denoiser_eps", "patches_denoiser_flow", "patches_classifier")


def ship(name: str) -> Path:
    """Copy the cached network ``name`` (one of :data:`SHIPPED`, trained by :func:`train_all`) into :data:`SHIPPED_DIR`;
    the file keeps the cache's settings, loss and time and adds the command, seed and data that made it."""
    source = cache_path(None, name)
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    version = importlib.metadata.version("scikit-image")
    metadata |= {"command": SHIP_COMMAND, "seed": str(json.loads(metadata["settings"])["seed"]),
                 "data": f"scikit-image {version} bundled photos {', '.join(PHOTOS)}: random 32x32 crops left of the "
                         "held-out strip, flips"}
    SHIPPED_DIR.mkdir(exist_ok=True)
    target = SHIPPED_DIR / source.name
    save_file(tensors, str(target), metadata=metadata)
    return target


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _train_or_load(module: nn.Module, fit: Callable[[nn.Module], float], name: str, settings: dict,
                   cache_dir: str | Path | None) -> nn.Module:
    """Load ``module``'s weights from the cache when its settings match, else run ``fit`` (which returns the final loss)
    and cache them with the settings, final loss and seconds (temp name, then rename). Sets ``train_seconds`` and
    ``final_loss`` on the module."""
    path = cache_path(cache_dir, name)
    cached = read_cache(path, settings) or read_cache(SHIPPED_DIR / path.name, settings)
    if cached is not None:
        module.load_state_dict(cached[0])
        module.train_seconds = float(cached[1].get("train_seconds", "nan"))
        module.final_loss = float(cached[1].get("final_loss", "nan"))
        return module
    began = time.perf_counter()
    module.final_loss = fit(module)
    module.train_seconds = time.perf_counter() - began
    write_cache(path, module, settings, train_seconds=f"{module.train_seconds:.3f}", final_loss=f"{module.final_loss:.6f}",
                device=str(_device()), threads=str(torch.get_num_threads()))
    return module


def adam_steps(module: nn.Module, loss_of: Callable[[torch.Generator], Tensor], steps: int, lr: float, seed: int,
               warmup: int = 200, weight_decay: float = 0.0, log_every: int = 0) -> float:
    """Minimise ``loss_of(g)`` (each call draws its own batch from the seeded generator ``g``) with AdamW, a linear
    warm-up over ``warmup`` steps then cosine decay to 0; returns the mean loss of the last 10 % of steps."""
    g = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    lr_factor = lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * k / steps))  # noqa: E731
    learning_rate = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    tail, began = [], time.perf_counter()
    module.train()
    for k in range(steps):
        loss = loss_of(g)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        learning_rate.step()
        if k >= steps - max(1, steps // 10):
            tail.append(loss.detach())
        if log_every and (k + 1) % log_every == 0:
            print(f"    step {k + 1}/{steps}: loss {float(loss.detach()):.4f} ({time.perf_counter() - began:.0f} s)", flush=True)
    module.eval()
    return float(torch.stack(tail).mean())


@dataclass(frozen=True)
class DenoiserSettings:
    """Every setting that changes a :class:`PatchUNet`'s weights (stored in its cache file)."""

    flow: bool
    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    width: int = 64
    label_dropout: float = 0.1
    seed: int = 0


def log_normal_levels(n: int, flow: bool, g: torch.Generator) -> Tensor:
    """Training levels: VE ``ln σ ~ N(-1.2, 1.2²)`` clamped to [0.002, 80] (EDM, Karras et al. 2022, sec. 5); flow
    ``s = sigmoid(u)``, ``u ~ N(0, 1)`` (logit-normal, Esser et al. 2024, sec. 3.1), kept inside [0.001, 0.999]."""
    u = torch.randn(n, generator=g)
    return torch.sigmoid(u).clamp(1e-3, 1 - 1e-3) if flow else (-1.2 + 1.2 * u).exp().clamp(0.002, 80.0)


def denoising_loss(model: PatchUNet, x0: Tensor, labels: Tensor, g: torch.Generator, label_dropout: float) -> Tensor:
    """EDM's x0 loss (Karras et al. 2022, eq. 8) weighted ``1/c_out²`` (unit weight in F space) at :func:`log_normal_levels`,
    labels dropped to the null class at the given rate. Randomness is drawn on the CPU from ``g``, then moved."""
    device = model.label.weight.device
    sigma = log_normal_levels(x0.shape[0], model.flow, g)
    eps = torch.randn(x0.shape, generator=g)
    labels = torch.where(torch.rand(labels.shape, generator=g) < label_dropout, N_CLASSES, labels)
    x0, sigma, eps, labels = x0.to(device), sigma.to(device), eps.to(device), labels.to(device)
    s = sigma[:, None, None, None]
    x = alpha(s, model.flow) * x0 + s * eps
    _, c_out, _, _ = model.preconditioning(sigma)
    return ((model(x, sigma, labels) - x0) ** 2 / c_out**2).mean()


def train_or_load_denoiser(flow: bool, data: PatchData | None = None, cache_dir: str | Path | None = None,
                           log_every: int = 0, **settings) -> PatchUNet:
    """The cached :class:`PatchUNet` of one parametrisation (eps/VE or flow), trained first if needed, in eval mode on
    the CPU (move it with ``.to``). ``settings`` override :class:`DenoiserSettings`; the cache file
    ``patches_denoiser_{eps|flow}.safetensors`` is retrained when its recorded settings, data or :data:`VERSION` differ.
    ``train_seconds`` and ``final_loss`` (mean weighted loss of the last 10 % of steps) come from the cache when loaded."""
    data = data or load_patch_data()
    s = DenoiserSettings(flow=flow, **settings)
    sigma = sigma_data_of(train_reference(data)[0])
    model = seeded_init(lambda: PatchUNet(sigma, flow, s.width), s.seed)
    meta = dict(asdict(s), sigma_data=sigma, data=data.digest(), version=VERSION, kind="denoiser")

    def fit(m: nn.Module) -> float:
        m.to(_device())
        loss = adam_steps(m, lambda g: denoising_loss(m, *data.train_batch(s.batch, g), g, s.label_dropout),
                          s.steps, s.lr, s.seed, log_every=log_every)
        m.cpu()
        return loss

    return _train_or_load(model, fit, f"patches_denoiser_{'flow' if flow else 'eps'}", meta, cache_dir).eval()


def parameter_count(module: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------------------
# The classifier and the metrics


class PatchClassifier(nn.Module):
    """A small CNN ``32² → 16² → 8² →`` global average pool ``→ features → 10`` (class = source photo); :meth:`features`
    is the penultimate (post-activation) embedding used for Fréchet distances."""

    def __init__(self, width: int = 16, features: int = 64):
        super().__init__()

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                    _norm(c_out), nn.SiLU()]

        self.trunk = nn.Sequential(*stage(CHANNELS, width), nn.AvgPool2d(2), *stage(width, 2 * width), nn.AvgPool2d(2),
                                   *stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(4 * width, features), nn.SiLU())
        self.head = nn.Linear(features, N_CLASSES)
        self.to(memory_format=torch.channels_last)  # 4× faster training on a CPU than the default layout
        self.train_seconds = self.final_loss = math.nan

    def features(self, x: Tensor) -> Tensor:
        """The ``[B, features]`` embedding of patches ``[B, 3, 32, 32]`` (or flattened) in [-1, 1]."""
        device = self.head.weight.device
        images = x.reshape(x.shape[0], CHANNELS, PATCH, PATCH).to(device, torch.float32)
        return self.trunk(images.contiguous(memory_format=torch.channels_last))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, 10]``."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierSettings:
    """Every setting that changes a :class:`PatchClassifier`'s weights (stored in its cache file)."""

    steps: int = 1000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    width: int = 16
    features: int = 64
    input_noise: float = 0.05
    seed: int = 0


def train_or_load_classifier(data: PatchData | None = None, cache_dir: str | Path | None = None,
                             **settings) -> PatchClassifier:
    """The cached :class:`PatchClassifier` (cross-entropy on random training crops with flips and Gaussian input noise
    of std ``input_noise``, for robustness to sample artefacts), trained first if missing or its settings differ."""
    data = data or load_patch_data()
    s = ClassifierSettings(**settings)
    model = seeded_init(lambda: PatchClassifier(s.width, s.features), s.seed)
    meta = dict(asdict(s), data=data.digest(), version=VERSION, kind="classifier")

    def loss_of(g: torch.Generator) -> Tensor:
        x, labels = data.train_batch(s.batch, g)
        x = x + s.input_noise * torch.randn(x.shape, generator=g)
        return F.cross_entropy(model(x), labels.to(model.head.weight.device))

    def fit(m: nn.Module) -> float:
        m.to(_device())
        loss = adam_steps(m, loss_of, s.steps, s.lr, s.seed, warmup=50, weight_decay=s.weight_decay)
        m.cpu()
        return loss

    return _train_or_load(model, fit, "patches_classifier", meta, cache_dir).eval()


@torch.no_grad()
def embed(classifier: PatchClassifier, patches: Tensor, chunk: int = 512) -> Tensor:
    """The classifier's feature embedding ``[N, features]`` of ``patches`` in float64 on the CPU, ready for
    :func:`~bench.testbeds.common.frechet_distance`."""
    return torch.cat([classifier.features(patches[i:i + chunk]).double().cpu() for i in range(0, len(patches), chunk)])


@torch.no_grad()
def label_accuracy(classifier: PatchClassifier, patches: Tensor, labels: Tensor) -> float:
    """The fraction of ``patches`` that ``classifier`` assigns to their ``labels`` (argmax of the logits)."""
    logits = torch.cat([classifier(patches[i:i + 512]).cpu() for i in range(0, len(patches), 512)])
    return float((logits.argmax(-1) == labels).float().mean())


def fd_floor(classifier: PatchClassifier, data: PatchData, per_class: int = 20, heldout: bool = True) -> float:
    """A real-vs-real floor at the sample count of a set of ``per_class`` patches a class, against
    :func:`train_reference`: held-out patches (``heldout``: the generalisation floor, which includes the held-out strips'
    shift in content) or an independent draw from the training region (seed 3: the finite-sample floor alone)."""
    patches = heldout_patches(data, per_class)[0] if heldout else data.fixed_set(per_class, seed=3, heldout=False)[0]
    return frechet_distance(embed(classifier, patches), embed(classifier, train_reference(data)[0]))


def precision_recall(real_features: Tensor, fake_features: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1–3): the manifold of a set is the union of balls
    around its points with radius the distance to the k-th nearest neighbour within the set; precision is the fraction
    of fakes inside the real manifold, recall the fraction of reals inside the fake manifold. Use equal set sizes."""

    def covered(points: Tensor, support: Tensor) -> float:
        radii = torch.cdist(support, support).kthvalue(k + 1, dim=1).values  # +1: each point is its own 0-th neighbour
        return float((torch.cdist(points, support) <= radii[None, :]).any(1).double().mean())

    return covered(fake_features, real_features), covered(real_features, fake_features)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling, fine solves and inversion


def initial_noise(n: int, seed: int) -> Tensor:
    """Unit Gaussian noise ``[n, 3, 32, 32]`` in float64 from ``seed`` (scale by σ_max for VE, by 1 for flow)."""
    return torch.randn(n, CHANNELS, PATCH, PATCH, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def guided_denoiser(model: PatchUNet, labels: Tensor, scale: float) -> Denoiser:
    """CFG at ``scale`` for ``labels``; at scale 1 the conditional branch alone (the same prediction, half the calls)."""
    return model.denoiser(labels) if scale == 1 else guided(model.pair_denoiser(labels), scale)


def solve(denoiser: Denoiser, noise: Tensor, sigmas: Tensor, flow: bool) -> Tensor:
    """Deterministic Euler (DDIM) walk from unit ``noise`` scaled to ``sigmas[0]`` (VE) down ``sigmas``."""
    return ddim(denoiser, noise * (1.0 if flow else sigmas[0]), sigmas, flow)


def sample(model: PatchUNet, labels: Tensor, scale: float, steps: int = 20, seed: int = 0) -> Tensor:
    """``len(labels)`` samples ``[N, 3, 32, 32]`` (float32) by ``steps`` Euler steps on the bench's schedule
    (:func:`bench.kit.schedule`) with CFG at ``scale``, from :func:`initial_noise` of ``seed``."""
    return solve(guided_denoiser(model, labels, scale), initial_noise(len(labels), seed), schedule(steps, model.flow),
                 model.flow).float()


def fine_solve(denoiser: Denoiser, noise: Tensor, flow: bool, steps: int = 200) -> Tensor:
    """The reference end point of the probability-flow ODE from ``noise``: :func:`solve` on the same schedule family as
    the bench's samplers with ``steps`` Euler steps (its error shrinks as 1/steps)."""
    return solve(denoiser, noise, schedule(steps, flow), flow)


def solve_error(samples: Tensor, reference: Tensor) -> Tensor:
    """Per-sample RMS error ``[B]`` of end points against the :func:`fine_solve` from the same noise."""
    return (samples.double() - reference.double()).flatten(1).pow(2).mean(1).sqrt()


def reconstruction_psnr(model: PatchUNet, x0: Tensor, labels: Tensor, steps: int = 20, scale: float = 1.0,
                        eval_at: EvalAt = "auto") -> Tensor:
    """PSNR ``[B]`` (dB) of ``x0`` after DDIM inversion up the bench's schedule (:func:`samplers.core.inversion_sigmas`)
    and denoising back down it, both with CFG at ``scale``: the baseline every inversion method is compared with."""
    sigmas = schedule(steps, model.flow)
    denoiser = guided_denoiser(model, labels, scale)
    noise = ddim(denoiser, x0.double(), inversion_sigmas(sigmas, flow=model.flow), model.flow, eval_at)
    return psnr(x0, ddim(denoiser, noise, sigmas, model.flow))


# ---------------------------------------------------------------------------------------------------------------------
# Reports


def train_all(cache_dir: str | Path | None = None, log_every: int = 100) -> dict:
    """Train (or load) both denoiser twins and the classifier, printing each one's wall time and final loss."""
    data, out = load_patch_data(), {}
    for name, make in (("classifier", lambda: train_or_load_classifier(data, cache_dir)),
                       ("eps", lambda: train_or_load_denoiser(False, data, cache_dir, log_every)),
                       ("flow", lambda: train_or_load_denoiser(True, data, cache_dir, log_every))):
        print(f"{name}: training or loading ...", flush=True)
        model = make()
        out[name] = {"seconds": model.train_seconds, "final_loss": model.final_loss, "parameters": parameter_count(model)}
        print(f"{name}: {parameter_count(model):,} parameters, trained in {model.train_seconds:.1f} s, "
              f"final loss {model.final_loss:.4f}", flush=True)
    return out


def _save_grid(rows: dict[str, Tensor], path: Path) -> None:
    """A PNG of one row of patches a named set (one patch a class, columns = classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), N_CLASSES, figsize=(N_CLASSES * 1.1, len(rows) * 1.2), squeeze=False)
    for r, (name, patches) in enumerate(rows.items()):
        for c in range(N_CLASSES):
            axes[r, c].imshow(((patches[c].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(PHOTOS[c][:10], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_sample_grid(png: str | Path = CACHE_DIR.parent / "testbed4_samples.png", steps: int = 20,
                     scales: tuple[float, ...] = (1.0, 3.0), cache_dir: str | Path | None = None) -> Path:
    """A PNG of one patch a class: a training crop, a held-out patch, and a ``steps``-step Euler sample of each twin at
    each CFG scale (seed 0)."""
    data = load_patch_data()
    rows = {"train": train_reference(data, 1)[0], "held-out": heldout_patches(data, 1)[0]}
    for flow in (False, True):
        model = train_or_load_denoiser(flow, data, cache_dir).to(_device())
        for scale in scales:
            rows[f"{'flow' if flow else 'eps'} cfg {scale:g}"] = sample(model, balanced_labels(N_CLASSES), scale, steps)
    _save_grid(rows, Path(png))
    return Path(png)


def _twin_summary(flow: bool, data: PatchData, clf: PatchClassifier, reference: Tensor, per_class: int,
                  steps: tuple[int, ...], scales: tuple[float, ...], seeds: tuple[int, ...], cache_dir: str | Path | None,
                  n_fine: int = 20, fine_steps: int = 100) -> dict:
    """One twin's lines of :func:`summary`."""
    name, out = "flow" if flow else "eps", {}
    model = train_or_load_denoiser(flow, data, cache_dir).to(_device())
    print(f"{name}: {parameter_count(model):,} parameters, trained in {model.train_seconds:.1f} s, "
          f"final loss {model.final_loss:.4f}", flush=True)
    labels = balanced_labels(per_class * N_CLASSES)
    for n_steps in steps:
        for scale in scales:
            fds, accs, prs = [], [], []
            for seed in seeds:
                xs = sample(model, labels, scale, n_steps, seed)
                features = embed(clf, xs)
                fds.append(frechet_distance(features, reference))
                accs.append(label_accuracy(clf, xs, labels))
                prs.append(precision_recall(reference[:len(labels)], features))
            fd, key = torch.tensor(fds), f"{name}_{n_steps}steps_cfg{scale:g}"
            out[f"{key}_fd"], out[f"{key}_fd_std"], out[f"{key}_acc"] = float(fd.mean()), float(fd.std()), sum(accs) / len(accs)
            print(f"  {n_steps}-step Euler, cfg {scale:g}: FD {fd.mean():.3f} ± {fd.std():.3f} over {len(seeds)} seeds, "
                  f"label accuracy {out[f'{key}_acc']:.3f}, precision/recall {sum(p for p, _ in prs) / len(prs):.2f}/"
                  f"{sum(r for _, r in prs) / len(prs):.2f}", flush=True)
    fine_labels, noise = balanced_labels(n_fine), initial_noise(n_fine, seed=0)
    for scale in scales:
        denoiser = guided_denoiser(model, fine_labels, scale)
        fine = fine_solve(denoiser, noise, flow, fine_steps)
        errors = {n: float(solve_error(solve(denoiser, noise, schedule(n, flow), flow), fine).mean()) for n in steps}
        print(f"  RMS error to a {fine_steps}-step solve ({n_fine} samples), cfg {scale:g}: "
              + ", ".join(f"{n} steps {e:.4f}" for n, e in errors.items()), flush=True)
        out.update({f"{name}_{n}steps_cfg{scale:g}_solve_error": e for n, e in errors.items()})
    x0, x0_labels = heldout_patches(data, max(1, n_fine // N_CLASSES))
    for n_steps in steps:
        out[f"{name}_{n_steps}steps_psnr"] = float(reconstruction_psnr(model, x0, x0_labels, n_steps).mean())
        print(f"  DDIM inversion + reconstruction of {len(x0)} held-out patches, {n_steps} steps, cfg 1: "
              f"PSNR {out[f'{name}_{n_steps}steps_psnr']:.2f} dB", flush=True)
    return out


def summary(per_class: int = 20, steps: tuple[int, ...] = (10, 20), scales: tuple[float, ...] = (1.0, 3.0),
            seeds: tuple[int, ...] = (0, 1, 2), twins: tuple[bool, ...] = (False, True), cache_dir: str | Path | None = None,
            png: str | Path | None = CACHE_DIR.parent / "testbed4_samples.png") -> dict:
    """Print the classifier's cost and held-out accuracy, the FD floor and, per twin (``False``: eps, ``True``: flow),
    steps and CFG scale, FD (mean ± std over ``seeds``), label accuracy and k-NN precision/recall of ``per_class``
    Euler samples a class, the RMS error to a fine solve from the same noise and the PSNR of DDIM inversion; write
    :func:`save_sample_grid` to ``png`` (None: no picture)."""
    data = load_patch_data()
    clf = train_or_load_classifier(data, cache_dir)
    reference = embed(clf, train_reference(data)[0])
    test_x, test_y = heldout_patches(data, per_class)
    out = {"classifier_seconds": clf.train_seconds, "heldout_accuracy": label_accuracy(clf, test_x, test_y),
           "fd_floor": fd_floor(clf, data, per_class), "fd_floor_train_region": fd_floor(clf, data, per_class, False)}
    real_pr = precision_recall(reference[:len(test_y)], embed(clf, test_x))
    print(f"classifier: trained in {clf.train_seconds:.1f} s, final loss {clf.final_loss:.4f}, "
          f"held-out accuracy {out['heldout_accuracy']:.3f}")
    print(f"FD floor vs {len(reference)} training patches, at {len(test_y)} patches: held-out strips {out['fd_floor']:.3f}, "
          f"another training-region draw {out['fd_floor_train_region']:.3f}; held-out precision/recall "
          f"{real_pr[0]:.2f}/{real_pr[1]:.2f}", flush=True)
    for flow in twins:
        out.update(_twin_summary(flow, data, clf, reference, per_class, steps, scales, seeds, cache_dir))
    if png is not None:
        print(f"wrote {save_sample_grid(png, max(steps), scales, cache_dir)}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="only train (or load) the networks and print their cost")
    parser.add_argument("--ship", action="store_true", help="with --train: copy the networks to bench/weights (demo)")
    args = parser.parse_args()
    if args.train:
        began = time.perf_counter()
        train_all()
        print(f"total wall time {time.perf_counter() - began:.1f} s")
        for name in SHIPPED if args.ship else ():
            print(f"shipped {ship(name)}")
    else:
        summary()
