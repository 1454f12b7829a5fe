"""The template views vpog rendered before its threaded writer (a fixture), and a check against them.

`fixtures/template_views_0292cfc.json` holds, for the tiny test set (`synthetic_sets.tiny_set_settings`,
seed 3, two procedural objects, 42 views of 160 x 120), the decoded pixels' hash, mode, dtype and shape of
every template PNG as vpog wrote them at commit 0292cfc (Pillow, synchronously). Pixels depend on the
rasteriser, so the check applies where the GL renderer is the one the fixture was made with (Mesa's
llvmpipe of the CI image); `test_template_writing.py` also compares, on any renderer, the writer's output
with an independent plain render + Pillow write.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "template_views_0292cfc.json"


def gl_renderer() -> str:
    """GL_RENDERER of a fresh offscreen context, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits)'."""
    from OpenGL import GL

    from vpog.data.render import Renderer

    r = Renderer()
    try:
        r._get(8, 8)  # pyrender makes the new context current
        return GL.glGetString(GL.GL_RENDERER).decode()
    finally:
        r.close()


def view_signature(path: Path) -> str:
    """'mode dtype HxW[xC] sha256(pixels)[:16]' of a PNG, as the fixture stores it."""
    with Image.open(path) as im:
        a, mode = np.asarray(im), im.mode
    return f"{mode} {a.dtype} {'x'.join(map(str, a.shape))} {hashlib.sha256(a.tobytes()).hexdigest()[:16]}"


def fixture_renderer_here() -> str | None:
    """None where this machine renders with the fixture's renderer, else why the fixture does not apply."""
    expected = json.loads(FIXTURE.read_text())["gl_renderer"]
    renderer = gl_renderer()
    return None if renderer == expected else f"the fixture was rendered by {expected}, this machine uses {renderer}"


def assert_views_as_before(template_dir: Path) -> bool:
    """Every template PNG of the tiny set under `template_dir` ({name}/) decodes to the fixture's pixels.
    Returns False (nothing compared) where the renderer is not the fixture's."""
    fixture = json.loads(FIXTURE.read_text())
    if fixture_renderer_here() is not None:
        return False
    differ = [k for k, v in fixture["views"].items() if view_signature(template_dir / k) != v]
    assert not differ, f"{len(differ)} of {len(fixture['views'])} template images differ from before, e.g. {differ[:3]}"
    written = sorted(str(p.relative_to(template_dir)) for p in template_dir.glob("0*/*.png"))
    assert written == sorted(fixture["views"])
    return True
