"""VRG (samplers.vrg): CPE identities, the trust-region optimiser, the measured profile and its file, EPS and flow."""

import pytest
import torch

from bench.inversion import schedule as karras_or_uniform
from samplers import core, vrg


def realistic_profile(flow: bool) -> vrg.ErrorProfile:
    """ε error large at small σ and small at large σ, as measured on real models (paper Fig. 2)."""
    grid = vrg.default_sigma_grid(0.005, 0.999 if flow else 20.0, 64)
    sigma_ve = core.ve_sigma(grid, flow)
    return vrg.ErrorProfile(grid, (0.05 + 0.5 / (1 + sigma_ve / 0.1)) * sigma_ve**2, flow)


def random_schedule(steps: int, flow: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    top = 0.98 if flow else 14.6
    levels = (torch.rand(steps, generator=g, dtype=torch.float64) * 0.999 + 0.001).sort(descending=True).values * top
    return torch.cat([levels, levels.new_zeros(1)])


def alpha_bar_form(sigmas: torch.Tensor, profile: vrg.ErrorProfile) -> torch.Tensor:
    """The CPE as the paper's code writes it: coef_i = (√(1-ᾱ_i) - √(a_i-ᾱ_i))², Σ coef_i·mse_eps_i/ᾱ_i, a_i = ᾱ_i/ᾱ_{i-1}."""
    bars = core.alpha_bar(sigmas, profile.flow)  # noisy → clean, ending at ᾱ = 1
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(sigmas) - 1):
        a = bars[i] / bars[i + 1]
        coef = ((1 - bars[i]).sqrt() - (a - bars[i]).sqrt()) ** 2
        total = total + coef * profile.mse_eps(sigmas[i]) / bars[i]
    return total


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_cpe_sigma_form_equals_the_alpha_bar_form(flow, seed):
    sigmas, profile = random_schedule(12, flow, seed), realistic_profile(flow)
    torch.testing.assert_close(vrg.cumulative_error(sigmas, profile), alpha_bar_form(sigmas, profile), rtol=1e-10, atol=0)


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("steps", [10, 20])
def test_optimised_schedule_is_valid_and_lowers_the_loss(flow, steps):
    base, profile = karras_or_uniform(steps, flow), realistic_profile(flow)
    if flow:
        base[0] = 0.999  # a flow schedule may start at s = 1; the profile grid ends just below
    out = vrg.optimize_sigmas(base, profile)
    assert out.shape == base.shape and out.dtype == base.dtype
    assert (out.diff() < 0).all() and out[-1] == base[-1] and out[0] == base[0]
    assert vrg.cumulative_error(out, profile) < vrg.cumulative_error(base, profile)
    torch.testing.assert_close(vrg.optimize_sigmas(base, profile), out, rtol=0, atol=0)  # deterministic


def test_flat_profile_stays_inside_the_trust_region():
    base = karras_or_uniform(20, False)
    grid = vrg.default_sigma_grid(0.01, 20.0, 32)
    flat = vrg.ErrorProfile(grid, 0.1 * grid**2)  # constant mse_eps
    lp = 0.01
    out = vrg.optimize_sigmas(base, flat, lp=lp)
    def ratios(sigmas):  # a_i = ᾱ_i/ᾱ_{i-1}, clean → noisy, ᾱ = 1 below the first level
        bars = core.alpha_bar(sigmas[:-1].flip(0))
        return bars / torch.cat([torch.ones(1, dtype=bars.dtype), bars[:-1]])

    assert ((ratios(out) - ratios(base)).abs() <= lp + 1e-12).all()
    assert vrg.cumulative_error(out, flat) <= vrg.cumulative_error(base, flat)


def test_partial_schedule_keeps_its_final_level():
    base = karras_or_uniform(20, False)[:12]  # denoise < 1: ends above 0
    out = vrg.optimize_sigmas(base, realistic_profile(False))
    assert out[-1] == base[-1] and (out.diff() < 0).all()


def test_profile_interpolates_in_log_space_and_clamps():
    grid = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    profile = vrg.ErrorProfile(grid, torch.tensor([1e-4, 1e-2, 1.0], dtype=torch.float64))
    torch.testing.assert_close(profile.mse_x0(grid), profile.mse)
    torch.testing.assert_close(profile.mse_x0(torch.tensor([10**0.5])), torch.tensor([1e-1], dtype=torch.float64))
    torch.testing.assert_close(profile.mse_x0(torch.tensor([1e-3, 1e3])), torch.tensor([1e-4, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("flow", [False, True])
def test_measured_profile_recovers_a_known_error(flow):
    # A denoiser that returns the truth plus independent noise of known variance v(σ) has mse_x0(σ) = v(σ).
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 4, 8, 8, generator=g, dtype=torch.float64)
    variance = lambda s: 0.01 + 0.1 * s  # noqa: E731
    errors = torch.Generator().manual_seed(1)

    def denoiser(x, sigma):
        eps = torch.randn(x.shape, generator=errors, dtype=x.dtype)
        return truth + variance(sigma).sqrt()[:, None, None, None] * eps

    grid = vrg.default_sigma_grid(0.05, 0.95 if flow else 10.0, 8)
    seen = []
    truth = x0
    profile = vrg.measure_error_profile(denoiser, x0, grid, torch.Generator().manual_seed(2), flow=flow,
                                        callback=lambda i, n: seen.append((i, n)))
    expected = variance(grid)
    # mean of 16384 squared N(0, v) draws: relative standard error √(2/16384) ≈ 1.1%; allow 5 of them.
    assert ((profile.mse / expected - 1).abs() < 5 * (2 / x0.numel()) ** 0.5).all()
    assert seen == [(i, 8) for i in range(8)] and profile.flow == flow


def test_measuring_an_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        vrg.measure_error_profile(lambda x, s: x, torch.zeros(0, 4), vrg.default_sigma_grid(0.1, 1, 4), torch.Generator())


def test_profile_file_round_trips_bit_exactly(tmp_path):
    profile = realistic_profile(True)
    profile.metadata = {"model": "abc", "seed": 3}
    profile.save(tmp_path / "p.safetensors")
    loaded = vrg.ErrorProfile.load(tmp_path / "p.safetensors")
    assert torch.equal(loaded.sigmas, profile.sigmas) and torch.equal(loaded.mse, profile.mse)
    assert loaded.flow and loaded.metadata == {"model": "abc", "seed": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left behind


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95 pickled", b"{not safetensors", None])
def test_foreign_or_corrupt_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    if content is None:  # a valid safetensors file of something else
        from safetensors.torch import save_file

        save_file({"weights": torch.zeros(3)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.safetensors"):
        vrg.ErrorProfile.load(path)
