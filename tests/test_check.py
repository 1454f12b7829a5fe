"""`python -m vpog.check`, the pre-flight check: a clean tiny set passes with the report a person needs (data
rate, step time, peak memory, op backends), and a damaged setup fails naming every problem's file."""

from __future__ import annotations

import shutil

import pytest
from synthetic_sets import render_training_set


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """3 procedural objects, 6 scenes, level-0 templates (42 views of 160 x 120), rendered in a subprocess
    (EGL's Mesa and Triton's LLVM in one process can crash at Triton's import)."""
    return render_training_set(tmp_path_factory.mktemp("check_set"))


def _overrides(root, out_dir, *extra):
    return ["data.synthesize=null", f"data.train_datasets.0.root={root}",
            f"data.train_datasets.0.templates={root}/templates", "split.heldout_objects=[3]", f"output_dir={out_dir}",
            "pnp.mc_samples=32", "loss.pnp_points=64", *extra]


def test_a_clean_setup_passes_with_the_numbers(tiny_set, tmp_path, capsys):
    from vpog.check import main

    assert main(_overrides(tiny_set, tmp_path)) == 0
    report = capsys.readouterr().out
    assert report.rstrip().endswith("result: the run would start cleanly")
    assert "problems" not in report
    lines = {line.split()[0] + (" " + line.split()[1] if line.split()[0] in ("data", "batch") else ""): line
             for line in report.splitlines()[1:] if line.startswith("  ")}
    assert "2 shards indexed (0 broken)" in lines["data synthetic"]
    assert "templates complete for 3/3" in lines["data synthetic"]
    assert "samples/s per loader worker" in lines["batch synthetic"]
    assert "forward + backward" in lines["step"] and "peak memory" in lines["step"] and "on cpu, fp32" in lines["step"]
    # the backends the step really ran with (the CPU: labels and attention on the reference path)
    assert "patch_flow_labels: reference (cpu)" in lines["backends"]
    assert "s2rope_attention: reference (cpu)" in lines["backends"]
    assert str(tmp_path / "vpog") in lines["output"] and "starts from step 0" in lines["output"]
    assert not (tmp_path / "vpog").exists()  # the check writes nothing into the run folder


def test_a_damaged_setup_fails_naming_each_file(tiny_set, tmp_path, capsys):
    from vpog.check import main

    bad = tmp_path / "bad"
    shutil.copytree(tiny_set, bad, ignore=shutil.ignore_patterns(".vpog_index"))
    views = bad / "templates" / "synthetic"
    (views / "000002" / "000005_depth.png").unlink()
    (views / "000001" / "000007.png").write_bytes(b"not a png")
    shutil.copy(views / "000003" / "000001_depth.png", views / "000003" / "000002.png")  # 16-bit grey, no alpha
    sets = (f"data.train_datasets=[{{name:synthetic,root:{bad},templates:{bad}/templates}},"
            f"{{name:other,root:{tmp_path}/nowhere,templates:{tmp_path}/nowhere/templates}}]")
    code = main(_overrides(bad, tmp_path / "out", sets, f"model.encoder.checkpoint={tmp_path}/croco.pth"))
    report = capsys.readouterr().out
    assert code == 1
    assert "result: the run would NOT start cleanly: 6 problem(s) above" in report
    problems = report.split("problems (6):")[1].split("result:")[0]
    for expected in (f"{views}/000002/000005_depth.png: missing (42 views in 000002.npy)",
                     f"{views}/000001/000007.png: not a PNG file (or truncated)",
                     f"{views}/000003/000002.png: no alpha channel (grey)",
                     f"{tmp_path}/nowhere: training set root does not exist",
                     f"{tmp_path}/nowhere/templates/other: template folder of set 'other' does not exist",
                     f"no CroCo checkpoint file at {tmp_path}/croco.pth"):
        assert expected in problems, expected
    assert "templates complete for 0/3" in report and "2 shards indexed (0 broken)" in report
