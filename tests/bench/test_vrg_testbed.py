"""VRG on the analytic testbed (bench/vrg.py): the calibration measures the error it claims to, and VRG lowers the CPE of
the usual base schedules with a real (trained) model's measured profile.

Statistical checks allow 5 standard errors of the quantity they test (a false alarm per check below 1e-6). Whether VRG
improves samples is a finding of the bench, not asserted here.
"""

import math

import pytest
import torch

from bench import vrg

SETTING = vrg.Setting(mlp_steps=300, mlp_batch=256, profile_samples=2048, grid_points=32)


@pytest.fixture(scope="module")
def mixture():
    return vrg.make_mixture()


@pytest.fixture(scope="module", params=[False, True], ids=["eps", "flow"])
def models(request, mixture):
    """(flow, the imperfect denoisers of that parametrisation, the MLP's measured profile)."""
    flow = request.param
    denoisers = vrg.imperfect_denoisers(mixture, flow, SETTING)
    return flow, denoisers, vrg.measured_profile(denoisers["mlp"], mixture, flow, SETTING)


def test_sd15_normal_matches_the_ddpm_table():
    """Endpoints of SD1.5's linear-β table (σ_999 ≈ 14.61, σ_0 ≈ 0.0292), strictly descending, ending in 0."""
    sigmas = vrg.base_schedule("normal", 10)
    assert sigmas.shape == (11,) and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    assert sigmas[0].item() == pytest.approx(14.6146, abs=1e-3)
    assert sigmas[-2].item() == pytest.approx(0.029168, abs=1e-5)
    shifted = vrg.base_schedule("shift3", 4)
    assert torch.allclose(shifted, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0], dtype=torch.float64))


def test_sliced_w2_is_zero_on_itself_and_sees_a_shift():
    """SW2(a, a) = 0; a shift by v gives √(mean over unit directions of (v·θ)²) = |v|/√d exactly in expectation."""
    a = torch.randn(500, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert vrg.sliced_w2(a, a) == 0.0
    v = torch.zeros(16, dtype=torch.float64)
    v[0] = 2.0
    assert vrg.sliced_w2(a + v, a, projections=2000) == pytest.approx(2.0 / 4.0, rel=0.05)


def test_measured_profile_matches_independent_error(models, mixture):
    """The calibration at grid levels equals the denoiser's x0-MSE from fresh draws and fresh noise (another seed).

    Both are means of the same per-sample quantity over ``profile_samples`` draws, so their ratio has standard error
    √2·se/mean (se from the independent sample); allow 5 of them.
    """
    flow, denoisers, _ = models
    grid = vrg.profile_grid(SETTING.grid_points, flow)
    for name, denoiser in denoisers.items():
        profile = vrg.measured_profile(denoiser, mixture, flow, SETTING, seed=11)
        for i in (0, 8, 16, 24, 31):
            mean, se = vrg.independent_error(denoiser, mixture, grid[i].item(), flow, SETTING.profile_samples, seed=500 + i)
            rel_se = math.sqrt(2) * se / mean
            assert abs(profile.mse[i].item() / mean - 1) < 5 * rel_se, (name, grid[i].item(), profile.mse[i].item(), mean)


def test_vrg_lowers_cpe_with_the_mlp_profile(models):
    """karras, normal, exponential, sgm_uniform, beta, AYS (VE); uniform, shift 3 (flow); 10 and 20 steps: lower CPE."""
    flow, _, profile = models
    rows = vrg.cpe_rows({flow: profile})
    assert {(r["base"], r["steps"]) for r in rows} == {(b, n) for b in vrg.CPE_BASES[flow] for n in vrg.STEP_COUNTS}
    for row in rows:
        assert row["cpe_vrg"] < 0.999 * row["cpe_base"], row
