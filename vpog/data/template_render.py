"""Render and write one object's GigaPose templates (the layout of `vpog.data.templates`).

Shared by `vpog.data.synthesize` (training sets) and `vpog.bop.templates` (BOP objects), so templates
of unseen test objects are rendered exactly as those the model was trained with: the same renderer,
lighting, camera and view poses. The object's folder and pose file appear atomically (written under a
temporary name, then renamed), so an interrupted run never leaves a template set that looks complete.

Needs pyrender (the `render` extra).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .templates import fit_distance, object_template_poses, pose_path, save_view, scaled_K, template_dir


def template_distance(radius_m: float, diameter_m: float, K: np.ndarray, width: int, height: int,
                      distance_factor: float | None) -> float:
    """Camera distance of the templates, metres: `distance_factor` x diameter (GigaPose: 1.0), or, with
    None, the distance at which the object's bounding sphere fits in view (`templates.fit_distance`)."""
    if distance_factor is None:
        return fit_distance(radius_m, K, width, height)
    return float(distance_factor) * float(diameter_m)


def object_templates_done(root: str | Path, name: str, obj_id: int) -> bool:
    """Whether an object's templates are complete (its pose file and folder exist; both appear atomically)."""
    return pose_path(root, name, obj_id).is_file() and template_dir(root, name, obj_id).is_dir()


def write_object_templates(renderer, obj, root: str | Path, name: str, level: int, width: int, height: int,
                           lighting: str = "ambient", distance_factor: float | None = None) -> int:
    """Render `obj` (a `vpog.data.meshes.ObjectModel`, metres) from every view of icosphere `level` and
    write `root/name/{obj_id:06d}/` and `root/name/object_poses/{obj_id:06d}.npy` (mm). Returns the view count."""
    from .render import render_object_views, to_pyrender_mesh

    K = scaled_K(width, height)
    distance = template_distance(obj.radius, obj.diameter, K, width, height, distance_factor)
    poses_mm = object_template_poses(int(level), distance)
    final = template_dir(root, name, obj.obj_id)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    poses_m = poses_mm.copy()
    poses_m[:, :3, 3] /= 1000.0
    mesh = to_pyrender_mesh(obj.parts)
    for view, (rgb, depth) in enumerate(render_object_views(renderer, mesh, obj.radius, poses_m, K, width, height,
                                                            lighting=lighting)):
        save_view(tmp, view, rgb, depth)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pp = pose_path(root, name, obj.obj_id)
    pp.parent.mkdir(parents=True, exist_ok=True)
    tmp_pose = pp.with_name(pp.stem + f".tmp{os.getpid()}.npy")
    np.save(tmp_pose, poses_mm)
    os.replace(tmp_pose, pp)
    return len(poses_mm)
