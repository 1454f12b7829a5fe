"""The three BOP commands, run as a user runs them, on a synthetic BOP test split (`synthesize format=bop`).

    python -m vpog.data.synthesize out=D format=bop ...      a rendered test split with ground truth
    python -m vpog.bop.templates dataset=D out=T             templates of its objects
    python -m vpog.bop.predict checkpoint=null dataset=D templates=T out=R
    python -m vpog.bop.score dataset=D results=R/vpog_D-test.csv out=S

Scoring the ground-truth poses written as a results file gives AR 1.0 on the rendered depth (VSD with
the real visibility masks); the untrained model's estimates score below that, and every file the BOP
toolkit would read is checked for its format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpog.bop.dataset import BopDataset
from vpog.bop.results import PoseResult, check_results, read_results, write_results

pytestmark = pytest.mark.render

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    if ok:
        assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def synthbop(tmp_path_factory, require_egl):
    out = tmp_path_factory.mktemp("e2e") / "synthbop"
    _run("vpog.data.synthesize", f"out={out}", "name=synthbop", "num_objects=3", "num_images=2",
         "images_per_shard=2", "image_size=[160,120]", "template_level=0", "template_size=[96,72]",
         "objects_per_image=[2,3]", "format=bop", "num_test_images=4", "test_images_per_scene=2",
         "num_workers=2", "progress=false")
    return out


def test_three_commands_end_to_end(synthbop, tmp_path):
    ds = BopDataset(synthbop)
    targets = ds.targets()
    assert targets and ds.scene_ids() == [0, 1]

    templates = tmp_path / "templates"
    _run("vpog.bop.templates", f"dataset={synthbop}", f"out={templates}", "template_level=0",
         "template_size=[96,72]", "progress=false")
    assert sorted(p.name for p in (templates / "synthbop").iterdir() if p.name.isdigit()) == \
        [f"{i:06d}" for i in ds.obj_ids]

    results = tmp_path / "results"
    _run("vpog.bop.predict", "checkpoint=null", "model=vpog_tiny", "machine.device=cpu", f"dataset={synthbop}",
         f"templates={templates}", f"out={results}", "progress=false", "inference.num_candidates=4",
         "inference.refine_candidates=2", "inference.init_proposals=16")
    csv = results / "vpog_synthbop-test.csv"
    rows = read_results(csv)
    assert check_results(rows).ok and check_results(rows).duplicates == 0
    wanted = sum(t.inst_count for t in targets)
    assert len(rows) == wanted  # oracle detections: one estimate per target instance
    summary = json.loads(csv.with_suffix(".summary.json").read_text())
    assert summary["oracle_detections"] and summary["images_failed"] == 0

    scored = tmp_path / "scores"
    _run("vpog.bop.score", f"dataset={synthbop}", f"results={csv}", f"out={scored}")
    scores = json.loads((scored / "scores_bop19.json").read_text())
    assert scores["oracle_detections"] is True  # carried over from predict's summary
    for key in ("bop19_average_recall", "bop19_average_recall_vsd", "bop19_average_recall_mssd",
                "bop19_average_recall_mspd"):
        assert 0.0 <= scores[key] < 1.0, (key, scores[key])  # an untrained model is not perfect
    np.testing.assert_allclose(scores["bop19_average_recall"], np.mean(
        [scores["bop19_average_recall_vsd"], scores["bop19_average_recall_mssd"],
         scores["bop19_average_recall_mspd"]]), atol=1e-12)


def test_ground_truth_poses_score_one(synthbop, tmp_path):
    ds = BopDataset(synthbop)
    rows = []
    for scene_id, im_id, targets in ds.target_images():
        wanted = {t.obj_id for t in targets}
        for g in ds.gt(scene_id, im_id):
            if g.obj_id in wanted and (g.visib_fract is None or g.visib_fract >= 0.1):
                rows.append(PoseResult(scene_id, im_id, g.obj_id, 1.0, g.R, g.t, 0.5))
    csv = write_results(tmp_path / "gt_synthbop-test.csv", rows)
    _run("vpog.bop.score", f"dataset={synthbop}", f"results={csv}", f"out={tmp_path / 'scores'}")
    scores = json.loads((tmp_path / "scores" / "scores_bop19.json").read_text())
    for key in ("bop19_average_recall", "bop19_average_recall_vsd", "bop19_average_recall_mssd",
                "bop19_average_recall_mspd"):
        assert scores[key] == pytest.approx(1.0), (key, scores[key])
