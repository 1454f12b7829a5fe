"""Data debug pictures: what the loader hands the model, one PNG per sample (`data.visualization`).

The original VPOG code's `visualization.enabled / save_dir / save_frequency` keys of the data config.
When enabled, training writes, on rank 0 and before the step, the pictures of every `save_frequency`-th
batch: the first micro-batch of optimiser steps 0, f, 2f, ... (with `optim.grad_accum_steps: 1`, every
f-th batch; the step count goes on across a resume), as `step{step:07d}_{i:02d}.png` in `save_dir`
(null: `<output_dir>/<run_name>/data_pictures/`). `python -m vpog.data.show` writes the same pictures
for the first samples of a run without training.

One picture has a column for the query and one per template (t1..tS: the S_p positives, then the S_n
negatives) and four rows:

1. the crops: the query; each template framed green (positive) or red (negative), captioned with its
   view id and the angle between its viewing direction and the query's; t* (the nearest view) and the
   template whose direction is d_ref are named, and d_ref itself is printed in the header;
2. visibility: the query tinted green over its visible mask; each template tinted green where its
   pixels are visible in the query (the labels' dense visibility), red where on the object but hidden;
3. buddies: each query patch in the colour of its buddy template patch (`vpog.vis.patch_cls_image`),
   unseen grey; under the query the key: the template's patches in those colours;
4. patch-flow labels: each query patch shows its buddy's 16 x 16 dense flow as HSV
   (`vpog.vis.flow_to_hsv`: hue = direction, saturation = magnitude, 1 patch = full), black where that
   template pixel is not visible in the query; unseen patches grey, ignored ones (no query depth at the
   anchor) dark grey (`vpog.vis.labelled_flow_image`); under the query the flow colour key.

The labels are those of the training step (`vpog.ops.patch_flow_labels`, tau = labels.tau_factor x
diameter, docs/conventions.md §4), computed here from the collated batch with the reference backend on
the CPU, whatever device and backend training uses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

POSITIVE_COLOUR = (0, 200, 0)
NEGATIVE_COLOUR = (220, 0, 0)
FRAME_WIDTH = 4
PAD = 4  # pixels between cells (white)


@dataclass(kw_only=True)
class VisualizationConfig:
    """Data debug pictures (mirrors `data.visualization`; the original VPOG code's keys)."""

    enabled: bool = False
    """Write the pictures of every `save_frequency`-th training batch (rank 0)."""
    save_dir: str | None = None
    """Folder of the PNGs; None: `<output_dir>/<run_name>/data_pictures`."""
    save_frequency: int = 100
    """Every this many optimiser steps (the first micro-batch of steps 0, f, 2f, ...)."""
    max_samples_per_batch: int | None = None
    """Pictures per written batch (the first samples); None: every sample of the batch."""

    def __post_init__(self) -> None:
        self.enabled = bool(self.enabled)
        if isinstance(self.save_frequency, bool) or not isinstance(self.save_frequency, int) \
                or self.save_frequency < 1:
            raise ValueError(f"data.visualization.save_frequency must be an integer >= 1, got {self.save_frequency!r}")
        m = self.max_samples_per_batch
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"data.visualization.max_samples_per_batch must be an integer >= 1 or null, got {m!r}")


def batch_labels(batch, tau_factor: float):
    """The training step's flow labels of a collated `VPOGBatch`, on the CPU with the reference backend
    (FlowLabels, docs/conventions.md §4)."""
    from vpog.ops import patch_flow_labels

    if not tau_factor > 0:
        raise ValueError(f"labels.tau_factor must be > 0, got {tau_factor}")
    b = batch.to("cpu")
    tau = float(tau_factor) * b.diameter.float()
    return patch_flow_labels(b.depths[:, 0], b.masks[:, 0], b.K[:, 0], b.T_m2c[:, 0], b.depths[:, 1:],
                             b.masks[:, 1:], b.K[:, 1:], b.T_m2c[:, 1:], tau, backend="reference")


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.clip(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12), -1.0, 1.0))
    return math.degrees(math.acos(cos))


def sample_panels(batch, labels, i: int) -> dict:
    """The cells of sample `i`'s picture (uint8 RGB arrays), by column: {"captions": [S+1 caption line
    pairs], "crops", "visibility", "buddies", "flow": [S+1 cells each], "d_ref_template": index of the
    template whose direction is d_ref, "header": lines}. Column 0 is the query."""
    from vpog import vis

    b = batch.to("cpu")
    S = b.num_templates
    if not 0 <= i < b.batch_size:
        raise IndexError(f"sample {i} out of range for a batch of {b.batch_size}")
    images = b.images[i].float()
    masks = b.masks[i]
    q_dir = b.query_dir[i].double().numpy()
    t_dirs = b.template_dirs[i].double().numpy()
    d_ref = b.d_ref[i].double().numpy()
    is_pos = b.is_positive[i].numpy().astype(bool)
    views = b.template_ids[i].numpy()
    cls, flow, visible = labels.patch_cls[i], labels.dense_flow[i], labels.dense_visible[i]
    d_ref_t = int(np.argmax(t_dirs @ d_ref))
    n_grid = cls.shape[-1] * cls.shape[-2]

    captions = [[f"query  obj {int(b.obj_id[i])}", f"visible mask {100 * float(masks[0].float().mean()):.0f}%"]]
    crops = [vis.to_uint8_image(images[0])]
    visibility = [vis.visibility_overlay(images[0], masks[0])]
    buddies = [vis.template_grid_image(cls.shape[-2], cls.shape[-1])]
    flows = [vis.flow_colour_key(crops[0].shape[0])]
    for s in range(S):
        names = [("t*" if s == 0 and is_pos[0] else "pos") if is_pos[s] else "neg"]
        if s == d_ref_t:
            names.append("d_ref")
        seen = int(((cls[s] >= 0) & (cls[s] < n_grid)).sum())
        labelled = int((cls[s] >= 0).sum())
        captions.append([f"t{s + 1} {' '.join(names)}  view {int(views[s])}",
                         f"{_angle_deg(q_dir, t_dirs[s]):.0f} deg from query, seen {seen}/{labelled}"])
        colour = POSITIVE_COLOUR if is_pos[s] else NEGATIVE_COLOUR
        crops.append(vis.frame_image(images[s + 1], colour, FRAME_WIDTH))
        seen_pixels = vis.template_visibility_map(cls[s], visible[s])
        visibility.append(vis.visibility_overlay(images[s + 1], seen_pixels, mask=masks[s + 1]))
        buddies.append(vis.patch_cls_image(cls[s], n_grid))
        flows.append(vis.labelled_flow_image(cls[s], flow[s], visible[s]))
    header = [
        f"{b.keys[i] if i < len(b.keys) else '?'}  obj {int(b.obj_id[i])}  set {int(b.dataset_id[i])}  "
        f"diameter {float(b.diameter[i]):.3f} m  S = {int(is_pos.sum())} positive (green) + "
        f"{int((~is_pos).sum())} negative (red)",
        f"d_ref = ({d_ref[0]:+.3f}, {d_ref[1]:+.3f}, {d_ref[2]:+.3f}) = direction of t{d_ref_t + 1}; "
        f"query direction ({q_dir[0]:+.3f}, {q_dir[1]:+.3f}, {q_dir[2]:+.3f})",
        "rows: crops | visibility (green: seen in the query, red: hidden) | buddies (key: template patch "
        "colours) | flow labels as HSV (key: colour wheel; black: not visible, grey: unseen, dark: ignored)",
    ]
    return {"captions": captions, "crops": crops, "visibility": visibility, "buddies": buddies, "flow": flows,
            "d_ref_template": d_ref_t, "header": header}


def sample_picture(batch, labels, i: int) -> np.ndarray:
    """Sample `i`'s debug picture (see the module docstring), uint8 RGB [H, W, 3]."""
    from vpog import vis

    p = sample_panels(batch, labels, i)
    columns = []
    for k in range(len(p["crops"])):
        cells = [vis.caption_image(p["crops"][k], p["captions"][k]), p["visibility"][k], p["buddies"][k],
                 p["flow"][k]]
        columns.append(vis.tile_images(cells, ncols=1, pad=PAD))
    grid = vis.tile_images(columns, ncols=len(columns), pad=PAD)
    return vis.caption_image(grid, p["header"])


def write_batch_pictures(batch, out_dir: str | Path, prefix: str, tau_factor: float,
                         max_samples: int | None = None, labels=None, start: int = 0, digits: int = 2) -> list[Path]:
    """Write `{prefix}{start + i:0{digits}d}.png` for the first `max_samples` samples of `batch` (None:
    all) into `out_dir` (created); labels are computed (`batch_labels`) unless given. Returns the paths."""
    from vpog import vis

    labels = batch_labels(batch, tau_factor) if labels is None else labels
    n = batch.batch_size if max_samples is None else min(int(max_samples), batch.batch_size)
    out = Path(out_dir)
    paths = []
    for i in range(n):
        path = out / f"{prefix}{start + i:0{digits}d}.png"
        vis.save_png(path, sample_picture(batch, labels, i))
        paths.append(path)
    return paths


class DebugPictureWriter:
    """The training hook: `maybe_write(batch, step, rank)` writes the pictures of the batches that
    `VisualizationConfig` asks for (rank 0, first micro-batch of every `save_frequency`-th step)."""

    def __init__(self, cfg: VisualizationConfig, default_dir: str | Path, tau_factor: float) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.save_dir) if cfg.save_dir else Path(default_dir)
        self.tau_factor = float(tau_factor)
        self._last_step: int | None = None
        self._announced = False

    def due(self, step: int, rank: int = 0) -> bool:
        """Whether the batch of optimiser step `step` on `rank` gets pictures (once per step)."""
        return (self.cfg.enabled and rank == 0 and step % self.cfg.save_frequency == 0
                and step != self._last_step)

    def maybe_write(self, batch, step: int, rank: int = 0) -> list[Path]:
        """Write this batch's pictures when `due`; returns the paths written ([] otherwise)."""
        if not self.due(step, rank):
            return []
        self._last_step = step
        if not self._announced:
            log.info("data pictures: every %d steps, %s per batch, to %s", self.cfg.save_frequency,
                     self.cfg.max_samples_per_batch or "every sample", self.out_dir)
            self._announced = True
        return write_batch_pictures(batch, self.out_dir, f"step{step:07d}_", self.tau_factor,
                                    self.cfg.max_samples_per_batch)
