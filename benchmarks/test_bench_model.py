"""Full VPOG network: forward + loss (classification + flow) + backward time and peak memory.

GPU cases (the issue's sizes): S = 6 templates, B = 8 and 32, ViT-B and ViT-L encoders, bf16 autocast,
the reference attention path against the fastest `s2rope_attention` backend on the device (same run,
so `speedup_vs_reference` compares like with like). B = 32 runs with activation checkpointing of the
encoder and group attention (ViT-L does not fit in 80 GB without it); `extra_info` records it, the peak
memory (GiB) and samples/s. The CPU case (tiny config, B = 1, S = 2) only shows that the path runs.

Run: `pytest benchmarks/test_bench_model.py --benchmark-only` (add `-k cuda` style filters as needed).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vpog._backend import select_backend
from vpog.geometry import look_at_pose
from vpog.losses import vpog_loss
from vpog.model import VPOG, VPOGConfig

ARCHS = {
    # mirrors vpog/config/model/*.yaml (built here: the GPU machine has no omegaconf)
    "vitb": dict(encoder=dict(embed_dim=768, depth=12, num_heads=12), group_attention=dict(num_heads=12)),
    "vitl": dict(encoder=dict(embed_dim=1024, depth=24, num_heads=16), group_attention=dict(num_heads=16)),
    "tiny": dict(encoder=dict(embed_dim=192, depth=2, num_heads=3), group_attention=dict(depth=1, num_heads=3),
                 heads=dict(proj_dim=64, flow_hidden_dim=128)),
}


def _setup(arch: str, B: int, S: int, backend: str, device: torch.device, checkpointing: bool):
    """Model (train mode) and a random batch with docs/conventions.md §4-shaped labels on `device`."""
    spec = {k: dict(v) for k, v in ARCHS[arch].items()}
    spec["encoder"]["activation_checkpointing"] = checkpointing
    spec.setdefault("group_attention", {})["activation_checkpointing"] = checkpointing
    torch.manual_seed(0)
    model = VPOG(VPOGConfig(name=arch, attention_backend=backend, **spec)).to(device).train()
    g = torch.Generator(device="cpu").manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(B, S, 3, generator=g), dim=-1)
    ref_R = look_at_pose(dirs[:, 0], 0.5)[..., :3, :3]
    cls = torch.randint(-1, 197, (B, S, 14, 14), generator=g)
    vis = (torch.rand(B, S, 14, 14, 16, 16, generator=g) < 0.6) & ((cls >= 0) & (cls < 196))[..., None, None]
    labels = SimpleNamespace(
        patch_cls=cls.to(device),
        dense_flow=(0.3 * torch.randn(B, S, 14, 14, 16, 16, 2, generator=g)).to(device),
        dense_visible=vis.to(device),
    )
    inputs = dict(
        query_images=torch.randn(B, 3, 224, 224, generator=g).to(device),
        template_images=torch.randn(B, S, 3, 224, 224, generator=g).to(device),
        template_dirs=dirs.to(device), d_ref=dirs[:, 0].to(device), ref_R=ref_R.to(device),
        buddies=labels.patch_cls,
    )
    return model, inputs, labels


def _step(model, inputs, labels, autocast: bool):
    model.zero_grad(set_to_none=True)
    device_type = inputs["query_images"].device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
        out = model(**inputs)
        loss = vpog_loss(out, labels)["loss"]
    loss.backward()
    return loss.detach()


def _run(benchmark, run_bench, arch, B, S, backend, device, checkpointing, autocast):
    model, inputs, labels = _setup(arch, B, S, backend, device, checkpointing)
    benchmark.group = f"vpog model fwd+bwd {arch} B={B} S={S} {device.type}"
    benchmark.extra_info.update(arch=arch, B=B, S=S, activation_checkpointing=checkpointing,
                                bf16_autocast=autocast)
    if device.type == "cuda":
        _step(model, inputs, labels, autocast)  # warm-up outside the peak-memory window
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loss = run_bench(benchmark, _step, model, inputs, labels, autocast, backend=backend,
                     op="vpog_model_fwd_bwd", items=B, unit="samples")
    assert torch.isfinite(loss)
    if device.type == "cuda":
        benchmark.extra_info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30


def _fast_backend(device: torch.device) -> str:
    """The backend "auto" resolves to (the op then picks its measured path per shape); skip if none."""
    choice = select_backend("s2rope_attention", "auto", device)
    if choice == "reference":
        pytest.skip(f"no fast s2rope_attention backend on {device.type}")
    return choice


@pytest.mark.cuda
@pytest.mark.parametrize("B", [8, 32])
@pytest.mark.parametrize("arch", ["vitb", "vitl"])
@pytest.mark.parametrize("which", ["reference", "fastest"])
def test_model_cuda(benchmark, run_bench, which, arch, B):
    device = torch.device("cuda")
    if which == "fastest":
        benchmark.extra_info["auto_resolves_to"] = _fast_backend(device)
    backend = "reference" if which == "reference" else "auto"
    _run(benchmark, run_bench, arch, B, 6, backend, device, checkpointing=B >= 32, autocast=True)


def test_model_cpu_tiny(benchmark, run_bench):
    _run(benchmark, run_bench, "tiny", 1, 2, "reference", torch.device("cpu"), checkpointing=False,
         autocast=False)
