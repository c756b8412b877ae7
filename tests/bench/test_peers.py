"""The peers of bench/peers.py: identities that pin each formula, round trips on the exact mixture denoiser, and the
published tables at their own step counts. Agreement with ComfyUI itself: tests/host/test_peers_match_comfy.py."""

import pytest
import torch

from bench import peers
from bench.kit import schedule
from samplers import core
from samplers.inversion import ddim, reconstruction_error

FLOWS = [False, True]


def random_pair(seed: int = 0, shape: tuple[int, ...] = (3, 4, 5, 5)) -> tuple[core.PairDenoiser, torch.Tensor, torch.Tensor]:
    """A pair denoiser returning fixed random predictions, a state x and levels (3 samples of an image-like latent)."""
    g = torch.Generator().manual_seed(seed)
    cond, uncond, x = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    return (lambda x_, sigma: (cond, uncond)), x, torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)


@pytest.mark.parametrize("flow", FLOWS)
def test_rescale_cfg_with_multiplier_zero_is_plain_cfg_and_one_matches_the_conditional_std(flow):
    pair, x, sigma = random_pair()
    plain = core.guided(pair, 6.0)(x, sigma)
    torch.testing.assert_close(peers.rescale_cfg(pair, 6.0, 0.0, flow)(x, sigma), plain)
    full = peers.rescale_cfg(pair, 6.0, 1.0, flow)(x, sigma)
    assert not torch.allclose(full, plain)
    cond = pair(x, sigma)[0]
    to_space = (lambda d: d) if flow else (lambda d: peers.v_from_denoised(x, d, sigma))
    torch.testing.assert_close(to_space(full).flatten(1).std(1), to_space(cond).flatten(1).std(1))


def test_cfg_norm_never_grows_past_the_conditional_norm_and_strength_scales_it():
    pair, x, sigma = random_pair()
    cond = pair(x, sigma)[0]
    assert (peers.cfg_norm(pair, 7.0)(x, sigma).norm(dim=1) <= cond.norm(dim=1) * (1 + 1e-9)).all()
    torch.testing.assert_close(peers.cfg_norm(pair, 1.0, strength=0.5)(x, sigma), 0.5 * cond)  # CFG at 1 is D_c


def test_apg_with_eta_one_and_no_threshold_or_momentum_is_cfg():
    pair, x, sigma = random_pair()
    torch.testing.assert_close(peers.apg(pair, 5.0, eta=1.0, norm_threshold=0.0)(x, sigma), core.guided(pair, 5.0)(x, sigma))


def test_apg_with_eta_zero_drops_the_update_along_the_conditional_prediction():
    pair, x, sigma = random_pair()
    cond = pair(x, sigma)[0]
    update = peers.apg(pair, 5.0, eta=0.0, norm_threshold=0.0)(x, sigma) - cond
    torch.testing.assert_close(core.inner(update, cond), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)
    clipped = peers.apg(pair, 5.0, eta=1.0, norm_threshold=0.5)(x, sigma) - cond
    torch.testing.assert_close(clipped.flatten(1).norm(dim=1), torch.full((3,), 4 * 0.5, dtype=torch.float64))


def test_apg_momentum_adds_the_previous_guidance():
    g = torch.Generator().manual_seed(3)
    steps = [tuple(torch.randn(2, 8, generator=g, dtype=torch.float64) for _ in range(2)) for _ in range(2)]
    calls = iter(steps)
    guided = peers.apg(lambda x, s: next(calls), 3.0, eta=1.0, norm_threshold=0.0, momentum=-0.5)
    x, sigma = torch.zeros(2, 8, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    guided(x, sigma)
    (c0, u0), (c1, u1) = steps
    torch.testing.assert_close(guided(x, sigma), c1 + 2.0 * ((c1 - u1) - 0.5 * (c0 - u0)))


@pytest.mark.parametrize("flow", FLOWS)
def test_cfg_zero_star_scale_is_the_ratio_of_parallel_residuals(flow):
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    direction = torch.randn(2, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ratio = torch.tensor([0.7, 1.3], dtype=torch.float64)
    cond, uncond = x - ratio[:, None] * direction, x - direction  # x - D_c = ratio·(x - D_u)
    torch.testing.assert_close(peers.optimized_scale(x - cond, x - uncond), ratio)
    out = peers.cfg_zero_star(lambda x_, s: (cond, uncond), 4.0, flow, zero_init_steps=0)(x, torch.ones(2) * 0.5)
    star_uncond = ratio[:, None] * uncond
    torch.testing.assert_close(out, star_uncond + 4.0 * (cond - star_uncond))


@pytest.mark.parametrize("flow", FLOWS)
def test_cfg_zero_star_zero_init_keeps_the_state_for_its_first_calls(flow):
    pair, x, sigma = random_pair()
    guided = peers.cfg_zero_star(pair, 4.0, flow, zero_init_steps=2)
    # x̂0 = x is zero predicted noise (EPS) and zero velocity (flow): the step does not move the state
    assert [torch.equal(guided(x, sigma), x) for _ in range(3)] == [True, True, False]
    assert torch.equal(peers.cfg_zero_star(pair, 4.0, flow)(x, sigma), x) == flow  # default: 1 call for flow, 0 for EPS


def test_flip_sigmas_replaces_the_final_zero_as_comfyui():
    flipped = peers.flip_sigmas(schedule(5, False))
    assert flipped[0] == 1e-4 and torch.equal(flipped[1:], schedule(5, False).flip(0)[1:])


@pytest.mark.parametrize("flow", FLOWS)
def test_flip_sigmas_euler_at_cfg_one_round_trips_and_improves_with_steps(mixture, x0, flow):
    denoiser = mixture.denoiser(1, flow)
    errors = []
    for steps in (10, 40):
        sigmas = schedule(steps, flow)
        latent = peers.flip_sigmas_euler(denoiser, x0, sigmas, flow)
        errors.append(reconstruction_error(x0, ddim(denoiser, latent, peers.flip_sigmas(sigmas).flip(0), flow)).mean())
    assert errors[1] < errors[0] / 3 and errors[1] < 0.02, errors


def test_unsampler_is_flip_sigmas_euler_on_levels_shifted_by_1e4(mixture, x0):
    pair, sigmas = mixture.pair_denoiser(1), schedule(10, False)
    latent = peers.unsampler(pair, x0, sigmas, cfg=3.0)
    torch.testing.assert_close(latent, ddim(core.guided(pair, 3.0), x0, (sigmas + 1e-4).flip(0), eval_at="current"))
    assert peers.unsampler(pair, x0, sigmas, cfg=3.0, end_at_step=4).std() < latent.std() / 2  # stops 4 steps early
    normalized = peers.unsampler(pair, x0, sigmas, normalize=True)
    assert abs(normalized.mean()) < 1e-12 and abs(normalized.std() - 1) < 1e-12


def test_rf_inversion_gamma_interpolates_between_euler_inversion_and_the_noise(mixture, x0):
    denoiser, sigmas = mixture.denoiser(1, True), schedule(20, True)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    torch.testing.assert_close(peers.rf_inversion(denoiser, x0, sigmas, noise, gamma=0.0),
                               peers.flip_sigmas_euler(denoiser, x0, sigmas, True))
    torch.testing.assert_close(peers.rf_inversion(denoiser, x0, sigmas, noise, gamma=1.0), noise)


def test_rf_inversion_round_trip_reconstructs_and_eta_pulls_to_the_reference(mixture, x0):
    denoiser, sigmas = mixture.denoiser(1, True), schedule(30, True)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    latent = peers.rf_inversion(denoiser, x0, sigmas, noise, gamma=0.0)
    plain = reconstruction_error(x0, peers.rf_inversion_reverse(denoiser, latent, sigmas, x0, eta=0.0)).mean()
    assert plain < 0.02
    controlled = peers.rf_inversion_reverse(denoiser, peers.rf_inversion(denoiser, x0, sigmas, noise), sigmas, x0)
    other_class = mixture.denoiser(2, True)  # an "edit": another class's model, pulled back towards x0 by η
    edited_free = peers.rf_inversion_reverse(other_class, latent, sigmas, x0, eta=0.0)
    edited_pulled = peers.rf_inversion_reverse(other_class, latent, sigmas, x0, eta=0.9, stop=0.5)
    assert reconstruction_error(x0, edited_pulled).mean() < reconstruction_error(x0, edited_free).mean()
    assert torch.isfinite(controlled).all()
    torch.testing.assert_close(peers.rf_inversion_reverse(denoiser, latent, sigmas, x0, eta=1.0, stop=1.0), x0)


@pytest.mark.parametrize("build, table", [
    (lambda n: peers.align_your_steps("SD1", n), peers.AYS_SIGMAS["SD1"]),
    (lambda n: peers.align_your_steps("SDXL", n), peers.AYS_SIGMAS["SDXL"]),
    (lambda n: peers.optimal_steps("FLUX", n), peers.OPTIMAL_STEPS_SIGMAS["FLUX"]),
    (lambda n: peers.optimal_steps("Wan", n), peers.OPTIMAL_STEPS_SIGMAS["Wan"]),
    (lambda n: peers.gits(n), peers.GITS_SIGMAS[1.20][8]),
])
def test_table_schedules_hit_the_table_and_interpolate_elsewhere(build, table):
    at_table = build(len(table) - 1)
    torch.testing.assert_close(at_table[:-1], torch.tensor(table[:-1], dtype=torch.float64), rtol=0, atol=0)
    for steps in (3, 7, 13, 27):
        sigmas = build(steps)
        assert len(sigmas) == steps + 1 and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
        assert sigmas[0] == pytest.approx(table[0], rel=1e-12)


def test_gits_rows_have_their_step_count_and_other_coefficients_are_refused():
    for steps in range(2, 21):
        assert len(peers.gits(steps)) == steps + 1
    with pytest.raises(ValueError, match="coeff"):
        peers.gits(10, coeff=0.8)


def test_beta_schedule_spends_more_steps_at_both_ends_than_the_middle():
    table = peers.discrete_sigmas()
    torch.testing.assert_close(table[[0, -1]].double(), torch.tensor(peers.SD1_SIGMA_RANGE, dtype=torch.float64))
    sigmas = peers.beta_schedule(table, 20)
    assert len(sigmas) == 21 and sigmas[-1] == 0 and (sigmas.diff() < 0).all() and sigmas[0] == table[-1]
    index = torch.searchsorted(table.double(), sigmas[:-1].flip(0)).diff()
    assert index[0] < index[9] and index[-1] < index[9]  # Beta(0.6, 0.6): dense near t = 0 and t = T, sparse mid-way
    assert len(peers.beta_schedule(table[:10], 20)) < 21  # repeats dropped on a short table


def test_map_sigma_range_moves_the_ends_and_keeps_log_spacing():
    sigmas = peers.align_your_steps("SD1", 10)
    moved = peers.map_sigma_range(peers.gits(2), (0.002, 80.0))
    assert moved[0] == pytest.approx(80.0) and moved[-1] == 0
    ratios = lambda s: s[:-1].log().diff()  # noqa: E731
    mapped = peers.map_sigma_range(sigmas, (0.002, 80.0))
    factor = (torch.tensor(80 / 0.002).log() / torch.tensor(14.6146412293 / 0.0291671582).log()).double()
    torch.testing.assert_close(ratios(mapped), ratios(sigmas) * factor)
