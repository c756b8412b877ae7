"""samplers.core against closed forms, for the EPS/V (VE) and the flow (CONST) parametrisation."""

from pathlib import Path

import pytest
import tomllib
import torch

from samplers import core
from samplers.artefact import PACK_VERSION, pack_version

FLOWS = [False, True]


def _state(flow: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=torch.float64) * (1 if flow else 10)
    return x0, eps, sigma


@pytest.mark.parametrize("flow", FLOWS)
def test_eps_and_denoised_invert_each_other(flow):
    x0, eps, sigma = _state(flow)
    x = core.noise_to(x0, eps, sigma, flow)
    torch.testing.assert_close(core.eps_from_denoised(x, x0, sigma, flow), eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(core.denoised_from_eps(x, eps, sigma, flow), x0, rtol=0, atol=1e-12)


def test_alpha_of_each_family():
    sigma = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(core.alpha(sigma, flow=False), torch.ones(3))
    torch.testing.assert_close(core.alpha(sigma, flow=True), torch.tensor([1.0, 0.75, 0.0]))


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("direction", ["denoise", "invert"])
def test_ddim_step_with_the_true_x0_lands_on_the_forward_marginal(flow, direction):
    # With x̂0 = x0 the implied ε̂ is the true noise, so the step is exact in both directions.
    x0, eps, sigma = _state(flow)
    sigma_next = sigma * (0.5 if direction == "denoise" else 1.1)
    x = core.noise_to(x0, eps, sigma, flow)
    stepped = core.ddim_step(x, x0, sigma, sigma_next, flow)
    torch.testing.assert_close(stepped, core.noise_to(x0, eps, sigma_next, flow), rtol=0, atol=1e-12)


@pytest.mark.parametrize("flow", FLOWS)
def test_ddim_step_is_an_euler_step_of_the_probability_flow_ode(flow):
    # ComfyUI's euler: d = (x - D)/σ, x' = x + (σ' - σ)·d, for VE and for rectified flow alike.
    x0, eps, sigma = _state(flow)
    x = core.noise_to(x0, eps, sigma, flow)
    denoised = x0 + 0.1 * eps  # any prediction
    sigma_next = sigma * 0.6
    d = (x - denoised) / sigma.view(-1, 1, 1, 1)
    euler = x + (sigma_next - sigma).view(-1, 1, 1, 1) * d
    torch.testing.assert_close(core.ddim_step(x, denoised, sigma, sigma_next, flow), euler, rtol=0, atol=1e-12)


def test_ddim_step_to_zero_returns_the_prediction():
    x0, eps, sigma = _state(False)
    x = core.noise_to(x0, eps, sigma)
    pred = x0 * 0.9
    torch.testing.assert_close(core.ddim_step(x, pred, sigma, torch.zeros(4, dtype=torch.float64)), pred)


def test_flow_and_ve_states_map_onto_each_other():
    x0, eps, s = _state(True)
    x_flow = core.noise_to(x0, eps, s, flow=True)
    x_ve, sigma_ve = core.flow_to_ve(x_flow, s)
    torch.testing.assert_close(sigma_ve, s / (1 - s))
    torch.testing.assert_close(x_ve, core.noise_to(x0, eps, sigma_ve), rtol=0, atol=1e-12)
    back, s_back = core.ve_to_flow(x_ve, sigma_ve)
    torch.testing.assert_close(back, x_flow, rtol=0, atol=1e-12)
    torch.testing.assert_close(s_back, s, rtol=0, atol=1e-15)


def test_ddim_step_commutes_with_the_ve_mapping():
    # The same x̂0 gives the same ε̂ in both spaces, so a flow step is the VE step seen through the mapping.
    x0, eps, s = _state(True)
    x = core.noise_to(x0, eps, s, flow=True)
    pred, s_next = x0 + 0.3 * eps, s * 0.7
    x_ve, sigma_ve = core.flow_to_ve(x, s)
    stepped_ve = core.ddim_step(x_ve, pred, sigma_ve, core.ve_sigma(s_next, True))
    mapped, _ = core.ve_to_flow(stepped_ve, core.ve_sigma(s_next, True))
    torch.testing.assert_close(core.ddim_step(x, pred, s, s_next, flow=True), mapped, rtol=0, atol=1e-12)


def test_alpha_bar_and_input_scale():
    sigma = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(core.alpha_bar(sigma), 1 / (1 + sigma**2))
    torch.testing.assert_close(core.input_scale(sigma), core.alpha_bar(sigma).sqrt())
    s = torch.tensor([0.0, 0.5, 0.75], dtype=torch.float64)
    torch.testing.assert_close(core.alpha_bar(s, flow=True), 1 / (1 + (s / (1 - s)) ** 2))
    torch.testing.assert_close(core.input_scale(s, flow=True), torch.ones(3, dtype=torch.float64))


def test_cfg_mix_in_denoised_space_equals_mixing_eps():
    x0, eps, sigma = _state(False)
    x = core.noise_to(x0, eps, sigma)
    d_c, d_u = x0, x0 * 0.5 + 0.1
    w = torch.tensor([1.0, 2.0, 5.0, 7.5], dtype=torch.float64)
    mixed = core.cfg_mix(d_c, d_u, w)
    e_c, e_u = core.eps_from_denoised(x, d_c, sigma), core.eps_from_denoised(x, d_u, sigma)
    e_mix = e_u + w.view(-1, 1, 1, 1) * (e_c - e_u)
    torch.testing.assert_close(core.eps_from_denoised(x, mixed, sigma), e_mix, rtol=0, atol=1e-10)
    torch.testing.assert_close(core.cfg_mix(d_c, d_u, 1.0), d_c)
    torch.testing.assert_close(core.cfg_mix(d_c, d_u, 0.0), d_u)


def test_guided_wraps_a_pair_denoiser():
    pair = lambda x, s: (x * 2, x)  # noqa: E731
    x = torch.ones(2, 3)
    torch.testing.assert_close(core.guided(pair, 3.0)(x, torch.ones(2)), x * 4)


@pytest.mark.parametrize("flow", FLOWS)
def test_inversion_sigmas_walk_the_schedule_backwards(flow):
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0]) if flow else torch.tensor([14.6, 3.0, 0.5, 0.0])
    up = core.inversion_sigmas(sigmas, sigma_min=1e-4, flow=flow)
    assert up[0] == pytest.approx(1e-4)
    assert (up.diff() > 0).all() and len(up) == len(sigmas)
    if flow:
        assert up[-1] < 1.0
    else:
        assert up[-1] == sigmas[0]


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1.0]), "at least 2"),
    (torch.tensor([1.0, float("nan"), 0.0]), "NaN"),
    (torch.tensor([1.0, 2.0, 0.0]), "strictly descending"),
    (torch.tensor([1.0, -0.5]), "negative"),
])
def test_check_sigmas_names_node_input_and_fix(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        core.check_sigmas(bad, "My Node", "sigmas")
    assert "My Node" in str(err.value) and "'sigmas'" in str(err.value)


def test_the_pack_version_is_pyprojects():
    repo = Path(__file__).resolve().parents[2]
    assert PACK_VERSION == tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(ValueError, match="has no version"):
        pack_version(repo / "LICENSE")
