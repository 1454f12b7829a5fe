"""Fixtures for the data tests: one tiny synthetic set, rendered once per session (a few seconds on 2 cores)."""

from __future__ import annotations

import pytest


def _egl_skip_reason() -> str | None:
    try:
        from vpog.data.render import egl_available
    except Exception as exc:  # pyrender/trimesh not installed
        return f"rendering stack unavailable: {exc}"
    ok, reason = egl_available()
    return None if ok else reason


def _tiny_settings(out, **over) -> dict:
    p = {
        "out": str(out), "name": "synthetic", "meshes": "procedural", "num_objects": 2, "num_images": 9,
        "images_per_shard": 3, "image_size": [128, 96], "template_level": 0, "template_size": [160, 120],
        "template_lighting": "ambient", "template_distance_factor": None, "normalize": True, "max_extent": 0.2,
        "mesh_units": "auto", "objects_per_image": [2, 2], "distractors_per_image": [1, 2], "occluder_prob": 0.8,
        "apparent_size": [0.35, 0.6], "texture_prob": 0.6, "seed": 3, "num_workers": 0, "progress": False,
    }
    p.update(over)
    return p


@pytest.fixture(scope="session")
def require_egl():
    """Skip (with the reason) where headless EGL rendering is unavailable."""
    reason = _egl_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_settings():
    """settings(out, **overrides) -> synthesize.yaml keys of the test set: 2 procedural objects, 9 scenes of
    128x96 in 3 shards, level-0 templates (42 views) at 160x120."""
    return _tiny_settings


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory, require_egl):
    """Root of the tiny synthetic set (shared: copy it before damaging it)."""
    from vpog.data.synthesize import synthesize

    out = tmp_path_factory.mktemp("tiny_set")
    synthesize(_tiny_settings(out))
    return out


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """Data code runs in single-threaded DataLoader workers; do the same here (the CI machine has 2 cores,
    and tiny torch ops with several threads on a loaded machine are slower, not faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
