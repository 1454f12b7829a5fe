"""Report figures drawn with Pillow: error histograms, recall curves and a grid of pose overlays.

Pillow is already a core dependency (image I/O), so the report needs no plotting library: these
are simple line and bar charts on a fixed-size canvas with axes, ticks, labels and a legend, which
is all an evaluation report needs, and they render the same on a bare GPU node.

    histogram_figure(series, ...)  one panel per metric, one outline per method
    recall_figure(curves, ...)     one panel per metric, recall (0..1) against the threshold
    overlay_grid(tiles, ...)       query crops with model points projected at the estimated (green)
                                   and ground-truth (red) poses, captioned with their errors
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
PANEL_W, PANEL_H = 420, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 30, 44


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e4 else f"{v:.0e}"


@dataclass
class _Panel:
    """Axes of one chart: data (x, y) in [x0, x1] x [y0, y1] -> pixels of `box` (left, top, right, bottom)."""

    draw: ImageDraw.ImageDraw
    box: tuple[int, int, int, int]
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float, y: float) -> tuple[float, float]:
        l, t, r, b = self.box
        u = l + (x - self.x0) / max(self.x1 - self.x0, 1e-12) * (r - l)
        v = b - (y - self.y0) / max(self.y1 - self.y0, 1e-12) * (b - t)
        return u, v

    def frame(self, title: str, xlabel: str, ylabel: str) -> None:
        d, font = self.draw, _font(11)
        l, t, r, b = self.box
        d.rectangle(self.box, outline=(0, 0, 0))
        for x in _nice_ticks(self.x0, self.x1):
            u, _ = self.px(x, self.y0)
            d.line([(u, b), (u, b + 4)], fill=(0, 0, 0))
            d.line([(u, t), (u, b)], fill=(230, 230, 230))
            d.text((u, b + 6), _fmt(x), fill=(0, 0, 0), font=font, anchor="mt")
        for y in _nice_ticks(self.y0, self.y1):
            _, v = self.px(self.x0, y)
            d.line([(l - 4, v), (l, v)], fill=(0, 0, 0))
            d.line([(l + 1, v), (r - 1, v)], fill=(230, 230, 230))
            d.text((l - 6, v), _fmt(y), fill=(0, 0, 0), font=font, anchor="rm")
        d.rectangle(self.box, outline=(0, 0, 0))
        d.text(((l + r) / 2, t - 8), title, fill=(0, 0, 0), font=_font(13), anchor="mb")
        d.text(((l + r) / 2, b + 24), xlabel, fill=(0, 0, 0), font=font, anchor="mt")
        d.text((l - MARGIN_L + 4, t - 8), ylabel, fill=(0, 0, 0), font=font, anchor="lb")

    def polyline(self, xs: Sequence[float], ys: Sequence[float], colour, width: int = 2) -> None:
        pts = [self.px(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        if len(pts) >= 2:
            self.draw.line(pts, fill=colour, width=width, joint="curve")
        elif pts:
            u, v = pts[0]
            self.draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour)

    def legend(self, names: Sequence[str]) -> None:
        l, t, r, _ = self.box
        font = _font(11)
        for k, name in enumerate(names):
            y = t + 8 + 14 * k
            self.draw.line([(r - 120, y), (r - 104, y)], fill=COLOURS[k % len(COLOURS)], width=3)
            self.draw.text((r - 100, y), name[:16], fill=(0, 0, 0), font=font, anchor="lm")


def _canvas(n_panels: int, cols: int) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    cols = max(1, min(cols, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    img = Image.new("RGB", (cols * PANEL_W, rows * PANEL_H), (255, 255, 255))
    boxes = []
    for k in range(n_panels):
        ox, oy = (k % cols) * PANEL_W, (k // cols) * PANEL_H
        boxes.append((ox + MARGIN_L, oy + MARGIN_T, ox + PANEL_W - MARGIN_R, oy + PANEL_H - MARGIN_B))
    return img, boxes


def histogram_figure(series: Mapping[str, Mapping[str, Sequence[float]]],
                     ranges: Mapping[str, tuple[float, float]], bins: int = 30, cols: int = 2) -> Image.Image:
    """Histograms: series {metric: {method: values}}, ranges {metric: (lo, hi)} (values above hi go in the
    last bin) -> image with one panel per metric and one step outline per method (share of estimates)."""
    metrics = list(series)
    img, boxes = _canvas(len(metrics), cols)
    draw = ImageDraw.Draw(img)
    for metric, box in zip(metrics, boxes):
        lo, hi = ranges[metric]
        edges = np.linspace(lo, hi, bins + 1)
        hists = {}
        for method, values in series[metric].items():
            v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
            h = np.histogram(np.clip(v, lo, hi), bins=edges)[0].astype(np.float64)
            hists[method] = h / max(len(v), 1)
        top = max([h.max() for h in hists.values() if len(h)] + [1e-3]) * 1.1
        panel = _Panel(draw, box, lo, hi, 0.0, top)
        panel.frame(metric, metric.split("[")[-1].rstrip("]") if "[" in metric else "", "share")
        for k, (_, h) in enumerate(hists.items()):
            xs = np.repeat(edges, 2)[1:-1]
            ys = np.repeat(h, 2)
            panel.polyline(xs.tolist(), ys.tolist(), COLOURS[k % len(COLOURS)])
        panel.legend(list(hists))
    return img


def recall_figure(curves: Mapping[str, tuple[Sequence[float], Mapping[str, Sequence[float]]]],
                  cols: int = 2) -> Image.Image:
    """Recall curves: curves {metric: (thresholds, {method: recalls})} -> one panel per metric."""
    metrics = list(curves)
    img, boxes = _canvas(len(metrics), cols)
    draw = ImageDraw.Draw(img)
    for metric, box in zip(metrics, boxes):
        xs, per_method = curves[metric]
        xs = [float(x) for x in xs]
        panel = _Panel(draw, box, min(xs), max(xs), 0.0, 1.0)
        panel.frame(metric, "threshold", "recall")
        for k, (_, ys) in enumerate(per_method.items()):
            panel.polyline(xs, [float("nan") if y is None else float(y) for y in ys], COLOURS[k % len(COLOURS)])
        panel.legend(list(per_method))
    return img


@dataclass
class OverlayTile:
    """One qualitative example: the query crop and model points projected at two poses (crop pixels)."""

    image: np.ndarray
    """[H, W, 3] uint8 RGB query crop."""
    uv_est: np.ndarray
    """[P, 2] model points projected with the estimated pose (drawn green)."""
    uv_gt: np.ndarray
    """[P, 2] the same with the ground-truth pose (drawn red)."""
    caption: str


def overlay_grid(tiles: Sequence[OverlayTile], cols: int = 4, point_radius: float = 0.8) -> Image.Image:
    """A grid of query crops with the estimated (green) and ground-truth (red) poses' projected points."""
    if not tiles:
        raise ValueError("tiles must hold at least one OverlayTile")
    H, W = tiles[0].image.shape[:2]
    cap_h = 30
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    head_h = 16
    grid = Image.new("RGB", (cols * W, head_h + rows * (H + cap_h)), (255, 255, 255))
    font = _font(11)
    head = ImageDraw.Draw(grid)
    head.text((3, 2), "model points at the", fill=(0, 0, 0), font=font)
    x = 3 + head.textlength("model points at the ", font=font)
    head.text((x, 2), "estimated pose", fill=(0, 150, 0), font=font)
    x += head.textlength("estimated pose ", font=font)
    head.text((x, 2), "and the", fill=(0, 0, 0), font=font)
    x += head.textlength("and the ", font=font)
    head.text((x, 2), "ground-truth pose", fill=(200, 0, 0), font=font)
    for k, tile in enumerate(tiles):
        if tile.image.shape[:2] != (H, W):
            raise ValueError(f"tiles[{k}].image must be {H}x{W} like tiles[0], got {tile.image.shape[:2]}")
        im = Image.fromarray(np.ascontiguousarray(tile.image.astype(np.uint8))).convert("RGB")
        im = Image.blend(im, Image.new("RGB", im.size, (0, 0, 0)), 0.25)
        d = ImageDraw.Draw(im)
        for uv, colour in ((tile.uv_gt, (255, 60, 60)), (tile.uv_est, (60, 255, 60))):
            for u, v in np.asarray(uv, dtype=np.float64).reshape(-1, 2):
                if math.isfinite(u) and math.isfinite(v) and -2 <= u <= W + 2 and -2 <= v <= H + 2:
                    d.ellipse([u - point_radius, v - point_radius, u + point_radius, v + point_radius], fill=colour)
        ox, oy = (k % cols) * W, head_h + (k // cols) * (H + cap_h)
        grid.paste(im, (ox, oy))
        gd = ImageDraw.Draw(grid)
        for j, line in enumerate(tile.caption.split("\n")[:2]):
            gd.text((ox + 3, oy + H + 2 + 13 * j), line, fill=(0, 0, 0), font=font)
    return grid
