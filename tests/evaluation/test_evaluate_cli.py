"""The evaluation on a tiny on-disk BOP-webdataset set (ellipsoids, no renderer), on CPU:
object split, object library, loader labels through PnP, trainer validation values and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_scenes import CENTRE, MICRO_MODEL, TINY_OBJECTS, micro_model, render_ellipsoid, write_tiny_dataset

from vpog.config_schema import from_mapping
from vpog.data.batch import collate_vpog
from vpog.data.dataset import DataConfig, VPOGDataset
from vpog.evaluation.correspondences import correspondences_from_labels
from vpog.evaluation.metrics import rotation_error_deg
from vpog.evaluation.objects import ObjectLibrary, read_ply_vertices
from vpog.evaluation.runner import PoseValidator
from vpog.evaluation.split import ObjectSubset, SplitConfig, object_subset, select_instances, split_objects
from vpog.geometry import pose_vector_to_matrix
from vpog.ops.patch_flow_labels import patch_flow_labels
from vpog.ops.pnp_solve import pnp_solve


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def dataset(tiny_root):
    cfg = from_mapping(DataConfig, {"num_positive_templates": 2, "num_negative_templates": 1, "train_datasets": [
        {"name": "tiny", "root": str(tiny_root), "templates": str(tiny_root / "templates")}]}, "data")
    return VPOGDataset(cfg, train=False)


@pytest.fixture(scope="module")
def model():
    return micro_model()


def _on_ellipsoid(x: torch.Tensor, axes) -> torch.Tensor:
    return (((x - torch.tensor(CENTRE)) / torch.tensor(axes)) ** 2).sum(-1)


def test_split_is_deterministic_and_complete():
    ids = list(range(1, 17))
    train, held = split_objects(ids, SplitConfig(heldout_fraction=0.25, seed=3))
    assert len(held) == 4 and sorted(train + held) == ids and not set(train) & set(held)
    assert split_objects(reversed(ids), SplitConfig(heldout_fraction=0.25, seed=3)) == (train, held)
    assert split_objects(ids, SplitConfig(heldout_fraction=0.25, seed=4))[1] != held
    assert split_objects([5, 9], SplitConfig(heldout_fraction=0.9))[1] in ([5], [9])  # never all
    assert split_objects(ids, SplitConfig(heldout_objects=[2, 7]))[1] == [2, 7]
    with pytest.raises(ValueError, match="heldout_objects"):
        split_objects(ids, SplitConfig(heldout_objects=[99]))
    with pytest.raises(ValueError, match="heldout_fraction"):
        SplitConfig(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="unknown config key 'split.heldout'"):
        from_mapping(SplitConfig, {"heldout": [1]}, "split")
    objs = np.array([1, 2, 1, 3, 1, 2])
    assert select_instances(objs, [1, 3]).tolist() == [0, 2, 3, 4]
    capped = select_instances(objs, [1], max_per_object=2, seed=0)
    assert len(capped) == 2 and set(capped.tolist()) <= {0, 2, 4}


def test_object_subset_and_library(dataset, tiny_root):
    sub = object_subset(dataset, [2])
    assert len(sub) == 2 and all(int(sub[i]["obj_id"]) == 2 for i in range(len(sub)))
    assert int(ObjectSubset(dataset, [0])[(0, 123)]["obj_id"]) == int(dataset[0]["obj_id"])
    lib = ObjectLibrary(dataset.sources[0], max_model_points=300)
    info = lib.info(3)
    assert info.diameter == pytest.approx(2 * max(TINY_OBJECTS[3]), rel=1e-6)
    assert info.symmetric and len(info.syms) == 2 and info.points.shape == (300, 3)
    assert torch.allclose(_on_ellipsoid(info.points, TINY_OBJECTS[3]), torch.ones(300), atol=1e-3)
    assert not lib.info(1).symmetric
    verts = read_ply_vertices(tiny_root / "models" / "obj_000001.ply")
    assert verts.shape == (500, 3)
    # Template crops: the crop K and pose explain the crop depth (an exact render with the crop camera).
    t = lib.templates(1)
    assert t.images.shape == (8, 3, 224, 224) and t.K.shape == (8, 3, 3)
    for v in (0, 5):
        exact, mask = render_ellipsoid(t.K[v], t.poses[v], 224, TINY_OBJECTS[1], CENTRE)
        both = mask & t.masks[v]
        assert both.sum() > 0.9 * mask.sum()
        err = (exact - t.depths[v])[both].abs()
        assert err.median() < 1.5e-3  # template depth PNGs hold millimetres; nearest resampling


def test_loader_labels_through_pnp_give_the_true_pose(dataset):
    """Loader sample (query crop + templates) -> docs/conventions.md §4 labels -> correspondences -> PnP
    = the GT pose."""
    batch = collate_vpog([dataset[i] for i in range(3)])
    diam = batch.diameter
    labels = patch_flow_labels(batch.depths[:, 0], batch.masks[:, 0], batch.K[:, 0], batch.T_m2c[:, 0],
                               batch.depths[:, 1:], batch.masks[:, 1:], batch.K[:, 1:], batch.T_m2c[:, 1:],
                               tau=0.02 * diam, backend="reference")
    corr = correspondences_from_labels(labels, batch.depths[:, 1:], batch.masks[:, 1:], batch.K[:, 1:],
                                       batch.T_m2c[:, 1:], max_points=512)
    assert (corr.count > 100).all()
    res = pnp_solve(corr.x3d, corr.x2d, corr.w2d, batch.K[:, 0], generator=torch.Generator().manual_seed(0))
    T = pose_vector_to_matrix(res.pose)
    rot = rotation_error_deg(T[:, :3, :3], batch.T_m2c[:, 0, :3, :3])
    trans_mm = (T[:, :3, 3] - batch.T_m2c[:, 0, :3, 3]).norm(dim=-1) * 1000
    # x2d is where the lifted template pixel lands in the query: exact up to float32 rounding
    assert bool(res.valid.all()) and rot.max() < 0.05 and trans_mm.max() < 0.1, (rot, trans_mm)


def test_pose_validator_values(dataset, model):
    from vpog.evaluation.inference import InferenceConfig

    cfg = InferenceConfig(group_size=2, num_candidates=2, refine_candidates=1, max_points=64, init_proposals=8,
                          pnp_iter=3)
    val = PoseValidator.from_dataset(object_subset(dataset, [1]), cfg)
    batch = collate_vpog([dataset[i] for i in range(2)])  # both queries of object 1
    values = val.batch_values(model, batch)
    assert {"pose/vpog/rot_err_deg", "pose/nearest template/mssd_recall"} <= set(values)
    assert all(v.shape == (2,) for v in values.values())
    summary = PoseValidator.summarise(values)
    assert 0.0 <= summary["pose/vpog/ar"] <= 1.0
    assert summary["pose/vpog/ar"] == pytest.approx(
        (values["pose/vpog/mssd_recall"].mean() + values["pose/vpog/mspd_recall"].mean()).item() / 2, rel=1e-5)


def test_cli_runs_on_cpu(tiny_root, model, tmp_path):
    from omegaconf import OmegaConf

    from vpog.cli import load_config
    from vpog.evaluate import main

    # A checkpoint as the trainer saves it: weights plus the resolved config. The architecture, the data
    # set and the split come from it (model=vpog_vitb and data=synthetic stay the CLI defaults).
    data = OmegaConf.to_container(load_config("evaluate").data, resolve=True)
    data.update(synthesize=None, num_positive_templates=2, num_negative_templates=2,
                train_datasets=[{"name": "tiny", "root": str(tiny_root), "templates": f"{tiny_root}/templates"}])
    split = {"heldout_objects": [2], "heldout_fraction": 0.25, "seed": 0}
    ckpt = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": {"model": MICRO_MODEL, "data": data, "split": split}}, ckpt)
    out = tmp_path / "eval"
    argv = [
        f"checkpoint={ckpt}", "data.num_negative_templates=1",  # a data override on top of the checkpoint's
        "eval.max_queries_per_object=1", "eval.num_workers=0", "eval.num_overlays=2", "eval.image_width=320",
        "inference.group_size=2", "inference.num_candidates=2", "inference.refine_candidates=1",
        "inference.max_points=64", "inference.init_proposals=8", "inference.pnp_iter=3",
        f"output_dir={out}", "name=run",
    ]
    assert main(argv) == 0
    doc = json.loads((out / "run" / "metrics.json").read_text())
    assert list(doc["methods"]) == ["vpog", "nearest template", "untrained vpog"]
    assert doc["meta"]["heldout_objects"] == [2] and doc["meta"]["train_objects"] == [1, 3]
    for m in doc["methods"].values():
        assert m["overall"]["n"] == 1 and set(m["per_object"]) == {"2"}
    for f in ("report.md", "error_histograms.png", "recall_curves.png", "overlays.png", "config.yaml"):
        assert (out / "run" / f).is_file()
    used = OmegaConf.load(out / "run" / "config.yaml")
    assert used.data.train_datasets[0].name == "tiny" and used.data.num_negative_templates == 1
    assert used.data.num_positive_templates == 2
    # a config error is reported, not raised
    assert main(argv + ["eval.objects=some"]) == 2
