"""Schedule search (samplers.schedule_search) on the analytic testbed: the fine solve has converged, the pick is the
candidate of lowest measured error, VRG variants are kept only where they measure better than their base."""

import dataclasses

import pytest
import torch

from bench import vrg as bench_vrg
from samplers import schedule_search as ss
from samplers.inversion import ddim
from samplers.vrg import ErrorProfile, optimize_sigmas

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
    top = max(float(s[0]) for s in named.values())
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
    top, low = max(float(s[0]) for s in named.values()), min(float(s[-2]) for s in named.values())
    fine = ddim(denoiser, noise * top, ss.fine_schedule(top, low, ss.FINE_FACTOR * STEPS, flow), flow)
    x = ddim(denoiser, noise * float(choice.sigmas[0]), choice.sigmas, flow)
    assert float((x - fine).square().mean()) == pytest.approx(choice.errors[choice.name], rel=1e-9)
    assert choice.model_calls == 2 * len(named) * STEPS + ss.FINE_FACTOR * STEPS  # one fine solve


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
    assert runs.count(STEPS + 1) == len(named) and runs.count(max(ss.FINE_MIN, ss.FINE_FACTOR * STEPS) + 1) == 1


@pytest.mark.parametrize("bad, message", [
    ({}, "'candidates' is empty"),
    ({"a": torch.tensor([2.0, 1.0, 0.0]), "b": torch.tensor([2.0, 0.0])}, "same steps"),
    ({"a": torch.tensor([2.0, 1.0, 0.5])}, "not 0"),
    ({"a": torch.tensor([1.0, 2.0, 0.0])}, "strictly descending"),
])
def test_bad_candidates_are_refused(mixture, bad, message):
    with pytest.raises(ValueError, match=message):
        ss.choose_schedule(mixture.denoiser(None), noise_bank(2, 0, mixture.dim), bad, False)


@pytest.fixture(scope="module")
def hurt_choice(mixture):
    """The search of :func:`test_where_vrg_hurts_its_base_the_search_keeps_a_base` on EPS, and its profile."""
    profile = bench_vrg.chosen_profile(False, amplitude=0.3, knee=0.05)
    choice = ss.choose_schedule(mixture.denoiser(None), noise_bank(64, 3, mixture.dim), candidates(False), False,
                                profile, lp=0.05)
    return choice, profile


def test_a_stored_choice_survives_the_file_and_a_damaged_one_is_refused(tmp_path, hurt_choice):
    """The choice rides in the profile's JSON (float64 levels exact), comes back by step count, and an entry whose
    levels are not a schedule of its step count is refused on load as a damaged profile."""
    choice, profile = hurt_choice
    stored = dataclasses.replace(profile, schedules={str(STEPS): choice.record("euler", 64)})
    stored.save(tmp_path / "p.safetensors")
    loaded = ErrorProfile.load(tmp_path / "p.safetensors")
    name, sigmas = ss.stored_schedule(loaded, STEPS)
    assert name == choice.name and torch.equal(sigmas, choice.sigmas.float())
    assert ss.stored_schedule(loaded, STEPS + 1) is None and ss.stored_base(loaded, 30) == choice.name.removesuffix("+vrg")
    entry = choice.record("euler", 64)
    entry["candidates"]["karras"] = entry["candidates"]["karras"][:-1]
    with pytest.raises(ValueError, match="karras"):
        dataclasses.replace(profile, schedules={str(STEPS): entry})
    with pytest.raises(ValueError, match="malformed"):
        dataclasses.replace(profile, schedules={"ten": choice.record("euler", 64)})


def test_vrg_measured_worse_than_its_base_hands_out_the_base(hurt_choice):
    """VRG Scheduler / Optimize Sigmas' rule: on a base the search measured VRG worse on, the base comes back; on a
    schedule it never measured, VRG's CPE optimum comes back, said to be a prediction."""
    choice, profile = hurt_choice
    stored = dataclasses.replace(profile, schedules={str(STEPS): choice.record("euler", 64)})
    base = candidates(False)["karras"]
    assert choice.errors["karras+vrg"] > choice.errors["karras"]
    kept, note = ss.measured_vrg(base, stored, lp=0.05)
    assert torch.equal(kept, base) and note.startswith("measured") and "karras is kept" in note
    unmeasured = bench_vrg.base_schedule("karras", STEPS + 2)
    optimised, note = ss.measured_vrg(unmeasured, stored, lp=0.05)
    assert torch.equal(optimised, optimize_sigmas(unmeasured, stored, lp=0.05)) and "prediction" in note


def test_testbed4_rows_measure_the_pick_against_every_schedule_on_fresh_noise(tmp_path):
    """bench.testbed4.schedule_search_rows on fresh seeded width-8 twins (no training): per twin and step count one
    "ours" row (the pick; its picks per seed among the measured names), every base and VRG on it, equal NFE, both
    seeds, finite errors; the headline compares the search with the best of them."""
    from bench import testbed4 as t4
    from bench.testbeds import patches

    torch.manual_seed(0)
    models = {flow: patches.PatchUNet(0.5, flow, width=8).eval() for flow in FLOWS}
    setting = t4.Setting(seeds=(0, 1), profile_patches=10, profile_points=4, samples=4, schedule_steps=(2,),
                         search_bank=2, fine_steps=3, cache_dir=str(tmp_path))
    rows = t4.schedule_search_rows(t4.Testbed(setting, patches.load_patch_data(), models, None, None))
    for flow in FLOWS:
        group = [r for r in rows if r["family"] == ("flow" if flow else "eps")]
        bases = set(t4.base_schedules(2, flow))
        assert {r["variant"] for r in group} == {"schedule search"} | bases | {b + "+vrg" for b in bases}
        (ours,) = [r for r in group if r["role"] == "ours"]
        assert set(ours["picked"].split("; ")) <= {r["variant"] for r in group} - {"schedule search"}
        assert all(r["seeds"] == 2 and r["nfe"] == 2 and torch.isfinite(torch.tensor(r["error"])) for r in group)
    assert {h["method"] for h in t4.headline(rows)} == {"schedule search"}
