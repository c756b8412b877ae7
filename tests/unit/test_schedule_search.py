"""Schedule search (samplers.schedule_search) on the analytic testbed: the fine solve has converged, the pick is the
candidate of lowest measured error, VRG variants are kept only where they measure better than their base."""

import pytest
import torch

from bench import vrg as bench_vrg
from samplers import schedule_search as ss
from samplers.inversion import ddim
from samplers.vrg import optimize_sigmas

FLOWS = [False, True]
STEPS = 10
F64 = torch.float64


@pytest.fixture(scope="module")
def mixture():
    return bench_vrg.make_mixture()


def noise_bank(n: int, seed: int, dim: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def candidates(flow: bool) -> dict[str, torch.Tensor]:
    """The bench's base schedules at 10 steps (EPS: karras, normal, exponential, sgm_uniform, beta, AYS; flow: uniform,
    shift 3)."""
    return {name: bench_vrg.base_schedule(name, STEPS) for name in bench_vrg.CPE_BASES[flow]}


def imperfect(mixture, flow: bool):
    """The exact denoiser plus a smooth error field, and its own measured profile (VRG's calibration)."""
    denoiser = bench_vrg.gmm.ErrorField(mixture.dim, seed=3, amplitude=0.3).wrap(mixture.denoiser(None, flow), flow)
    setting = bench_vrg.Setting(profile_samples=1024, grid_points=32)
    return denoiser, bench_vrg.measured_profile(denoiser, mixture, flow, setting)


@pytest.mark.parametrize("flow", FLOWS, ids=["eps", "flow"])
def test_the_fine_solve_has_converged(mixture, flow):
    """The default fine solve (80 steps at 10) is within 5 % of the smallest candidate error of a twice-as-fine one
    (Euler's global error is O(h): halving h quarters the squared distance, so a converged fine solve is far inside)."""
    denoiser, _ = imperfect(mixture, flow)
    named = candidates(flow)
    choice = ss.choose_schedule(denoiser, noise_bank(256, 1, mixture.dim), named, flow)
    top = float(next(iter(named.values()))[0])
    low = min(float(s[-2]) for s in named.values())
    start = noise_bank(256, 1, mixture.dim) * top
    fine = ddim(denoiser, start, ss.fine_schedule(top, low, ss.FINE_FACTOR * STEPS, flow), flow)
    finer = ddim(denoiser, start, ss.fine_schedule(top, low, 2 * ss.FINE_FACTOR * STEPS, flow), flow)
    assert float((fine - finer).square().mean()) < 0.05 * min(choice.errors.values())


@pytest.mark.parametrize("flow", FLOWS, ids=["eps", "flow"])
def test_the_pick_is_the_lowest_measured_error_and_its_schedule(mixture, flow):
    """Every candidate and its VRG variant is measured; the pick is the arg-min, with that candidate's own sigmas, and
    each error is what a plain Euler run from σ_0·noise measures against the fine solve."""
    denoiser, profile = imperfect(mixture, flow)
    named, noise = candidates(flow), noise_bank(64, 2, mixture.dim)
    choice = ss.choose_schedule(denoiser, noise, named, flow, profile)
    assert set(choice.errors) == set(named) | {name + "+vrg" for name in named}
    assert choice.errors[choice.name] == min(choice.errors.values())
    base = choice.name.removesuffix("+vrg")
    expected = named[base] if base == choice.name else optimize_sigmas(named[base], profile)
    assert torch.equal(choice.sigmas, expected)
    top, low = float(named[base][0]), min(float(s[-2]) for s in named.values())
    fine = ddim(denoiser, noise * top, ss.fine_schedule(top, low, ss.FINE_FACTOR * STEPS, flow), flow)
    x = ddim(denoiser, noise * top, choice.sigmas, flow)
    assert float((x - fine).square().mean()) == pytest.approx(choice.errors[choice.name], rel=1e-9)
    tops = {float(s[0]) for s in named.values()}  # one fine solve per distinct σ_0
    assert choice.model_calls == 2 * len(named) * STEPS + len(tops) * ss.FINE_FACTOR * STEPS


@pytest.mark.parametrize("flow", FLOWS, ids=["eps", "flow"])
def test_where_vrg_hurts_its_base_the_search_keeps_a_base(mixture, flow):
    """A profile that is wrong for the model (error concentrated below σ 0.05, trust region 0.05) on the exact
    denoiser: VRG makes the bases worse (measured), and the search hands out a plain base schedule."""
    profile = bench_vrg.chosen_profile(flow, amplitude=0.3, knee=0.05)
    named = candidates(flow)
    choice = ss.choose_schedule(mixture.denoiser(None, flow), noise_bank(256, 3, mixture.dim), named, flow, profile,
                                lp=0.05)
    hurt = [name for name in named if choice.errors[name + "+vrg"] > choice.errors[name]]
    assert len(hurt) >= len(named) - 1, choice.errors
    assert choice.name in named and torch.equal(choice.sigmas, named[choice.name])


def test_a_tie_keeps_the_base(mixture):
    """VRG with a zero trust region gives its base back; the search then measures equal errors and keeps the base,
    never its '+vrg' twin."""
    named = {"karras": bench_vrg.base_schedule("karras", STEPS)}
    choice = ss.choose_schedule(mixture.denoiser(None), noise_bank(8, 4, mixture.dim), named, False,
                                bench_vrg.chosen_profile(False), lp=0.0)
    assert choice.errors["karras+vrg"] == choice.errors["karras"] and choice.name == "karras"


def test_batches_and_a_custom_sampler_give_the_same_errors(mixture):
    """Splitting the bank into batches changes nothing; ``sampler`` is the one run (counted here)."""
    denoiser, named, noise = mixture.denoiser(None), candidates(False), noise_bank(12, 5, mixture.dim)
    runs = []

    def sampler(d, x, sigmas):
        runs.append(len(sigmas))
        return ddim(d, x, sigmas)

    whole = ss.choose_schedule(denoiser, noise, named, False, sampler=sampler)
    parts = ss.choose_schedule(denoiser, noise, named, False, batch_size=5)
    assert whole.name == parts.name and all(whole.errors[k] == pytest.approx(v, rel=1e-12) for k, v in parts.errors.items())
    tops = {float(s[0]) for s in named.values()}
    assert runs.count(STEPS + 1) == len(named) and runs.count(max(ss.FINE_MIN, ss.FINE_FACTOR * STEPS) + 1) == len(tops)


@pytest.mark.parametrize("bad, message", [
    ({}, "'candidates' is empty"),
    ({"a": torch.tensor([2.0, 1.0, 0.0]), "b": torch.tensor([2.0, 0.0])}, "same steps"),
    ({"a": torch.tensor([2.0, 1.0, 0.5])}, "not 0"),
    ({"a": torch.tensor([1.0, 2.0, 0.0])}, "strictly descending"),
])
def test_bad_candidates_are_refused(mixture, bad, message):
    with pytest.raises(ValueError, match=message):
        ss.choose_schedule(mixture.denoiser(None), noise_bank(2, 0, mixture.dim), bad, False)
