"""Data debug pictures (`data.visualization`, `python -m vpog.data.show`): what each picture shows, when the
training hook writes them, and the command that writes them without training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vpog import vis
from vpog.config_schema import ConfigKeyError, from_mapping
from vpog.data.debug_pictures import (
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    DebugPictureWriter,
    VisualizationConfig,
    batch_labels,
    sample_panels,
    sample_picture,
    write_batch_pictures,
)

UNSEEN = round(vis.UNSEEN_GREY * 255)
IGNORED = round(vis.IGNORED_GREY * 255)


def test_labelled_flow_image_greys_unseen_and_darkens_ignored_patches():
    cls = torch.full((2, 3), 4, dtype=torch.int64)  # 2 x 3 grid: 6 patches, unseen = 6
    cls[0, 1], cls[1, 2] = 6, -1
    flow = torch.zeros(2, 3, 16, 16, 2)
    flow[..., 0] = 0.5  # half a patch to the right: half-saturated red
    visible = torch.zeros(2, 3, 16, 16, dtype=torch.bool)
    visible[0, 0, :8] = True
    img = vis.labelled_flow_image(cls, flow, visible)
    assert img.shape == (32, 48, 3)
    assert (img[0:16, 16:32] == UNSEEN).all()  # patch (0, 1): unseen
    assert (img[16:32, 32:48] == IGNORED).all()  # patch (1, 2): ignored
    assert (img[8:16, 0:16] == 0).all()  # buddy pixels not visible in the query: black
    red = img[0:8, 0:16].reshape(-1, 3)
    assert (red == red[0]).all() and red[0, 0] == 255 and red[0, 1] == red[0, 2] < 200  # +u: red hue


def test_frame_caption_and_colour_key():
    framed = vis.frame_image(np.full((20, 30, 3), 255, np.uint8), (0, 200, 0), width=3)
    assert (framed[:3] == (0, 200, 0)).all() and (framed[:, -3:] == (0, 200, 0)).all()
    assert (framed[3:-3, 3:-3] == 255).all()
    captioned = vis.caption_image(framed, ["one", "two"], line_height=14)
    assert captioned.shape == (20 + 2 * 14 + 4, 30, 3)
    assert (captioned[:32] < 128).any()  # the text is drawn
    key = vis.flow_colour_key(65)
    assert (key[32, 32] == 255).all() and (key[0, 0] == 255).all()  # no motion: white; outside: white
    assert tuple(key[32, 64]) == (255, 0, 0)  # +u at the rim: saturated red


def test_visualization_config():
    cfg = from_mapping(VisualizationConfig, {"enabled": True, "save_frequency": 5}, "data.visualization")
    assert cfg.enabled and cfg.save_dir is None and cfg.max_samples_per_batch is None
    with pytest.raises(ValueError, match="save_frequency must be an integer >= 1"):
        VisualizationConfig(save_frequency=0)
    with pytest.raises(ValueError, match="max_samples_per_batch"):
        VisualizationConfig(max_samples_per_batch=0)
    with pytest.raises(ConfigKeyError, match="data.visualization.save_every"):
        from_mapping(VisualizationConfig, {"save_every": 3}, "data.visualization")


def test_writer_schedule(tmp_path):
    off = DebugPictureWriter(VisualizationConfig(), tmp_path, 0.02)
    assert not any(off.due(s) for s in range(5))
    w = DebugPictureWriter(VisualizationConfig(enabled=True, save_frequency=3), tmp_path / "default", 0.02)
    assert [s for s in range(10) if w.due(s)] == [0, 3, 6, 9]
    assert not w.due(3, rank=1)  # rank 0 only
    assert w.out_dir == tmp_path / "default"
    assert DebugPictureWriter(VisualizationConfig(save_dir=str(tmp_path / "x")), tmp_path, 0.02).out_dir == \
        tmp_path / "x"


@pytest.fixture(scope="module")
def batch_of(tiny_set):
    from vpog.data.batch import collate_vpog
    from vpog.data.dataset import DataConfig, TrainSetConfig, VPOGDataset

    cfg = DataConfig(num_positive_templates=3, num_negative_templates=2, batch_size=2, train_datasets=[
        TrainSetConfig(name="synthetic", root=str(tiny_set), templates=str(tiny_set / "templates"))])
    dataset = VPOGDataset(cfg, train=True, seed=1)
    return collate_vpog([dataset[(i, 100 + i)] for i in range(2)])


def test_sample_picture_marks_templates_and_labels(batch_of, tmp_path):
    batch = batch_of
    labels = batch_labels(batch, 0.02)
    S = batch.num_templates
    for i in range(batch.batch_size):
        p = sample_panels(batch, labels, i)
        assert len(p["crops"]) == S + 1
        for s in range(S):  # frame colour = positive / negative
            want = POSITIVE_COLOUR if batch.is_positive[i, s] else NEGATIVE_COLOUR
            assert tuple(p["crops"][s + 1][0, 0]) == want and tuple(p["crops"][s + 1][-1, 100]) == want
        assert p["captions"][1][0].startswith("t1 t*")
        assert p["d_ref_template"] == int(torch.argmax(batch.template_dirs[i] @ batch.d_ref[i]))
        assert f"t{p['d_ref_template'] + 1}" in p["header"][1] and "d_ref" in " ".join(p["captions"][
            p["d_ref_template"] + 1])
        for s in range(S):  # the flow cell is grey exactly over the unseen query patches
            cell = p["flow"][s + 1].reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4)
            unseen = (labels.patch_cls[i, s] == 196).numpy()
            assert (cell[unseen] == UNSEEN).all()
            assert not (cell[~unseen] == UNSEEN).all(axis=(1, 2, 3)).any()
        # the negatives are mostly unseen, t* mostly seen
        seen = [float(((labels.patch_cls[i, s] >= 0) & (labels.patch_cls[i, s] < 196)).sum()) for s in range(S)]
        assert seen[0] > max(seen[s] for s in range(S) if not batch.is_positive[i, s])
    paths = write_batch_pictures(batch, tmp_path / "pics", "x_", 0.02, labels=labels)
    assert [p.name for p in paths] == ["x_00.png", "x_01.png"]
    with Image.open(paths[1]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), sample_picture(batch, labels, 1))


def _train_cfg(tiny_set, tmp_path, *extra):
    from vpog.cli import load_config

    return load_config("train", ["data.synthesize=null", f"data.train_datasets.0.root={tiny_set}",
                                 f"data.train_datasets.0.templates={tiny_set}/templates", f"output_dir={tmp_path}",
                                 "run_name=pics", *extra])


def test_training_hook_writes_every_save_frequency_steps(tiny_set, batch_of, tmp_path):
    from vpog.training.step import VPOGTask
    from vpog.training.task import StepContext

    task = VPOGTask(_train_cfg(tiny_set, tmp_path, "data.visualization.enabled=true",
                               "data.visualization.save_frequency=2", "data.visualization.max_samples_per_batch=1"))
    for step in range(5):
        for rank in (1, 0, 0):  # another rank, then two micro-batches of the same step
            task.write_debug_pictures(batch_of, StepContext(device=torch.device("cpu"), autocast_dtype=None,
                                                             step=step, rank=rank))
    written = sorted(p.name for p in (tmp_path / "pics" / "data_pictures").iterdir())
    assert written == ["step0000000_00.png", "step0000002_00.png", "step0000004_00.png"]

    quiet = VPOGTask(_train_cfg(tiny_set, tmp_path / "off"))  # the default: off
    quiet.write_debug_pictures(batch_of, StepContext(device=torch.device("cpu"), autocast_dtype=None, step=0))
    assert not (tmp_path / "off").exists()


def test_show_command_writes_the_first_samples(tiny_set, tmp_path):
    from vpog.data.show import main

    out = tmp_path / "show"
    argv = ["data.synthesize=null", f"data.train_datasets.0.root={tiny_set}",
            f"data.train_datasets.0.templates={tiny_set}/templates", "data.batch_size=2", "num=3", f"out={out}"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    with Image.open(out / "sample_0000.png") as im:
        assert im.width > 224 * 4 and im.height > 224 * 4  # query + S templates, four rows
    assert main(argv[:-2] + ["num=0", f"out={out}"]) == 2  # a bad value: one line, exit 2
