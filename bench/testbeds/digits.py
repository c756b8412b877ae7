"""Testbed 2 (docs/evaluation.md#testbed-2-digits): a class-conditional pixel-space diffusion model of scikit-learn's bundled 8×8
digits.

* Data: ``sklearn.datasets.load_digits`` (1,797 images, bundled, no download), pixels ``0…16`` scaled to ``[-1, 1]`` and
  flattened to 64 values (row-major 8×8), with a fixed stratified train / held-out split (1,500 / 297).
* Model: :class:`DigitsDenoiser`, testbed 1's :class:`~bench.testbeds.gmm.MLPDenoiser` (EDM preconditioning for
  ``x = a(σ)·x0 + σ·ε``, a null class for label dropout) with a deeper residual body, trained on the train split with
  label dropout so classifier-free guidance works. Two parametrisations (samplers/core.py): eps/VE (``a = 1``, ComfyUI's
  EPS sampling space) and its flow-matching twin (``a = 1 - s``, CONST); both answer x̂0.
* Metrics: a small MLP classifier (:class:`DigitsClassifier`) trained on the same split gives logits and a 64-d feature
  embedding: :func:`~bench.testbeds.common.frechet_distance` in that space (the FID recipe of Heusel et al. 2017 with a
  domain classifier), :func:`label_accuracy` of samples against their requested class, and
  :func:`~bench.testbeds.common.psnr` of reconstructions.

Every network is trained once on CPU (seeded, ≤ 2 threads) and kept in the testbeds' cache (bench/testbeds/common.py:
safetensors under ``bench/out/cache/`` with its settings; a missing file or different settings retrain it).
``python -m bench.testbeds.digits`` prints :func:`summary`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from samplers.core import alpha, guided
from samplers.inversion import ddim

from .common import cache_path, frechet_distance, log_uniform_levels, read_cache, seeded_init, torch_threads, write_cache
from .gmm import MLPDenoiser

VERSION = 1
"""Bumped when training code changes in a way the settings do not show: every cached network is then retrained."""
N_CLASSES = 10
DIM = 64
N_TEST = 297


# ---------------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed split: images ``[N, 64]`` float32 in ``[-1, 1]``, labels ``[N]`` long, and each image's row in
    ``load_digits()``."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_index: Tensor
    test_index: Tensor

    def digest(self) -> str:
        """A short hash of the training data, so a cached network is tied to the data it saw."""
        h = hashlib.sha256(self.train_x.numpy().tobytes())
        h.update(self.train_y.numpy().tobytes())
        return h.hexdigest()[:16]


def load_digits_split(n_test: int = N_TEST, seed: int = 0) -> DigitsSplit:
    """scikit-learn's bundled digits scaled by ``x/8 - 1`` to ``[-1, 1]``, split stratified by class with ``seed``.

    Deterministic: ``sklearn.model_selection.train_test_split`` with a fixed ``random_state`` on bundled data.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    train, test = train_test_split(torch.arange(len(y)).numpy(), test_size=n_test, stratify=y.numpy(), random_state=seed)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    return DigitsSplit(x[train], y[train], x[test], y[test], train, test)


# ---------------------------------------------------------------------------------------------------------------------
# Training, cached


def _train_or_load(module: nn.Module, fit: Callable[[nn.Module], None], name: str, settings: dict,
                   cache_dir: str | Path | None) -> float:
    """Load ``module``'s weights from the cache when its settings match, else run ``fit`` and cache; the training time."""
    path = cache_path(cache_dir, name)
    cached = read_cache(path, settings)
    if cached is not None:
        module.load_state_dict(cached[0])
        return float(cached[1].get("train_seconds", "nan"))
    began = time.perf_counter()
    fit(module)
    seconds = time.perf_counter() - began
    write_cache(path, module, settings, train_seconds=f"{seconds:.3f}")
    return seconds


def _batches(n: int, batch: int, steps: int, g: torch.Generator):
    """``steps`` index batches drawn without replacement inside each pass over ``n`` items (reshuffled every pass)."""
    order, at = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if at + batch > n:
            order, at = torch.randperm(n, generator=g), 0
        yield order[at:at + batch]
        at += batch


def _adam_loop(module: nn.Module, loss_of: Callable[[Tensor, torch.Generator], Tensor], n: int, steps: int, batch: int,
               lr: float, seed: int, threads: int, weight_decay: float = 0.0) -> None:
    """Minimise ``loss_of(indices)`` over minibatches of ``n`` items: Adam(W), cosine decay to 0, seeded, ``threads`` threads."""
    g = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    module.train()
    with torch_threads(threads):
        for idx in _batches(n, batch, steps, g):
            loss = loss_of(idx, g)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    module.eval()


# ---------------------------------------------------------------------------------------------------------------------
# The denoiser


class _ResidualBody(nn.Module):
    """``h ↦ W_out·SiLU(h_L)`` with ``h_{i+1} = h_i + MLP_i(LayerNorm(h_i))``: the body of :class:`DigitsDenoiser`."""

    def __init__(self, hidden: int, out: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
            for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out))

    def forward(self, h: Tensor) -> Tensor:
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class DigitsDenoiser(MLPDenoiser):
    """:class:`~bench.testbeds.gmm.MLPDenoiser` (same preconditioning, noise and class inputs, ``denoiser(cls)`` and
    ``pair_denoiser(cls)`` in samplers/core.py's conventions) with a residual body of ``depth`` blocks.

    States are ``[B, 64]`` (or ``[B, 1, 8, 8]``: any ``[B, ...]`` with 64 values); ``cls`` is None (unconditional), an
    int or a ``[B]`` tensor of labels. ``train_seconds`` is the training time (from the cache when loaded).
    """

    def __init__(self, sigma_data: float, flow: bool, hidden: int = 256, depth: int = 3):
        super().__init__(DIM, N_CLASSES, sigma_data, flow, cond=True, hidden=hidden)
        self.body = _ResidualBody(hidden, DIM, depth)
        self.train_seconds = math.nan


@dataclass(frozen=True)
class DenoiserSettings:
    """Every setting that changes a :class:`DigitsDenoiser`'s weights (stored in its cache file)."""

    flow: bool
    steps: int = 4000
    batch: int = 256
    lr: float = 1e-3
    hidden: int = 256
    depth: int = 3
    label_dropout: float = 0.15
    seed: int = 0
    threads: int = 1


def sigma_data_of(x0: Tensor) -> float:
    """EDM's ``σ_data`` for data with a non-zero mean: the RMS pixel value ``√E[x0²]``, the size of x̂0 that
    ``c_skip·x + c_out·F`` must produce (≈0.81 for digits in [-1, 1], mostly background at -1)."""
    return float(x0.pow(2).mean().sqrt())


def denoising_loss(model: MLPDenoiser, x0: Tensor, labels: Tensor, g: torch.Generator, label_dropout: float) -> Tensor:
    """EDM's x0 loss (Karras et al. 2022, eq. 8) weighted ``1/c_out²`` (unit weight in F space), levels drawn as for testbed
    1's MLP (:func:`~bench.testbeds.common.log_uniform_levels`: VE σ log-uniform on [0.002, 80], flow s uniform), labels
    dropped to the null class at the given rate."""
    sigma = log_uniform_levels(x0.shape[0], model.flow, g)
    a = alpha(sigma, model.flow)[:, None]
    x = a * x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
    labels = torch.where(torch.rand(labels.shape, generator=g) < label_dropout, model.n_classes, labels)
    var = (a * model.sigma_data) ** 2 + sigma[:, None] ** 2
    weight = var / (sigma[:, None] * model.sigma_data) ** 2
    return (weight * (model(x, sigma, labels) - x0) ** 2).mean()


def train_or_load_denoiser(flow: bool, split: DigitsSplit | None = None, cache_dir: str | Path | None = None,
                           **settings) -> DigitsDenoiser:
    """The cached :class:`DigitsDenoiser` of one parametrisation (eps/VE or flow), trained first if needed.

    ``settings`` override :class:`DenoiserSettings` (e.g. ``steps`` for a short test budget); the cache file
    ``digits_denoiser_{eps|flow}.safetensors`` is retrained when its recorded settings, data or :data:`VERSION` differ.
    """
    split = split or load_digits_split()
    s = DenoiserSettings(flow=flow, **settings)
    sigma = sigma_data_of(split.train_x)
    model = seeded_init(lambda: DigitsDenoiser(sigma, flow, s.hidden, s.depth), s.seed)
    meta = dict(asdict(s), sigma_data=sigma, data=split.digest(), version=VERSION, kind="denoiser")

    def fit(m: nn.Module) -> None:
        _adam_loop(m, lambda idx, g: denoising_loss(m, split.train_x[idx], split.train_y[idx], g, s.label_dropout),
                   len(split.train_y), s.steps, s.batch, s.lr, s.seed, s.threads)

    model.train_seconds = _train_or_load(model, fit, f"digits_denoiser_{'flow' if flow else 'eps'}", meta, cache_dir)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# The classifier and the metrics


class DigitsClassifier(nn.Module):
    """A small MLP ``64 → hidden → features → 10``; :meth:`features` is the penultimate (post-activation) embedding."""

    def __init__(self, hidden: int = 256, features: int = 64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(DIM, hidden), nn.SiLU(), nn.Linear(hidden, features), nn.SiLU())
        self.head = nn.Linear(features, N_CLASSES)
        self.train_seconds = math.nan

    def features(self, x: Tensor) -> Tensor:
        """The ``[B, features]`` embedding of images ``[B, ...]`` (64 values each, in [-1, 1])."""
        return self.trunk(x.reshape(x.shape[0], DIM).float())

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, 10]``."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierSettings:
    """Every setting that changes a :class:`DigitsClassifier`'s weights (stored in its cache file)."""

    steps: int = 1500
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-2
    hidden: int = 256
    features: int = 64
    input_noise: float = 0.1
    seed: int = 0
    threads: int = 1


def train_or_load_classifier(split: DigitsSplit | None = None, cache_dir: str | Path | None = None,
                             **settings) -> DigitsClassifier:
    """The cached :class:`DigitsClassifier` (cross-entropy on the train split, Gaussian input noise of std
    ``input_noise`` for robustness to sample artefacts), trained first if the cache is missing or its settings differ."""
    split = split or load_digits_split()
    s = ClassifierSettings(**settings)
    model = seeded_init(lambda: DigitsClassifier(s.hidden, s.features), s.seed)
    meta = dict(asdict(s), data=split.digest(), version=VERSION, kind="classifier")

    def loss_of(idx: Tensor, g: torch.Generator) -> Tensor:
        x = split.train_x[idx]
        x = x + s.input_noise * torch.randn(x.shape, generator=g)
        return nn.functional.cross_entropy(model(x), split.train_y[idx])

    model.train_seconds = _train_or_load(
        model, lambda m: _adam_loop(m, loss_of, len(split.train_y), s.steps, s.batch, s.lr, s.seed, s.threads,
                                    s.weight_decay), "digits_classifier", meta, cache_dir)
    return model


@torch.no_grad()
def label_accuracy(classifier: DigitsClassifier, samples: Tensor, labels: Tensor) -> float:
    """The fraction of ``samples`` that ``classifier`` assigns to their requested ``labels`` (argmax of the logits)."""
    return float((classifier(samples).argmax(-1) == labels).float().mean())


@torch.no_grad()
def embed(classifier: DigitsClassifier, samples: Tensor) -> Tensor:
    """The classifier's feature embedding of ``samples`` in float64, ready for :func:`frechet_distance`."""
    return classifier.features(samples).double()


# ---------------------------------------------------------------------------------------------------------------------
# Sampling and the quick report


def balanced_labels(n: int) -> Tensor:
    """``n`` labels cycling through the 10 classes (equal counts when 10 divides ``n``)."""
    return torch.arange(n) % N_CLASSES


def sampling_schedule(steps: int, flow: bool) -> Tensor:
    """The bench's default levels (bench/inversion.py: Karras σ 14.6 → 0.03 then 0 for VE, uniform 1 → 0 for flow)."""
    from ..inversion import schedule

    return schedule(steps, flow)


def sample(model: DigitsDenoiser, labels: Tensor, scale: float, steps: int = 20, seed: int = 0) -> Tensor:
    """``len(labels)`` samples ``[N, 64]`` by deterministic Euler (DDIM) steps with CFG at ``scale``, from seeded noise."""
    sigmas = sampling_schedule(steps, model.flow)
    noise = torch.randn(len(labels), DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = noise * (1.0 if model.flow else sigmas[0])
    return ddim(guided(model.pair_denoiser(labels), scale), x, sigmas, model.flow).float()


@torch.no_grad()
def x0_mse(model: DigitsDenoiser, x0: Tensor, labels: Tensor | None, sigma: float, seed: int = 0) -> float:
    """Mean squared x̂0 error per pixel of ``model`` at level σ on ``x0`` (cond on ``labels``; None: unconditional)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = (1 - sigma if model.flow else 1.0) * x0 + sigma * eps
    return float((model.denoiser(labels)(x, torch.tensor(sigma)) - x0).pow(2).mean())


def summary(n_samples: int = 2000, steps: int = 20, scales: tuple[float, ...] = (1.0, 3.0), cache_dir: str | Path | None = None,
            ) -> dict:
    """Train or load every network and print training times, x̂0 MSE per σ, the real-vs-real FD floor and, per
    parametrisation and CFG scale, FD (samples vs train features) and label accuracy of ``n_samples`` Euler samples."""
    split = load_digits_split()
    clf = train_or_load_classifier(split, cache_dir)
    train_features = embed(clf, split.train_x)
    out = {"classifier_seconds": clf.train_seconds, "heldout_accuracy": label_accuracy(clf, split.test_x, split.test_y),
           "fd_floor": frechet_distance(embed(clf, split.test_x), train_features)}
    print(f"classifier: trained in {out['classifier_seconds']:.1f} s, held-out accuracy {out['heldout_accuracy']:.3f}")
    print(f"real-vs-real FD floor (held-out {len(split.test_y)} vs train {len(split.train_y)}): {out['fd_floor']:.3f}")
    labels = balanced_labels(n_samples)
    for flow in (False, True):
        name = "flow" if flow else "eps"
        model = train_or_load_denoiser(flow, split, cache_dir)
        print(f"{name}: trained in {model.train_seconds:.1f} s")
        grid = (0.1, 0.25, 0.5, 0.75, 0.9) if flow else (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
        for sigma in grid:
            cond, uncond = (x0_mse(model, split.test_x, c, sigma) for c in (split.test_y, None))
            print(f"  x0 MSE (held-out) at sigma {sigma:5.2f}: cond {cond:.4f}  uncond {uncond:.4f}")
            out[f"{name}_mse_{sigma}"] = cond
        for scale in scales:
            xs = sample(model, labels, scale, steps)
            fd, acc = frechet_distance(embed(clf, xs), train_features), label_accuracy(clf, xs, labels)
            fd_small = frechet_distance(embed(clf, xs[:len(split.test_y)]), train_features)
            out[f"{name}_fd_cfg{scale:g}"], out[f"{name}_acc_cfg{scale:g}"] = fd, acc
            print(f"  {n_samples} samples, {steps}-step Euler, cfg {scale:g}: FD {fd:.3f}  label accuracy {acc:.3f}"
                  f"  (FD of the first {len(split.test_y)}, the floor's sample size: {fd_small:.3f})")
    return out


if __name__ == "__main__":
    summary()
