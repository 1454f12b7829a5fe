"""Data throughput: rendered views/s (templates and scenes, pyrender + EGL) and loader samples/s per worker.

    pytest benchmarks/test_bench_data.py --benchmark-only

Per-process numbers (one render process, one loader worker with one torch thread, as in DataLoader
workers); multiply by the processes/workers you run. The loader set is rendered once per session at the
real sizes (640x480 scenes, level-1 templates at 640x480, as MegaPose/GigaPose) into a temporary folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpog.config_schema import from_mapping

pytestmark = pytest.mark.render


def _require_egl():
    try:
        from vpog.data.render import egl_available
    except Exception as exc:
        pytest.skip(f"rendering stack unavailable: {exc}")
    ok, reason = egl_available()
    if not ok:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def renderer():
    _require_egl()
    from vpog.data.render import Renderer

    r = Renderer()
    yield r
    r.close()


@pytest.fixture(scope="module")
def bench_set(tmp_path_factory):
    _require_egl()
    from vpog.data.synthesize import synthesize

    out = tmp_path_factory.mktemp("bench_set")
    synthesize({
        "out": str(out), "name": "synthetic", "meshes": "procedural", "num_objects": 3, "num_images": 24,
        "images_per_shard": 12, "image_size": [640, 480], "template_level": 1, "template_size": [640, 480],
        "template_lighting": "ambient", "template_distance_factor": None, "normalize": True, "max_extent": 0.2,
        "mesh_units": "auto", "objects_per_image": [3, 3], "distractors_per_image": [1, 3], "occluder_prob": 0.5,
        "apparent_size": [0.2, 0.6], "texture_prob": 0.6, "seed": 0, "num_workers": 2, "progress": False})
    return out


@pytest.mark.parametrize("size", [(640, 480), (224, 224)], ids=["640x480", "224x224"])
@pytest.mark.parametrize("write", [False, True], ids=["render", "render+png"])
def test_bench_template_views(benchmark, run_bench, renderer, tmp_path, size, write):
    from vpog.data.procedural import procedural_object
    from vpog.data.render import render_object_views, to_pyrender_mesh
    from vpog.data.templates import fit_distance, object_template_poses, save_view, scaled_K

    w, h = size
    obj = procedural_object(1, 0)
    K = scaled_K(w, h)
    poses = object_template_poses(1, fit_distance(obj.radius, K, w, h))[:16]
    poses[:, :3, 3] /= 1000.0
    mesh = to_pyrender_mesh(obj.parts)

    def views():
        for i, (rgb, depth) in enumerate(render_object_views(renderer, mesh, obj.radius, poses, K, w, h)):
            if write:
                save_view(tmp_path, i, rgb, depth)

    benchmark.group = f"template views {w}x{h}"
    run_bench(benchmark, views, backend="pyrender-egl", op="template_views", items=len(poses), unit="views")


def test_bench_scene_images(benchmark, run_bench, renderer):
    from vpog.data.bop_writer import encode_image
    from vpog.data.procedural import procedural_object
    from vpog.data.scenes import SceneParams, render_scene
    from vpog.data.templates import scaled_K

    objects = [procedural_object(i, 0) for i in range(1, 5)]
    params = SceneParams(width=640, height=480, K=scaled_K(640, 480), objects_per_image=(4, 4))
    meshes = {}
    rng = np.random.default_rng(0)

    def scene():
        encode_image(render_scene(renderer, rng, "000000_000000", objects, meshes, params))

    benchmark.group = "scene images 640x480"
    run_bench(benchmark, scene, backend="pyrender-egl", op="scene_image", items=1, unit="images")


@pytest.mark.parametrize("cached", [False, True], ids=["templates-uncached", "templates-cached"])
def test_bench_loader_sample(benchmark, run_bench, bench_set, cached):
    from vpog.data import DataConfig, VPOGDataset

    cfg = from_mapping(DataConfig, {"train_datasets": [
        {"name": "synthetic", "root": str(bench_set), "templates": str(bench_set / "templates")}]}, "data")
    ds = VPOGDataset(cfg, train=True)
    n = 8
    counter = iter(range(10 ** 9))

    def samples():
        if not cached:
            ds._cache.clear()
            ds._cache_bytes = 0
        base = next(counter) * 7919
        for i in range(n):
            ds[(base + i) % len(ds) if not cached else i % len(ds)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        benchmark.group = "loader samples per worker"
        run_bench(benchmark, samples, backend="loader", op=f"sample_{'cached' if cached else 'uncached'}",
                  items=n, unit="samples")
    finally:
        torch.set_num_threads(threads)
