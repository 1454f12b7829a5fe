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
@pytest.mark.parametrize("write", ["none", "old", "new"], ids=["render", "render+png-old", "render+png"])
def test_bench_template_views(benchmark, run_bench, renderer, tmp_path, size, write):
    """16 views of one procedural object: render only; + the old writer (Pillow, synchronous: the reference);
    + the current one (`template_render.write_object_templates`, encoding and writing in a background thread).
    Side by side over many objects, processes and the issue-14 targets: benchmarks/template_throughput.py."""
    from template_throughput import old_save_view

    from vpog.data.procedural import procedural_object
    from vpog.data.render import render_object_views, to_pyrender_mesh
    from vpog.data.template_render import ViewWriter, write_object_templates
    from vpog.data.templates import fit_distance, object_template_poses, scaled_K

    w, h = size
    obj = procedural_object(1, 0)
    K = scaled_K(w, h)
    poses = object_template_poses(1, fit_distance(obj.radius, K, w, h))[:16]
    poses[:, :3, 3] /= 1000.0
    mesh = to_pyrender_mesh(obj.parts)
    writer = ViewWriter(1)
    views_of = {"none": 16, "old": 16, "new": 42}

    def views():
        if write == "new":  # level 0 (42 views): the writer's API renders a whole view set
            write_object_templates(renderer, obj, tmp_path, "bench", 0, w, h, writer=writer)
            return
        for i, (rgb, depth) in enumerate(render_object_views(renderer, mesh, obj.radius, poses, K, w, h)):
            if write == "old":
                old_save_view(tmp_path, i, rgb, depth)

    benchmark.group = f"template views {w}x{h}, per view"
    try:
        backend = {"none": "render-only", "old": "reference", "new": "threaded-writer"}[write]
        run_bench(benchmark, views, backend=backend, op="template_views", items=views_of[write], unit="views")
    finally:
        writer.close()


def test_template_throughput_script_runs(renderer, tmp_path, monkeypatch):
    """The side-by-side results writer (benchmarks/template_throughput.py) stays runnable: one tiny measured
    configuration in 2 spawned processes, the write costs, the encoder table, the Markdown entry and its
    place in RESULTS.md (a copy)."""
    import template_throughput as tt

    cfg = {"objects": 1, "level": 0, "views": None, "size": (48, 36)}
    two = tt.measure_config("new", 2, cfg)
    assert two["views"] == 2 * 42 and two["views_per_s"] > 0
    frames = tt._frames(cfg, count=4, renderer=renderer)
    costs, encoders = tt.write_costs(frames), tt.encoder_table(frames)
    assert costs["new"] > 0 and any("vpog now" in e["encoder"] for e in encoders)
    fake = {"renderx1": 10.0, "oldx1": 5.0, "newx1": 9.0, "renderx2": 19.0, "newx2": 17.0}
    result = {"config": cfg, "repeats": 1, "gl_renderer": "test", "write_ms_per_view": costs, "encoders": encoders,
              "summary": {k: {"views_per_s": v, "cpu_ms_per_view": 1.0, "overhead_s_per_object": 0.01}
                          for k, v in fake.items()},
              "targets": {"new_vs_render_1proc": 0.9, "new_2proc_vs_1proc": 17 / 9, "render_2proc_vs_1proc": 1.9},
              "projection": {"render_rate": 274.0, "render_rate_source": "assumed", "write_ms": 2.0,
                             "overhead_s_per_object": 0.05, "rows": tt.projection(274.0, 2.0, 0.05)}}
    entry = tt.markdown(result, tt._machine(), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert "**0.90** (>= 0.80: met)" in entry and "ShapeNet (50,000 objects)" in entry
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## A\n\ntext\n\n" + tt.SECTION + "\n\nold entry\n\n## B\n\nlast\n")
    monkeypatch.setattr(tt, "RESULTS", results)
    tt.add_to_results(entry)
    text = results.read_text()
    assert text.index("old entry") < text.index(entry) < text.index("## B") and text.endswith("last\n")
    # 8 GPUs x 1 process at min(274, 1000 / 2) views/s: ShapeNet level 1 = 50k x (162 / 274 + 0.05) s / 8
    row = next(r for r in tt.projection(274.0, 2.0, 0.05) if r["set"] == "ShapeNet" and r["level"] == 1)
    assert abs(row["hours"] - 50_000 * (162 / 274 + 0.05) / 8 / 3600) < 1e-9


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
