"""Settings of the tiny synthetic sets the tests render (`vpog.data.synthesize` keys).

A module of its own (tests/ is on sys.path through tests/conftest.py): `from synthetic_sets import
tiny_set_settings`. One base, small enough to render in seconds; each test overrides what it needs.
"""

from __future__ import annotations

from pathlib import Path


def tiny_set_settings(out: str | Path, **overrides) -> dict:
    """2 procedural objects, 9 scenes of 128 x 96 in shards of 3, level-0 templates (42 views of
    160 x 120, unlit), rendered in-process without a progress bar. `overrides` replace keys."""
    settings = {
        "out": str(out), "name": "synthetic", "meshes": "procedural", "num_objects": 2, "num_images": 9,
        "images_per_shard": 3, "image_size": [128, 96], "template_level": 0, "template_size": [160, 120],
        "template_lighting": "ambient", "template_distance_factor": None, "normalize": True, "max_extent": 0.2,
        "mesh_units": "auto", "objects_per_image": [2, 2], "distractors_per_image": [1, 2], "occluder_prob": 0.8,
        "apparent_size": [0.35, 0.6], "texture_prob": 0.6, "seed": 3, "num_workers": 0, "progress": False,
    }
    unknown = set(overrides) - set(settings)
    if unknown:
        raise KeyError(f"unknown synthesis settings {sorted(unknown)}")
    settings.update(overrides)
    return settings


_SYNTHESIZE = """
import json, sys
from vpog.data.render import egl_available
ok, reason = egl_available()
if not ok:
    print(reason)
    sys.exit(3)
from vpog.data.synthesize import synthesize
synthesize(json.loads(sys.argv[1]))
"""


def render_training_set(out: str | Path) -> Path:
    """3 procedural objects in 6 scenes with occluders and distractors, level-0 templates: the set the training
    smoke test and the pre-flight check run on. Rendered in a subprocess (EGL's Mesa and Triton's LLVM in one
    process can crash at Triton's import); skips the test when headless rendering is unavailable."""
    import json
    import subprocess
    import sys

    import pytest

    settings = tiny_set_settings(out, num_objects=3, num_images=6, objects_per_image=[3, 3],
                                 distractors_per_image=[0, 1], occluder_prob=0.3, apparent_size=[0.4, 0.6], seed=5)
    res = subprocess.run([sys.executable, "-c", _SYNTHESIZE, json.dumps(settings)], capture_output=True, text=True,
                         timeout=300)
    if res.returncode == 3:
        pytest.skip(f"headless rendering unavailable: {res.stdout.strip()[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(out)
