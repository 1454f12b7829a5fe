"""Template generation throughput, side by side in one run on the same objects (issue 14's targets).

    python benchmarks/template_throughput.py                     # measure, print the table
    python benchmarks/template_throughput.py --results           # ... and add a dated entry to RESULTS.md
    python benchmarks/template_throughput.py --quick             # seconds: a smoke run (tiny sizes)

Measured, for the same procedural objects (cheap to render, so writing shows) at 640x480, level 1 views:

- views/s per configuration: render only; render + the old writer (synchronous Pillow, what vpog did before
  the threaded writer); render + the new writer (`template_render.write_object_templates` with one
  background `ViewWriter` thread); each in 1 and 2 processes started together (the time of each process
  from a common barrier, renderer and meshes warmed up before it, so startup is not counted);
- the write cost: CPU milliseconds per view to compose, encode and write a view (old and new), and the
  PNG encoders compared on the same views (time and size; those installed: Pillow, OpenCV, vpog.data.png
  with ISA-L and with zlib, imagecodecs, zlib-ng, fpng);
- the targets: new / render-only in one process (>= 0.8), new in 2 processes / new in 1 (>= 1.7);
- a projection of the wall time for GSO (1k objects) and ShapeNet (50k) at levels 1 and 2 on one node of
  8 GPUs, from a per-process GPU render rate (the H100 row of RESULTS.md, "Template rendering", unless
  this machine renders with an NVIDIA GPU: then the rate measured here), the write cost and the
  per-object overhead measured here. It is a projection, labelled as such.

Numbers depend on the machine's load: the entry records the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Template generation at scale (issue 14)"
H100_VIEWS_PER_S = 274.0  # RESULTS.md, Baselines, "Template rendering": pyrender EGL on the lent H100, 640x480
MODES = ("render", "old", "new")


def _objects(count: int):
    from vpog.data.procedural import procedural_object

    return [procedural_object(i, 0) for i in range(1, count + 1)]


def _poses(obj, level: int, views: int | None, w: int, h: int):
    from vpog.data.template_render import template_distance
    from vpog.data.templates import object_template_poses, scaled_K

    K = scaled_K(w, h)
    poses = object_template_poses(level, template_distance(obj.radius, obj.diameter, K, w, h, None))
    poses = poses[:views] if views else poses
    poses_m = poses.copy()
    poses_m[:, :3, 3] /= 1000.0
    return K, poses_m


def old_save_view(folder: Path, view: int, rgb: np.ndarray, depth_m: np.ndarray) -> None:
    """vpog's template writer before issue 14 (templates.save_view at commit 0292cfc), the 'before' reference."""
    from PIL import Image

    mask = depth_m > 0
    rgba = np.concatenate([np.where(mask[..., None], rgb, 0), (mask * 255).astype(np.uint8)[..., None]], axis=-1)
    Image.fromarray(rgba.astype(np.uint8), mode="RGBA").save(folder / f"{view:06d}.png", compress_level=1)
    depth_mm = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)
    Image.fromarray(depth_mm).save(folder / f"{view:06d}_depth.png", compress_level=1)


def _run_mode(mode: str, renderer, writer, objects, cfg: dict, out: Path) -> tuple[int, float]:
    """Render (and write) every object's views once -> (views, seconds outside the render loop)."""
    from vpog.data.render import render_object_views, to_pyrender_mesh
    from vpog.data.template_render import write_object_templates

    w, h = cfg["size"]
    views, overhead = 0, 0.0
    for obj in objects:
        if mode == "new":
            r = write_object_templates(renderer, obj, out, "bench", cfg["level"], w, h, writer=writer)
            views += r["views"]
            overhead += r["seconds"] - r["render_seconds"]
            continue
        K, poses = _poses(obj, cfg["level"], cfg["views"], w, h)
        folder = out / f"{mode}{obj.obj_id}"
        folder.mkdir(parents=True, exist_ok=True)
        for view, (rgb, depth) in enumerate(render_object_views(renderer, to_pyrender_mesh(obj.parts), obj.radius,
                                                                poses, K, w, h)):
            if mode == "old":
                old_save_view(folder, view, rgb, depth)
            views += 1
    return views, overhead


def _process(index: int, mode: str, cfg: dict, barrier, queue) -> None:
    """One measured process: warm up, wait for the others, render/write its objects, report its time."""
    import shutil

    from vpog.data.render import Renderer
    from vpog.data.template_render import ViewWriter

    objects = _objects(cfg["objects"])
    objects = objects[index % len(objects):] + objects[:index % len(objects)]
    renderer, writer = Renderer(), ViewWriter(1)
    out = Path(tempfile.mkdtemp(prefix=f"vpog_bench_{mode}{index}_"))
    try:
        _run_mode(mode, renderer, writer, objects, {**cfg, "views": 2, "level": 0}, out / "warm")
        barrier.wait()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        views, overhead = _run_mode(mode, renderer, writer, objects, cfg, out / "run")
        queue.put({"views": views, "seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu0,
                   "overhead": overhead, "objects": len(objects)})
    finally:
        writer.close()
        renderer.close()
        shutil.rmtree(out, ignore_errors=True)


def measure_config(mode: str, processes: int, cfg: dict) -> dict:
    """views/s of `processes` processes doing `mode` together (each all the objects)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_process, args=(i, mode, cfg, barrier, queue)) for i in range(processes)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"benchmark process for {mode} x{processes} failed (exit {p.exitcode})")
    views = sum(r["views"] for r in results)
    wall = max(r["seconds"] for r in results)
    return {"mode": mode, "processes": processes, "views": views, "seconds": wall, "views_per_s": views / wall,
            "cpu_ms_per_view": 1000 * sum(r["cpu"] for r in results) / views,
            "overhead_s_per_object": sum(r["overhead"] for r in results) / sum(r["objects"] for r in results)}


def _frames(cfg: dict, count: int = 16, renderer=None):
    """`count` rendered views (rgb, depth) spread over the objects' view sets. With `renderer`, that one is
    used (closing another renderer of this process would end the EGL display they share)."""
    from vpog.data.render import Renderer, render_object_views, to_pyrender_mesh

    own = renderer is None
    renderer, frames = renderer or Renderer(), []
    w, h = cfg["size"]
    try:
        for obj in _objects(cfg["objects"]):
            K, poses = _poses(obj, cfg["level"], None, w, h)
            step = max(len(poses) * cfg["objects"] // count, 1)
            frames += list(render_object_views(renderer, to_pyrender_mesh(obj.parts), obj.radius, poses[::step], K,
                                               w, h))
    finally:
        if own:
            renderer.close()
    return frames[:count]


def _old_arrays(rgb, depth):
    mask = depth > 0
    rgba = np.concatenate([np.where(mask[..., None], rgb, 0), (mask * 255).astype(np.uint8)[..., None]], axis=-1)
    return rgba.astype(np.uint8), np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)


def write_costs(frames) -> dict:
    """CPU ms per view to compose + encode + write (old and new writers), one thread."""
    from vpog.data.templates import save_view

    costs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("old", old_save_view), ("new", save_view)):
            fn(Path(tmp), 0, *frames[0])
            t0 = time.thread_time()
            for i, (rgb, depth) in enumerate(frames):
                fn(Path(tmp), i, rgb, depth)
            costs[name] = 1000 * (time.thread_time() - t0) / len(frames)
    return costs


def encoder_table(frames) -> list[dict]:
    """Each available PNG encoder on the same composed views: ms per view (RGBA + depth), KiB per view."""
    import zlib

    from PIL import Image

    import vpog.data.png as vpng

    arrays = [_old_arrays(*f) for f in frames]
    encoders = {}

    def pil(level):
        def enc(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG", compress_level=level)
            return buf.getvalue()
        return enc

    for level in (0, 1, 3, 6):
        encoders[f"Pillow, compress_level {level}" + (" (vpog before)" if level == 1 else "")] = pil(level)
    try:
        import cv2

        def cv(level, strategy=None, filt=None):
            params = [cv2.IMWRITE_PNG_COMPRESSION, level]
            params += [cv2.IMWRITE_PNG_STRATEGY, strategy] if strategy is not None else []
            params += [cv2.IMWRITE_PNG_FILTER, filt] if filt is not None else []
            return lambda a: cv2.imencode(".png", a[..., [2, 1, 0, 3]] if a.ndim == 3 else a, params)[1].tobytes()

        encoders["OpenCV, level 1"] = cv(1)
        encoders["OpenCV, level 1, filter none"] = cv(1, filt=cv2.IMWRITE_PNG_FILTER_NONE)
        encoders["OpenCV, level 1, RLE, filter sub"] = cv(1, cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER_SUB)
    except ImportError:
        pass

    def vpog_png(module, level):
        def enc(a):
            old = vpng._deflate_module, vpng.LEVEL
            vpng._deflate_module, vpng.LEVEL = module, level
            try:
                return vpng.encode_png(a)
            finally:
                vpng._deflate_module, vpng.LEVEL = old
        return enc

    try:
        from isal import isal_zlib

        for level in (0, 1, 2):
            encoders[f"vpog.data.png, ISA-L level {level}" + (" (vpog now)" if level == 1 else "")] = vpog_png(
                isal_zlib, level)
    except ImportError:
        pass
    encoders["vpog.data.png, zlib level 1 (fallback)"] = vpog_png(zlib, 1)
    try:
        from zlib_ng import zlib_ng

        for level in (1, 2):
            encoders[f"vpog.data.png, zlib-ng level {level}"] = vpog_png(zlib_ng, level)
    except ImportError:
        pass
    try:
        import imagecodecs

        encoders["imagecodecs png, level 1, RLE, filter sub"] = lambda a: imagecodecs.png_encode(
            a, level=1, strategy=3, filter=16)
    except ImportError:
        pass
    rows = []
    for name, enc in encoders.items():
        enc(arrays[0][0])
        size, t0 = 0, time.thread_time()
        for rgba, depth in arrays:
            size += len(enc(rgba)) + len(enc(depth))
        rows.append({"encoder": name, "ms_per_view": 1000 * (time.thread_time() - t0) / len(arrays),
                     "kib_per_view": size / len(arrays) / 1024})
    try:
        import fpng  # RGBA only (no 16-bit): shown for the colour image alone

        t0 = time.thread_time()
        size = sum(len(fpng.from_ndarray(rgba)) for rgba, _ in arrays)
        rows.append({"encoder": "fpng (RGBA only, no 16-bit depth)", "ms_per_view": 1000 * (time.thread_time() - t0)
                     / len(arrays), "kib_per_view": size / len(arrays) / 1024})
    except ImportError:
        pass
    return rows


def _gl_renderer() -> str:
    from OpenGL import GL

    from vpog.data.render import Renderer

    r = Renderer()
    try:
        r._get(8, 8)
        return GL.glGetString(GL.GL_RENDERER).decode()
    finally:
        r.close()


def projection(render_rate: float, write_ms: float, overhead_s: float, gpus: int = 8) -> list[dict]:
    """Wall time on one node of `gpus` GPUs: per process min(render rate, writer thread rate) views/s plus the
    per-object overhead, P processes per GPU (P = 1: the measured basis; P = 4: assumes the GPU keeps the
    per-process rate for 4 processes, and 2 CPU cores per process)."""
    rows = []
    per_process = min(render_rate, 1000.0 / write_ms)
    for name, objects in (("GSO", 1_000), ("ShapeNet", 50_000)):
        for level, views in ((1, 162), (2, 642)):
            for per_gpu in (1, 4):
                seconds = objects * (views / per_process + overhead_s) / (gpus * per_gpu)
                rows.append({"set": name, "objects": objects, "level": level, "views": objects * views,
                             "processes": gpus * per_gpu, "hours": seconds / 3600})
    return rows


def measure(cfg: dict, repeats: int, process_counts=(1, 2)) -> dict:
    configs = [(m, 1) for m in MODES] + [(m, p) for p in process_counts if p > 1 for m in ("render", "new")]
    runs: dict = {c: [] for c in configs}
    for r in range(repeats):
        for c in (configs if r % 2 == 0 else configs[::-1]):  # alternate the order: drift in load hits all
            runs[c].append(measure_config(c[0], c[1], cfg))
    summary = {}
    for (mode, procs), rs in runs.items():
        rates = [x["views_per_s"] for x in rs]
        summary[f"{mode}x{procs}"] = {"mode": mode, "processes": procs, "views_per_s": statistics.median(rates),
                                      "all": rates, "cpu_ms_per_view": statistics.median(x["cpu_ms_per_view"]
                                                                                         for x in rs),
                                      "overhead_s_per_object": statistics.median(x["overhead_s_per_object"]
                                                                                 for x in rs)}
    frames = _frames(cfg)
    costs = write_costs(frames)
    renderer = _gl_renderer()
    on_gpu = "nvidia" in renderer.lower()
    rate = summary["renderx1"]["views_per_s"] if on_gpu else H100_VIEWS_PER_S
    return {
        "config": cfg, "repeats": repeats, "summary": summary, "write_ms_per_view": costs,
        "encoders": encoder_table(frames), "gl_renderer": renderer,
        "targets": {
            "new_vs_render_1proc": summary["newx1"]["views_per_s"] / summary["renderx1"]["views_per_s"],
            **({"new_2proc_vs_1proc": summary["newx2"]["views_per_s"] / summary["newx1"]["views_per_s"],
                "render_2proc_vs_1proc": summary["renderx2"]["views_per_s"] / summary["renderx1"]["views_per_s"]}
               if 2 in process_counts else {}),
        },
        "projection": {"render_rate": rate, "render_rate_source": "measured here (NVIDIA EGL)" if on_gpu else
                       "assumed: the lent H100's 274 views/s (RESULTS.md, Baselines, Template rendering)",
                       "write_ms": costs["new"], "overhead_s_per_object": summary["newx1"]["overhead_s_per_object"],
                       "rows": projection(rate, costs["new"], summary["newx1"]["overhead_s_per_object"])},
    }


def _machine() -> dict:
    import torch

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except Exception:
            return "unknown"

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import PIL

    try:
        import isal
        isal_version = isal.__version__
    except ImportError:
        isal_version = "not installed"
    return {"date": datetime.date.today().isoformat(), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
            "isal": isal_version}


def markdown(result: dict, machine: dict, load_before, load_after) -> str:
    s, t, p = result["summary"], result["targets"], result["projection"]
    cfg = result["config"]
    w, h = cfg["size"]
    lines = [
        f"### {machine['date']}, commit {machine['commit']}{' (uncommitted changes)' if machine['dirty'] else ''}",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {result['gl_renderer']}; Python {machine['python']}, torch "
        f"{machine['torch']}, Pillow {machine['pillow']}, isal {machine['isal']}. Load average (1, 5, 15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} before, {'/'.join(f'{x:.2f}' for x in load_after)} after. "
        f"{cfg['objects']} procedural objects, level {cfg['level']} views at {w}x{h}, each process all objects; "
        f"median of {result['repeats']} runs (`python benchmarks/template_throughput.py --results`).",
        "",
        "| configuration | 1 process | 2 processes | 2 / 1 |",
        "|---|---:|---:|---:|",
    ]
    for mode, label in (("render", "render only"), ("old", "render + old writer (Pillow, synchronous)"),
                        ("new", "render + new writer (vpog.data.png, writer thread)")):
        one = s[f"{mode}x1"]["views_per_s"]
        two = s.get(f"{mode}x2", {}).get("views_per_s")
        lines.append(f"| {label} | {one:.1f} views/s | {f'{two:.1f} views/s' if two else ''} | "
                     f"{f'{two / one:.2f}x' if two else ''} |")
    ok1 = t["new_vs_render_1proc"] >= 0.8
    lines += ["", f"Targets: new writer / render only, one process: **{t['new_vs_render_1proc']:.2f}** (>= 0.80: "
                  f"{'met' if ok1 else 'not met'})"]
    if "new_2proc_vs_1proc" in t:
        ok2 = t["new_2proc_vs_1proc"] >= 1.7
        lines[-1] += (f"; 2 processes / 1, new writer: **{t['new_2proc_vs_1proc']:.2f}x** (>= 1.7: "
                      f"{'met' if ok2 else 'not met'}; render only {t['render_2proc_vs_1proc']:.2f}x).")
    wc = result["write_ms_per_view"]
    lines += ["", f"Write cost, CPU per {w}x{h} view (compose + encode + write both files, one thread): old "
                  f"{wc['old']:.2f} ms, new {wc['new']:.2f} ms ({wc['old'] / wc['new']:.1f}x less). CPU per view, "
                  f"all threads: render only {s['renderx1']['cpu_ms_per_view']:.2f} ms, old "
                  f"{s['oldx1']['cpu_ms_per_view']:.2f} ms, new {s['newx1']['cpu_ms_per_view']:.2f} ms.",
              "", "PNG encoders on the same views (RGBA + 16-bit depth; pixels identical, lossless):", "",
              "| encoder | ms / view | KiB / view |", "|---|---:|---:|"]
    lines += [f"| {e['encoder']} | {e['ms_per_view']:.2f} | {e['kib_per_view']:.1f} |" for e in result["encoders"]]
    lines += ["", f"**Projection** (not a measurement) for one node of 8 GPUs: per-process render rate "
                  f"{p['render_rate']:.0f} views/s ({p['render_rate_source']}), the writer thread's "
                  f"{p['write_ms']:.2f} ms/view and {p['overhead_s_per_object']:.3f} s per object outside the "
                  f"render loop (mesh upload, drain, publish; loading real mesh files comes on top) measured here. "
                  f"With 4 processes per GPU it assumes the GPU keeps the per-process rate and 2 cores per process.",
              "", "| set | level | views | 8 processes (1 per GPU) | 32 processes (4 per GPU) |",
              "|---|---|---:|---:|---:|"]
    rows = p["rows"]
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        lines.append(f"| {a['set']} ({a['objects']:,} objects) | {a['level']} | {a['views']:,} | "
                     f"{a['hours']:.2f} h | {b['hours']:.2f} h |")
    return "\n".join(lines) + "\n"


def add_to_results(entry: str) -> None:
    """Insert `entry` at the end of RESULTS.md's issue-14 section (created at the end of the file if absent)."""
    text = RESULTS.read_text()
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n"
    start = text.index(SECTION)
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    body = text[:end].rstrip("\n") + "\n\n" + entry
    RESULTS.write_text(body + ("\n" + text[end:] if end < len(text) else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", action="store_true", help="add a dated entry to benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    cfg = {"objects": args.objects, "level": 1, "views": None, "size": (640, 480)}
    repeats = args.repeats
    if args.quick:
        cfg, repeats = {"objects": 1, "level": 0, "views": None, "size": (96, 72)}, 1
    load_before = os.getloadavg()
    result = measure(cfg, repeats)
    load_after = os.getloadavg()
    entry = markdown(result, _machine(), load_before, load_after)
    print(entry)
    if args.json:
        args.json.write_text(json.dumps({**result, "machine": _machine(), "load": [load_before, load_after]},
                                        indent=1, default=str))
    if args.results:
        add_to_results(entry)
        print(f"added to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
