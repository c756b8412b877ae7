"""`make demo`: every example workflow on a real headless ComfyUI with the tiny checkpoint, plus the testbed figures.

Writes into the output folder: ``images/`` (what each workflow saved), ``*.png`` plots, ``testbed4/`` (pictures of real
photo patches from the testbed-4 models that ship in ``bench/weights``: each method beside its baseline and the best
peer), ``metrics.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import polaris, testbed4, vrg  # noqa: E402
from bench.inversion import STEP_COUNTS, mixture_rows  # noqa: E402
from bench.kit import markdown_table  # noqa: E402
from tools.comfy_host import (  # noqa: E402
    ComfyServer,
    Host,
    family_links,
    newest_host,
    write_example_image,
)
from tools.ui_to_api import tiny_api_graph, why_host_cannot_run  # noqa: E402


def psnr(a: Path, b: Path) -> float:
    """PSNR in dB of two 8-bit images of the same size."""
    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in (a, b))
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_workflows(out: Path, host: Host) -> list[dict]:
    """Queue each workflow of ``workflows/`` on one live server; copy its images; time it; compare input vs output.

    The server carries the tiny SD1.5 checkpoint and the tiny files of the model families it loads, with seeded
    conditioning in place of their text encoders (``tiny_api_graph``); a workflow whose family's tiny file does not
    load on this host is skipped, and its row says why."""
    rows = []
    with ComfyServer(out / "comfy_base", REPO, host=host, links=family_links(host)) as server:
        write_example_image(server.base_dir / "input" / "error_control_example.png")
        object_info = server.object_info()
        for path in sorted((REPO / "workflows").glob("*.json")):
            workflow = json.loads(path.read_text())
            if reason := why_host_cannot_run(workflow, host):
                rows.append({"workflow": path.name, "skipped": reason})
                print(f"demo: {path.name}: skipped: {reason}")
                continue
            start = time.perf_counter()
            history = server.run(tiny_api_graph(workflow, object_info))
            seconds = time.perf_counter() - start
            images = {}
            for image in server.output_images(history):
                target = out / "images" / f"{path.stem}__{image.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(image, target)
                images[image.name.split("_")[0]] = target
            row = {"workflow": path.name, "seconds": seconds, "images": len(images)}
            if {"input", "reconstruction"} <= images.keys():
                row["psnr_db"] = psnr(images["input"], images["reconstruction"])
            rows.append(row)
            print(f"demo: {path.name}: {len(images)} images in {seconds:.1f} s")
    return rows


def plot_inversion(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for family in ("eps", "flow"):
        for eval_at, style in (("current", "-o"), ("next", "--s")):
            mse = [r["mse"] for r in rows if r["family"] == family and r["eval_at"] == eval_at]
            ax.loglog(STEP_COUNTS, mse, style, label=f"{family}, model at {eval_at} level")
    ax.set(xlabel="steps", ylabel="reconstruction MSE", title="DDIM inversion → reconstruction, exact denoiser, cfg 1")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)


VRG_TABLES = {
    "profile_check": "VRG calibration: measured profile / independently measured error of the same denoiser",
    "cpe": "VRG: cumulative prediction error of base schedules before and after (lp 0.01)",
    "samples": "VRG: samples at equal NFE, base vs VRG schedule (err: MSE to a 300-step solution of the same ODE; "
               "disc: the same for the error-free denoiser; sw2: sliced W2 to true samples; nll: reported only)",
}


def workflow_row(row: dict) -> str:
    """A row of the example workflows' table: time, images and PSNR where it has a reconstruction, or why it was skipped."""
    if "skipped" in row:
        return f"| {row['workflow']} | skipped: {row['skipped']} | – | – |"
    psnr_db = f"{row['psnr_db']:.1f}" if "psnr_db" in row else "–"
    return f"| {row['workflow']} | {row['seconds']:.1f} | {row['images']} | {psnr_db} |"


def write_metrics(out: Path, testbed: list[dict], polaris_rows: list[dict], vrg_tables: dict, workflows: list[dict],
                  host_id: str) -> Path:
    lines = ["# Demo metrics", "", f"{time.strftime('%Y-%m-%d %H:%M')}, {sys.platform}, CPU", "",
             "## DDIM inversion on the analytic testbed (16-d Gaussian mixture, exact denoiser, cfg 1, 256 samples)", "",
             "| family | model evaluated at | steps | reconstruction MSE | ± std |", "|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['eval_at']} level | {r['steps']} | {r['mse']:.3e} | {r['std']:.1e} |" for r in testbed]
    lines += ["", "## POLARIS against the inversion baselines on the analytic testbed (32 samples, 3 seeds; "
              "`python -m bench.polaris` for the full table)", "", polaris.reconstruction_table(polaris_rows)]
    for key, title in VRG_TABLES.items():
        lines += ["", f"## {title}", "", "Analytic testbed, quick setting of bench/vrg.py (2000 samples, 3 seeds).", "",
                  markdown_table(vrg_tables[key])]
    lines += ["", f"## Example workflows on {host_id} with tiny random-weight model files", "",
              "SD1.5 examples on the tiny SD1.5 checkpoint; Flux, SD3.5 and Wan examples on tiny files of those families "
              "with seeded conditioning in place of their text encoders (none is small enough). The tiny models draw no "
              "meaningful pictures: these rows show the graphs run and what inversion loses.", "",
              "| workflow | wall time (s) | images | PSNR input vs reconstruction (dB) |", "|---|---|---|---|"]
    lines += [workflow_row(r) for r in workflows]
    target = out / "metrics.md"
    target.write_text("\n".join(lines) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    out = parser.parse_args().out.resolve()
    shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    testbed = mixture_rows()
    plot_inversion(testbed, out / "ddim_inversion_testbed.png")
    polaris_rows = polaris.reconstruction_rows(samples=32, steps=(10, 20))
    host = newest_host()
    metrics = write_metrics(out, testbed, polaris_rows, vrg.run(vrg.QUICK), run_workflows(out, host), host.id)
    pictures = testbed4.demo_pictures(out / "testbed4")
    print(metrics.read_text())
    print(f"demo: images in {out / 'images'}, plot {out / 'ddim_inversion_testbed.png'}, table {metrics}, "
          f"testbed-4 pictures {', '.join(p.name for p in pictures)} in {out / 'testbed4'}")


if __name__ == "__main__":
    main()
