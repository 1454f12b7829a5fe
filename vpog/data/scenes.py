"""Random training scenes: several objects, distractors, occluders, lights and a textured background.

One image = one scene, as MegaPose's PBR images: `objects_per_image` annotated objects at random poses
(uniform rotations, placed so their image size is `apparent_size` of the image), unannotated distractor
primitives of which some are put in front of an object on purpose (so `mask_visib` differs from `mask`),
a tilted textured background plane behind everything (so depth is dense, as in PBR renders), ambient
light plus 1 to 3 directional and point lights of random colour and strength.

Masks as BOP computes them: an object's `mask` is its silhouette rendered alone (depth-only pass), its
`mask_visib` the part of it whose depth matches the full scene's depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bop_writer import ImageRecord, InstanceRecord
from .meshes import ObjectModel
from .procedural import distractor_parts, random_color, random_rotation, texture_image
from .render import CV_TO_GL, Renderer, make_camera, to_pyrender_mesh

VISIB_TOL_M = 1e-3  # an object pixel is visible when the scene depth is not nearer than this


@dataclass
class SceneParams:
    """Scene sampling parameters (pixels, metres; ranges are (low, high))."""

    width: int
    height: int
    K: np.ndarray
    objects_per_image: tuple[int, int] = (3, 6)
    distractors_per_image: tuple[int, int] = (1, 3)
    occluder_prob: float = 0.5
    apparent_size: tuple[float, float] = (0.2, 0.6)
    texture_prob: float = 0.6


def _place(rng, K, width, height, diameter, apparent):
    """T_m2c (metres) putting the object origin at a random pixel with a random image size and rotation."""
    size_px = rng.uniform(*apparent) * min(width, height)
    z = K[0, 0] * diameter / size_px
    u = rng.uniform(0.1, 0.9) * width
    v = rng.uniform(0.1, 0.9) * height
    return _pose_at(random_rotation(rng), u, v, z, K), size_px


def _pose_at(R, u, v, z, K):
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, (x, y, z)
    return T


def _background(rng, K, width, height, depth):
    """A textured quad at `depth` metres, tilted up to 25 degrees, covering the whole view."""
    import trimesh
    from PIL import Image

    half = 1.6 * depth * max(width / 2 / K[0, 0], height / 2 / K[1, 1])
    verts = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 2, 1], [0, 3, 2]])  # two-sided
    repeat = rng.uniform(1.0, 6.0)
    uv = (verts[:, :2] / (2 * half) + 0.5) * repeat
    img = texture_image(rng, random_color(rng), size=256) if rng.random() < 0.85 else np.tile(
        random_color(rng), (8, 8, 1))
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(img))
    quad = trimesh.Trimesh(verts, faces, process=False)
    quad.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    tilt = np.deg2rad(rng.uniform(-25, 25, size=2))
    cx, sx, cy, sy = np.cos(tilt[0]), np.sin(tilt[0]), np.cos(tilt[1]), np.sin(tilt[1])
    R = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, (0.0, 0.0, depth)
    return quad, T


def _add_lights(pyrender, scene, rng, z_ref):
    for _ in range(int(rng.integers(1, 4))):
        color = np.clip(1.0 - rng.uniform(0, 0.35, size=3), 0, 1)
        if rng.random() < 0.6:
            # directional: light travels along its -z; aim roughly forward into the scene (OpenCV +z)
            direction = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), 1.0])
            z_axis = -direction / np.linalg.norm(direction)
            x_axis = np.cross([0.0, 1.0, 0.0], z_axis)
            x_axis /= np.linalg.norm(x_axis)
            T = np.eye(4)
            T[:3, :3] = np.stack([x_axis, np.cross(z_axis, x_axis), z_axis], axis=1)
            scene.add(pyrender.DirectionalLight(color=color, intensity=rng.uniform(1.5, 5.0)), pose=T)
        else:
            T = np.eye(4)
            T[:3, 3] = (rng.uniform(-1, 1) * z_ref, rng.uniform(-1, 1) * z_ref, rng.uniform(-0.3, 0.6) * z_ref)
            scene.add(pyrender.PointLight(color=color, intensity=rng.uniform(2.0, 10.0) * z_ref ** 2), pose=T)


def _bbox_obj(vertices_m, T, K):
    cam = vertices_m @ T[:3, :3].T + T[:3, 3]
    z = np.maximum(cam[:, 2], 1e-6)
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    x0, x1 = int(np.floor(u.min() + 0.5)), int(np.floor(u.max() + 0.5))
    y0, y1 = int(np.floor(v.min() + 0.5)), int(np.floor(v.max() + 0.5))
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def render_scene(renderer: Renderer, rng: np.random.Generator, key: str, objects: list[ObjectModel],
                 meshes: dict, params: SceneParams) -> ImageRecord:
    """Render one scene with `objects` (already chosen) -> ImageRecord with full BOP annotations.

    `meshes` caches pyrender meshes by obj_id across calls (one GL context per process).
    """
    from .render import _import_pyrender

    pyrender = _import_pyrender()
    K, W, H = np.asarray(params.K, dtype=np.float64), params.width, params.height
    ambient = rng.uniform(0.08, 0.4) * np.clip(1.0 - rng.uniform(0, 0.3, size=3), 0, 1)
    scene = pyrender.Scene(bg_color=np.array([*random_color(rng) / 255.0, 1.0]), ambient_light=ambient)

    poses, sizes, nodes = [], [], []
    for obj in objects:
        T, size_px = _place(rng, K, W, H, obj.diameter, params.apparent_size)
        poses.append(T)
        sizes.append(size_px)
        if obj.obj_id not in meshes:
            meshes[obj.obj_id] = to_pyrender_mesh(obj.parts)
        nodes.append(scene.add(meshes[obj.obj_id], pose=T))

    median_diam = float(np.median([o.diameter for o in objects])) if objects else 0.2
    clutter = []
    for _ in range(int(rng.integers(params.distractors_per_image[0], params.distractors_per_image[1] + 1))):
        size = median_diam * rng.uniform(0.3, 0.9)
        parts = distractor_parts(rng, size, params.texture_prob)
        if objects and rng.random() < params.occluder_prob:
            target = int(rng.integers(len(objects)))
            Tt = poses[target]
            u = K[0, 0] * Tt[0, 3] / Tt[2, 3] + K[0, 2] + rng.uniform(-0.5, 0.5) * sizes[target]
            v = K[1, 1] * Tt[1, 3] / Tt[2, 3] + K[1, 2] + rng.uniform(-0.5, 0.5) * sizes[target]
            z = Tt[2, 3] * rng.uniform(0.55, 0.8)
            T = _pose_at(random_rotation(rng), u, v, z, K)
        else:
            T, _ = _place(rng, K, W, H, size, params.apparent_size)
        clutter.append(scene.add(to_pyrender_mesh(parts), pose=T))

    z_far = max([T[2, 3] for T in poses] + [0.3]) + 1.5 * median_diam
    quad, Tq = _background(rng, K, W, H, z_far + rng.uniform(0.05, 0.8))
    scene.add(to_pyrender_mesh([quad]), pose=Tq)
    _add_lights(pyrender, scene, rng, z_far)
    scene.add(make_camera(K, znear=0.01, zfar=4 * z_far + 5.0), pose=CV_TO_GL)

    rgb, depth = renderer.render(scene, W, H)

    # Amodal silhouettes: each object alone, depth only.
    all_nodes = list(scene.mesh_nodes)
    instances = []
    for obj, T, node in zip(objects, poses, nodes):
        for other in all_nodes:
            other.mesh.is_visible = other is node
        _, d_obj = renderer.render(scene, W, H, depth_only=True)
        mask = d_obj > 0
        visib = mask & (depth > 0) & (depth >= d_obj - VISIB_TOL_M)
        instances.append(InstanceRecord(obj_id=obj.obj_id, T_m2c=T, mask=mask, mask_visib=visib,
                                        bbox_obj=_bbox_obj(obj.vertices, T, K)))
    for other in all_nodes:
        other.mesh.is_visible = True
    return ImageRecord(key=key, rgb=rgb, depth=depth, K=K, instances=instances)
