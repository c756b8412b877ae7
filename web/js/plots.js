// Error-Control Samplers: live line plots on the pack's nodes (POLARIS omega per step, VRG schedules and error
// profiles, noise-shift curves). A node sends its plot as data in its UI output under "error_control_plot"
// (plots/line.py); this extension draws it on a canvas widget, and greys it out when an input changes until the next
// run. No build step, no network; only app.registerExtension and the node's DOM-widget API are used.
import { app } from "../../../scripts/app.js";

const UI_KEY = "error_control_plot";
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
// Dash and marker of the i-th series, as plots/line.py's STYLES: curves that coincide stay distinguishable.
const STYLES = [
  { dash: [], marker: "dot" },
  { dash: [7, 5], marker: "square" },
  { dash: [2, 4], marker: "triangle" },
  { dash: [9, 3, 2, 3], marker: "cross" },
];
const HEIGHT = 220; // per plot; tools/workflows.py leaves PLOT_HEIGHT for it

function bounds(spec) {
  const scaleY = (y) => (spec.log_y ? Math.log10(Math.max(y, 1e-30)) : y);
  const points = spec.series.map((s) =>
    s.x.map((x, i) => [x, s.y[i]]).filter(([x, y]) => x !== null && y !== null).map(([x, y]) => [x, scaleY(y)]));
  const all = points.flat();
  const xs = all.map((p) => p[0]).concat(spec.x_ticks ?? []), ys = all.map((p) => p[1]);
  const box = { xMin: Math.min(...xs), xMax: Math.max(...xs), yMin: Math.min(...ys), yMax: Math.max(...ys) };
  return { points, box: all.length ? box : { xMin: 0, xMax: 1, yMin: 0, yMax: 1 } };
}

function drawMarker(ctx, marker, x, y) {
  ctx.setLineDash([]);
  ctx.lineWidth = 1;
  ctx.beginPath();
  if (marker === "dot") {
    ctx.arc(x, y, 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  if (marker === "square") ctx.rect(x - 4, y - 4, 8, 8);
  else if (marker === "triangle") {
    ctx.moveTo(x, y - 6);
    ctx.lineTo(x - 5, y + 4);
    ctx.lineTo(x + 5, y + 4);
    ctx.closePath();
  } else {
    ctx.moveTo(x - 4, y - 4);
    ctx.lineTo(x + 4, y + 4);
    ctx.moveTo(x - 4, y + 4);
    ctx.lineTo(x + 4, y - 4);
  }
  ctx.stroke();
}

// A tick's text as plots/line.py's tick_label: whole numbers without decimals.
const tickLabel = (v) => (Number.isInteger(v) ? String(v) : v.toPrecision(3));

function drawPanel(ctx, spec, top0, width, height) {
  const left = 52, right = 10, top = top0 + 22, bottom = top0 + height - 26;
  const { points, box } = bounds(spec);
  const spanX = box.xMax - box.xMin || 1, spanY = box.yMax - box.yMin || 1;
  const px = (x) => left + ((x - box.xMin) / spanX) * (width - left - right);
  const py = (y) => bottom - ((y - box.yMin) / spanY) * (bottom - top);
  ctx.strokeStyle = "#888";
  ctx.strokeRect(left, top, width - left - right, bottom - top);
  ctx.fillStyle = "#222";
  ctx.fillText(spec.title, 6, top0 + 14);
  ctx.fillStyle = "#555";
  for (const f of [0, 0.5, 1]) {
    const y = box.yMin + f * spanY;
    ctx.fillText((spec.log_y ? 10 ** y : y).toPrecision(3), 2, py(y) + 4);
  }
  for (const x of spec.x_ticks ?? [box.xMin, (box.xMin + box.xMax) / 2, box.xMax]) {
    const text = tickLabel(x), textWidth = ctx.measureText(text).width; // kept inside the panel
    ctx.fillText(text, Math.min(Math.max(px(x) - textWidth / 2, 0), width - 2 - textWidth), bottom + 14);
  }
  ctx.fillText(`${spec.x_label} →   ${spec.y_label}${spec.log_y ? " (log)" : ""} ↑`, left + 4, top0 + height - 2);
  points.forEach((pts, i) => {
    const style = STYLES[i % STYLES.length];
    ctx.strokeStyle = ctx.fillStyle = COLOURS[i % COLOURS.length];
    ctx.lineWidth = 2;
    ctx.setLineDash(style.dash);
    ctx.beginPath();
    pts.forEach(([x, y], j) => (j ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    pts.forEach(([x, y]) => drawMarker(ctx, style.marker, px(x), py(y)));
    const legendY = top + 10 + 13 * i;
    ctx.lineWidth = 2;
    ctx.setLineDash(style.dash);
    ctx.beginPath();
    ctx.moveTo(left + 8, legendY);
    ctx.lineTo(left + 26, legendY);
    ctx.stroke();
    drawMarker(ctx, style.marker, left + 17, legendY);
    ctx.fillText(spec.series[i].label, left + 30, legendY + 4);
  });
  ctx.setLineDash([]);
}

// Draw every plot a node sent, one panel each, stacked; greyed out with a note when the inputs changed since.
function draw(canvas, specs, stale) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(canvas.clientWidth, 200), height = Math.max(canvas.clientHeight, 120);
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#fdfdfd";
  ctx.fillRect(0, 0, width, height);
  ctx.font = "11px sans-serif";
  if (!specs?.length) {
    ctx.fillStyle = "#777";
    ctx.fillText("Queue the prompt to see the plot.", 12, height / 2);
    return;
  }
  const panel = height / specs.length;
  specs.forEach((spec, i) => drawPanel(ctx, spec, i * panel, width, panel));
  if (stale) {
    ctx.fillStyle = "rgba(255, 255, 255, 0.6)";
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#a33";
    ctx.fillText("Inputs changed: queue the prompt to update.", 60, height / 2);
  }
}

function chain(prototype, name, after) {
  const original = prototype[name];
  prototype[name] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

// How many plots a node of the pack outputs (its IMAGE outputs named "...plot"); each gets a panel.
function plotCount(nodeData) {
  if (!nodeData.category?.startsWith("sampling/error_control")) return 0;
  return (nodeData.output_name ?? []).filter((name, i) => nodeData.output[i] === "IMAGE" && /plot/.test(name)).length;
}

app.registerExtension({
  name: "ErrorControlSamplers.Plots",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!plotCount(nodeData)) return;
    const plots = plotCount(nodeData);
    chain(nodeType.prototype, "onNodeCreated", function () {
      const canvas = document.createElement("canvas");
      canvas.className = "error-control-plot";
      canvas.style.width = "100%";
      canvas.style.height = `${HEIGHT * plots}px`;
      const widget = this.addDOMWidget(UI_KEY, "error_control_plot", canvas, { serialize: false, hideOnZoom: false });
      widget.serialize = false;
      widget.computeLayoutSize = () => ({ minHeight: HEIGHT * plots, minWidth: 240 });
      this.errorControlPlot = { canvas, specs: null, stale: false };
      requestAnimationFrame(() => draw(canvas, null, false));
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const specs = output?.[UI_KEY];
      if (!specs?.length) return;
      Object.assign(this.errorControlPlot, { specs, stale: false });
      draw(this.errorControlPlot.canvas, specs, false);
    });
    chain(nodeType.prototype, "onWidgetChanged", function () {
      const plot = this.errorControlPlot;
      if (!plot?.specs) return;
      plot.stale = true;
      draw(plot.canvas, plot.specs, true);
    });
    chain(nodeType.prototype, "onResize", function () {
      const plot = this.errorControlPlot;
      if (plot) requestAnimationFrame(() => draw(plot.canvas, plot.specs, plot.stale));
    });
  },
});
