"""Template writing: the PNG writer is lossless and standard, views are the same as before the threaded writer
(pixels, modes, bit depths), and the writer's output equals an independent plain render + Pillow write."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.data.template_views import assert_views_as_before, fixture_renderer_here


def _pillow(data: bytes) -> tuple[np.ndarray, str]:
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im), im.mode


@pytest.mark.parametrize("shape, dtype, mode", [
    ((37, 53), np.uint8, "L"),
    ((37, 53, 3), np.uint8, "RGB"),
    ((1, 1, 4), np.uint8, "RGBA"),
    ((17, 5, 4), np.uint8, "RGBA"),
    ((37, 53), np.uint16, "I;16"),
])
def test_png_is_lossless_and_standard(shape, dtype, mode):
    from vpog.data.png import encode_png

    rng = np.random.default_rng(0)
    a = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    a[: shape[0] // 2] = 0  # flat background, as in rendered views
    data = encode_png(a)
    decoded, got_mode = _pillow(data)
    assert got_mode == mode and decoded.dtype == dtype and np.array_equal(decoded, a)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if a.ndim == 3 and a.shape[2] >= 3:
        cv = cv[..., [2, 1, 0, 3][: a.shape[2]]]  # OpenCV decodes to BGR(A)
    assert cv.dtype == dtype and np.array_equal(cv.reshape(a.shape), a)


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 4), np.float32), "uint8 or uint16"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((4, 4, 3), np.uint16), "single-channel"),
    (np.zeros((0, 4), np.uint8), "at least one pixel"),
])
def test_png_rejects_what_it_cannot_store(array, match):
    from vpog.data.png import encode_png

    with pytest.raises(ValueError, match=match):
        encode_png(array)


def _old_view_arrays(rgb, depth_m):
    """What vpog stored before the threaded writer (templates.save_view at commit 0292cfc): RGBA with the mask
    as alpha, and round(depth * 1000) clipped to uint16, written by Pillow."""
    mask = depth_m > 0
    rgba = np.concatenate([np.where(mask[..., None], rgb, 0), (mask * 255).astype(np.uint8)[..., None]], axis=-1)
    return rgba.astype(np.uint8), np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)


def test_encoded_view_equals_the_old_arrays_exactly():
    """Depth rounding (halves, the uint16 limit, negatives) and the mask/colour composition, bit for bit."""
    from vpog.data.templates import encode_view

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    depth = np.zeros((48, 64), np.float32)
    depth[10:30, 20:50] = rng.uniform(-0.05, 70.0, (20, 30)).astype(np.float32)  # past 65.535 m: clipped
    depth[12, 21:30] = (np.arange(9) + 0.5) / 1000  # exact halves of a millimetre
    depth[13, 21] = 1e-7  # drawn, 0 mm
    rgba_png, depth_png = encode_view(rgb, depth)
    ref_rgba, ref_depth = _old_view_arrays(rgb, depth)
    rgba, rgba_mode = _pillow(rgba_png)
    mm, depth_mode = _pillow(depth_png)
    assert (rgba_mode, depth_mode) == ("RGBA", "I;16") and mm.dtype == np.uint16
    assert np.array_equal(rgba, ref_rgba) and np.array_equal(mm, ref_depth)
    empty_rgba, empty_depth = encode_view(rgb, np.zeros_like(depth))  # nothing drawn
    assert not _pillow(empty_rgba)[0].any() and not _pillow(empty_depth)[0].any()
    with pytest.raises(ValueError, match="rgb uint8"):
        encode_view(rgb.astype(np.float32), depth)


def test_views_are_the_same_as_before_the_writer_change(tiny_set):
    """The tiny set (rendered in-process, written by the threaded writer) decodes to the pixels vpog wrote at
    commit 0292cfc (fixture); the 2-process case is checked in test_synthesize's determinism test."""
    reason = fixture_renderer_here()
    if reason:
        pytest.skip(reason)
    assert assert_views_as_before(tiny_set / "templates" / "synthetic")


@pytest.mark.parametrize("threads", [0, 2])
def test_writer_output_equals_a_plain_render_and_pillow_write(require_egl, tmp_path, threads):
    """Any renderer: write_object_templates (background writer threads, atomic publish, marker) stores exactly
    what a plain render of the same poses, composed and saved with Pillow the old way, stores."""
    import json

    from vpog.data.procedural import procedural_object
    from vpog.data.render import Renderer, render_object_views, to_pyrender_mesh
    from vpog.data.template_render import DONE_FILE, ViewWriter, template_distance, write_object_templates
    from vpog.data.templates import object_template_poses, scaled_K

    obj = procedural_object(3, 7)
    w, h = 64, 48
    renderer = Renderer()
    writer = ViewWriter(threads)
    try:
        result = write_object_templates(renderer, obj, tmp_path / "t", "set", 0, w, h, writer=writer)
        K = scaled_K(w, h)
        poses = object_template_poses(0, template_distance(obj.radius, obj.diameter, K, w, h, None))
        poses[:, :3, 3] /= 1000.0
        reference = list(render_object_views(renderer, to_pyrender_mesh(obj.parts), obj.radius, poses, K, w, h))
    finally:
        writer.close()
        renderer.close()
    folder = tmp_path / "t" / "set" / f"{obj.obj_id:06d}"
    assert result["views"] == len(reference) == 42
    for view, (rgb, depth) in enumerate(reference):
        ref_rgba, ref_depth = _old_view_arrays(rgb, depth)
        buf_rgba, buf_depth = io.BytesIO(), io.BytesIO()
        Image.fromarray(ref_rgba, mode="RGBA").save(buf_rgba, format="PNG", compress_level=1)
        Image.fromarray(ref_depth).save(buf_depth, format="PNG", compress_level=1)
        for name, old in ((f"{view:06d}.png", buf_rgba), (f"{view:06d}_depth.png", buf_depth)):
            new, new_mode = _pillow((folder / name).read_bytes())
            ref, ref_mode = _pillow(old.getvalue())
            assert new_mode == ref_mode and new.dtype == ref.dtype and np.array_equal(new, ref), name
    marker = json.loads((folder / DONE_FILE).read_text())
    assert marker["views"] == 42 and len(marker["files"]) == 42 and (marker["width"], marker["height"]) == (w, h)
    assert marker["files"][5][0] == (folder / "000005.png").stat().st_size
    assert list((tmp_path / "t" / "set" / ".partial").iterdir()) == []  # the object's folder moved out whole


def test_fast_framebuffer_read_is_bit_identical_to_pyrenders(require_egl):
    """Renderer's own framebuffer read (depth linearised on the drawn box) returns exactly what pyrender's read
    returns: unlit, shaded and depth-only renders, including views where nothing or everything is drawn."""
    from vpog.data.procedural import procedural_object
    from vpog.data.render import Renderer, linear_depth, render_object_views, to_pyrender_mesh
    from vpog.data.templates import fit_distance, object_template_poses, scaled_K

    obj = procedural_object(2, 5)
    w, h = 80, 60
    K = scaled_K(w, h)
    poses = object_template_poses(0, fit_distance(obj.radius, K, w, h))[::6]
    poses[:, :3, 3] /= 1000.0
    far = poses[:1].copy()
    far[0, :3, 3] = [0.0, 0.0, -5.0]  # behind the camera: nothing drawn
    near = poses[:1].copy()
    near[0, :3, 3] *= 0.05  # the camera inside the object's extent: the view filled
    poses = np.concatenate([poses, far, near])
    fast, reference = Renderer(), Renderer(fast_read=False)
    try:
        for lighting in ("ambient", "shaded"):
            a = list(render_object_views(fast, to_pyrender_mesh(obj.parts), obj.radius, poses, K, w, h, lighting))
            b = list(render_object_views(reference, to_pyrender_mesh(obj.parts), obj.radius, poses, K, w, h, lighting))
            for (rgb_a, depth_a), (rgb_b, depth_b) in zip(a, b):
                assert np.array_equal(rgb_a, rgb_b) and depth_a.dtype == depth_b.dtype == np.float32
                assert np.array_equal(depth_a, depth_b)
            assert not a[-2][1].any() and a[0][1].any()
    finally:
        fast.close()
        reference.close()
    window_z = np.array([[1.0, 0.5], [0.0, 1.0]], np.float32)
    assert linear_depth(window_z, 0.1, None)[0, 1] == np.float32(2 * 0.1 / (1.0 - np.float32(0.0)))
    assert not linear_depth(np.ones((3, 4), np.float32), 0.1, 2.0).any()
