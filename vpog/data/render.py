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
centres. Measured on a 2-core CPU (Mesa llvmpipe, one process): an unlit 640x480 template view renders in
about 8 ms of CPU (15 ms wall on a busy machine), 224x224 in about 2.5 ms; see benchmarks/test_bench_data.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")

import logging  # noqa: E402
import sys  # noqa: E402

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


def egl_available() -> tuple[bool, str]:
    """(True, "") when an offscreen EGL context can be made here, else (False, the reason)."""
    try:
        pyrender = _import_pyrender()
        r = pyrender.OffscreenRenderer(8, 8)
        r.delete()
        return True, ""
    except Exception as exc:
        return False, f"headless OpenGL (EGL) unavailable: {type(exc).__name__}: {exc}"


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


class Renderer:
    """Offscreen renderers by image size, created on first use (one GL context per process)."""

    def __init__(self):
        self._renderers: dict[tuple[int, int], object] = {}

    def _get(self, width: int, height: int):
        key = (int(width), int(height))
        if key not in self._renderers:
            pyrender = _import_pyrender()
            try:
                self._renderers[key] = pyrender.OffscreenRenderer(key[0], key[1])
            except Exception as exc:
                raise RenderError(f"cannot create a {key[0]}x{key[1]} offscreen OpenGL context "
                                  f"({type(exc).__name__}: {exc}); {EGL_HINT}") from None
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
