"""Small line plots, twice: as an IMAGE output (Pillow only: ComfyUI ships it, matplotlib it does not) and as the data
the pack's web extension (``web/js/plots.js``) draws live on the node, sent in the node's UI output.

Pillow's built-in font is ASCII: labels say "sigma", not σ.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
UI_KEY = "error_control_plot"
"""The key of a node's UI output that web/js/plots.js draws."""


class Plot(NamedTuple):
    image: torch.Tensor  # ComfyUI IMAGE [1, H, W, 3]
    ui: dict  # {UI_KEY: [spec]}, for io.NodeOutput(..., ui=plot.ui)


def line_plot(series: dict, title: str, x_label: str, y_label: str, log_y: bool = True) -> Plot:
    """``series`` maps a label to ``(x, y)`` sequences; the plot as an IMAGE and as UI data for the node's live plot."""
    finite = lambda v: float(v) if math.isfinite(float(v)) else None  # noqa: E731 (JSON has no NaN)
    spec = {"title": title, "x_label": x_label, "y_label": y_label, "log_y": log_y,
            "series": [{"label": label, "x": [finite(v) for v in xs], "y": [finite(v) for v in ys]}
                       for label, (xs, ys) in series.items()]}
    return Plot(render(series, title, x_label, y_label, log_y), {UI_KEY: [spec]})


def legend_corner(lines: list[list[tuple[float, float]]], label_lengths: list[int], left: int, right: int, top: int,
                  box_height: int) -> tuple[int, int]:
    """Where the legend goes: the x of the top corner (left or right) under whose box (6 px a character) less of the
    drawn lines falls, and how many of the lines' sampled pixels still fall there."""
    box_width = 6 * max(label_lengths, default=0) + 16
    trace = [(x0 + t / 16 * (x1 - x0), y0 + t / 16 * (y1 - y0))
             for line in lines for (x0, y0), (x1, y1) in zip(line, line[1:] or line) for t in range(16)]
    corners = (left + 8, right - box_width + 8)
    covered = [sum(x0 - 8 <= x <= x0 + box_width and y <= top + box_height for x, y in trace) for x0 in corners]
    best = int(covered[1] < covered[0])
    return corners[best], covered[best]


def render(series: dict, title: str, x_label: str, y_label: str, log_y: bool = True,
           size: tuple[int, int] = (640, 400)) -> torch.Tensor:
    """The plot as a ComfyUI IMAGE ``[1, H, W, 3]`` in [0, 1]."""
    width, height = size
    left, right, top, bottom = 70, 20, 34, 46
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    scale_y = (lambda v: math.log10(max(v, 1e-30))) if log_y else float
    points = {label: [(float(x), scale_y(float(y))) for x, y in zip(xs, ys) if math.isfinite(float(y))]
              for label, (xs, ys) in series.items()}
    everything = [p for pts in points.values() for p in pts] or [(0.0, 0.0), (1.0, 1.0)]
    x_min, x_max = min(p[0] for p in everything), max(p[0] for p in everything)
    y_min, y_max = min(p[1] for p in everything), max(p[1] for p in everything)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_min) / x_span * (width - left - right),
                height - bottom - (y - y_min) / y_span * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline=(90, 90, 90))
    band = 14 * len(points) + 8
    legend_x, covered = legend_corner([[to_pixel(*p) for p in pts] for pts in points.values()],
                                      [len(label) for label in points], left, width - right, top, band)
    if covered:  # no free corner: raise the top of the axis so that every line stays below the legend
        y_span *= (height - top - bottom) / (height - top - bottom - band)
    for i, (label, pts) in enumerate(points.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([to_pixel(*p) for p in pts], fill=colour, width=2)
        for p in pts:
            x, y = to_pixel(*p)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((legend_x, top + 6 + 14 * i), label, fill=colour)
    draw.text((left, 10), title, fill=(0, 0, 0))
    draw.text((width // 2 - 40, height - 20), x_label, fill=(0, 0, 0))
    draw.text((4, top - 14), y_label + (" (log10)" if log_y else ""), fill=(0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        y_value = y_min + frac * y_span
        _, y = to_pixel(x_min, y_value)
        draw.text((4, y - 6), f"{y_value:.3g}", fill=(60, 60, 60))
        x_value = x_min + frac * x_span
        x, _ = to_pixel(x_value, y_min)
        draw.text((x - 10, height - bottom + 4), f"{x_value:.3g}", fill=(60, 60, 60))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
