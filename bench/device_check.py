"""The CUDA check: the host tests and the cost bench on a GPU, at each precision the model allows; a short report.

``python -m bench.device_check --gpu`` (``make device-check``) runs, for each precision (ComfyUI's default, fp16 and
bf16 weights and VAE, the last only where the GPU supports it):
  * the host tests on every host (``tests/host``, the soak left out) with the server on the GPU;
  * the cost bench (``bench.cost``, quick mode) in-process on the GPU.
``--dry`` does the same on the CPU with ComfyUI's default precision and only ``tests/host/test_server.py``: it checks
the command itself where no GPU is (minutes, not an hour). The report goes to ``device_out/REPORT.md`` (``--out``).
The device and precision reach ComfyUI through ``$ERROR_CONTROL_DEVICE`` and ``$ERROR_CONTROL_DTYPE``
(tools/hosts.py, ``device_flags``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cost import cost_table  # noqa: E402


def gpu_precisions() -> tuple[str, list[str]]:
    """The GPU's name and the precisions to test on it; raise when torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("device check --gpu: torch sees no CUDA device here; use --dry to check the command on the CPU")
    return torch.cuda.get_device_name(0), ["default", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])


def run_host_tests(env: dict, selection: list[str], log: Path) -> dict:
    """pytest on ``selection`` in a child; the summary line's counts per outcome and the wall time."""
    began = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pytest", *selection, "-m", "not slow", "-q", "-rfE"], cwd=REPO,
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    summary = log.read_text().strip().splitlines()[-1]
    counts = {outcome: int(n) for n, outcome in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    return {"returncode": done.returncode, "counts": counts, "seconds": time.perf_counter() - began, "log": str(log)}


def run_cost_bench(env: dict, rows_file: Path, log: Path) -> list[dict]:
    """``bench.cost --quick`` in a child; its rows (empty when it failed: the log says why)."""
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "bench.cost", "--quick", "--json", str(rows_file)], cwd=REPO, env=env,
                       stdout=out, stderr=subprocess.STDOUT)
    return json.loads(rows_file.read_text()) if rows_file.is_file() else []


def report(device: str, results: dict[str, dict], out: Path) -> str:
    """The Markdown report: per precision, the host-test counts and the cost table."""
    lines = [f"# Device check: {device}", "",
             f"{platform.node()}, Python {platform.python_version()}; host tests `tests/host` (soak left out) on every "
             "host; cost bench `python -m bench.cost --quick` (tiny SD1.5, 64×64 px, cfg 7).", "",
             "| precision | host tests | time | log |", "|---|---|---|---|"]
    for precision, result in results.items():
        tests = result["tests"]
        counts = ", ".join(f"{n} {outcome}" for outcome, n in tests["counts"].items()) or "no summary"
        lines.append(f"| {precision} | {counts} | {tests['seconds']:.0f} s | {Path(tests['log']).name} |")
    for precision, result in results.items():
        lines += ["", f"## Cost, {precision}", "",
                  cost_table(result["cost"]) if result["cost"] else f"The bench failed: see {result['cost_log']}."]
    text = "\n".join(lines) + "\n"
    (out / "REPORT.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true", help="on the CUDA device, at every precision it supports")
    mode.add_argument("--dry", action="store_true", help="on the CPU, default precision, test_server.py only")
    parser.add_argument("--out", type=Path, default=REPO / "device_out")
    args = parser.parse_args(argv)
    device, precisions = gpu_precisions() if args.gpu else ("CPU (dry run)", ["default"])
    selection = ["tests/host"] if args.gpu else ["tests/host/test_server.py"]
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for precision in precisions:
        env = {**os.environ, "ERROR_CONTROL_DEVICE": "cuda" if args.gpu else "cpu", "ERROR_CONTROL_DTYPE": precision}
        print(f"device check: {precision} on {device} ...", file=sys.stderr, flush=True)
        results[precision] = {
            "tests": run_host_tests(env, selection, args.out / f"host_tests_{precision}.log"),
            "cost": run_cost_bench(env, args.out / f"cost_{precision}.json", args.out / f"cost_{precision}.log"),
            "cost_log": str(args.out / f"cost_{precision}.log")}
    print(report(device, results, args.out))
    failed = [p for p, r in results.items() if r["tests"]["returncode"] != 0 or not r["cost"]]
    if failed:
        raise SystemExit(f"device check: failures at {failed}; see the logs in {args.out}")


if __name__ == "__main__":
    main()
