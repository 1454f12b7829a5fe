"""Object meshes for synthesis: loading (obj, ply, glb/gltf, stl, off), GSO-style normalisation, diameters.

An `ObjectModel` is a list of trimesh parts in the model frame, metres, each keeping its own visual
(texture, vertex or face colours), so textured and coloured meshes render as they are. Normalisation
follows MegaPose-GSO: centre on the bounding box, scale so the largest extent is `max_extent`
(0.2 m). Without normalisation the file's units are used: metres, or millimetres when the diameter is
over 10 units (GigaPose's rule), or as told.

A mesh that cannot be rendered raises `BadMeshError` with a `kind` (unreadable, empty, non-finite,
degenerate, huge-texture); synthesis skips such objects, logs the reason and counts them.

Needs trimesh (the `render` extra); the loader never imports this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")
DEFAULT_COLOR = np.array([160, 160, 160, 255], dtype=np.uint8)
MAX_TEXTURE_PIXELS = 8192 * 8192  # a larger texture is skipped (GPU memory; Mesa's limit is 16384 a side)
BAD_MESH_KINDS = ("unreadable", "empty", "non-finite", "degenerate", "huge-texture")


class BadMeshError(ValueError):
    """A mesh that cannot be rendered; `kind` is one of BAD_MESH_KINDS, the message says why."""

    def __init__(self, kind: str, message: str):
        if kind not in BAD_MESH_KINDS:
            raise ValueError(f"kind must be one of {BAD_MESH_KINDS}, got {kind!r}")
        super().__init__(message)
        self.kind = kind


@dataclass
class ObjectModel:
    """A rigid object: trimesh `parts` in the model frame (metres), its BOP id and known symmetries."""

    obj_id: int
    name: str
    parts: list = field(default_factory=list)
    symmetries: dict | None = None
    _diameter: float | None = None

    @property
    def vertices(self) -> np.ndarray:
        """All vertices [N, 3], metres."""
        return np.concatenate([np.asarray(p.vertices, dtype=np.float64) for p in self.parts])

    @property
    def diameter(self) -> float:
        """Largest distance between two vertices, metres (BOP's diameter)."""
        if self._diameter is None:
            self._diameter = mesh_diameter(self.vertices)
        return self._diameter

    @property
    def radius(self) -> float:
        """Largest vertex distance from the model origin, metres."""
        return float(np.linalg.norm(self.vertices, axis=1).max())

    def colored_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vertices [N, 3] m, faces [F, 3], colours [N, 3] uint8) of all parts merged, textures baked to
        vertex colours (what BOP's PLY models hold)."""
        verts, faces, cols, base = [], [], [], 0
        for part in self.parts:
            v = np.asarray(part.vertices, dtype=np.float64)
            verts.append(v)
            faces.append(np.asarray(part.faces, dtype=np.int64) + base)
            cols.append(vertex_colors(part))
            base += len(v)
        return np.concatenate(verts), np.concatenate(faces), np.concatenate(cols)


def vertex_colors(part) -> np.ndarray:
    """Per-vertex RGB uint8 [N, 3] of a trimesh part (textures sampled at the vertex UVs)."""
    n = len(part.vertices)
    visual = part.visual
    try:
        if visual.kind == "texture":
            colors = visual.to_color().vertex_colors
        elif visual.kind in ("vertex", "face"):
            colors = visual.vertex_colors
        else:
            colors = None
    except Exception:  # exotic materials: fall back to the material's main colour
        colors = None
        main = getattr(getattr(visual, "material", None), "main_color", None)
        if main is not None:
            colors = np.tile(np.asarray(main, dtype=np.uint8), (n, 1))
    if colors is None or len(colors) != n:
        colors = np.tile(DEFAULT_COLOR, (n, 1))
    return np.asarray(colors, dtype=np.uint8)[:, :3]


def mesh_diameter(vertices: np.ndarray) -> float:
    """Exact largest pairwise distance of `vertices` [N, 3] (on their convex hull when scipy is present)."""
    v = np.asarray(vertices, dtype=np.float64)
    if len(v) < 2:
        return 0.0
    try:
        from scipy.spatial import ConvexHull

        v = v[ConvexHull(v).vertices]
    except Exception:  # no scipy or a degenerate (flat) point set: use all vertices, subsampled if huge
        if len(v) > 8000:
            v = v[np.random.default_rng(0).choice(len(v), 8000, replace=False)]
    best = 0.0
    for start in range(0, len(v), 1024):
        d = np.linalg.norm(v[start:start + 1024, None, :] - v[None, :, :], axis=-1)
        best = max(best, float(d.max()))
    return best


def load_mesh_parts(path: str | Path) -> list:
    """Trimesh parts of a mesh file (scenes flattened with their transforms, visuals kept).

    BadMeshError: the file cannot be read ("unreadable") or holds no triangles ("empty")."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"path {path} is not a mesh file; supported: {', '.join(MESH_SUFFIXES)}")
    try:
        loaded = trimesh.load(str(path), force="scene")
        parts = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    except Exception as exc:  # any parser error of any format (trimesh raises many kinds)
        raise BadMeshError("unreadable", f"cannot load mesh {path}: {type(exc).__name__}: {exc}") from None
    if not parts:
        raise BadMeshError("empty", f"mesh {path} holds no triangles")
    for part in parts:
        if part.visual is None or (part.visual.kind is None and not isinstance(
                part.visual, trimesh.visual.texture.TextureVisuals)):
            colors = np.tile(DEFAULT_COLOR, (len(part.vertices), 1))
            part.visual = trimesh.visual.ColorVisuals(part, vertex_colors=colors)
    return parts


def _texture_pixels(part) -> int:
    """Pixels of the largest texture image of a trimesh part (0 without one)."""
    material = getattr(part.visual, "material", None)
    if material is None:
        return 0
    best = 0
    for attr in ("image", "baseColorTexture", "emissiveTexture", "normalTexture", "metallicRoughnessTexture"):
        image = getattr(material, attr, None)
        size = getattr(image, "size", None)
        if isinstance(size, tuple) and len(size) == 2:
            best = max(best, int(size[0]) * int(size[1]))
    return best


def check_parts(parts: list, source: str, max_texture_pixels: int = MAX_TEXTURE_PIXELS) -> None:
    """BadMeshError unless `parts` can be rendered: finite vertices ("non-finite"), triangles of non-zero
    total area spanning a non-zero extent ("degenerate"), textures of at most `max_texture_pixels`
    ("huge-texture")."""
    if not parts:
        raise BadMeshError("empty", f"mesh {source} holds no triangles")
    area, lo, hi = 0.0, np.full(3, np.inf), np.full(3, -np.inf)
    for part in parts:
        v = np.asarray(part.vertices, dtype=np.float64)
        if not np.isfinite(v).all():
            raise BadMeshError("non-finite", f"mesh {source} has {int((~np.isfinite(v)).any(axis=1).sum())} "
                                             f"vertices with NaN or infinite coordinates")
        f = np.asarray(part.faces)
        if len(f) and (f.min() < 0 or f.max() >= len(v)):
            raise BadMeshError("degenerate", f"mesh {source} has faces indexing missing vertices")
        used = v[f.reshape(-1)] if len(f) else v[:0]
        if len(used):
            lo, hi = np.minimum(lo, used.min(axis=0)), np.maximum(hi, used.max(axis=0))
            tri = used.reshape(-1, 3, 3)
            area += 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())
        pixels = _texture_pixels(part)
        if pixels > max_texture_pixels:
            raise BadMeshError("huge-texture", f"mesh {source} has a texture of {pixels} pixels (limit "
                                               f"{max_texture_pixels}, max_texture_pixels)")
    extent = float((hi - lo).max()) if np.isfinite(lo).all() else 0.0
    if extent <= 0 or area <= 1e-12 * extent * extent:
        raise BadMeshError("degenerate", f"mesh {source} is degenerate (extent {extent:.3g}, triangle area "
                                         f"{area:.3g}: its triangles cover no surface)")


def normalise_parts(parts: list, max_extent: float | None = 0.2, units: str = "auto") -> list:
    """Put parts in metres: centred on their joint bounding box and scaled to `max_extent` (GSO), or,
    with `max_extent=None`, only converted from `units` ('m', 'mm' or 'auto': mm when diameter > 10)."""
    v = np.concatenate([np.asarray(p.vertices) for p in parts])
    lo, hi = v.min(axis=0), v.max(axis=0)
    if max_extent is not None:
        extent = float((hi - lo).max())
        if extent <= 0:
            raise ValueError("mesh has zero extent; cannot normalise it")
        centre, scale = (lo + hi) / 2, max_extent / extent
    else:
        if units not in ("auto", "m", "mm"):
            raise ValueError(f"units must be 'auto', 'm' or 'mm', got {units!r}")
        if units == "auto":
            units = "mm" if np.linalg.norm(hi - lo) > 10 else "m"
        centre, scale = np.zeros(3), (0.001 if units == "mm" else 1.0)
    out = []
    for p in parts:
        q = p.copy()
        q.apply_translation(-centre)
        q.apply_scale(scale)
        out.append(q)
    return out


def list_mesh_files(folder: str | Path) -> list[Path]:
    """Mesh files in `folder` up to three levels down (GSO's `<name>/meshes/model.obj`, ShapeNetCore.v2's
    `<synset>/<model>/models/model_normalized.obj`), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"meshes folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES
                   and len(p.relative_to(folder).parts) <= 4)
    if not files:
        raise FileNotFoundError(f"meshes folder {folder} has no {'/'.join(MESH_SUFFIXES)} files")
    return files


def load_object(path: str | Path, obj_id: int, max_extent: float | None = 0.2, units: str = "auto",
                max_texture_pixels: int = MAX_TEXTURE_PIXELS) -> ObjectModel:
    """An ObjectModel from a mesh file, normalised as GSO unless `max_extent` is None.

    BadMeshError (a ValueError) names what makes the mesh unusable (`check_parts`)."""
    parts = load_mesh_parts(path)
    check_parts(parts, str(path), max_texture_pixels)
    parts = normalise_parts(parts, max_extent=max_extent, units=units)
    return ObjectModel(obj_id=obj_id, name=Path(path).name, parts=parts)
