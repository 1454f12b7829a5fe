"""Pictures of flow labels and predictions for the trainer's logs (torch, numpy and Pillow only).

Every function takes torch tensors (any device) or numpy arrays and returns a numpy uint8 RGB
image [H, W, 3] that `save_png` writes and TensorBoard's `add_image(..., dataformats="HWC")` takes.

- `flow_to_hsv`: a flow field as colour: hue = direction (+u, to the right, is red; +v, down, is
  yellow-green; -u cyan; -v violet), saturation = magnitude / `max_magnitude` (white = no motion),
  black = invalid.
- `patch_tiles_to_image`: per-query-patch tiles [GH, GW, 16, 16, ...] (the layout of
  `FlowLabels.dense_flow` / `dense_visible`) laid out in the query patch grid [16 GH, 16 GW, ...].
  Pixel (16 ix + u, 16 iy + v) then shows buddy-patch pixel (u, v) of query patch (iy, ix).
- `dense_flow_image`, `patch_cls_image`: one (sample, template) pair of `FlowLabels` as images.
- `visibility_overlay`: an image tinted green where visible, red where on the object but hidden;
  `template_visibility_map` gives the template pixels that the labels see in the query.
- `draw_correspondences`: query and template side by side with lines between matched points;
  `label_correspondences` picks such pairs from the labels (buddy centres and dense pixels).
- `labelled_flow_image`: `dense_flow_image` with unseen query patches grey and ignored ones dark;
  `flow_colour_key` is the colour wheel of `flow_to_hsv` (the key to those pictures).
- `frame_image`, `caption_image`: a coloured frame and lines of text above an image (for the data
  debug pictures of `vpog.data.debug_pictures`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

log = logging.getLogger(__name__)

PATCH = 16


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def to_uint8_image(image) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3].

    Accepts [H, W], [H, W, 1|3] or [3, H, W]; floats are taken in [0, 1] (clipped), bool as 0/255,
    uint8 as is.
    """
    a = _np(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"image must have shape [H, W], [H, W, 3] or [3, H, W], got {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def depth_to_image(depth) -> np.ndarray:
    """Depth [H, W] (0 = empty) as grey uint8 RGB: near bright, far dark, empty black."""
    d = _np(depth).astype(np.float32)
    if d.ndim != 2:
        raise ValueError(f"depth must have shape [H, W], got {d.shape}")
    valid = d > 0
    if not valid.any():
        return np.zeros(d.shape + (3,), np.uint8)
    lo, hi = d[valid].min(), d[valid].max()
    g = np.where(valid, 1.0 - 0.8 * (d - lo) / max(hi - lo, 1e-9), 0.0)
    return to_uint8_image(g)


def hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]. h, s, v [...] -> [..., 3] float32."""
    h = np.mod(np.asarray(h, np.float32), 1.0) * 6.0
    s = np.asarray(s, np.float32)
    v = np.asarray(v, np.float32)
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ], axis=0)  # [6, ..., 3]
    return np.take_along_axis(table, i[None, ..., None], axis=0)[0]


def flow_to_hsv(flow, valid=None, max_magnitude: float | None = None) -> np.ndarray:
    """Flow [H, W, 2] (u, v) as uint8 RGB [H, W, 3]; see the module docstring for the colours.

    valid: [H, W] bool, black where False (default: everywhere valid).
    max_magnitude: magnitude drawn fully saturated (default: the largest valid magnitude).
    """
    f = _np(flow).astype(np.float32)
    if f.ndim != 3 or f.shape[-1] != 2:
        raise ValueError(f"flow must have shape [H, W, 2], got {f.shape}")
    ok = np.ones(f.shape[:2], bool) if valid is None else _np(valid).astype(bool)
    if ok.shape != f.shape[:2]:
        raise ValueError(f"valid must have shape {list(f.shape[:2])}, got {ok.shape}")
    ok = ok & np.isfinite(f).all(-1)
    f = np.where(ok[..., None], f, 0.0)
    mag = np.sqrt((f * f).sum(-1))
    if max_magnitude is None:
        max_magnitude = float(mag[ok].max()) if ok.any() else 1.0
    if not max_magnitude > 0:
        max_magnitude = 1.0
    hue = np.arctan2(f[..., 1], f[..., 0]) / (2 * np.pi)
    rgb = hsv_to_rgb(hue, np.clip(mag / max_magnitude, 0.0, 1.0), np.ones_like(mag))
    return to_uint8_image(np.where(ok[..., None], rgb, 0.0))


def patch_tiles_to_image(tiles):
    """[GH, GW, P, P, ...] per-patch tiles -> [GH P, GW P, ...] in the patch grid (numpy)."""
    t = _np(tiles)
    if t.ndim < 4 or t.shape[2] != t.shape[3]:
        raise ValueError(f"tiles must have shape [GH, GW, P, P, ...], got {t.shape}")
    GH, GW, P = t.shape[:3]
    rest = t.shape[4:]
    return t.swapaxes(1, 2).reshape((GH * P, GW * P) + rest)


def dense_flow_image(dense_flow, dense_visible, max_magnitude: float | None = 1.0) -> np.ndarray:
    """One pair's dense flow [GH, GW, 16, 16, 2] (patches) as uint8 RGB [16 GH, 16 GW, 3].

    Each query patch's square shows its buddy's 16 x 16 flow; invisible pixels are black. The
    default `max_magnitude` of one patch saturates where a pixel lands a patch from the centre.
    """
    return flow_to_hsv(patch_tiles_to_image(dense_flow), patch_tiles_to_image(dense_visible), max_magnitude)


UNSEEN_GREY = 0.6
"""Grey level of query patches whose point no template pixel sees (patch_cls = NP) in `labelled_flow_image`."""
IGNORED_GREY = 0.2
"""Grey level of query patches without object depth at their anchor (patch_cls = -1)."""


def labelled_flow_image(patch_cls, dense_flow, dense_visible, max_magnitude: float | None = 1.0) -> np.ndarray:
    """One pair's labels as uint8 RGB [16 GH, 16 GW, 3]: `dense_flow_image` (HSV flow, black where the
    buddy pixel is not visible in the query) with unseen query patches (patch_cls = GH GW) filled grey
    (`UNSEEN_GREY`) and ignored ones (-1) dark grey (`IGNORED_GREY`)."""
    c = _np(patch_cls).astype(np.int64)
    if c.ndim != 2:
        raise ValueError(f"patch_cls must have shape [GH, GW], got {c.shape}")
    GH, GW = c.shape
    img = dense_flow_image(dense_flow, dense_visible, max_magnitude).astype(np.float32) / 255.0
    fill = np.where(c == GH * GW, UNSEEN_GREY, np.where(c < 0, IGNORED_GREY, np.nan))
    fill = np.repeat(np.repeat(fill, PATCH, 0), PATCH, 1)[..., None]
    return to_uint8_image(np.where(np.isnan(fill), img, fill))


def flow_colour_key(size: int = 224, max_magnitude: float = 1.0) -> np.ndarray:
    """The colours of `flow_to_hsv` on a disc: the flow (u, v) from the centre, `max_magnitude` at the
    rim (white centre = no motion; +u right red). uint8 RGB [size, size, 3], white outside the disc."""
    r = (size - 1) / 2
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([(u - r) / r, (v - r) / r], -1) * max_magnitude
    inside = (flow ** 2).sum(-1) <= max_magnitude ** 2
    img = flow_to_hsv(flow, inside, max_magnitude)
    img[~inside] = 255
    return img


def frame_image(image, color, width: int = 4) -> np.ndarray:
    """`image` (anything `to_uint8_image` takes) with a `width`-pixel frame of `color` (RGB 0..255) drawn
    over its border. -> uint8 [H, W, 3]."""
    img = to_uint8_image(image).copy()
    c = np.asarray(color, np.uint8)
    img[:width], img[-width:], img[:, :width], img[:, -width:] = c, c, c, c
    return img


def caption_image(image, lines, color=(0, 0, 0), background=(255, 255, 255), line_height: int = 14) -> np.ndarray:
    """Lines of text (Pillow's default font) in a band above `image`. -> uint8 [H + band, W, 3]."""
    from PIL import Image, ImageDraw

    img = to_uint8_image(image)
    lines = [lines] if isinstance(lines, str) else list(lines)
    band = np.empty((line_height * len(lines) + 4, img.shape[1], 3), np.uint8)
    band[:] = np.asarray(background, np.uint8)
    canvas = Image.fromarray(band)
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(lines):
        draw.text((3, 2 + k * line_height), str(text), fill=tuple(int(x) for x in color))
    return np.concatenate([np.asarray(canvas), img], axis=0)


def patch_cls_image(patch_cls, num_patches: int | None = None) -> np.ndarray:
    """One pair's patch_cls [GH, GW] as uint8 RGB [16 GH, 16 GW, 3].

    Buddies are coloured by their template grid position (hue = column, brightness = row), unseen
    is grey, ignored (-1) is black; `template_grid_image` draws the same colours on the template.
    """
    c = _np(patch_cls).astype(np.int64)
    if c.ndim != 2:
        raise ValueError(f"patch_cls must have shape [GH, GW], got {c.shape}")
    GH, GW = c.shape
    n = GH * GW if num_patches is None else num_patches
    colours = _grid_colours(GH, GW)  # [n, 3]
    rgb = np.where((c >= 0)[..., None] & (c < n)[..., None], colours[np.clip(c, 0, n - 1)], 0.0)
    rgb = np.where((c == n)[..., None], 0.5, rgb)
    return to_uint8_image(np.repeat(np.repeat(rgb, PATCH, 0), PATCH, 1))


def template_grid_image(GH: int = 14, GW: int = 14) -> np.ndarray:
    """The buddy colours of `patch_cls_image` on the template grid, uint8 RGB [16 GH, 16 GW, 3]."""
    rgb = _grid_colours(GH, GW).reshape(GH, GW, 3)
    return to_uint8_image(np.repeat(np.repeat(rgb, PATCH, 0), PATCH, 1))


def _grid_colours(GH: int, GW: int) -> np.ndarray:
    iy, ix = np.meshgrid(np.arange(GH), np.arange(GW), indexing="ij")
    hue = ix.reshape(-1) / max(GW, 1)
    val = 0.45 + 0.55 * (iy.reshape(-1) + 1) / GH
    return hsv_to_rgb(hue, np.full(hue.shape, 0.9), val)


def visibility_overlay(image, visible, mask=None, alpha: float = 0.5, visible_color=(0, 220, 0),
                       hidden_color=(230, 0, 0)) -> np.ndarray:
    """Tint `image` where `visible` [H, W] (or per-patch tiles [GH, GW, 16, 16]) is True.

    mask: optional [H, W] bool (e.g. the template mask): pixels with mask & ~visible get `hidden_color`.
    """
    img = to_uint8_image(image).astype(np.float32)
    vis = _np(visible).astype(bool)
    if vis.ndim == 4:
        vis = patch_tiles_to_image(vis)
    if vis.shape != img.shape[:2]:
        raise ValueError(f"visible must have the image's shape {list(img.shape[:2])}, got {vis.shape}")
    out = np.where(vis[..., None], (1 - alpha) * img + alpha * np.asarray(visible_color, np.float32), img)
    if mask is not None:
        m = _np(mask).astype(bool)
        if m.shape != vis.shape:
            raise ValueError(f"mask must have shape {list(vis.shape)}, got {m.shape}")
        hidden = m & ~vis
        out = np.where(hidden[..., None], (1 - alpha) * img + alpha * np.asarray(hidden_color, np.float32), out)
    return (out + 0.5).astype(np.uint8)


def template_visibility_map(patch_cls, dense_visible) -> np.ndarray:
    """Template pixels visible in the query for some query patch, bool [16 GH, 16 GW].

    patch_cls [GH, GW] and dense_visible [GH, GW, 16, 16] of one pair; the dense labels are laid
    out by query patch, this scatters them to their buddy patches' template pixels.
    """
    c = _np(patch_cls).astype(np.int64)
    v = _np(dense_visible).astype(bool)
    GH, GW = c.shape
    if v.shape != (GH, GW, PATCH, PATCH):
        raise ValueError(f"dense_visible must have shape [{GH}, {GW}, {PATCH}, {PATCH}], got {v.shape}")
    out = np.zeros((GH * PATCH, GW * PATCH), bool)
    i = np.nonzero((c >= 0) & (c < GH * GW))
    j = c[i]
    rows = (j // GW * PATCH)[:, None, None] + np.arange(PATCH)[None, :, None]
    cols = (j % GW * PATCH)[:, None, None] + np.arange(PATCH)[None, None, :]
    sel = v[i]
    out[np.broadcast_to(rows, sel.shape)[sel], np.broadcast_to(cols, sel.shape)[sel]] = True
    return out


def distinct_colours(n: int) -> np.ndarray:
    """n saturated colours spread around the hue circle, uint8 [n, 3]."""
    hue = (np.arange(n) * 0.618034) % 1.0
    return (hsv_to_rgb(hue, np.full(n, 0.9), np.ones(n)) * 255 + 0.5).astype(np.uint8)


def _paint_segments(img: np.ndarray, a: np.ndarray, b: np.ndarray, colours: np.ndarray) -> None:
    """Draw segments a[n] -> b[n] (x, y) into img in place, one colour per segment."""
    if len(a) == 0:
        return
    steps = int(np.ceil(np.abs(b - a).max())) + 1
    t = np.linspace(0.0, 1.0, max(steps, 2), dtype=np.float32)
    pts = np.rint(a[:, None] + (b - a)[:, None] * t[None, :, None]).astype(np.int64)  # [n, L, 2]
    col = np.broadcast_to(colours[:, None], pts.shape[:2] + (3,))
    inside = (pts[..., 0] >= 0) & (pts[..., 0] < img.shape[1]) & (pts[..., 1] >= 0) & (pts[..., 1] < img.shape[0])
    img[pts[..., 1][inside], pts[..., 0][inside]] = col[inside]


def _paint_dots(img: np.ndarray, centres: np.ndarray, colours: np.ndarray, radius: int) -> None:
    oy, ox = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = (ox * ox + oy * oy) <= radius * radius + radius
    off = np.stack([ox[disc], oy[disc]], -1)  # [k, 2]
    pts = np.rint(centres)[:, None].astype(np.int64) + off[None]
    col = np.broadcast_to(colours[:, None], pts.shape[:2] + (3,))
    inside = (pts[..., 0] >= 0) & (pts[..., 0] < img.shape[1]) & (pts[..., 1] >= 0) & (pts[..., 1] < img.shape[0])
    img[pts[..., 1][inside], pts[..., 0][inside]] = col[inside]


def _points(x) -> np.ndarray:
    a = _np(x).astype(np.float32)
    return a.reshape(0, 2) if a.size == 0 else a


def draw_correspondences(query_image, template_image, query_uv, template_uv, colours=None,
                         gap: int = 8, radius: int = 2, lines: bool = True) -> np.ndarray:
    """Query (left) and template (right) side by side, matched points joined by lines.

    query_uv, template_uv: [N, 2] pixel coordinates (u, v) in each image (docs/conventions.md §1 convention).
    colours: [N, 3] uint8 (default: `distinct_colours(N)`). Returns uint8 [H, Wq + gap + Wt, 3].
    """
    q = to_uint8_image(query_image)
    t = to_uint8_image(template_image)
    qa, ta = _points(query_uv), _points(template_uv)
    if qa.ndim != 2 or qa.shape[-1] != 2 or qa.shape != ta.shape:
        raise ValueError(f"query_uv and template_uv must both have shape [N, 2], got {qa.shape} and {ta.shape}")
    ok = np.isfinite(qa).all(-1) & np.isfinite(ta).all(-1)
    n = len(qa)
    col = distinct_colours(n) if colours is None else np.asarray(_np(colours), np.uint8).reshape(-1, 3)
    if len(col) != n:
        raise ValueError(f"colours must have shape [{n}, 3], got {col.shape}")
    H = max(q.shape[0], t.shape[0])
    canvas = np.full((H, q.shape[1] + gap + t.shape[1], 3), 255, np.uint8)
    canvas[:q.shape[0], :q.shape[1]] = q
    canvas[:t.shape[0], q.shape[1] + gap:] = t
    shift = np.array([q.shape[1] + gap, 0], np.float32)
    qa, ta, col = qa[ok], ta[ok] + shift, col[ok]
    if lines:
        _paint_segments(canvas, qa, ta, col)
    _paint_dots(canvas, qa, col, radius)
    _paint_dots(canvas, ta, col, radius)
    return canvas


def label_correspondences(patch_cls, dense_flow=None, dense_visible=None, max_pairs: int = 48,
                          pixels_per_patch: int = 0):
    """Matched (query_uv, template_uv) pairs [N, 2] from one pair's labels (float32 numpy).

    patch_cls [GH, GW]: each buddy gives (centre(i), centre(buddy)), at most `max_pairs` of them,
    evenly spread over the buddies. With dense_flow [GH, GW, 16, 16, 2] and dense_visible, each
    chosen patch adds up to `pixels_per_patch` visible pixels (centre(i) + 16 flow, template pixel).
    """
    c = _np(patch_cls).astype(np.int64)
    GH, GW = c.shape
    flat = c.reshape(-1)
    idx = np.nonzero((flat >= 0) & (flat < GH * GW))[0]
    if len(idx) > max_pairs:
        idx = idx[np.linspace(0, len(idx) - 1, max_pairs).round().astype(np.int64)]
    half = (PATCH - 1) / 2
    qc = np.stack([idx % GW * PATCH + half, idx // GW * PATCH + half], -1).astype(np.float32)
    j = flat[idx]
    tc = np.stack([j % GW * PATCH + half, j // GW * PATCH + half], -1).astype(np.float32)
    qs, ts = [qc], [tc]
    if pixels_per_patch > 0 and dense_flow is not None and dense_visible is not None:
        fl = _np(dense_flow).reshape(GH * GW, PATCH * PATCH, 2)[idx]
        vis = _np(dense_visible).reshape(GH * GW, PATCH * PATCH)[idx]
        for k in range(len(idx)):  # a few dozen chosen patches at most
            pix = np.nonzero(vis[k])[0]
            if len(pix) == 0:
                continue
            pix = pix[np.linspace(0, len(pix) - 1, min(pixels_per_patch, len(pix))).round().astype(np.int64)]
            qs.append(qc[k] + PATCH * fl[k, pix])
            ts.append(np.stack([j[k] % GW * PATCH + pix % PATCH, j[k] // GW * PATCH + pix // PATCH], -1)
                      .astype(np.float32))
    return np.concatenate(qs).astype(np.float32), np.concatenate(ts).astype(np.float32)


def tile_images(images, ncols: int | None = None, pad: int = 4) -> np.ndarray:
    """Lay uint8-convertible images out in a grid (row-major, white padding) -> uint8 [H, W, 3]."""
    imgs = [to_uint8_image(im) for im in images]
    if not imgs:
        raise ValueError("images must not be empty")
    ncols = len(imgs) if ncols is None else max(1, ncols)
    nrows = -(-len(imgs) // ncols)
    h = max(im.shape[0] for im in imgs)
    w = max(im.shape[1] for im in imgs)
    out = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, 3), 255, np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, ncols)
        out[r * (h + pad):r * (h + pad) + im.shape[0], c * (w + pad):c * (w + pad) + im.shape[1]] = im
    return out


def save_png(path: str | os.PathLike, image) -> None:
    """Write an image (anything `to_uint8_image` takes) as PNG, creating parent folders."""
    from PIL import Image

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(to_uint8_image(image)).save(path, format="PNG")
    log.debug("wrote %s", path)
