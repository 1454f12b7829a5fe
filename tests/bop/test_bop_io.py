"""BOP reader, detections and results CSV on files written the way the BOP toolkit and CNOS write them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bop.bop_fixture import write_tiny_bop
from vpog.bop.dataset import BopDataset
from vpog.bop.detections import DetectionsFile, oracle_detections, select_for_targets
from vpog.bop.results import (
    HEADER,
    PoseResult,
    ResultsWriter,
    check_results,
    read_results,
    result_filename,
    write_results,
)


@pytest.fixture()
def tiny(tmp_path):
    root = tmp_path / "tiny"
    return root, write_tiny_bop(root)


def test_reader_gives_cameras_ground_truth_and_images_in_bop_units(tiny):
    root, written = tiny
    ds = BopDataset(root)
    assert ds.name == "tiny" and ds.obj_ids == [1, 5] and ds.scene_ids() == [3]
    assert ds.image_ids(3) == [0, 7]
    cam = ds.camera(3, 7)
    np.testing.assert_allclose(cam.K, written["K"])
    assert cam.depth_scale == pytest.approx(0.1)
    gts = ds.gt(3, 0)
    assert [g.obj_id for g in gts] == [1, 5] and [g.index for g in gts] == [0, 1]
    for g, (_obj, R, t, vis) in zip(gts, written["poses"][0]):
        np.testing.assert_allclose(g.R, R, atol=1e-12)  # row-major cam_R_m2c
        np.testing.assert_allclose(g.t, t)  # millimetres, unchanged
        assert g.visib_fract == pytest.approx(vis)
    assert ds.rgb(3, 0).shape == (48, 64, 3) and ds.rgb(3, 0).dtype == np.uint8
    np.testing.assert_allclose(ds.depth_mm(3, 7), 500.0)  # png value 5000 x depth_scale 0.1
    assert ds.mask_visib(3, 0, 1).sum() > 0
    assert ds.diameter_mm(1) == pytest.approx(np.linalg.norm([40, 30, 20]))
    pts = ds.model_points(5)
    assert pts.shape == (8, 3) and np.abs(pts).max(0) == pytest.approx([30, 10, 10])  # ascii PLY, mm


def test_targets_from_file_and_from_ground_truth_agree(tiny):
    root, written = tiny
    from_file = BopDataset(root).targets()
    assert [t._asdict() for t in from_file] == [
        {"scene_id": 3, "im_id": t["im_id"], "obj_id": t["obj_id"], "inst_count": t["inst_count"]}
        for t in written["targets"]]
    assert BopDataset(root, targets=None).targets() == from_file  # visib_fract >= 0.1, as get_im_targets
    images = BopDataset(root).target_images()
    assert [(s, i) for s, i, _ in images] == [(3, 0), (3, 7)]
    assert [t.inst_count for t in images[1][2]] == [1]  # the 5 % visible instance is no target


def test_gray_images_and_missing_ground_truth(tmp_path):
    root = tmp_path / "itodd"
    write_tiny_bop(root, with_gt=False, gray=True)
    ds = BopDataset(root)
    img = ds.rgb(3, 7)
    assert img.shape == (48, 64, 3) and (img[..., 0] == img[..., 2]).all()
    assert not ds.has_gt(3)
    with pytest.raises(FileNotFoundError, match="scene_gt.json"):
        ds.gt(3, 0)
    with pytest.raises(FileNotFoundError, match="scene_gt"):
        BopDataset(root, targets=None).targets()  # targets from GT need GT


def test_bad_layouts_name_the_file(tmp_path, tiny):
    root, _ = tiny
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BopDataset(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="split=val"):
        BopDataset(root, split="val")
    (root / "test_targets_bop19.json").write_text("{not json")
    with pytest.raises(ValueError, match="test_targets_bop19.json is not valid JSON"):
        BopDataset(root).targets()
    (root / "test_targets_bop19.json").write_text(json.dumps([{"scene_id": 3, "im_id": 0, "obj_id": 9,
                                                                "inst_count": 1}]))
    with pytest.raises(ValueError, match=r"objects \[9\]"):
        BopDataset(root).targets()
    (root / "models" / "models_info.json").write_text(json.dumps({"1": {"diameter": 0}}))
    with pytest.raises(ValueError, match="object 1 has no positive 'diameter'"):
        BopDataset(root)


def test_cnos_detections_decode_to_the_masks_they_were_made_from(tiny):
    root, written = tiny
    ds = BopDataset(root)
    dets = DetectionsFile(root / "detections.json")
    assert dets.num_detections == 4
    found = dets.image(3, 0)
    assert [d.obj_id for d in found] == [1, 5]
    for d, g in zip(found, ds.gt(3, 0)):
        np.testing.assert_array_equal(d.mask(), ds.mask_visib(3, 0, g.index))
        np.testing.assert_array_equal(d.bbox, g.bbox_visib)
    assert dets.time(3, 7) == pytest.approx(7.25)
    assert dets.image(9, 9) == [] and dets.time(9, 9) == 0.0


def test_compressed_rle_detections_read_like_pycocotools_writes_them(tiny):
    mask_util = pytest.importorskip("pycocotools.mask")
    root, _ = tiny
    ds = BopDataset(root)
    mask = ds.mask_visib(3, 0, 0)
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    path = root / "compressed.json"
    path.write_text(json.dumps([{"scene_id": 3, "image_id": 0, "category_id": 1, "score": 0.3,
                                 "bbox": [0, 0, 4, 4], "segmentation": rle, "time": 0.1}]))
    np.testing.assert_array_equal(DetectionsFile(path).image(3, 0)[0].mask(), mask)


def test_detections_are_chosen_per_target_by_score(tiny):
    root, _ = tiny
    ds = BopDataset(root)
    dets = DetectionsFile(root / "detections.json").image(3, 7)  # two of object 1 (scores 0.5, 0.6)
    targets = ds.target_images()[1][2]  # object 1, inst_count 1
    chosen = select_for_targets(dets, targets)
    assert len(chosen) == 1 and chosen[0].score == pytest.approx(0.6)
    oracle = oracle_detections(ds, 3, 7)
    assert len(oracle) == 2 and all(d.score == 1.0 for d in oracle)


def test_malformed_detections_are_named(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([{"scene_id": 1, "image_id": 2, "score": 0.5, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match="detection 0 needs .*category_id"):
        DetectionsFile(path)
    path.write_text(json.dumps({"scene_id": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        DetectionsFile(path)


def _result(scene=1, im=2, obj=3, score=0.5, time=0.25, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return PoseResult(scene, im, obj, score, q * np.sign(np.linalg.det(q)), rng.normal(size=3) * 100, time)


def _toolkit_load(path):
    """bop_toolkit inout.load_bop_results l.306-350, restated: split on ',' and on spaces."""
    rows = []
    for n, line in enumerate(open(path)):
        if n == 0 and "scene_id,im_id,obj_id,score,R,t,time" in line:
            continue
        e = line.split(",")
        assert len(e) == 7
        rows.append((int(e[0]), int(e[1]), int(e[2]), float(e[3]), np.array(e[4].split(), float).reshape(3, 3),
                     np.array(e[5].split(), float), float(e[6])))
    return rows


def test_results_csv_round_trip_is_exact_and_reads_like_the_toolkit(tmp_path):
    rows = [_result(seed=i, obj=i + 1) for i in range(4)]
    path = write_results(tmp_path / "vpog_tiny-test.csv", rows)
    text = path.read_text()
    assert text.startswith(HEADER + "\n")
    back = read_results(path)
    for a, b, tk in zip(rows, back, _toolkit_load(path)):
        np.testing.assert_array_equal(a.R, b.R)  # repr() floats read back bit-exact
        np.testing.assert_array_equal(a.t, b.t)
        np.testing.assert_array_equal(tk[4], a.R)
        assert (b.scene_id, b.im_id, b.obj_id, b.score, b.time) == (a.scene_id, a.im_id, a.obj_id, a.score, a.time)


def test_results_checker_reports_what_the_toolkit_rejects(tmp_path):
    ok = [_result(im=1, obj=1), _result(im=1, obj=2, seed=1), _result(im=2)]
    assert check_results(ok).ok and check_results(ok).problems == []
    bad = ok + [_result(im=1, obj=3, time=0.5, seed=2), _result(im=2)]
    check = check_results(bad)
    assert not check.ok and check.inconsistent_times == [(1, 1)] and check.duplicates == 1
    assert any("not the same for all estimates" in p for p in check.problems)
    assert not check_results([]).ok
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n1,2,3,0.5,1 0 0 0 1 0 0 0 1,1 2,0.1\n")
    with pytest.raises(ValueError, match="bad.csv, line 2: R needs 9 numbers and t 3"):
        read_results(path)


def test_result_file_name_follows_the_toolkit_parser():
    assert result_filename("vpog", "lmo", "test") == "vpog_lmo-test.csv"
    assert result_filename("vpog", "tless", "test_primesense") == "vpog_tless-test-primesense.csv"
    with pytest.raises(ValueError, match="without '_'"):
        result_filename("my_method", "lmo", "test")


def test_writer_continues_after_a_crash_without_duplicates(tmp_path):
    path = tmp_path / "vpog_tiny-test.csv"
    w = ResultsWriter(path)
    w.add_image(1, 1, [_result(im=1, obj=1), _result(im=1, obj=2, seed=1)])
    w.add_image(1, 2, [])  # an image without estimates is finished too
    w.close()
    with open(path, "a") as fh:  # a crash while writing image 3: one row and half of another
        fh.write("1,3,1,0.5,1 0 0 0 1 0 0 0 1,0 0 100,0.2\n1,3,2,0.5,1 0 0")
    w = ResultsWriter(path)
    assert w.done == {(1, 1), (1, 2)}
    w.add_image(1, 3, [_result(im=3, obj=1)])
    w.close()
    rows = read_results(path)
    assert [(r.im_id, r.obj_id) for r in rows] == [(1, 1), (1, 2), (3, 1)]
    path2 = tmp_path / "foreign.csv"
    write_results(path2, [_result()])
    with pytest.raises(ValueError, match="has no foreign.csv.progress"):
        ResultsWriter(path2)
