"""VRG: Variance-Reduction Guidance (Xu, Liu, Kong 2025, "Variance-Reduction Guidance: Sampling Trajectory Optimization
for Diffusion Models", arXiv 2510.21792, ICME 2025).

A model's prediction error is measured once as a function of the noise level (its *error profile*). A deterministic
DDIM/Euler run whose per-step noise errors are independent with variance ``mse_eps(σ_i)`` ends with an error of
per-dimension variance, the cumulative prediction error (CPE):

    CPE = Σ_i (σ_i - σ_{i-1})²·mse_eps(σ_i) = Σ_i (1 - σ_{i-1}/σ_i)²·mse_x0(σ_i),   mse_eps = mse_x0/σ²

VRG moves the levels of a given schedule, each step's ᾱ ratio inside a small trust region, so that the CPE drops: same
step count, no extra model call. It never looks at the discretisation error, which is why the trust region matters.

Conventions (METHODS.md "VRG"):

* A schedule is ComfyUI's SIGMAS, descending. Every level but the last is a model call; the last is where the run lands
  (0 for a full schedule; above 0 for the first part of a SplitSigmas). It plays σ_{-1} in the sum, so the CPE of a
  split schedule is the sum of the CPEs of its parts.
* Levels are VE σ for EPS/V models and s for flow (CONST) models; the formulas run on ``σ_ve = s/(1-s)``
  (:func:`samplers.core.ve_sigma`). A flow model's x̂0 at s is the VE model's at σ_ve and its own noise error
  ``(x̂0 - x0)·(1-s)/s`` equals the VE one, so ``mse_x0`` and ``mse_eps = mse_x0/σ_ve²`` mean the same in both. At
  ``s = 1`` (σ_ve = ∞) the top term is ``mse_x0(1)``: finite, and untouched by any schedule change.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .core import Denoiser, check_sigmas, noise_to, ve_sigma

PROFILE_FORMAT = "error_control_samplers.vrg_profile"
PROFILE_FORMAT_VERSION = 1
_TENSORS = ("sigmas", "mse_x0")

_EDGE = 1e-3
"""Each ratio stops this fraction short of its trust-region edge: tanh reaches exactly ±1 in float64 once |f| > 19, and a
ratio of exactly 1 (or 0) would merge two levels (or send one to ∞)."""


def _kind(flow: bool) -> str:
    return "flow (CONST)" if flow else "eps/v"


def _check_grid(sigmas: Tensor, flow: bool, where: str, name: str) -> None:
    """A profile grid: strictly ascending, finite, > 0, and at most 1 for flow."""
    check_sigmas(sigmas, where, name, ascending=True)
    if sigmas[0] <= 0:
        raise ValueError(f"{where}: '{name}' must be > 0 everywhere (the profile is interpolated in log σ); "
                         f"got {float(sigmas[0])}. Start the grid at the model's smallest level, e.g. sigma_min.")
    if flow and sigmas[-1] > 1:
        raise ValueError(f"{where}: '{name}' goes up to {float(sigmas[-1])}, but flow levels s lie in (0, 1]. "
                         "Pass flow=False for an eps/v model, or cap the grid at 1.")


@dataclass(eq=False)
class ErrorProfile:
    """A model's prediction error as a function of its noise level: VRG's calibration (METHODS.md "VRG").

    ``sigmas`` is the ascending grid in the model's own parametrisation (VE σ for EPS/V, s for flow), ``mse`` the
    per-dimension ``mse_x0`` measured at each grid point. The rest records what the profile was made for: ``model``
    (family/fingerprint the node layer matches profiles by), ``batch_size`` (clean latents measured), ``seed`` (of the
    noise bank), ``conditioning`` (e.g. "empty prompt, cfg 1"), ``latent_shape`` (one latent) and ``pack_version``.
    Tensors are kept as float64 on the CPU.
    """

    sigmas: Tensor
    mse: Tensor
    flow: bool = False
    model: str = ""
    batch_size: int = 0
    seed: int = 0
    conditioning: str = ""
    latent_shape: tuple[int, ...] = ()
    pack_version: str = ""

    def __post_init__(self) -> None:
        self.sigmas = torch.as_tensor(self.sigmas).detach().to("cpu", torch.float64).contiguous()
        self.mse = torch.as_tensor(self.mse).detach().to("cpu", torch.float64).contiguous()
        self.latent_shape = tuple(int(n) for n in self.latent_shape)
        _check_grid(self.sigmas, self.flow, "ErrorProfile", "sigmas")
        if self.mse.shape != self.sigmas.shape:
            raise ValueError(f"ErrorProfile: 'mse' has shape {tuple(self.mse.shape)} but 'sigmas' has "
                             f"{tuple(self.sigmas.shape)}; give one mse_x0 per grid point.")
        bad = ~(torch.isfinite(self.mse) & (self.mse > 0))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"ErrorProfile: mse_x0 must be finite and > 0 at every grid point; got "
                             f"{float(self.mse[i])} at σ={float(self.sigmas[i])}. A real model never predicts x0 "
                             "exactly, nor NaN: check the denoiser and the clean latents, then calibrate again.")

    def _lookup(self, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``mse_x0`` at the levels ``sigma`` and its log-log slope ``d log mse_x0 / d log σ`` (0 where clamped).

        Linear in log σ on log mse_x0, written as ``mse_j·exp(w·Δ_j)`` so that every grid point (w = 0) is returned
        bit-exactly; below/above the grid the end values hold.
        """
        grid, mse = self.sigmas.numpy(), self.mse.numpy()
        log_grid = np.log(grid)
        step = np.append(np.diff(log_grid), 1.0)  # the padded last segment only ever sees w = 0
        rise = np.append(np.diff(np.log(mse)), 0.0)
        x = np.log(np.clip(sigma, grid[0], grid[-1]))
        j = np.clip(np.searchsorted(log_grid, x, side="right") - 1, 0, len(grid) - 1)
        w = (x - log_grid[j]) / step[j]
        inside = (sigma > grid[0]) & (sigma < grid[-1])
        return mse[j] * np.exp(w * rise[j]), np.where(inside, rise[j] / step[j], 0.0)

    def mse_x0(self, sigma: Tensor) -> Tensor:
        """Per-dimension ``E|D(x_σ, σ) - x0|²`` at levels ``sigma`` (any shape, the model's parametrisation).

        Interpolated linearly in log σ on log mse_x0 (METHODS.md), exact at grid points, clamped outside the grid.
        Returned like ``sigma`` (device; dtype when floating, else float64).
        """
        sigma = torch.as_tensor(sigma)
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        value, _ = self._lookup(sigma.detach().to("cpu", torch.float64).numpy())
        return torch.from_numpy(value).to(sigma.device, dtype)

    def mse_eps(self, sigma: Tensor) -> Tensor:
        """The noise-prediction error ``mse_x0/σ_ve²`` (the paper's table), VE σ of flow levels via ``ve_sigma``.

        It is the same for a flow model's own ε̂ (module doc); ∞ at σ = 0 and 0 at s = 1.
        """
        sigma = torch.as_tensor(sigma)
        return self.mse_x0(sigma) / ve_sigma(sigma.to(torch.float64), self.flow).to(sigma.device) ** 2

    def _metadata(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("sigmas", "mse")}

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as safetensors with JSON metadata, atomically (temp file in the same folder, then rename)."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(prefix=".vrg-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            save_file({"sigmas": self.sigmas, "mse_x0": self.mse}, tmp, metadata={
                "format": PROFILE_FORMAT, "format_version": str(PROFILE_FORMAT_VERSION),
                "profile": json.dumps(self._metadata(), sort_keys=True)})
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> ErrorProfile:
        """Read a profile written by :meth:`save`. Never unpickles; a corrupt or foreign file raises ``ValueError``."""
        path = os.fspath(path)
        fix = "Pick a profile written by VRG Calibrate, or calibrate again."
        try:
            with safe_open(path, framework="pt") as f:
                meta, keys = f.metadata() or {}, set(f.keys())
                if meta.get("format") != PROFILE_FORMAT:
                    raise ValueError(f"ErrorProfile.load: {path} is a safetensors file but not a VRG error profile. {fix}")
                if meta.get("format_version") != str(PROFILE_FORMAT_VERSION):
                    raise ValueError(f"ErrorProfile.load: {path} has profile format version {meta.get('format_version')!r}; "
                                     f"this pack reads version {PROFILE_FORMAT_VERSION}. Update the pack or calibrate again.")
                if keys != set(_TENSORS):
                    raise ValueError(f"ErrorProfile.load: {path} holds tensors {sorted(keys)}, expected {list(_TENSORS)}. {fix}")
                sigmas, mse = (f.get_tensor(k) for k in _TENSORS)
        except SafetensorError as e:
            raise ValueError(f"ErrorProfile.load: {path} is not a readable safetensors file ({e}). {fix}") from e
        try:
            info = json.loads(meta.get("profile", ""))
            known = {f.name for f in fields(cls)} - {"sigmas", "mse"}
            if not isinstance(info, dict) or set(info) != known or not isinstance(info["flow"], bool):
                raise ValueError(f"metadata fields {sorted(info) if isinstance(info, dict) else info!r}")
            if sigmas.ndim != 1 or not sigmas.dtype.is_floating_point or not mse.dtype.is_floating_point:
                raise ValueError(f"tensor shapes/dtypes {tuple(sigmas.shape)} {sigmas.dtype}, {tuple(mse.shape)} {mse.dtype}")
            return cls(sigmas=sigmas, mse=mse, **info)
        except (ValueError, TypeError) as e:
            raise ValueError(f"ErrorProfile.load: {path} is a damaged VRG error profile: {e}. {fix}") from e


def _check_profile(profile: ErrorProfile, flow: bool, where: str) -> None:
    if profile.flow != flow:
        raise ValueError(f"{where}: profile made for {_kind(profile.flow)} model, used with a {_kind(flow)} model. "
                         "Calibrate this model with VRG Calibrate, or pick the profile made for it.")


def default_sigma_grid(sigma_min: float, sigma_max: float, points: int = 64, flow: bool = False) -> Tensor:
    """``points`` levels log-spaced from ``sigma_min`` to ``sigma_max`` (both exact), float64: a calibration grid.

    Log spacing in the model's own level, as the profile is interpolated (METHODS.md: 64–128 points over the model's
    σ range). For flow the levels are s ∈ (0, 1]; s = 1 itself may be on the grid.
    """
    if points < 2:
        raise ValueError(f"default_sigma_grid: 'points' must be >= 2, got {points}.")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"default_sigma_grid: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    grid = torch.linspace(np.log(sigma_min), np.log(sigma_max), points, dtype=torch.float64).exp()
    grid[0], grid[-1] = sigma_min, sigma_max
    _check_grid(grid, flow, "default_sigma_grid", "sigma_max")
    return grid


def measure_error_profile(denoiser: Denoiser, x0: Tensor, sigma_grid: Tensor, generator: torch.Generator,
                          flow: bool = False, batch_size: int | None = None,
                          callback: Callable[[int, int], None] | None = None) -> ErrorProfile:
    """Measure ``mse_x0(σ) = mean((D(a(σ)·x0 + σ·ε, σ) - x0)²)`` over ``x0`` and all dims at each level of ``sigma_grid``.

    The error profile of VRG (METHODS.md "VRG", calibration). One noise bank ε, drawn once from ``generator``, serves
    every level: common random numbers make the curve smooth in σ. ``x0`` is ``[B, ...]`` clean latents;
    ``batch_size`` caps the latents per denoiser call (default: all); ``callback(done, total)`` runs after each grid
    level (progress, interrupt). Squared errors are summed in float64. The metadata the caller knows (model,
    conditioning, pack version) goes in with ``dataclasses.replace``.
    """
    if x0.ndim < 1 or x0.numel() == 0:
        raise ValueError(f"measure_error_profile: input 'x0' is empty (shape {tuple(x0.shape)}). Give at least one "
                         "clean latent: VAE-encode an image, or generate one with many steps.")
    _check_grid(sigma_grid, flow, "measure_error_profile", "sigma_grid")
    batch_size = batch_size or x0.shape[0]
    if batch_size < 1:
        raise ValueError(f"measure_error_profile: 'batch_size' must be >= 1, got {batch_size}.")
    noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
    totals = []
    for i, sigma in enumerate(sigma_grid.tolist()):
        total = torch.zeros((), dtype=torch.float64, device=x0.device)
        for start in range(0, x0.shape[0], batch_size):
            clean, eps = x0[start:start + batch_size], noise[start:start + batch_size]
            level = torch.full((clean.shape[0],), sigma, dtype=x0.dtype, device=x0.device)
            total += (denoiser(noise_to(clean, eps, level, flow), level).double() - clean.double()).square().sum()
        totals.append(total)
        if callback is not None:
            callback(i + 1, len(sigma_grid))
    return ErrorProfile(sigmas=sigma_grid, mse=torch.stack(totals).cpu() / x0.numel(), flow=flow,
                        batch_size=x0.shape[0], seed=generator.initial_seed(), latent_shape=tuple(x0.shape[1:]))


def _levels(sigmas: Tensor, flow: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Model-call levels clean→noisy in the model's parametrisation and in VE, and the VE level the run lands on."""
    own = sigmas.detach().to("cpu", torch.float64)
    return own[:-1].flip(0).numpy(), ve_sigma(own[:-1].flip(0), flow).numpy(), float(ve_sigma(own[-1:], flow))


def _cpe(own: np.ndarray, ve: np.ndarray, ve_end: float, profile: ErrorProfile) -> tuple[float, np.ndarray]:
    """CPE = Σ_i (1 - σ_{i-1}/σ_i)²·mse_x0(σ_i) over VE levels ``ve`` (clean→noisy, σ_{-1} = ``ve_end``), and ∂CPE/∂σ_i.

    The x0 form of the paper's objective (METHODS.md): finite at σ = ∞ (flow s = 1), where the gradient is 0.
    """
    below = np.concatenate(([ve_end], ve[:-1]))
    gap = 1.0 - below / ve
    mse, slope = profile._lookup(own)
    term = gap**2 * mse
    # σ_i enters term i through the gap and the profile (d log s/d log σ_ve = 1 - s for flow), and term i+1 as its σ_{i-1}.
    d_log_own = 1.0 - own if profile.flow else 1.0
    grad = (2.0 * gap * mse * below / ve + term * slope * d_log_own) / ve
    grad[:-1] -= 2.0 * gap[1:] * mse[1:] / ve[1:]
    return float(term.sum()), grad


def cumulative_error(sigmas: Tensor, profile: ErrorProfile, flow: bool = False) -> Tensor:
    """The cumulative prediction error of a schedule (Xu et al. 2025; METHODS.md "VRG"), a float64 scalar tensor.

    ``CPE = Σ_i (1 - σ_{i-1}/σ_i)²·mse_x0(σ_i) = Σ_i (σ_i - σ_{i-1})²·mse_eps(σ_i)`` in VE levels over the model calls
    of the descending ``sigmas``, with σ_{-1} its final value: the per-dimension variance of the final error of a
    DDIM/Euler run whose noise errors are independent across steps.
    """
    check_sigmas(sigmas, "cumulative_error")
    _check_profile(profile, flow, "cumulative_error")
    own, ve, ve_end = _levels(sigmas, flow)
    with np.errstate(invalid="ignore"):  # the gradient's ∞/∞ at a flow top s = 1 is not needed here
        value, _ = _cpe(own, ve, ve_end, profile)
    return torch.tensor(value, dtype=torch.float64, device=sigmas.device)


@dataclass
class _Base:
    """The input schedule as per-step ratios ``a_i = ᾱ_i/ᾱ_{i-1}``, kept as ``u_i = 1 - a_i`` (exact for tiny steps)."""

    u: np.ndarray  # 1 - a_base_i over the optimised steps, clean→noisy
    radius: np.ndarray  # trust region of a_i
    log_end: float  # log(1 + σ_end²) = -log ᾱ_end
    log_top: float  # -log ᾱ of the highest optimised level, in the input
    fixed_top: bool  # keep log_top exactly (by the shift of _shift) or pull towards it (anchor)
    own_top: float | None  # a flow level s = 1 above the optimised ones: fixed, constant CPE term


def _base(sigmas: Tensor, flow: bool, lp: float, fix_sigma_max: bool) -> _Base:
    own, ve, ve_end = _levels(sigmas, flow)
    own_top = None
    if np.isinf(ve[-1]):  # flow s = 1: a_top = ᾱ_top/ᾱ_prev = 0, lp_top = 0, so the top level cannot move
        own_top, ve = float(own[-1]), ve[:-1]
    log_levels = np.log1p(np.concatenate(([ve_end], ve)) ** 2)
    u = -np.expm1(-np.diff(log_levels))
    radius = (1.0 - _EDGE) * np.minimum(lp, np.minimum(u, 1.0 - u))
    return _Base(u, radius, float(log_levels[0]), float(log_levels[-1]), fix_sigma_max or own_top is not None, own_top)


def _schedule(z: np.ndarray, base: _Base, flow: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Levels from ratios ``a_i = a_base_i + lp_i·tanh(z_i)``: ``log(1+σ_i²) = log(1+σ_end²) - Σ_{j<=i} log a_j``."""
    t = np.tanh(z)
    u = base.u - base.radius * t
    log_levels = base.log_end + np.cumsum(-np.log1p(-u))
    ve2 = np.expm1(log_levels)
    ve = np.sqrt(ve2)
    return (ve / (1.0 + ve) if flow else ve), ve, t, u


def _shift(f: np.ndarray, base: _Base, c: float) -> float:
    """The common shift c with Σ_i -log a_i(f_i + c) = log ᾱ_end - log ᾱ_top: the chain ends exactly on the fixed top.

    Σ -log a_i decreases strictly in c, from ≥ the target at c = -max f to ≤ it at c = -min f (there every
    ratio is above/below its base), so Newton's method inside that bracket, bisecting when it would leave it, converges.
    Every ratio stays inside its own trust region whatever c is.
    """
    target = base.log_top - base.log_end
    lo, hi = -f.max(), -f.min()
    c = min(max(c, lo), hi)
    for _ in range(100):
        t = np.tanh(f + c)
        u = base.u - base.radius * t
        excess = -np.log1p(-u).sum() - target
        if abs(excess) <= 1e-13 * target or hi - lo <= 1e-15 * (1.0 + abs(c)):
            break
        lo, hi = (c, hi) if excess > 0 else (lo, c)
        slope = -(base.radius * (1.0 - t * t) / (1.0 - u)).sum()
        step = c - excess / slope if slope < 0 else lo - 1.0
        c = step if lo < step < hi else 0.5 * (lo + hi)
    return c


def _objective(f: np.ndarray, base: _Base, profile: ErrorProfile, anchor_weight: float, flow: bool,
               c: float) -> tuple[float, np.ndarray, float, np.ndarray]:
    """Loss = CPE + λ·(ᾱ_top - ᾱ_top_base)² (METHODS.md) and its gradient in ``f``; also the shift used and the levels.

    With the top fixed, the loss is taken at ``z = f + c(f)``: the gradient is projected by the implicit function
    theorem, ``dL/df = g - q·Σg/Σq`` with ``q = ∂(-log a)/∂z``, and the anchor term is identically 0.
    """
    if base.fixed_top and base.own_top is None:
        c = _shift(f, base, c)
    own, ve, t, u = _schedule(f + c, base, flow)
    loss, g_ve = _cpe(own, ve, np.expm1(base.log_end) ** 0.5, profile)
    g_log = g_ve * (1.0 + ve**2) / (2.0 * ve)  # d σ / d log(1+σ²)
    if not base.fixed_top:
        gap = np.exp(-(base.log_end + np.cumsum(-np.log1p(-u)))[-1]) - np.exp(-base.log_top)
        loss += anchor_weight * gap**2
        g_log[-1] -= 2.0 * anchor_weight * gap * np.exp(-base.log_top - 0.0) * 0 + 2.0 * anchor_weight * gap * (
            gap + np.exp(-base.log_top))
    if base.own_top is not None:
        loss += float(profile._lookup(np.array([base.own_top]))[0][0])  # (1 - σ_prev/∞)²·mse_x0(1)
    g_log_ratio = np.cumsum(g_log[::-1])[::-1]  # log(1+σ_i²) sums -log a_j over j <= i
    dz = -base.radius * (1.0 - t * t) / (1.0 - u)  # d(-log a)/dz
    g = g_log_ratio * dz
    if base.fixed_top and base.own_top is None:
        g = g - dz * g.sum() / dz.sum()
    return loss, g, c, own
