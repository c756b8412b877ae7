"""VRG (samplers.vrg): CPE identities, the trust-region optimiser, the measured profile and its file, EPS and flow."""

import dataclasses

import numpy as np
import pytest
import torch

from bench.kit import schedule as karras_or_uniform
from bench.vrg import base_schedule
from samplers import core, vrg

FLOWS = [False, True]


def realistic_profile(flow: bool) -> vrg.ErrorProfile:
    """ε error large at small σ and small at large σ, as measured on real models (paper Fig. 2).

    The optimal denoiser's error for data of variance 0.5 per dim, plus a model error that dominates at small σ; mse_x0
    saturates near the data variance at high noise, as a real model's does.
    """
    grid = vrg.default_sigma_grid(0.005, 0.999 if flow else 20.0, 64)
    sigma_ve = core.ve_sigma(grid, flow)
    return vrg.ErrorProfile(grid, (0.5 / (0.5 + sigma_ve**2) + 0.3 / (1 + (sigma_ve / 0.1) ** 2)) * sigma_ve**2, flow)


def flat_profile(flow: bool) -> vrg.ErrorProfile:
    """Constant mse_eps = 0.1."""
    grid = vrg.default_sigma_grid(0.005, 0.999, 32, flow=True) if flow else vrg.default_sigma_grid(0.01, 20.0, 32)
    return vrg.ErrorProfile(grid, 0.1 * core.ve_sigma(grid, flow) ** 2, flow)


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


def ratios(sigmas: torch.Tensor, flow: bool) -> torch.Tensor:
    """a_i = ᾱ_i/ᾱ_{i-1}, clean → noisy, ᾱ_{-1} that of the final level."""
    bars = core.alpha_bar(sigmas.flip(0), flow)
    return bars[1:] / bars[:-1]


def loss(sigmas: torch.Tensor, base: torch.Tensor, profile: vrg.ErrorProfile, anchor_weight: float = 100.0) -> float:
    """VRG's loss (docs/methods.md#vrg-optimisation): CPE + λ·(ᾱ_noisiest - ᾱ_noisiest_base)²."""
    miss = core.alpha_bar(sigmas[0], profile.flow) - core.alpha_bar(base[0], profile.flow)
    return float(vrg.cumulative_error(sigmas, profile) + anchor_weight * miss**2)


# --- the objective ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("seed", range(5))
def test_cpe_sigma_form_equals_the_alpha_bar_form(flow, seed):
    sigmas, profile = random_schedule(12, flow, seed), realistic_profile(flow)
    torch.testing.assert_close(vrg.cumulative_error(sigmas, profile), alpha_bar_form(sigmas, profile), rtol=1e-10, atol=0)


def test_cpe_of_a_flow_schedule_from_s_1_adds_the_constant_top_term():
    # At s = 1 (σ_ve = ∞, ᾱ = 0) the ᾱ form is 0/0; its limit (1 - σ_prev/∞)²·mse_x0(1) = mse_x0(1) stays finite.
    sigmas, profile = base_schedule("shift3", 10), realistic_profile(True)
    expected = profile.mse_x0(torch.tensor(1.0)) + alpha_bar_form(sigmas[1:], profile)
    torch.testing.assert_close(vrg.cumulative_error(sigmas, profile), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("flow", FLOWS)
def test_cpe_of_a_split_schedule_is_the_sum_of_its_parts(flow):
    # The final level of a partial schedule is where the run lands (σ_{-1}), not a model call.
    sigmas, profile = random_schedule(15, flow, 7), realistic_profile(flow)
    parts = vrg.cumulative_error(sigmas[:7], profile) + vrg.cumulative_error(sigmas[6:], profile)
    torch.testing.assert_close(vrg.cumulative_error(sigmas, profile), parts, rtol=1e-13, atol=0)


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("fix_sigma_max", [True, False])
def test_objective_gradient_matches_central_differences(flow, fix_sigma_max):
    # h = 1e-6: truncation O(h²) and rounding O(1e-16·loss/h) ≈ 1e-10·loss, both far below the 1e-6·max|g| allowed.
    sigmas = base_schedule("shift3", 12) if flow else karras_or_uniform(12, False)
    if not fix_sigma_max:
        sigmas = sigmas[1:]  # a flow top below s = 1, so that it can move
    base, table = vrg._base(sigmas, flow, 0.01, fix_sigma_max), realistic_profile(flow)._table()
    f = np.random.default_rng(0).normal(0, 0.7, base.u.shape)
    _, grad, c, _ = vrg._objective(f, base, table, 100.0, flow, 0.0)
    h, numeric = 1e-6, np.zeros_like(f)
    for i in range(len(f)):
        e = np.zeros_like(f)
        e[i] = h
        numeric[i] = (vrg._objective(f + e, base, table, 100.0, flow, c)[0]
                      - vrg._objective(f - e, base, table, 100.0, flow, c)[0]) / (2 * h)
    assert np.abs(grad - numeric).max() <= 1e-6 * np.abs(numeric).max()


# --- the optimiser ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS)
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


@pytest.mark.parametrize("name", ["karras", "normal", "flow from s=1"])
@pytest.mark.parametrize("fix_sigma_max", [True, False])
def test_optimiser_lowers_the_loss_inside_the_trust_region(name, fix_sigma_max):
    flow = name.startswith("flow")
    base = {"karras": karras_or_uniform(20, False), "normal": base_schedule("normal", 20),
            "flow from s=1": base_schedule("shift3", 20)}[name]
    profile, lp = realistic_profile(flow), 0.01
    out = vrg.optimize_sigmas(base, profile, lp=lp, fix_sigma_max=fix_sigma_max, flow=flow)
    assert out.shape == base.shape and (out.diff() < 0).all() and out[-1] == base[-1]
    assert (out[0] == base[0]) == (fix_sigma_max or flow)  # an eps top moves once free; s = 1 never does
    assert loss(out, base, profile) < loss(base, base, profile)
    assert ((ratios(out, flow) - ratios(base, flow)).abs() <= lp * (1 + 1e-9)).all()


@pytest.mark.parametrize("base, flow, fix_sigma_max", [
    (karras_or_uniform(10, False), False, True), (karras_or_uniform(50, False), False, True),
    (base_schedule("normal", 20), False, False), (base_schedule("shift3", 20), True, True)])
def test_default_stop_reaches_the_converged_gain(base, flow, fix_sigma_max):
    """The default tolerance stops L-BFGS early for speed; it must still find nearly all of what running on finds."""
    profile = realistic_profile(flow)
    gain = lambda out: loss(base, base, profile) - loss(out, base, profile)  # noqa: E731
    converged = vrg.optimize_sigmas(base, profile, fix_sigma_max=fix_sigma_max, iterations=2000, tolerance=0.0)
    assert gain(vrg.optimize_sigmas(base, profile, fix_sigma_max=fix_sigma_max)) >= 0.995 * gain(converged) > 0


@pytest.mark.parametrize("flow", FLOWS)
def test_flat_profile_stays_inside_the_trust_region(flow):
    base, profile, lp = (base_schedule("shift3", 20) if flow else karras_or_uniform(20, False)), flat_profile(flow), 0.01
    out = vrg.optimize_sigmas(base, profile, lp=lp)
    assert ((ratios(out, flow) - ratios(base, flow)).abs() <= lp * (1 + 1e-9)).all()
    assert vrg.cumulative_error(out, profile) <= vrg.cumulative_error(base, profile)


def test_partial_schedule_keeps_both_ends():
    base = karras_or_uniform(20, False)[:12]  # the first part of a SplitSigmas: ends above 0
    out = vrg.optimize_sigmas(base, realistic_profile(False))
    assert out[-1] == base[-1] and out[0] == base[0] and (out.diff() < 0).all()
    assert vrg.cumulative_error(out, realistic_profile(False)) < vrg.cumulative_error(base, realistic_profile(False))


def test_float32_schedule_keeps_its_dtype_ends_and_order():
    base = karras_or_uniform(30, False).float()
    out = vrg.optimize_sigmas(base, realistic_profile(False))
    assert out.dtype == torch.float32 and out[0] == base[0] and out[-1] == 0 and (out.diff() < 0).all()


def test_nothing_to_move_gives_back_the_input():
    profile = realistic_profile(False)
    base = karras_or_uniform(10, False)
    assert torch.equal(vrg.optimize_sigmas(base, profile, lp=0.0), base)
    one_step = torch.tensor([14.6, 0.0], dtype=torch.float64)  # its only ratio is pinned by the fixed top
    assert torch.equal(vrg.optimize_sigmas(one_step, profile), one_step)


def test_iterations_cap_the_steps():
    # The optimiser (scipy's L-BFGS-B) takes a step even when told to take none; 0 iterations must be the input.
    base, profile = karras_or_uniform(10, False), realistic_profile(False)
    assert torch.equal(vrg.optimize_sigmas(base, profile, iterations=0), base)
    one = vrg.optimize_sigmas(base, profile, iterations=1)
    assert vrg.cumulative_error(vrg.optimize_sigmas(base, profile), profile) < vrg.cumulative_error(one, profile)
    assert vrg.cumulative_error(one, profile) < vrg.cumulative_error(base, profile)


def test_bad_inputs_are_clear_errors():
    eps_profile, base = realistic_profile(False), karras_or_uniform(10, False)
    with pytest.raises(ValueError, match="profile made for eps/v model"):
        vrg.optimize_sigmas(base_schedule("shift3", 10), eps_profile, flow=True)
    with pytest.raises(ValueError, match="profile made for flow"):
        vrg.cumulative_error(base, realistic_profile(True), flow=False)
    with pytest.raises(ValueError, match="optimize_sigmas.*strictly descending"):
        vrg.optimize_sigmas(base.flip(0), eps_profile)
    with pytest.raises(ValueError, match="lp"):
        vrg.optimize_sigmas(base, eps_profile, lp=-0.1)


# --- the profile ------------------------------------------------------------------------------------------------------


def test_profile_interpolates_in_log_space_and_clamps():
    grid = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    profile = vrg.ErrorProfile(grid, torch.tensor([1e-4, 1e-2, 1.0], dtype=torch.float64))
    assert torch.equal(profile.mse_x0(grid), profile.mse)  # bit-exact at the grid points
    torch.testing.assert_close(profile.mse_x0(torch.tensor([10**0.5])), torch.tensor([1e-1], dtype=torch.float64))
    torch.testing.assert_close(profile.mse_x0(torch.tensor([1e-3, 1e3])), torch.tensor([1e-4, 1.0], dtype=torch.float64))
    levels = torch.tensor([[0.0, 0.1], [0.3, 50.0]], dtype=torch.float64)  # any shape; 0 clamps to the bottom
    torch.testing.assert_close(profile.mse_x0(levels), torch.tensor([[1e-4, 1e-4], [1e-4 * 3**2, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(profile.mse_eps(grid), profile.mse / grid**2)


def test_flow_profile_reaches_s_1_and_its_eps_error_is_the_ve_one():
    grid = vrg.default_sigma_grid(0.01, 1.0, 16, flow=True)
    profile = vrg.ErrorProfile(grid, torch.linspace(1e-4, 0.5, 16, dtype=torch.float64), flow=True)
    assert profile.mse_x0(torch.tensor(1.0)) == 0.5 and profile.mse_eps(torch.tensor(1.0)) == 0
    torch.testing.assert_close(profile.mse_eps(grid[:-1]), profile.mse[:-1] / core.ve_sigma(grid[:-1], True) ** 2)
    with pytest.raises(ValueError, match="flow levels s lie in"):
        vrg.default_sigma_grid(0.01, 2.0, flow=True)


@pytest.mark.parametrize("flow", FLOWS)
def test_measured_profile_recovers_a_known_error(flow):
    # A denoiser that returns the truth plus independent noise of known variance v(σ) has mse_x0(σ) = v(σ).
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 4, 8, 8, generator=g, dtype=torch.float64)
    variance = lambda s: 0.01 + 0.1 * s  # noqa: E731
    errors = torch.Generator().manual_seed(1)

    def denoiser(x, sigma):
        eps = torch.randn(x.shape, generator=errors, dtype=x.dtype)
        return x0[: len(x)] + variance(sigma).sqrt()[:, None, None, None] * eps

    grid = vrg.default_sigma_grid(0.05, 0.95 if flow else 10.0, 8)
    seen = []
    profile = vrg.measure_error_profile(denoiser, x0, grid, torch.Generator().manual_seed(2), flow=flow,
                                        callback=lambda i, n: seen.append((i, n)))
    # mean of 16384 squared N(0, v) draws: relative standard error √(2/16384) ≈ 1.1%; allow 5 of them.
    assert ((profile.mse / variance(grid) - 1).abs() < 5 * (2 / x0.numel()) ** 0.5).all()
    assert seen == [(i, 8) for i in range(1, 9)] and profile.flow == flow
    assert (profile.batch_size, profile.seed, profile.latent_shape) == (256, 2, (4, 8, 8))


def test_measurement_reuses_one_noise_bank_across_levels():
    # D(x, σ) = x misses x0 by exactly σ·ε, so mse_x0/σ² = mean(ε²) is the same number at every level only if the
    # same ε serves them all (fresh noise would scatter it by √(2/n) ≈ 3 %). Chunking must not change the result.
    x0 = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    grid = vrg.default_sigma_grid(0.1, 10.0, 5)
    whole = vrg.measure_error_profile(lambda x, s: x, x0, grid, torch.Generator().manual_seed(3))
    chunked = vrg.measure_error_profile(lambda x, s: x, x0, grid, torch.Generator().manual_seed(3), batch_size=3)
    per_sigma2 = whole.mse / grid**2
    torch.testing.assert_close(per_sigma2, per_sigma2[0].expand(5), rtol=1e-6, atol=0)  # float32 states
    torch.testing.assert_close(chunked.mse, whole.mse, rtol=1e-12, atol=0)


def test_measuring_an_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        vrg.measure_error_profile(lambda x, s: x, torch.zeros(0, 4), vrg.default_sigma_grid(0.1, 1, 4), torch.Generator())


def test_a_perfect_or_broken_denoiser_is_refused():
    x0, grid = torch.randn(2, 4), vrg.default_sigma_grid(0.1, 1.0, 4)
    with pytest.raises(ValueError, match="finite and > 0"):
        vrg.measure_error_profile(lambda x, s: x0, x0, grid, torch.Generator())


# --- the file ---------------------------------------------------------------------------------------------------------


def test_profile_file_round_trips_bit_exactly(tmp_path):
    profile = dataclasses.replace(realistic_profile(True), model="flux sampling:1234", batch_size=8, seed=3,
                                  conditioning="empty prompt, cfg 1", latent_shape=(16, 64, 64), pack_version="0.1.0")
    profile.save(tmp_path / "p.safetensors")
    loaded = vrg.ErrorProfile.load(tmp_path / "p.safetensors")
    assert torch.equal(loaded.sigmas, profile.sigmas) and torch.equal(loaded.mse, profile.mse)
    for name in ("flow", "model", "batch_size", "seed", "conditioning", "latent_shape", "pack_version"):
        assert getattr(loaded, name) == getattr(profile, name), name
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left behind


def test_a_failed_save_leaves_no_file(tmp_path):
    profile = dataclasses.replace(realistic_profile(False), model=object())  # not JSON
    with pytest.raises(TypeError):
        profile.save(tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def _write_profile_like(path, tensors, record_json, version=vrg.PROFILE_FORMAT.version):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": vrg.PROFILE_FORMAT.name, "format_version": version,
                                            "record": record_json})


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95 pickled", b"{not safetensors", "torch.save", None,
                                     "bad json", "missing field", "nan", "version"])
def test_foreign_or_corrupt_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    grid = torch.tensor([0.1, 1.0], dtype=torch.float64)
    good = ('{"flow": false, "model": "", "batch_size": 1, "seed": 0, "conditioning": "", "latent_shape": [4], '
            '"pack_version": "", "schedules": {}}')
    if content is None:  # a valid safetensors file of something else
        from safetensors.torch import save_file

        save_file({"weights": torch.zeros(3)}, str(path))
    elif content == "torch.save":  # a real pickle: must be refused without being unpickled
        torch.save({"sigmas": grid}, path)
    elif content == "bad json":
        _write_profile_like(path, {"sigmas": grid, "mse_x0": grid.clone()}, "{flow: no")
    elif content == "missing field":
        _write_profile_like(path, {"sigmas": grid, "mse_x0": grid.clone()}, '{"flow": false}')
    elif content == "nan":
        _write_profile_like(path, {"sigmas": grid, "mse_x0": torch.tensor([0.1, float("nan")])}, good)
    elif content == "version":
        _write_profile_like(path, {"sigmas": grid, "mse_x0": grid.clone()}, good, version="99")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.safetensors"):
        vrg.ErrorProfile.load(path)


def test_a_profile_of_format_2_still_loads_with_no_searched_schedules(tmp_path):
    grid = torch.tensor([0.1, 1.0], dtype=torch.float64)
    before_the_search = ('{"flow": false, "model": "m", "batch_size": 1, "seed": 0, "conditioning": "", '
                         '"latent_shape": [4], "pack_version": "0.2.0"}')
    _write_profile_like(tmp_path / "v2.safetensors", {"sigmas": grid, "mse_x0": grid.clone()}, before_the_search, "2")
    loaded = vrg.ErrorProfile.load(tmp_path / "v2.safetensors")
    assert loaded.model == "m" and loaded.schedules == {}
    with_a_field_of_format_3 = before_the_search[:-1] + ', "schedules": {}}'
    _write_profile_like(tmp_path / "mixed.safetensors", {"sigmas": grid, "mse_x0": grid.clone()}, with_a_field_of_format_3,
                        "2")
    with pytest.raises(ValueError, match="mixed.safetensors"):
        vrg.ErrorProfile.load(tmp_path / "mixed.safetensors")
