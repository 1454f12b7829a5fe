"""Headless rendering with pyrender through EGL: RGB and metric depth in the OpenCV camera convention.

pyrender's camera is OpenGL's (y up, z backward) and its `IntrinsicsCamera` puts pixel *edges* at
integer window coordinates. Here the camera sits at the origin with pose `diag(1, -1, -1, 1)`, objects
are placed with their OpenCV `T_m2c` poses, and the principal point is passed as `(cx + 0.5, cy + 0.5)`,
so a point projects exactly where `vpog.geometry.project` puts it (integer pixel coordinates are pixel
centres, docs/conventions.md §1). Depth comes back as z in metres, 0 where nothing was drawn.

`PYOPENGL_PLATFORM=egl` and `PYGLET_HEADLESS=1` are set (unless already set) before pyrender is
imported. Without a working EGL (Debian: `apt-get install libegl1 libgl1 libegl-mesa0 libgles2`, or the
NVIDIA driver's EGL) `RenderError` says so and how to fix it.

Frames are single-sampled (no MSAA, see `Renderer.render`), so depth, masks and colour all sample pixel
centres. The framebuffer is read back by `_read_framebuffer` (pyrender's read, with the depth linearised
on whole arrays: the same values for a fraction of the CPU time). Throughput: benchmarks/RESULTS.md
("Template generation at scale"), benchmarks/test_bench_data.py, benchmarks/template_throughput.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")

import logging  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)

CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
EGL_HINT = ("install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libgl1 libegl-mesa0 libgles2) or use "
            "the NVIDIA driver's EGL, and keep PYOPENGL_PLATFORM=egl")


class RenderError(RuntimeError):
    """Headless OpenGL is not available, or a render failed."""


def _preload_triton() -> None:
    """Import Triton (when installed) before the first GL context.

    Mesa's llvmpipe and Triton each carry their own LLVM. With Mesa's loaded first, a later `import triton`
    in the same process dies with a segmentation fault (seen with Mesa 22/llvm-15 and triton 3.9); with
    Triton first, both work (rendering, Triton kernels, torch.compile). A test session or a trainer that
    renders and then uses Triton needs this order; it costs about 0.1 s.
    """
    if "triton" in sys.modules:
        return
    try:
        import triton  # noqa: F401
    except Exception:  # not installed or broken: nothing to protect
        pass


def _import_pyrender():
    _preload_triton()
    try:
        import pyrender
    except Exception as exc:  # ImportError, or OpenGL failing to load libEGL at import time
        raise RenderError(f"cannot import pyrender for headless rendering ({type(exc).__name__}: {exc}); "
                          f"pip install 'vpog[render]' and {EGL_HINT}") from None
    return pyrender


_EGL_STATUS: list = []


def egl_available() -> tuple[bool, str]:
    """(True, "") when an offscreen EGL context can be made here, else (False, the reason).

    Probed once per process: deleting a pyrender context terminates the EGL display that every context
    of the process shares, so probing again while a `Renderer` is open would break it."""
    if not _EGL_STATUS:
        try:
            pyrender = _import_pyrender()
            r = pyrender.OffscreenRenderer(8, 8)
            r.delete()
            _EGL_STATUS.append((True, ""))
        except Exception as exc:
            _EGL_STATUS.append((False, f"headless OpenGL (EGL) unavailable: {type(exc).__name__}: {exc}"))
    return _EGL_STATUS[0]


def to_pyrender_mesh(parts: list, smooth: bool = False):
    """One pyrender.Mesh holding a primitive per trimesh part (each keeps its colours or texture)."""
    pyrender = _import_pyrender()
    primitives = []
    for part in parts:
        primitives.extend(pyrender.Mesh.from_trimesh(part, smooth=smooth).primitives)
    return pyrender.Mesh(primitives=primitives)


def make_camera(K: np.ndarray, znear: float = 0.01, zfar: float = 50.0):
    """pyrender camera matching OpenCV intrinsics K [3, 3] (pixel-centre convention, see module doc)."""
    pyrender = _import_pyrender()
    K = np.asarray(K, dtype=np.float64)
    return pyrender.IntrinsicsCamera(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2] + 0.5, cy=K[1, 2] + 0.5,
                                     znear=znear, zfar=zfar)


def linear_depth(window_z: np.ndarray, znear: float, zfar: float | None) -> np.ndarray:
    """Metric depth (z, float32) from the depth buffer's window z in [0, 1] (1 = nothing drawn -> 0).

    The same float32 arithmetic as pyrender's framebuffer read (NDC z = 2 w - 1, then the perspective
    inverse), element by element, so the values are bit-identical; computed only inside the bounding box
    of the drawn pixels and without boolean-mask gathers and scatters (pyrender's read of a 640x480
    template view cost about 3 ms of CPU on the 2-core machine, this about a fifth of it)."""
    drawn = window_z != 1.0
    z = np.zeros(window_z.shape, dtype=np.float32)
    rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    if not len(rows):
        return z
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ndc = 2.0 * window_z[box] - 1.0
    with np.errstate(divide="ignore"):
        if zfar is None:
            inside = 2 * znear / (1.0 - ndc)
        else:
            inside = (2.0 * znear * zfar) / (zfar + znear - ndc * (zfar - znear))
    np.copyto(z[box], inside, where=drawn[box])
    return z


def _read_framebuffer(self, scene, flags):
    """Replacement of pyrender's `Renderer._read_main_framebuffer` (bound to one pyrender renderer): the same
    GL calls (resolve the draw framebuffer, read depth as float and colour as RGB(A) bytes, rows flipped
    to top-down), with the depth linearised by `linear_depth`."""
    from OpenGL import GL

    pyrender = _import_pyrender()
    width, height = self._main_fb_dims[0], self._main_fb_dims[1]
    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb_ms)
    GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, self._main_fb)
    for mask, sampling in ((GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR), (GL.GL_DEPTH_BUFFER_BIT, GL.GL_NEAREST)):
        GL.glBlitFramebuffer(0, 0, width, height, 0, 0, width, height, mask, sampling)
    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb)
    window_z = np.frombuffer(GL.glReadPixels(0, 0, width, height, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT),
                             dtype=np.float32).reshape(height, width)[::-1]
    camera = scene.main_camera_node.camera
    depth = linear_depth(window_z, camera.znear, camera.zfar)
    if flags & pyrender.RenderFlags.DEPTH_ONLY:
        return depth
    channels, fmt = (4, GL.GL_RGBA) if flags & pyrender.RenderFlags.RGBA else (3, GL.GL_RGB)
    color = np.frombuffer(GL.glReadPixels(0, 0, width, height, fmt, GL.GL_UNSIGNED_BYTE), dtype=np.uint8)
    return color.reshape(height, width, channels)[::-1], depth


class Renderer:
    """Offscreen renderers by image size, created on first use (one GL context per process).

    `fast_read` (default) reads the framebuffer with `_read_framebuffer` (bit-identical values, a fraction of
    pyrender's CPU time); False keeps pyrender's own read (the tests compare the two)."""

    def __init__(self, fast_read: bool = True):
        self._renderers: dict[tuple[int, int], object] = {}
        self.fast_read = bool(fast_read) and sys.platform != "darwin"  # pyrender rescales on macOS

    def _get(self, width: int, height: int):
        key = (int(width), int(height))
        if key not in self._renderers:
            pyrender = _import_pyrender()
            try:
                offscreen = pyrender.OffscreenRenderer(key[0], key[1])
            except Exception as exc:
                raise RenderError(f"cannot create a {key[0]}x{key[1]} offscreen OpenGL context "
                                  f"({type(exc).__name__}: {exc}); {EGL_HINT}") from None
            if self.fast_read:
                inner = offscreen._renderer
                inner._read_main_framebuffer = types.MethodType(_read_framebuffer, inner)
            self._renderers[key] = offscreen
        return self._renderers[key]

    def render(self, scene, width: int, height: int, flat: bool = False, depth_only: bool = False):
        """Render a pyrender scene -> (rgb uint8 [H, W, 3] or None, depth float32 metres [H, W])."""
        pyrender = _import_pyrender()
        flags = pyrender.RenderFlags.NONE
        if depth_only:
            flags = pyrender.RenderFlags.DEPTH_ONLY
        elif flat:
            flags = pyrender.RenderFlags.FLAT
        renderer = self._get(width, height)
        # pyrender draws into a 4x multisampled framebuffer and blits depth with GL_NEAREST, which returns
        # one sample's depth (llvmpipe: a quarter pixel off the centre), so masks and depth would be
        # shifted against the pose. Single-sample storage makes every pixel the pixel-centre sample.
        module = sys.modules["pyrender.renderer"]
        original = module.glRenderbufferStorageMultisample
        module.glRenderbufferStorageMultisample = lambda target, samples, fmt, w, h: original(target, 0, fmt, w, h)
        try:
            out = renderer.render(scene, flags=flags)
        finally:
            module.glRenderbufferStorageMultisample = original
        if depth_only:
            return None, np.asarray(out, dtype=np.float32)
        rgb, depth = out
        return np.ascontiguousarray(rgb[..., :3]), np.asarray(depth, dtype=np.float32)

    def close(self) -> None:
        for r in self._renderers.values():
            try:
                r.delete()
            except Exception:
                pass
        self._renderers = {}


def render_object_views(renderer: Renderer, mesh, radius: float, poses_m: np.ndarray, K: np.ndarray, width: int,
                        height: int, lighting: str = "ambient"):
    """Render one object under each pose: yields (rgb uint8 [H, W, 3], depth float32 metres [H, W]).

    `mesh` is a pyrender.Mesh, `radius` its largest vertex distance from the origin (metres); `poses_m`
    [V, 4, 4] are T_m2c in metres. lighting "ambient" draws the albedo unlit (GigaPose's templates are
    rendered under white ambient light only); "shaded" adds ambient light and a headlight.
    """
    if lighting not in ("ambient", "shaded"):
        raise ValueError(f"lighting must be 'ambient' or 'shaded', got {lighting!r}")
    pyrender = _import_pyrender()
    radius = max(float(radius), 1e-3)
    dist = float(np.linalg.norm(np.asarray(poses_m)[:, :3, 3], axis=1).max())
    scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.full(3, 0.45 if lighting == "shaded" else 1.0))
    scene.add(make_camera(K, znear=max(1e-3, 0.05 * radius), zfar=dist + 10 * radius), pose=CV_TO_GL)
    if lighting == "shaded":
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=2.0), pose=CV_TO_GL)
    node = scene.add(mesh, pose=np.eye(4))
    for T in poses_m:
        scene.set_pose(node, np.asarray(T, dtype=np.float64))
        yield renderer.render(scene, width, height, flat=(lighting == "ambient"))
