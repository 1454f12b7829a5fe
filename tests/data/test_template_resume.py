"""Resumable, verifiable, robust template generation: a killed run leaves nothing that looks finished and a rerun
leaves no debris; `verify` finds what is missing, partial or corrupt; bad meshes are skipped and counted;
shards of one set make the unsharded set."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.render


def pixels_digest(root: Path) -> dict[str, str]:
    """Decoded pixels of every template PNG, bytes of every other file (markers and run records aside)."""
    out = {}
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = str(p.relative_to(root))
        if ".vpog_synth" in rel or p.name in (".done.json", "synthesis.json"):
            continue
        if p.suffix == ".png" and rel.startswith("templates/"):
            with Image.open(p) as im:
                out[rel] = im.mode + hashlib.sha1(np.asarray(im).tobytes()).hexdigest()
        else:
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    """Anything an interrupted run could leave: temporary names, .partial folders."""
    return sorted(str(p) for p in root.rglob("*") if ".tmp" in p.name or p.name == ".partial")


def templates_only(tiny_settings, out, **overrides):
    """Templates and models only (no scenes): 64 x 48, level 0."""
    base = {"num_images": 0, "template_size": [64, 48], "image_size": [64, 48]}
    return tiny_settings(out, **{**base, **overrides})


def test_killed_run_then_rerun_finishes_without_debris(require_egl, tiny_settings, tmp_path):
    from vpog.data.synthesize import synthesize

    settings = templates_only(tiny_settings, tmp_path / "killed", num_objects=10)
    code = "import json, sys; from vpog.data.synthesize import synthesize; synthesize(json.loads(sys.argv[1]))"
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(settings)], cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    templates = tmp_path / "killed" / "templates" / "synthetic"
    deadline = time.monotonic() + 120
    try:
        while not list(templates.glob("0*/.done.json")):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no object finished in 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    # finished for synthesize: templates marked done and the object's status written (it is written last)
    status = tmp_path / "killed" / ".vpog_synth" / "objects"
    finished = [p.parent.name for p in templates.glob("0*/.done.json")
                if (status / f"obj_{p.parent.name}.json").is_file()]
    assert len(finished) < 10
    for folder in templates.glob("0*"):  # what looks finished is: every view there (the folder is renamed whole)
        if folder.is_dir() and folder.name.isdigit():
            assert len(list(folder.glob("*_depth.png"))) == 42
    # debris of an older vpog version, as the issue describes it
    (templates / "000009.tmp7830").mkdir()
    (templates / "000009.tmp7830" / "000000.png").write_bytes(b"half")
    (templates / "object_poses" / "000009.tmp7830.npy").write_bytes(b"half")
    stamps = {f: (templates / f / "000000.png").stat().st_mtime_ns for f in finished}

    manifest = synthesize(settings)
    assert manifest["complete"] and manifest["stats"]["objects_rendered"] == 10 - len(finished)
    assert leftovers(tmp_path / "killed") == []
    assert {f: (templates / f / "000000.png").stat().st_mtime_ns for f in finished} == stamps  # kept
    clean = tmp_path / "clean"
    synthesize(templates_only(tiny_settings, clean, num_objects=10))
    assert pixels_digest(tmp_path / "killed") == pixels_digest(clean)
    report = synthesize({**settings, "verify": True})["verify"]
    assert report["ok"] == 10 and report["problems"] == 0


def test_verify_lists_missing_partial_and_corrupt(require_egl, tiny_settings, tmp_path):
    from vpog.data.synthesize import main, synthesize

    settings = templates_only(tiny_settings, tmp_path / "set", num_objects=5)
    synthesize(settings)
    templates = tmp_path / "set" / "templates" / "synthetic"
    (templates / "000001" / "000003_depth.png").unlink()  # a view lost: corrupt
    data = (templates / "000002" / "000007.png").read_bytes()
    (templates / "000002" / "000007.png").write_bytes(data[: len(data) // 2])  # truncated: corrupt
    (templates / "000003" / ".done.json").unlink()  # never finished: partial
    for p in (templates / "000004").iterdir():
        p.unlink()
    (templates / "000004").rmdir()
    (templates / "object_poses" / "000004.npy").unlink()  # gone: missing
    (templates / ".partial").mkdir()
    (templates / ".partial" / "000004.node7-123").mkdir()  # debris (makes 4 partial)
    args = [f"{k}={json.dumps(v)}" if not isinstance(v, str) else f"{k}={v}" for k, v in settings.items()]
    report = synthesize({**settings, "verify": True})["verify"]
    assert report["ok"] == 1 and sorted(report["corrupt"]) == [1, 2]
    assert "000003_depth.png" in report["corrupt"][1] and "000007.png" in report["corrupt"][2]
    assert report["partial"] == [3, 4] and report["missing"] == []
    assert report["debris"] == [str(templates / ".partial" / "000004.node7-123")]
    assert json.loads((tmp_path / "set" / ".vpog_synth" / "verify-0-of-1.json").read_text())["problems"] == 5
    assert not json.loads((tmp_path / "set" / "synthesis.json").read_text())["complete"]
    assert main(args + ["verify=true"]) == 1

    manifest = synthesize(settings)  # redoes the corrupt (markers removed by verify), partial and missing ones
    assert manifest["complete"] and manifest["stats"]["objects_rendered"] == 4
    assert leftovers(tmp_path / "set") == []
    assert main(args + ["verify=true"]) == 0


def _bad_meshes(folder: Path) -> None:
    import trimesh

    folder.mkdir()
    box = trimesh.creation.box(extents=[0.1, 0.05, 0.08])
    box.export(folder / "a_good.ply")
    (folder / "b_unreadable.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 7 9\nthis is not an obj file\x00\x01")
    (folder / "c_empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                        "property float z\nelement face 0\nproperty list uchar int vertex_indices\n"
                                        "end_header\n")
    (folder / "d_zero_extent.obj").write_text("v 0.1 0.1 0.1\nv 0.1 0.1 0.1\nv 0.1 0.1 0.1\nf 1 2 3\n")
    flat = trimesh.Trimesh([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]], [[0, 1, 2], [1, 2, 3]], process=False)
    flat.export(folder / "e_degenerate.ply")
    sphere = trimesh.creation.uv_sphere(radius=0.05)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    sphere.visual = trimesh.visual.TextureVisuals(uv=sphere.vertices[:, :2] * 5 + 0.5,
                                                  material=trimesh.visual.material.SimpleMaterial(image=image))
    sphere.export(folder / "f_huge_texture.glb")
    cone = trimesh.creation.cone(radius=0.04, height=0.1)
    cone.export(folder / "g_good.stl")


def test_mesh_checks_name_what_is_wrong():
    """Non-finite vertices never reach the checks through trimesh's loaders (they drop them), so the checks are
    also tested on parts made here."""
    import trimesh

    from vpog.data.meshes import BadMeshError, check_parts

    box = trimesh.creation.box(extents=[0.1, 0.05, 0.08])
    check_parts([box], "box")
    nan = box.copy()
    nan.vertices[0] = [np.nan, 0, 0]
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    for parts, kind, says in (([box, nan], "non-finite", "1 vertices with NaN"), ([flat], "degenerate", "no surface"),
                              ([], "empty", "no triangles")):
        with pytest.raises(BadMeshError, match=says) as err:
            check_parts(parts, "m")
        assert err.value.kind == kind


def test_bad_meshes_are_skipped_counted_and_kept_out_of_scenes(require_egl, tiny_settings, tmp_path):
    from tests.data.test_synthesize import read_shards
    from vpog.data.synthesize import main, synthesize

    _bad_meshes(tmp_path / "meshes")
    settings = {**tiny_settings(tmp_path / "set", meshes=str(tmp_path / "meshes"), num_objects=None, num_images=4,
                                images_per_shard=2, template_size=[64, 48], image_size=[64, 48],
                                objects_per_image=[2, 3]), "max_texture_pixels": 64 * 64 - 1}
    manifest = synthesize(settings)
    stats = manifest["stats"]
    assert manifest["complete"] and stats["objects_rendered"] == 2 and stats["objects_skipped"] == 5
    assert stats["skipped_by_kind"] == {"unreadable": 1, "empty": 1, "degenerate": 2, "huge-texture": 1}
    assert sorted(manifest["skipped_objects"]) == [2, 3, 4, 5, 6]
    assert "4096 pixels" in manifest["skipped_objects"][6]
    assert sorted(json.loads((tmp_path / "set" / "models" / "models_info.json").read_text())) == ["1", "7"]
    ids = {g["obj_id"] for s in read_shards(tmp_path / "set").values() for g in json.loads(s["gt.json"])}
    assert ids <= {1, 7} and stats["objects_left_out_of_scenes"] > 0
    assert sorted(p.name for p in (tmp_path / "set" / "templates" / "synthetic").glob("0*")) == ["000001", "000007"]
    # a rerun knows them (nothing to redo) and exits 0: bad meshes are expected in large mesh sets
    args = [f"{k}={json.dumps(v)}" if not isinstance(v, str) else f"{k}={v}" for k, v in settings.items()]
    assert main(args) == 0
    assert synthesize(settings)["stats"]["objects_skipped"] == 0  # nothing retried
    report = synthesize({**settings, "verify": True})["verify"]
    assert report["problems"] == 0 and sorted(report["skipped_objects"]) == [2, 3, 4, 5, 6]


def test_shards_make_the_unsharded_set(tiny_set, tiny_settings, tmp_path):
    """shard=0/2 and shard=1/2 into one folder (as two SLURM array tasks): the same set as one run; the first
    to finish leaves the set incomplete, the last completes it."""
    from tests.data.test_synthesize import _digest
    from vpog.data.synthesize import synthesize

    out = tmp_path / "sharded"
    first = synthesize({**tiny_settings(out), "shard": "1/2"})
    assert not first["complete"] and first["stats"]["objects_rendered"] == 1 and first["stats"]["scene_images"] == 3
    assert not (out / "models" / "models_info.json").exists()
    assert not json.loads((out / "synthesis.json").read_text()).get("complete")
    second = synthesize({**tiny_settings(out), "shard": "0/2"})
    assert second["complete"] and second["stats"]["objects_rendered"] == 1 and second["stats"]["scene_images"] == 6
    assert _digest(out) == _digest(tiny_set)
    with pytest.raises(ValueError, match="shard"):
        synthesize({**tiny_settings(tmp_path / "x"), "shard": "2/2"})
