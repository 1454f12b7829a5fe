"""BOP prediction throughput: images/s of `vpog.PoseEstimator` and the time of each stage.

    pytest benchmarks/test_bench_bop_predict.py --benchmark-only

A synthetic BOP test split (`vpog.data.synthesize format=bop`: one 640x480 image, 3 target objects,
level-1 templates, 162 views at 640x480) is estimated with the default inference settings
(`InferenceConfig()`: every template as a group centre, group size 4, 1024 points, 64 PnP proposals),
with oracle detections, by vpog_tiny on the CPU and vpog_vitb where there is a GPU. The op backends
are compared in the same run (auto vs reference: the fast ops against the PyTorch reference paths).
`extra_info` holds images/s and the seconds per image of each stage: template encoding (once per
object, cached across images: reported separately), query encoding, group scoring, flow of the
chosen group, correspondences and PnP hypotheses.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import torch

pytestmark = pytest.mark.render

STAGES = {"encode": "encoder", "select_groups": "group_scoring", "group_forward": "flow",
          "correspondences_from_output": "correspondences", "solve_hypotheses": "pnp"}


@pytest.fixture(scope="module")
def bop_test_set(tmp_path_factory):
    from vpog.data.render import egl_available

    ok, reason = egl_available()
    if not ok:
        pytest.skip(reason)
    from vpog.data.synthesize import synthesize

    out = tmp_path_factory.mktemp("bop_bench") / "synthbop"
    synthesize({
        "out": str(out), "name": "synthbop", "meshes": "procedural", "num_objects": 3, "num_images": 2,
        "images_per_shard": 2, "image_size": [640, 480], "template_level": 1, "template_size": [640, 480],
        "template_lighting": "ambient", "template_distance_factor": None, "normalize": True, "max_extent": 0.2,
        "mesh_units": "auto", "objects_per_image": [3, 3], "distractors_per_image": [1, 2], "occluder_prob": 0.3,
        "apparent_size": [0.2, 0.4], "texture_prob": 0.6, "seed": 0, "num_workers": 2, "progress": False,
        "format": "bop", "num_test_images": 1, "test_images_per_scene": 1, "test_object_ids": None})
    return out


class _StageTimer:
    """Wraps the inference stages of `vpog.evaluation.inference` to add up their wall time."""

    def __init__(self, monkeypatch, device):
        import vpog.evaluation.inference as inf

        self.seconds = defaultdict(float)
        self.device = device
        self.depth = 0  # group scoring runs group_forward inside it: only the outermost stage counts
        for fn_name, stage in STAGES.items():
            monkeypatch.setattr(inf, fn_name, self._wrap(getattr(inf, fn_name), stage))

    def _wrap(self, fn, stage):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - t0
            return out

        return timed


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bench_bop_predict_images(benchmark, run_bench, bop_test_set, backend, monkeypatch):
    from vpog._backend import set_default_backend
    from vpog.bop.dataset import BopDataset
    from vpog.bop.detections import oracle_detections, select_for_targets
    from vpog.estimator import PoseEstimator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_default_backend(backend)
    try:
        model = "vpog_vitb" if device.type == "cuda" else "vpog_tiny"
        est = PoseEstimator.from_checkpoint(None, device=str(device), model=model)
        est.set_templates(bop_test_set / "templates", "synthbop")
        ds = BopDataset(bop_test_set)
        images = [(s, i, ts) for s, i, ts in ds.target_images()]
        inputs = [(ds.rgb(s, i), ds.camera(s, i).K, select_for_targets(oracle_detections(ds, s, i), ts))
                  for s, i, ts in images]
        timer = _StageTimer(monkeypatch, device)
        t0 = time.perf_counter()
        for obj in sorted({d.obj_id for _, _, dets in inputs for d in dets}):
            est.object_templates(obj)  # template encoding: once per object, cached across images
        template_seconds = time.perf_counter() - t0
        timer.seconds.clear()

        def run_all():
            for rgb, K, dets in inputs:
                est.estimate(rgb, K, dets)

        calls = {"n": 0}

        def counted():
            calls["n"] += 1
            run_all()

        run_bench(benchmark, counted, backend="reference" if backend == "reference" else "auto",
                  op=f"bop_predict/{model}", items=len(inputs), unit="images")
        per_image = {k: v / (calls["n"] * len(inputs)) for k, v in timer.seconds.items()}
        benchmark.extra_info.update({
            "model": model, "device": str(device), "images": len(inputs),
            "detections_per_image": sum(len(d) for _, _, d in inputs) / len(inputs),
            "template_encoding_s_per_object": template_seconds / max(1, len(est._tokens)),
            **{f"{k}_s_per_image": round(v, 5) for k, v in per_image.items()}})
    finally:
        set_default_backend("auto")
