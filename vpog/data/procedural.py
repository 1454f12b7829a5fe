"""Procedural objects: random compositions of primitives with varied colours and textures.

An object is 3 to 5 primitives (box, cylinder, cone, capsule, ellipsoid, torus) attached to a body
primitive at random surface points and orientations. Each part gets its own colour (hues spread by the
golden ratio, so no two parts share one) and a solid colour or a procedural texture (stripes, checker,
dots, smooth noise, gradient) mapped by a planar projection.

No rotation maps such an object onto itself: a symmetry would have to map every uniquely coloured part
onto itself and so fix their centroids, and the construction rejects layouts whose part centroids are
close to collinear; a proper rigid motion fixing three non-collinear points is the identity. So every
object has a well-defined pose, as training requires.

Deterministic: the object is a function of the generator it is given.
"""

from __future__ import annotations

import colorsys

import numpy as np

from .meshes import ObjectModel, normalise_parts

PRIMITIVES = ("box", "cylinder", "cone", "capsule", "ellipsoid", "torus")
GOLDEN = 0.6180339887498949


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix [3, 3] (normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def random_color(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    """RGB uint8 [3]: saturated enough to tell parts apart."""
    h = rng.random() if hue is None else hue % 1.0
    s, v = rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)
    return (np.array(colorsys.hsv_to_rgb(h, s, v)) * 255).astype(np.uint8)


def texture_image(rng: np.random.Generator, color: np.ndarray, size: int = 128) -> np.ndarray:
    """A procedural texture [size, size, 3] uint8 around `color`: stripes, checker, dots, noise or gradient."""
    kind = rng.choice(["stripes", "checker", "dots", "noise", "gradient"])
    yy, xx = np.mgrid[0:size, 0:size] / size
    other = random_color(rng)
    if kind == "stripes":
        angle, freq = rng.uniform(0, np.pi), rng.integers(2, 9)
        t = (np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))) > 0).astype(np.float64)
    elif kind == "checker":
        n = rng.integers(2, 8)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float64)
    elif kind == "dots":
        n = rng.integers(3, 8)
        fx, fy = (xx * n) % 1 - 0.5, (yy * n) % 1 - 0.5
        t = (fx ** 2 + fy ** 2 < rng.uniform(0.04, 0.15)).astype(np.float64)
    elif kind == "noise":
        coarse = rng.random((rng.integers(3, 9),) * 2)
        idx = np.minimum((yy * coarse.shape[0]).astype(int), coarse.shape[0] - 1)
        jdx = np.minimum((xx * coarse.shape[1]).astype(int), coarse.shape[1] - 1)
        t = coarse[idx, jdx]
        for _ in range(3):  # box blur: smooth blobs
            t = (t + np.roll(t, 3, 0) + np.roll(t, -3, 0) + np.roll(t, 3, 1) + np.roll(t, -3, 1)) / 5
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(angle) + yy * np.sin(angle))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    mix = rng.uniform(0.35, 0.8)
    img = color[None, None, :] * (1 - mix * t[..., None]) + other[None, None, :] * (mix * t[..., None])
    return np.clip(img, 0, 255).astype(np.uint8)


def _primitive(rng: np.random.Generator, kind: str, size: float):
    import trimesh

    if kind == "box":
        return trimesh.creation.box(extents=size * rng.uniform(0.4, 1.0, size=3))
    if kind == "cylinder":
        return trimesh.creation.cylinder(radius=size * rng.uniform(0.2, 0.5), height=size * rng.uniform(0.5, 1.2),
                                         sections=24)
    if kind == "cone":
        return trimesh.creation.cone(radius=size * rng.uniform(0.25, 0.5), height=size * rng.uniform(0.5, 1.1),
                                     sections=24)
    if kind == "capsule":
        return trimesh.creation.capsule(radius=size * rng.uniform(0.15, 0.3), height=size * rng.uniform(0.3, 0.8),
                                        count=[12, 12])
    if kind == "ellipsoid":
        m = trimesh.creation.icosphere(subdivisions=2, radius=size / 2)
        m.apply_scale(rng.uniform(0.5, 1.0, size=3))
        return m
    if kind == "torus":
        major = size * rng.uniform(0.3, 0.45)
        return trimesh.creation.torus(major_radius=major, minor_radius=major * rng.uniform(0.2, 0.45),
                                      major_sections=24, minor_sections=12)
    raise ValueError(f"unknown primitive kind {kind!r}")


def _decorate(rng: np.random.Generator, mesh, color: np.ndarray, texture_prob: float):
    """Give `mesh` a solid colour or a planar-projected procedural texture."""
    import trimesh
    from PIL import Image

    mesh = mesh.copy()
    if rng.random() < texture_prob:
        axes = random_rotation(rng)
        v = np.asarray(mesh.vertices)
        extent = max(float(np.ptp(v, axis=0).max()), 1e-6)
        uv = (v @ axes[:, :2]) / extent * rng.uniform(0.7, 1.5) + 0.5
        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(texture_image(rng, color)))
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    else:
        rgba = np.concatenate([color, [255]]).astype(np.uint8)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


def _noncollinear(centroids: np.ndarray, extent: float) -> bool:
    c = centroids - centroids.mean(axis=0)
    s = np.linalg.svd(c, compute_uv=False)
    return len(s) >= 2 and s[1] > 0.08 * extent


def procedural_parts(rng: np.random.Generator, texture_prob: float = 0.6, max_tries: int = 50) -> list:
    """Trimesh parts of one random asymmetric object (not yet normalised)."""
    for _ in range(max_tries):
        n_parts = int(rng.integers(3, 6))
        hue0 = rng.random()
        body_size = rng.uniform(0.8, 1.2)
        body = _primitive(rng, rng.choice(PRIMITIVES), body_size)
        body.apply_transform(_rigid(random_rotation(rng), np.zeros(3)))
        parts = [_decorate(rng, body, random_color(rng, hue0), texture_prob)]
        normals = body.vertex_normals
        for k in range(1, n_parts):
            kind = rng.choice(PRIMITIVES)
            size = body_size * rng.uniform(0.3, 0.75)
            part = _primitive(rng, kind, size)
            i = int(rng.integers(len(body.vertices)))
            anchor = body.vertices[i] + normals[i] * size * rng.uniform(0.0, 0.35)
            part.apply_transform(_rigid(random_rotation(rng), anchor))
            parts.append(_decorate(rng, part, random_color(rng, hue0 + k * GOLDEN), texture_prob))
        centroids = np.array([p.vertices.mean(axis=0) for p in parts])
        extent = float(np.ptp(np.concatenate([p.vertices for p in parts]), axis=0).max())
        if _noncollinear(centroids, extent):
            return parts
    raise RuntimeError("could not draw a non-collinear part layout; this should not happen")


def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def procedural_object(obj_id: int, seed: int, max_extent: float = 0.2, texture_prob: float = 0.6) -> ObjectModel:
    """Procedural object number `obj_id` of the set drawn with `seed` (deterministic), GSO-normalised."""
    rng = np.random.default_rng([int(seed), 7, int(obj_id)])
    parts = normalise_parts(procedural_parts(rng, texture_prob=texture_prob), max_extent=max_extent)
    return ObjectModel(obj_id=obj_id, name=f"procedural_{obj_id:06d}", parts=parts)


def distractor_parts(rng: np.random.Generator, size: float, texture_prob: float = 0.5) -> list:
    """One random primitive of about `size` metres (unannotated clutter and occluders)."""
    part = _primitive(rng, rng.choice(PRIMITIVES), 1.0)
    extent = float(np.ptp(part.vertices, axis=0).max())
    part.apply_scale(size / max(extent, 1e-9))
    part.apply_translation(-part.bounding_box.centroid)
    return [_decorate(rng, part, random_color(rng), texture_prob)]
