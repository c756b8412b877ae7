"""Testbed 1 (bench/testbeds/gmm.py): the exact denoiser and densities against Monte Carlo, closed forms and the VE/flow
mapping; the imperfect denoisers are imperfect, finite and deterministic.

Statistical checks use 5 standard errors of the estimate they test (a false alarm per check below 1e-6); exact identities
use float64 round-off tolerances.
"""

import math

import pytest
import torch
from torch import distributions as dist

from bench.testbeds import gmm
from samplers import core

F64 = torch.float64
EXACT = dict(rtol=1e-12, atol=1e-12)  # float64 round-off of the same quantity computed two ways


@pytest.fixture(scope="module")
def mixture() -> gmm.GaussianMixture:
    return gmm.make_mixture(dim=4, n_classes=2, components_per_class=2, seed=3)


def forward(mixture: gmm.GaussianMixture, n: int, sigma: float, seed: int, cls=None, flow: bool = False):
    """``n`` forward-process states ``a·x0 + σ·ε`` with their clean ``x0``."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, g, cls)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    return core.noise_to(x0, eps, torch.tensor(sigma, dtype=F64), flow), x0


def reference_log_prob(mixture: gmm.GaussianMixture, x, sigma: float, cls, flow: bool):
    """``log p_σ(x | cls)`` by torch.distributions: ``Σ_k π_k N(a·μ_k, (a²s_k² + σ²) I)`` restricted to ``cls``."""
    a = 1 - sigma if flow else 1.0
    keep = torch.ones_like(mixture.labels, dtype=torch.bool) if cls is None else mixture.labels == cls
    scale = (a**2 * mixture.stds[keep] ** 2 + sigma**2).sqrt()[:, None].expand(-1, mixture.dim)
    components = dist.Independent(dist.Normal(a * mixture.means[keep], scale), 1)
    return dist.MixtureSameFamily(dist.Categorical(probs=mixture.weights[keep]), components).log_prob(x)


# ---------------------------------------------------------------------------------------------------------------------
# The exact denoiser and densities


@pytest.mark.parametrize("flow, sigma", [(False, 0.3), (False, 2.0), (True, 0.25), (True, 0.75)])
@pytest.mark.parametrize("cls", [None, 1])
def test_exact_denoiser_matches_importance_sampling(mixture, flow, sigma, cls):
    # E[x0 | x] = Σ w_i x0_i with x0_i ~ p(x0 | cls) and w_i ∝ N(x; a·x0_i, σ²I) (self-normalised importance sampling).
    # Its standard error per coordinate (delta method) is √Σ w_i²(x0_i - estimate)², reliable when the effective sample
    # size 1/Σw_i² is large, which is asserted first.
    prior = mixture.sample(200_000, torch.Generator().manual_seed(11), cls)
    states, _ = forward(mixture, 3, sigma, seed=12, cls=cls, flow=flow)
    exact = mixture.denoiser(cls, flow)(states, torch.full((3,), sigma, dtype=F64))
    a = 1 - sigma if flow else 1.0
    for x, d in zip(states, exact):
        w = (-((x - a * prior) ** 2).sum(-1) / (2 * sigma**2)).softmax(0)
        estimate = w @ prior
        std_error = (w[:, None] ** 2 * (prior - estimate) ** 2).sum(0).sqrt()
        assert 1 / (w**2).sum() > 1000
        assert ((estimate - d).abs() < 5 * std_error).all(), (estimate, d, std_error)


@pytest.mark.parametrize("flow, sigma", [(False, 0.0), (False, 0.4), (True, 0.4)])
def test_forward_marginal_has_the_mixture_moments(mixture, flow, sigma):
    # Per class (σ = 0: the class's own draws): E[x] = a·Σ π̃_k μ_k and Var[x_j] = Σ π̃_k (a²s_k² + σ² + a²μ_kj²) - E[x_j]²;
    # the sample moments within 5 SE.
    n = 200_000
    x, _ = forward(mixture, n, sigma, seed=5, cls=0, flow=flow)
    a = 1 - sigma if flow else 1.0
    p = mixture.log_prior(0).exp()
    mean = a * p @ mixture.means
    var = p @ ((a**2 * mixture.stds**2 + sigma**2)[:, None] + (a * mixture.means) ** 2) - mean**2
    centred = x - x.mean(0)
    assert ((x.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all()
    var_std_error = (((centred**4).mean(0) - centred.var(0) ** 2) / n).sqrt()
    assert ((centred.var(0) - var).abs() < 5 * var_std_error).all()


@pytest.mark.parametrize("flow, sigma", [(False, 0.5), (False, 5.0), (True, 0.3), (True, 0.9)])
@pytest.mark.parametrize("cls", [None, 0])
def test_log_prob_is_the_mixture_density_and_its_score_is_tweedie(mixture, flow, sigma, cls):
    x, _ = forward(mixture, 64, sigma, seed=6, flow=flow)
    torch.testing.assert_close(mixture.log_prob(x, sigma, cls, flow), reference_log_prob(mixture, x, sigma, cls, flow),
                               **EXACT)
    # Tweedie: ∇_x log p_σ(x) = (a·D*(x, σ) - x)/σ², the score every sampler derives from D.
    x.requires_grad_(True)
    (score,) = torch.autograd.grad(mixture.log_prob(x, sigma, cls, flow).sum(), x)
    a = 1 - sigma if flow else 1.0
    expected = (a * mixture.denoiser(cls, flow)(x.detach(), torch.full((64,), sigma, dtype=F64)) - x.detach()) / sigma**2
    torch.testing.assert_close(score, expected, rtol=1e-10, atol=1e-10)


def test_log_prob_integrates_to_one():
    # Trapezoid rule on a 2-D grid: for Gaussians of variance v its error is ~exp(-2π²v/h²) (v > 0.25: < 1e-800 at h = 0.05)
    # plus the mass beyond the box (centres within 2, widths below 1: the box ±9 leaves < 1e-12).
    mixture = gmm.make_mixture(dim=2, n_classes=3, components_per_class=2, seed=0)
    h = 0.05
    axis = torch.arange(-9.0, 9.0 + h / 2, h, dtype=F64)
    grid = torch.cartesian_prod(axis, axis)
    for flow, sigma in [(False, 0.3), (True, 0.5)]:
        for cls in (None, 2):
            mass = mixture.log_prob(grid, sigma, cls, flow).exp().sum() * h**2
            assert abs(mass.item() - 1) < 1e-9


@pytest.mark.parametrize("cls", [None, 0])
def test_flow_denoiser_is_the_ve_denoiser_through_the_mapping(mixture, cls):
    # D_flow(x, s) = D_ve(x/(1-s), s/(1-s)) and p_flow(x) = p_ve(x/(1-s))/(1-s)^d (change of variables).
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], dtype=F64)
    x = core.noise_to(mixture.sample(5, g, cls), torch.randn(5, mixture.dim, generator=g, dtype=F64), s, flow=True)
    x_ve, sigma_ve = core.flow_to_ve(x, s)
    torch.testing.assert_close(mixture.denoiser(cls, flow=True)(x, s), mixture.denoiser(cls)(x_ve, sigma_ve), **EXACT)
    torch.testing.assert_close(mixture.log_prob(x, s, cls, flow=True),
                               mixture.log_prob(x_ve, sigma_ve, cls) - mixture.dim * (1 - s).log(), **EXACT)


def test_denoiser_limits(mixture):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, mixture.dim, generator=g, dtype=F64)
    zeros, ones = torch.zeros(6, dtype=F64), torch.ones(6, dtype=F64)
    for flow in (False, True):  # σ = 0: the state is the data, D = x/a = x
        torch.testing.assert_close(mixture.denoiser(1, flow)(x, zeros), x, **EXACT)
    for cls in (None, 1):  # flow s = 1: no signal left, D = the prior mean of the class
        prior_mean = mixture.log_prior(cls).exp() @ mixture.means
        torch.testing.assert_close(mixture.denoiser(cls, flow=True)(x, ones), prior_mean.expand(6, -1), **EXACT)
        assert torch.isfinite(mixture.denoiser(cls)(x * 1e4, ones * 1e4)).all()  # VE σ = 1e4: no overflow


def test_pair_denoiser_and_per_sample_classes(mixture):
    x, _ = forward(mixture, 8, 1.0, seed=7)
    sigma = torch.ones(8, dtype=F64)
    d_c, d_u = mixture.pair_denoiser(1)(x, sigma)
    torch.testing.assert_close(d_c, mixture.denoiser(1)(x, sigma), **EXACT)
    torch.testing.assert_close(d_u, mixture.denoiser()(x, sigma), **EXACT)
    classes = torch.tensor([0, 1] * 4)
    mixed = mixture.denoiser(classes)(x, sigma)
    for c in (0, 1):
        torch.testing.assert_close(mixed[classes == c], mixture.denoiser(c)(x, sigma)[classes == c], **EXACT)


def test_class_posterior_is_bayes_and_classes_overlap():
    mixture = gmm.make_mixture(dim=16, n_classes=3, components_per_class=2, seed=0)
    g = torch.Generator().manual_seed(8)
    n = 20_000
    classes = torch.randint(0, 3, (n,), generator=g)
    x0 = mixture.sample(n, g, classes)
    posterior = mixture.class_posterior(x0)
    joint = torch.stack([reference_log_prob(mixture, x0, 0.0, c, False) for c in range(3)], -1) + math.log(1 / 3)
    torch.testing.assert_close(posterior, joint.softmax(-1), rtol=1e-10, atol=1e-12)
    # make_mixture's design claim: separated but overlapping classes (Bayes error of a few %, not 0, not chance) ...
    accuracy = (posterior.argmax(-1) == classes).double().mean().item()
    assert 0.9 < accuracy < 0.99
    # ... and at mid σ the conditional and marginal denoisers differ by a sizeable part of the class variance.
    x = x0 + torch.randn(x0.shape, generator=g, dtype=F64)
    d_c, d_u = mixture.pair_denoiser(classes)(x, torch.ones(n, dtype=F64))
    assert ((d_c - d_u) ** 2).mean() > 0.1 * mixture.variance(0)


# ---------------------------------------------------------------------------------------------------------------------
# Imperfect denoisers


def test_error_field_profile_identities_and_determinism(mixture):
    field = gmm.ErrorField(mixture.dim, seed=0, amplitude=0.1)
    assert torch.equal(field.weight, gmm.ErrorField(mixture.dim, seed=0, amplitude=0.1).weight)
    assert not torch.equal(field.weight, gmm.ErrorField(mixture.dim, seed=1, amplitude=0.1).weight)
    x, _ = forward(mixture, 2000, 0.0, seed=10)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    assert (field(x, 0.0) == 0).all()  # no error at σ = 0, like any c_skip/c_out-preconditioned network
    # eps-MSE largest at small σ and falling (the realistic profile of docs/evaluation.md#testbed-1-analytic-mixture); x0 error
    # finite, non-zero, saturating.
    grid = [0.05, 0.5, 2.0, 10.0, 50.0]
    x0_mse = torch.stack([field(x + s * eps, s).pow(2).mean() for s in grid])
    eps_mse = x0_mse / torch.tensor(grid, dtype=F64) ** 2
    assert torch.isfinite(x0_mse).all() and (x0_mse > 0).all()
    assert (eps_mse.diff() < 0).all() and x0_mse[-1] > x0_mse[1]
    # The flow field is the VE field of the mapped state, as for the exact denoiser.
    s = torch.linspace(0.05, 0.95, 2000, dtype=F64)
    xf = core.noise_to(x, eps, s, flow=True)
    torch.testing.assert_close(field(xf, s, flow=True), field(*core.flow_to_ve(xf, s)), **EXACT)
    torch.testing.assert_close(field.wrap(mixture.denoiser(flow=True), flow=True)(xf, s),
                               mixture.denoiser(flow=True)(xf, s) + field(xf, s, flow=True), **EXACT)


def test_perturbed_pair_has_independent_errors(mixture):
    x, _ = forward(mixture, 16, 1.0, seed=12)
    sigma = torch.ones(16, dtype=F64)
    exact_c, exact_u = mixture.pair_denoiser(0)(x, sigma)
    d_c, d_u = gmm.perturbed_pair(mixture.pair_denoiser(0), mixture.dim, seed=3, amplitude=0.2)(x, sigma)
    torch.testing.assert_close(d_c - exact_c, gmm.ErrorField(mixture.dim, 6, 0.2)(x, sigma), **EXACT)
    torch.testing.assert_close(d_u - exact_u, gmm.ErrorField(mixture.dim, 7, 0.2)(x, sigma), **EXACT)
    assert ((d_c - exact_c) - (d_u - exact_u)).abs().min() > 0


def test_miscalibrated_denoiser_sees_the_shifted_level():
    level = lambda x, sigma: sigma  # noqa: E731  (a spy: answers with the level it was asked at)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    torch.testing.assert_close(gmm.miscalibrated(level, 0.25)(sigma, sigma), 1.25 * sigma, **EXACT)
    # Flow: the VE level σ_ve = s/(1-s) is scaled by 1+κ(s), the result stays in [0, 1] and s = 1 stays at 1.
    kappa = lambda s: 0.5 - s  # noqa: E731
    s = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    shifted = gmm.miscalibrated(level, kappa, flow=True)(s, s)
    torch.testing.assert_close(core.ve_sigma(shifted[:-1], True), core.ve_sigma(s[:-1], True) * (1 + kappa(s[:-1])),
                               **EXACT)
    assert shifted[-1] == 1 and ((shifted >= 0) & (shifted <= 1)).all()
    mixture = gmm.make_mixture(dim=4, n_classes=2, components_per_class=2, seed=3)
    x, _ = forward(mixture, 5, 0.5, seed=13, flow=True)
    torch.testing.assert_close(gmm.miscalibrated(mixture.denoiser(flow=True), kappa, flow=True)(x, s),
                               mixture.denoiser(flow=True)(x, shifted), **EXACT)


def test_scaled_mixture_is_under_dispersed(mixture):
    narrow = mixture.scaled(0.8)
    p = mixture.weights
    torch.testing.assert_close(mixture.variance() - narrow.variance(), (1 - 0.8**2) * p @ mixture.stds**2, **EXACT)
    n = 20_000
    x, x0 = forward(mixture, n, 0.5, seed=14)
    sigma = torch.full((n,), 0.5, dtype=F64)
    excess = ((narrow.denoiser()(x, sigma) - x0) ** 2 - (mixture.denoiser()(x, sigma) - x0) ** 2).mean(-1)
    assert excess.mean() > 5 * excess.std() / n**0.5  # paired: worse than the exact posterior mean


@pytest.mark.parametrize("flow, sigma", [(False, 1.0), (True, 0.5)])
def test_mlp_denoiser_learned_something_but_is_imperfect(flow, sigma, tmp_path):
    mixture = gmm.make_mixture(dim=8, n_classes=2, components_per_class=2, seed=1)
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    net = gmm.train_mlp_denoiser(mixture, flow=flow, steps=300, batch=256, seed=7, cache_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads_before
    n = 4000
    levels = torch.full((n,), sigma, dtype=F64)
    for cls in (0, None):
        x, x0 = forward(mixture, n, sigma, seed=8, cls=cls, flow=flow)
        se_net = ((net.denoiser(cls)(x, levels) - x0) ** 2).mean(-1)
        se_exact = ((mixture.denoiser(cls, flow)(x, levels) - x0) ** 2).mean(-1)
        excess = se_net - se_exact  # paired: the exact posterior mean is the MSE optimum, its excess is the model's error
        assert excess.mean() > 5 * excess.std() / n**0.5
        assert se_net.mean() + 5 * se_net.std() / n**0.5 < mixture.variance(cls)  # beats predicting the data mean
    d_c, d_u = net.pair_denoiser(0)(x[:16], levels[:16])  # one batched call; float32 network, so float32 tolerances
    torch.testing.assert_close(d_c, net.denoiser(0)(x[:16], levels[:16]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_u, net.denoiser(None)(x[:16], levels[:16]), rtol=1e-5, atol=1e-6)
    if not flow:  # determinism for a seed, and the on-disk cache (safetensors) gives back the same weights
        again = gmm.train_mlp_denoiser(mixture, flow=flow, steps=300, batch=256, seed=7)
        cached = gmm.train_mlp_denoiser(mixture, flow=flow, steps=300, batch=256, seed=7, cache_dir=tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("mlp_denoiser_*.safetensors")]
        for other in (again, cached):
            assert all(torch.equal(p, q) for p, q in zip(other.state_dict().values(), net.state_dict().values()))
