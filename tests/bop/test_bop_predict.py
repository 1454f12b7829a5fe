"""`vpog.bop.templates`, `vpog.bop.predict` and `vpog.PoseEstimator` on a tiny toolkit-written BOP set.

An untrained vpog_tiny with few candidate groups keeps a run to seconds; what is checked is the contract
(layout, units, resumption, counts, errors), not pose accuracy.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.bop.bop_fixture import write_tiny_bop
from vpog.bop.results import format_row, read_results

pytestmark = pytest.mark.render

FAST = ["model=vpog_tiny", "machine.device=cpu", "progress=false", "inference.num_candidates=4",
        "inference.refine_candidates=2", "inference.group_size=2", "inference.init_proposals=8",
        "inference.pnp_iter=3", "checkpoint=null"]


@pytest.fixture(scope="module")
def bop_set(tmp_path_factory, require_egl):
    """(dataset root, template root) with level-0 templates of both objects."""
    from vpog.bop.templates import main as templates_main

    base = tmp_path_factory.mktemp("bop")
    write_tiny_bop(base / "tiny")
    rc = templates_main([f"dataset={base / 'tiny'}", f"out={base / 'templates'}", "template_level=0",
                         "template_size=[96,72]", "progress=false"])
    assert rc == 0
    return base / "tiny", base / "templates"


def _predict(root, templates, out, *extra):
    from vpog.bop.predict import main

    return main([f"dataset={root}", f"templates={templates}", f"out={out}", *FAST, *extra])


def test_templates_are_gigapose_layout_in_millimetres_and_resume(bop_set):
    from vpog.bop.templates import main as templates_main
    from vpog.data.templates import TemplateSet, read_camera

    root, templates = bop_set
    ts = TemplateSet(templates, "tiny")
    assert ts.objects() == [1, 5]
    poses_m, _ = ts.template_poses(5)
    assert poses_m.shape == (42, 4, 4)
    stored = np.load(templates / "tiny" / "object_poses" / "000005.npy")
    np.testing.assert_allclose(stored[:, :3, 3] / 1000.0, poses_m[:, :3, 3], rtol=1e-6)  # files in mm
    K, w, h = read_camera(templates, "tiny")
    rgba, depth = ts.read_template(5, 0)
    assert rgba.shape == (h, w, 4) == (72, 96, 4)
    # the model (a 60 x 20 x 20 mm box) is rendered at true scale: its depth spans at most its diameter
    seen = depth[rgba[..., 3] > 0]
    dist = float(np.linalg.norm(poses_m[0, :3, 3]))
    assert seen.size > 0 and dist - 0.04 < seen.min() and seen.max() < dist + 0.04
    files = sorted((templates / "tiny").rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in files]
    rc = templates_main([f"dataset={root}", f"out={templates}", "template_level=0", "template_size=[96,72]",
                         "progress=false"])
    assert rc == 0  # every object complete: nothing rendered again
    assert sorted((templates / "tiny").rglob("*.png")) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert templates_main([f"dataset={root}", f"out={templates}", "template_level=0", "template_size=[96,72]",
                           "progress=false", "verify=true"]) == 0
    assert [p.name for p in (templates / "tiny").iterdir() if ".tmp" in p.name or p.name.startswith(".")] == []
    rc = templates_main([f"dataset={root}", f"out={templates}", "template_level=1", "template_size=[96,72]",
                         "progress=false"])
    assert rc == 2  # other settings into the same set are refused


def test_templates_sharded_verified_and_a_bad_model_skipped(bop_set, tmp_path, caplog):
    """shard=i/n splits the objects (round-robin by id); a model that cannot be read is skipped with its reason
    (exit code 1, the other objects rendered); verify=true finds what is missing or corrupt, and the next run
    renders exactly that again."""
    from vpog.bop.templates import main as templates_main
    from vpog.data.templates import TemplateSet

    root, _ = bop_set
    data = tmp_path / "tiny"
    shutil.copytree(root, data)
    (data / "models" / "obj_000005.ply").write_text("ply\nformat ascii 1.0\nthis is no model\n")
    out = tmp_path / "templates"
    common = [f"dataset={data}", f"out={out}", "template_level=0", "template_size=[48,36]", "progress=false",
              "num_workers=0"]
    assert templates_main(common + ["shard=1/2"]) == 1  # object 5 alone: unreadable
    assert "object 5: unreadable" in caplog.text and TemplateSet(out, "tiny").objects() == []
    assert templates_main(common + ["shard=0/2"]) == 0  # object 1
    assert TemplateSet(out, "tiny").objects() == [1]
    assert templates_main(common + ["verify=true"]) == 1
    report = json.loads((out / "tiny" / "verify-0-of-1.json").read_text())
    assert (report["ok"], report["missing"], report["corrupt"]) == (1, [5], {})
    view = out / "tiny" / "000001" / "000011_depth.png"
    view.write_bytes(view.read_bytes()[:-20])
    kept = (out / "tiny" / "000001" / "000002.png").stat().st_mtime_ns
    assert templates_main(common + ["verify=true", "shard=0/2"]) == 1
    assert "000011_depth.png" in json.loads((out / "tiny" / "verify-0-of-2.json").read_text())["corrupt"]["1"]
    assert templates_main(common + ["shard=0/2"]) == 0  # renders object 1 again
    assert (out / "tiny" / "000001" / "000002.png").stat().st_mtime_ns != kept
    assert templates_main(common + ["verify=true", "shard=0/2"]) == 0


def test_predict_writes_the_bop19_csv_and_continues_where_it_stopped(bop_set, tmp_path):
    root, templates = bop_set
    out = tmp_path / "res"
    assert _predict(root, templates, out, "max_images=1") == 0
    csv = out / "vpog_tiny-test.csv"
    first = read_results(csv)
    assert {r.image for r in first} == {(3, 0)} and len(first) == 2
    assert _predict(root, templates, out) == 0
    rows = read_results(csv)
    assert [format_row(r) for r in rows[:2]] == [format_row(r) for r in first]  # kept as they were
    assert [(r.im_id, r.obj_id) for r in rows] == [(0, 1), (0, 5), (7, 1)]  # no duplicate rows
    for r in rows:
        np.testing.assert_allclose(r.R @ r.R.T, np.eye(3), atol=1e-5)
        assert 50.0 < r.t[2] < 5000.0  # millimetres (the objects stand 350-600 mm away)
    times = {}
    for r in rows:
        times.setdefault(r.image, set()).add(r.time)
    assert all(len(v) == 1 for v in times.values())  # one time per image
    summary = json.loads((out / "vpog_tiny-test.summary.json").read_text())
    assert summary["oracle_detections"] is True and "oracle" in summary["detections"]
    assert summary["images_done_before"] == 1 and summary["images_estimated"] == 1


def test_skipped_detections_and_failed_images_are_counted(bop_set, tmp_path):
    root, templates = bop_set
    data = tmp_path / "tiny"
    shutil.copytree(root, data)
    dets = json.loads((data / "detections.json").read_text())
    dets[0]["segmentation"] = {"counts": [48 * 64], "size": [48, 64]}  # image 0, object 1: an empty mask
    (data / "detections.json").write_text(json.dumps(dets))
    only1 = tmp_path / "templates"
    shutil.copytree(templates, only1)
    shutil.rmtree(only1 / "tiny" / "000005")  # object 5 loses its templates: its detections are skipped
    (data / "test" / "000003" / "rgb" / "000007.png").rename(data / "moved.png")  # image 7 fails
    out = tmp_path / "res"
    rc = _predict(data, only1, out, f"detections={data / 'detections.json'}")
    assert rc == 1  # a failed image
    summary = json.loads((out / "vpog_tiny-test.summary.json").read_text())
    assert summary["oracle_detections"] is False and summary["detections"] == "detections.json"
    assert summary["images_failed"] == 1 and summary["failed"][0]["im_id"] == 7
    assert summary["counts"]["skipped_no_templates"] == 1 and summary["counts"]["skipped_empty_mask"] == 1
    assert summary["objects_without_templates"] == [5]
    assert read_results(out / "vpog_tiny-test.csv") == []  # image 0 is finished, without estimates
    (data / "moved.png").rename(data / "test" / "000003" / "rgb" / "000007.png")
    assert _predict(data, only1, out, f"detections={data / 'detections.json'}") == 0  # only image 7 is redone
    summary = json.loads((out / "vpog_tiny-test.summary.json").read_text())
    assert summary["images_done_before"] == 1 and summary["images_estimated"] == 1
    rows = read_results(out / "vpog_tiny-test.csv")
    assert [(r.im_id, r.obj_id) for r in rows] == [(7, 1)]  # inst_count 1: the better of two detections
    assert rows[0].score == pytest.approx(0.6) and rows[0].time >= 7.25  # + the detector's 7.25 s


def test_predict_stops_on_a_missing_or_malformed_input(bop_set, tmp_path, caplog):
    root, templates = bop_set
    assert _predict(tmp_path / "nowhere", templates, tmp_path / "o") == 2
    assert "does not exist" in caplog.text
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"scene_id\": 3}]")
    assert _predict(root, templates, tmp_path / "o", f"detections={bad}") == 2
    assert "detection 0 needs" in caplog.text
    from vpog.bop.predict import main

    assert main([f"dataset={root}", f"out={tmp_path}", *FAST]) == 2  # templates=??? not given
    assert "templates" in caplog.text


def test_pose_estimator_api_gives_one_pose_per_detection_in_metres(bop_set):
    import vpog
    from vpog.bop.dataset import BopDataset
    from vpog.bop.detections import DetectionsFile
    from vpog.evaluation.inference import InferenceConfig

    root, templates = bop_set
    est = vpog.PoseEstimator.from_checkpoint(None, device="cpu", model="vpog_tiny",
                                             inference=InferenceConfig(num_candidates=4, refine_candidates=2,
                                                                       group_size=2, init_proposals=8, pnp_iter=3))
    est.set_templates(templates, "tiny")
    ds = BopDataset(root)
    dets = DetectionsFile(root / "detections.json").image(3, 7)
    poses = est.estimate(ds.rgb(3, 7), ds.camera(3, 7).K, dets)
    assert [p.obj_id for p in poses] == [d.obj_id for d in dets]
    assert [p.score for p in poses] == [d.score for d in dets]
    for p in poses:
        assert p.skipped is None and p.R.shape == (3, 3) and 0.05 < p.t[2] < 5.0  # metres
    with pytest.raises(ValueError, match="rgb must be uint8"):
        est.estimate(ds.rgb(3, 7).astype(np.float32), ds.camera(3, 7).K, dets)
    with pytest.raises(ValueError, match="K must be"):
        est.estimate(ds.rgb(3, 7), np.eye(2), dets)
    with pytest.raises(ValueError, match="no such model config"):
        vpog.PoseEstimator.from_checkpoint(None, model="vpog_huge")
