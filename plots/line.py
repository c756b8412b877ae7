"""Small line plots, twice: as an IMAGE output (Pillow only: ComfyUI ships it, matplotlib it does not) and as the data
the pack's web extension (``web/js/plots.js``) draws live on the node, sent in the node's UI output.

Both draw what :func:`plotted` says: each series' points in the axes' units (y as log10 where the y axis is
logarithmic), with the ticks of :func:`x_ticks`, and each series in its own colour, dash and marker (:data:`STYLES`),
so that curves which coincide stay distinguishable. Pillow's built-in font is ASCII: labels say "sigma", not σ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
STYLES = [{"dash": [], "marker": "dot"}, {"dash": [7, 5], "marker": "square"}, {"dash": [2, 4], "marker": "triangle"},
          {"dash": [9, 3, 2, 3], "marker": "cross"}]
"""Line dash (on, off pixels; none: solid) and point marker of the i-th series, as web/js/plots.js draws them too. The
first series is solid with small filled dots; the later ones are dashed with hollow markers around the points, so a
series drawn exactly over an earlier one leaves it visible in its gaps and inside its markers."""
UI_KEY = "error_control_plot"
"""The key of a node's UI output that web/js/plots.js draws."""
LOG_FLOOR = 1e-30
"""The smallest value a logarithmic axis shows (0 and negative values are drawn there)."""
Series = dict[str, tuple[Sequence[float], Sequence[float]]]


class Plot(NamedTuple):
    image: torch.Tensor  # ComfyUI IMAGE [1, H, W, 3]
    ui: dict  # {UI_KEY: [spec]}, for io.NodeOutput(..., ui=plot.ui)

    @property
    def spec(self) -> dict:
        """The plot's data as the web extension receives it (the first spec of :attr:`ui`)."""
        return self.ui[UI_KEY][0]


def x_ticks(xs: Sequence[float], integer: bool) -> list[float]:
    """Three ticks of the x axis (ends and middle); on an ``integer`` axis (steps) whole numbers, the middle rounded."""
    if not xs:
        return [0.0, 0.5, 1.0]
    low, high = min(xs), max(xs)
    middle = (low + high) / 2
    if integer:
        low, high, middle = math.floor(low), math.ceil(high), round(middle)
    return sorted({float(low), float(middle), float(high)})


def tick_label(value: float) -> str:
    """A tick's text, short: whole numbers without decimals."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e6 else f"{value:.3g}"


def plot_spec(series: Series, title: str, x_label: str, y_label: str, log_y: bool = True) -> dict:
    """The plot's data as the web extension draws it. ``series`` maps a label to ``(x, y)`` sequences; an x axis whose
    values are all whole numbers (steps, model calls) gets whole-number ticks."""
    finite = lambda v: float(v) if math.isfinite(float(v)) else None  # noqa: E731 (JSON has no NaN)
    xs = [float(x) for x_values, _ in series.values() for x in x_values if math.isfinite(float(x))]
    spec = {"title": title, "x_label": x_label, "y_label": y_label, "log_y": log_y,
            "x_ticks": x_ticks(xs, all(x.is_integer() for x in xs)),
            "series": [{"label": label, "x": [finite(v) for v in x_values], "y": [finite(v) for v in y_values]}
                       for label, (x_values, y_values) in series.items()]}
    return spec


def line_plot(series: Series, title: str, x_label: str, y_label: str, log_y: bool = True) -> Plot:
    """The plot of ``series`` (:func:`plot_spec`) as an IMAGE and as UI data for the node's live plot."""
    spec = plot_spec(series, title, x_label, y_label, log_y)
    return Plot(render_spec(spec), {UI_KEY: [spec]})


def plotted(spec: dict) -> dict[str, list[tuple[float, float]]]:
    """The points each series of a plot draws, in the axes' units: y as log10 (floored at :data:`LOG_FLOOR`) where the
    y axis is logarithmic; points with a missing (non-finite) value are left out."""
    scale_y = (lambda v: math.log10(max(v, LOG_FLOOR))) if spec["log_y"] else float
    return {s["label"]: [(float(x), scale_y(float(y))) for x, y in zip(s["x"], s["y"]) if x is not None and y is not None]
            for s in spec["series"]}


def legend_corner(lines: list[list[tuple[float, float]]], label_lengths: list[int], left: int, right: int, top: int,
                  box_height: int) -> tuple[int, int]:
    """Where the legend goes: the x of the top corner (left or right) under whose box (a 22 px line sample, then 6 px a
    character) less of the drawn lines falls, and how many of the lines' sampled pixels still fall there."""
    box_width = 6 * max(label_lengths, default=0) + 38
    trace = [(x0 + t / 16 * (x1 - x0), y0 + t / 16 * (y1 - y0))
             for line in lines for (x0, y0), (x1, y1) in zip(line, line[1:] or line) for t in range(16)]
    corners = (left + 8, right - box_width + 8)
    covered = [sum(x0 - 8 <= x <= x0 + box_width and y <= top + box_height for x, y in trace) for x0 in corners]
    best = int(covered[1] < covered[0])
    return corners[best], covered[best]


def dashed(points: list[tuple[float, float]], dash: list[int]) -> list[list[tuple[float, float]]]:
    """The drawn pieces of a polyline with the dash pattern ``dash`` (on, off, ... pixels; empty: the whole line)."""
    if not dash or len(points) < 2:
        return [points]
    pieces, current, index, left_in_dash = [], [points[0]], 0, float(dash[0])
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length, done = math.hypot(x1 - x0, y1 - y0), 0.0
        while length - done > left_in_dash:
            done += left_in_dash
            point = (x0 + (x1 - x0) * done / length, y0 + (y1 - y0) * done / length)
            if index % 2 == 0:
                pieces.append([*current, point])
            current, index = [point], index + 1
            left_in_dash = float(dash[index % len(dash)])
        left_in_dash -= length - done
        current.append((x1, y1))
    if index % 2 == 0:
        pieces.append(current)
    return pieces


def draw_marker(draw: ImageDraw.ImageDraw, marker: str, x: float, y: float, colour: tuple) -> None:
    """A point's marker: a small filled dot, or a hollow square, triangle or cross around the point."""
    if marker == "dot":
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    elif marker == "square":
        draw.rectangle([x - 4, y - 4, x + 4, y + 4], outline=colour)
    elif marker == "triangle":
        draw.polygon([(x, y - 6), (x - 5, y + 4), (x + 5, y + 4)], outline=colour)
    else:
        draw.line([(x - 4, y - 4), (x + 4, y + 4)], fill=colour)
        draw.line([(x - 4, y + 4), (x + 4, y - 4)], fill=colour)


def render(series: Series, title: str, x_label: str, y_label: str, log_y: bool = True,
           size: tuple[int, int] = (640, 400)) -> torch.Tensor:
    """The plot of ``series`` as a ComfyUI IMAGE ``[1, H, W, 3]`` in [0, 1] (as :func:`line_plot` draws it)."""
    return render_spec(plot_spec(series, title, x_label, y_label, log_y), size)


def render_spec(spec: dict, size: tuple[int, int] = (640, 400)) -> torch.Tensor:
    """A plot's spec (:func:`line_plot`) drawn as a ComfyUI IMAGE ``[1, H, W, 3]`` in [0, 1]."""
    width, height = size
    left, right, top, bottom = 70, 20, 34, 46
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = plotted(spec)
    everything = [p for pts in points.values() for p in pts] or [(0.0, 0.0), (1.0, 1.0)]
    x_min = min([p[0] for p in everything] + spec["x_ticks"][:1])
    x_max = max([p[0] for p in everything] + spec["x_ticks"][-1:])
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
        colour, style = COLOURS[i % len(COLOURS)], STYLES[i % len(STYLES)]
        pixels = [to_pixel(*p) for p in pts]
        for piece in dashed(pixels, style["dash"]):
            draw.line(piece, fill=colour, width=2)
        for x, y in pixels:
            draw_marker(draw, style["marker"], x, y, colour)
        legend_y = top + 6 + 14 * i
        for piece in dashed([(legend_x, legend_y + 6), (legend_x + 18, legend_y + 6)], style["dash"]):
            draw.line(piece, fill=colour, width=2)
        draw_marker(draw, style["marker"], legend_x + 9, legend_y + 6, colour)
        draw.text((legend_x + 22, legend_y), label, fill=colour)
    draw.text((left, 10), spec["title"], fill=(0, 0, 0))
    draw.text((width // 2 - 40, height - 20), spec["x_label"], fill=(0, 0, 0))
    draw.text((4, top - 14), spec["y_label"] + (" (log10)" if spec["log_y"] else ""), fill=(0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        y_value = y_min + frac * y_span
        _, y = to_pixel(x_min, y_value)
        draw.text((4, y - 6), f"{y_value:.3g}", fill=(60, 60, 60))
    for x_value in spec["x_ticks"]:
        text = tick_label(x_value)
        x, _ = to_pixel(x_value, y_min)
        text_width = 6 * len(text)
        draw.text((min(max(x - text_width / 2, 0), width - 2 - text_width), height - bottom + 4), text, fill=(60, 60, 60))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
