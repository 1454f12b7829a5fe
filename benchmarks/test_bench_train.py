"""Training throughput: images/s and peak memory of one optimiser step, fast ops vs `ops.backend=reference`.

One step is exactly `Trainer.train_step()` with the VPOG task: flow labels on the device, the network
under autocast (bf16 on GPU), classification + flow + EPro-PnP losses, backward, clipping, AdamW. The
batch is made once and stays on the device (data loading is not timed): a sphere of 0.2 m diameter seen
by the query camera and by S templates around it, with exact depth and masks (so labels, flow loss and
correspondences do real work) and random pixel colours.

images/s counts every image the network encodes: B (S + 1) per step. Peak memory is
`torch.cuda.max_memory_allocated` over the timed steps. GPU case: ViT-B, B = 32, S = 6 (the issue's
setting); CPU case: the tiny model at B = 1, S = 2, a quick check that the benchmark runs.

Needs torch, numpy and pytest only (no omegaconf, hydra or rendering).
"""

from __future__ import annotations

import math

import pytest
import torch

from vpog._backend import set_default_backend
from vpog.data.batch import VPOGBatch
from vpog.geometry import CROP_SIZE, look_at_pose, viewing_direction
from vpog.training.step import VPOGTask
from vpog.training.trainer import Trainer

RADIUS = 0.1  # metres
DISTANCE = 0.6  # camera to object origin, metres
FOCAL = 460.0  # the sphere covers ~70 % of the 224 px crop


def _sphere_depth(T: torch.Tensor, K: torch.Tensor, size: int) -> torch.Tensor:
    """Depth [..., size, size] (metres, 0 = background) of a sphere of RADIUS at the model origin."""
    v, u = torch.meshgrid(torch.arange(size, dtype=T.dtype, device=T.device),
                          torch.arange(size, dtype=T.dtype, device=T.device), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)  # [H, W, 3]
    rays = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K), pix)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    c = T[..., :3, 3][..., None, None, :]  # sphere centre in the camera frame
    rc = (rays * c).sum(-1)
    disc = rc.square() - (c.square().sum(-1) - RADIUS**2)
    s = rc - disc.clamp_min(0).sqrt()
    return torch.where(disc > 0, s * rays[..., 2], torch.zeros_like(s))


def sphere_batch(B: int, S: int, device: torch.device, seed: int = 0) -> VPOGBatch:
    """A VPOGBatch of B queries with S templates (4 positives near the query view, the rest >= 90 degrees away)."""
    g = torch.Generator().manual_seed(seed)
    d_q = torch.nn.functional.normalize(torch.randn(B, 3, generator=g, dtype=torch.float64), dim=-1)
    n_pos = min(4, S)
    jitter = 0.15 * torch.randn(B, S, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(d_q[:, None] + jitter, dim=-1)
    dirs[:, n_pos:] = torch.nn.functional.normalize(-d_q[:, None] + jitter[:, n_pos:], dim=-1)
    T = look_at_pose(torch.cat([d_q[:, None], dirs], 1), DISTANCE)  # [B, S+1, 4, 4]
    K = torch.tensor([[FOCAL, 0, CROP_SIZE / 2 - 0.5], [0, FOCAL, CROP_SIZE / 2 - 0.5], [0, 0, 1]],
                     dtype=torch.float64).expand(B, S + 1, 3, 3).clone()
    depth = _sphere_depth(T, K, CROP_SIZE)
    return VPOGBatch(
        images=torch.rand(B, S + 1, 3, CROP_SIZE, CROP_SIZE, generator=g),
        masks=depth > 0, depths=depth.float(), K=K.float(), M=torch.eye(3).expand(B, S + 1, 3, 3).clone(),
        T_m2c=T.float(), d_ref=dirs[:, 0].float(), template_dirs=viewing_direction(T[:, 1:]).float(),
        query_dir=d_q.float(), is_positive=torch.arange(S).expand(B, S) < n_pos,
        template_ids=torch.arange(S).expand(B, S).clone(), obj_id=torch.ones(B, dtype=torch.int64),
        diameter=torch.full((B,), 2 * RADIUS), dataset_id=torch.zeros(B, dtype=torch.int64),
        keys=[f"sphere/{i}" for i in range(B)],
    ).to(device)


class _Placeholder(torch.utils.data.Dataset):
    def __len__(self):
        return 1 << 20

    def __getitem__(self, key):
        return 0


class SphereTask(VPOGTask):
    """VPOGTask on one fixed, device-resident batch (the loader only yields placeholders)."""

    def __init__(self, cfg, batch: VPOGBatch):
        super().__init__(cfg)
        self.fixed = batch

    def prepare_data(self):
        pass

    def train_dataset(self):
        return _Placeholder()

    def epoch_order(self, dataset):
        return None

    def val_dataset(self):
        return None

    def batch_size(self):
        return self.fixed.batch_size

    def collate(self, samples):
        return None

    def train_step(self, model, batch, ctx):
        return super().train_step(model, self.fixed, ctx)


def _config(tmp_path, model: dict, batch_size: int, S: int, device: str, backend: str) -> dict:
    return {
        "task": "vpog", "seed": 0, "output_dir": str(tmp_path), "run_name": f"bench_{backend}",
        "ops": {"backend": backend},
        "data": {"batch_size": batch_size},  # not read: the batch is made here
        "model": model,
        "optim": {"warmup_steps": 1, "max_steps": 1000},
        "checkpoint": {"resume": False},
        "log": {"tensorboard": False, "progress_bar": "false", "val_every_steps": 0, "image_every_steps": 0},
        "machine": {"device": device, "num_workers": 0},
        "split": {"heldout_fraction": 0.25},
    }


TINY = {"name": "vpog_tiny", "encoder": {"embed_dim": 192, "depth": 2, "num_heads": 3},
        "group_attention": {"depth": 1, "num_heads": 3}, "heads": {"proj_dim": 64, "flow_hidden_dim": 128}}
CASES = [
    pytest.param("cuda", {"name": "vpog_vitb"}, 32, 6, marks=pytest.mark.cuda, id="cuda-vitb-B32-S6"),
    pytest.param("cpu", TINY, 1, 2, id="cpu-tiny-B1-S2"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("device, model, B, S", CASES)
def test_bench_train_step(benchmark, run_bench, tmp_path, device, model, B, S, backend):
    dev = torch.device(device)
    benchmark.group = f"train_step {device} {model['name']} B={B} S={S}"
    trainer = Trainer(_config(tmp_path, model, B, S, device, backend), task=SphereTask(
        _config(tmp_path, model, B, S, device, backend), sphere_batch(B, S, dev)))
    try:
        trainer.train_step()  # warm-up outside the timing: kernels compile, the allocator fills
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        result = run_bench(benchmark, trainer.train_step, backend=backend, op="train_step", items=B * (S + 1),
                           unit="images")
        assert math.isfinite(result["loss"])
        if dev.type == "cuda":
            benchmark.extra_info["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            benchmark.extra_info["device_name"] = torch.cuda.get_device_name(dev)
        benchmark.extra_info["batch"] = {"B": B, "S": S, "images_per_step": B * (S + 1), "model": model["name"]}
    finally:
        trainer.close()
        set_default_backend("auto")
