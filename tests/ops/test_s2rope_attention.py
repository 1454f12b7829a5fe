"""S2RoPE attention: fast paths against a float64 reference of docs/conventions.md §5, forward and gradients.

On CPU the Triton kernels run through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
at tiny sizes; the cases marked `cuda` run the real sizes (N = 196, 1378; D = 32, 64, 128) on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from vpog import _backend
from vpog._backend import select_backend, set_default_backend, triton_status
from vpog.ops.s2rope_attention import (
    apply_s2rope,
    s2rope_angles,
    s2rope_attention,
    s2rope_attention_reference,
    s2rope_pair_tables,
)

HAS_TRITON = triton_status()[0]
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
CUDA = torch.cuda.is_available()
FAST = ("triton", "triton_rope_sdpa")

# Max error relative to max(1, max |reference|), reference in float64 from the same rounded inputs.
# fp32: kernels compute in fp32 (ieee dots), errors ~1e-6; fp16: rotated q/k and P rounded to fp16
# (~5e-4 seen); bf16: 8 mantissa bits (~1e-2 seen). SDPA's fp32 kernels may use TF32 on a GPU.
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
TOL_SDPA_FP32_CUDA = 2e-3


def _tol(dtype, backend, device):
    if dtype == torch.float32 and device.type == "cuda" and backend == "triton_rope_sdpa":
        return TOL_SDPA_FP32_CUDA
    return TOL[dtype]


def _inputs(B, H, N, D, dtype, device, zero_tokens=True, scale_pos=6.0):
    q, k, v = (torch.randn(B, H, N, D, device=device).to(dtype) for _ in range(3))
    pos = torch.rand(B, N, 4, device=device) * scale_pos
    pos[..., :2] = pos[..., :2].round()  # patch rows / columns are integers
    if zero_tokens and N > 1:
        pos[:, :: max(2, N // 3)] = 0.0  # unseen tokens: not rotated
        pos[:, 1::5, 2:] = 0.0  # query tokens: s = (0, 0)
    return q, k, v, pos


def _random_split(D, gen):
    """n = (n_y, n_x, n_s1, n_s2) summing to D / 2, zeros allowed."""
    cuts = sorted(torch.randint(0, D // 2 + 1, (3,), generator=gen).tolist())
    return (cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], D // 2 - cuts[2])


def _check(backend, q, k, v, pos, n, grads=True):
    """Run `backend` and the float64 reference; assert outputs and dq, dk, dv agree within TOL."""
    q, k, v = (t.detach().requires_grad_(grads) for t in (q, k, v))
    out = s2rope_attention(q, k, v, pos, n, backend=backend)
    assert out.dtype == q.dtype and out.shape == q.shape
    q64, k64, v64 = (t.detach().double().requires_grad_(grads) for t in (q, k, v))
    ref = s2rope_attention_reference(q64, k64, v64, pos, n)  # float32 pos: float32 angles, as docs/conventions.md §5
    pairs = [("out", out, ref)]
    if grads:
        g = torch.randn_like(ref)
        got = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
        want = torch.autograd.grad(ref, (q64, k64, v64), g)
        pairs += list(zip(("grad_q", "grad_k", "grad_v"), got, want))
    tol = _tol(q.dtype, backend, q.device)
    for name, a, b in pairs:
        assert torch.isfinite(a).all(), f"{backend} {name} not finite"
        err = (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err <= tol, f"{backend} {name} {q.dtype} N={q.shape[2]} D={q.shape[3]} n={n}: err {err:.2e} > {tol}"


# --------------------------------------------------------------------------------------------
# Reference (ground truth) and tables


def test_reference_gradcheck_float64():
    q, k, v, pos = _inputs(1, 2, 4, 8, torch.float64, "cpu")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: s2rope_attention_reference(a, b, c, pos, (1, 1, 1, 1)),
                                     (q, k, v), fast_mode=True)


def test_pair_tables_reproduce_reference_angles():
    gen = torch.Generator().manual_seed(1)
    for D in (8, 20, 32, 64):
        n = _random_split(D, gen)
        pair_idx, pair_freq = s2rope_pair_tables(n)
        pos = torch.randn(2, 9, 4) * 7
        ang = (pos[..., None, :] * pair_freq.T).sum(-1)  # what the kernels compute
        torch.testing.assert_close(ang, s2rope_angles(pos, n), rtol=0, atol=0)
        x = torch.randn(2, 1, 9, D, dtype=torch.float64)
        a, b = x[..., pair_idx[0].long()], x[..., pair_idx[1].long()]
        c, s = s2rope_angles(pos, n).double().cos()[:, None], s2rope_angles(pos, n).double().sin()[:, None]
        rot = x.clone()
        rot[..., pair_idx[0].long()] = a * c - b * s
        rot[..., pair_idx[1].long()] = b * c + a * s
        torch.testing.assert_close(rot, apply_s2rope(x, pos, n))


def test_auto_is_reference_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests: "auto" never takes it
    q, k, v, pos = _inputs(1, 2, 7, 32, torch.float32, "cpu")
    assert select_backend("s2rope_attention", "auto", q.device) == "reference"
    torch.testing.assert_close(s2rope_attention(q, k, v, pos, (4, 4, 4, 4)),
                               s2rope_attention_reference(q, k, v, pos, (4, 4, 4, 4)), rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("default", FAST)
def test_default_backend_falls_back_for_inputs_it_cannot_take(default, caplog, monkeypatch):
    """A process-wide default (ops.backend) is an "auto" request: inputs the fast backend does not
    take (float64; a head dim outside 32/64/128 for the fused kernel) run the reference, logged once."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backend._warned.clear()
    q, k, v, pos = _inputs(1, 2, 5, 48, torch.float64, "cpu")
    set_default_backend(default)
    try:
        with caplog.at_level("WARNING", logger="vpog._backend"):
            out = s2rope_attention(q, k, v, pos, (6, 6, 6, 6))
            s2rope_attention(q, k, v, pos, (6, 6, 6, 6))
    finally:
        set_default_backend("auto")
    torch.testing.assert_close(out, s2rope_attention_reference(q, k, v, pos, (6, 6, 6, 6)), rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if "s2rope_attention" in r.getMessage()]
    assert len(warnings) == 1 and f"'{default}' does not take dtype torch.float64" in warnings[0], warnings


# --------------------------------------------------------------------------------------------
# Fast paths through the Triton interpreter (tiny sizes)


@needs_triton
@pytest.mark.parametrize("N", [1, 7, 49])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("backend", FAST)
def test_fast_paths_match_reference(backend, dtype, N, device):
    q, k, v, pos = _inputs(1, 2, N, 32, dtype, device)
    _check(backend, q, k, v, pos, (5, 3, 6, 2))


@needs_triton
def test_rope_sdpa_bfloat16(device):
    q, k, v, pos = _inputs(2, 1, 23, 32, torch.bfloat16, device)
    _check("triton_rope_sdpa", q, k, v, pos, (4, 4, 4, 4))


@needs_triton
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", FAST)
def test_fast_paths_random_shapes(backend, seed, device):
    gen = torch.Generator().manual_seed(seed)
    N = int(torch.randint(2, 40, (1,), generator=gen))
    D = (32, 64, 128)[seed]
    B, H = (2, 1) if seed % 2 else (1, 3)
    q, k, v, pos = _inputs(B, H, N, D, torch.float32, device)
    _check(backend, q, k, v, pos, _random_split(D, gen))


@needs_triton
@pytest.mark.parametrize("backend", FAST)
def test_fast_paths_strided_inputs(backend, device):
    B, N, H, D = 2, 13, 2, 32
    qkv = torch.randn(B, N, 3, H, D, device=device)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D] views, not contiguous
    assert not q.is_contiguous()
    pos = torch.randn(B, N, 6, device=device)[..., 1:5] * 4  # strided pos
    _check(backend, q, k, v, pos, (4, 4, 4, 4))
    # a transposed (stride-1 along N) layout too
    qt = torch.randn(B, H, D, N, device=device).transpose(2, 3)
    _check(backend, qt, k.contiguous(), v, pos.contiguous(), (8, 8, 0, 0))


@needs_triton
@pytest.mark.parametrize("backend", FAST)
def test_fast_paths_expanded_output_grad(backend, device):
    """out.sum() hands the backward a stride-0 gradient."""
    q, k, v, pos = _inputs(1, 2, 9, 32, torch.float32, device)
    grads = []
    for b in (backend, "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        s2rope_attention(*leaves, pos, (4, 4, 4, 4), backend=b).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_triton
def test_rope_sdpa_any_even_head_dim(device):
    q, k, v, pos = _inputs(1, 3, 11, 20, torch.float32, device)  # D/2 = 10: padded pair tile, H = 3
    _check("triton_rope_sdpa", q, k, v, pos, (3, 2, 3, 2))


@needs_triton
def test_rotation_prepass_inverse(device):
    from vpog.kernels.s2rope_rotate import s2rope_rotate

    n = (3, 2, 0, 5)
    x, y, _, pos = _inputs(2, 3, 19, 20, torch.float32, device)
    pair_idx, pair_freq = s2rope_pair_tables(n, device=device)
    rx, ry = s2rope_rotate(x, y, pos, pair_idx, pair_freq)
    torch.testing.assert_close(rx, apply_s2rope(x, pos, n), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ry, apply_s2rope(y, pos, n), rtol=1e-5, atol=1e-5)
    back, none = s2rope_rotate(rx, None, pos, pair_idx, pair_freq, inverse=True)
    assert none is None
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


@needs_triton
def test_forced_backends_reject_what_they_cannot_run(device):
    q, k, v, pos = _inputs(1, 2, 5, 48, torch.float32, device)
    with pytest.raises(ValueError, match="head dim"):
        s2rope_attention(q, k, v, pos, (6, 6, 6, 6), backend="triton")
    q, k, v, pos = _inputs(1, 2, 5, 32, torch.float64, device)
    for backend in FAST:
        with pytest.raises(ValueError, match="dtype"):
            s2rope_attention(q, k, v, pos, (4, 4, 4, 4), backend=backend)
    with pytest.raises(ValueError, match="pos must have shape"):
        s2rope_attention(q, k, v, pos[:, :4], (4, 4, 4, 4), backend="triton")
    with pytest.raises(ValueError, match="2 \\* sum\\(n\\)"):
        s2rope_attention(q, k, v, pos, (4, 4, 4, 3), backend="triton")
    if device.type == "cpu":
        qb = q.to(torch.bfloat16)
        with pytest.raises(ValueError, match="bfloat16"):
            s2rope_attention(qb, qb, qb, pos, (4, 4, 4, 4), backend="triton")


# --------------------------------------------------------------------------------------------
# GPU: the real sizes


@pytest.fixture
def no_kernel_autotuning(monkeypatch):
    """One (default) config per kernel and shape: the size matrix compiles once per case, not per config."""
    monkeypatch.setenv("VPOG_TRITON_AUTOTUNE", "0")


# bf16 (the training dtype) at every head dim and length; fp16 and fp32 at a few (fp32 is a correctness path)
CUDA_CASES = [(torch.bfloat16, D, N) for D in (32, 64, 128) for N in (196, 1378)] + [
    (torch.float16, 64, 196), (torch.float16, 128, 1378), (torch.float32, 64, 196), (torch.float32, 32, 1378)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, D, N", CUDA_CASES, ids=[f"{str(c[0])[6:]}-D{c[1]}-N{c[2]}" for c in CUDA_CASES])
@pytest.mark.parametrize("backend", FAST)
def test_cuda_real_sizes(backend, dtype, D, N, no_kernel_autotuning):
    n = {32: (4, 4, 4, 4), 64: (10, 10, 6, 6), 128: (20, 20, 12, 12)}[D]
    q, k, v, pos = _inputs(2, 3, N, D, dtype, torch.device("cuda"), scale_pos=13.0)
    pos[..., 2:] = pos[..., 2:] / 13.0 * math.pi  # s in [0, pi]
    _check(backend, q, k, v, pos, n)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", FAST)
def test_cuda_strided_and_odd(backend, no_kernel_autotuning):
    B, N, H, D = 3, 197, 4, 64
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    pos = torch.rand(B, N, 4, device="cuda") * 13
    _check(backend, q, k, v, pos, (16, 16, 0, 0))


@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_every_kernel_config(D, monkeypatch):
    """Each autotuning candidate of the fused kernels, alone, against the reference (N = 1378 tails)."""
    import vpog.kernels.s2rope_attention as kmod

    kernels = (kmod._s2rope_attention_fwd_kernel, kmod._s2rope_attention_bwd_dkdv_kernel,
               kmod._s2rope_attention_bwd_dq_kernel)
    tables = (kmod._FWD_CONFIGS, kmod._DKDV_CONFIGS, kmod._DQ_CONFIGS)
    n = (10, 10, 6, 6) if D == 64 else (20, 20, 12, 12)
    q, k, v, pos = _inputs(1, 2, 1378, D, torch.bfloat16, torch.device("cuda"), scale_pos=13.0)
    saved = [(kern.configs, dict(kern.cache)) for kern in kernels]
    try:
        for i in range(max(len(t[D]) for t in tables)):
            for kern, table in zip(kernels, tables):
                bm, bn, w, st = table[D][i % len(table[D])]
                kern.configs = [c for c in saved[kernels.index(kern)][0]
                                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                                == (bm, bn, w, st)]
                kern.cache.clear()
            _check("triton", q, k, v, pos, n)
    finally:
        for kern, (configs, cache) in zip(kernels, saved):
            kern.configs = configs
            kern.cache.clear()
            kern.cache.update(cache)


@pytest.mark.cuda
def test_cuda_autotune_not_keyed_on_batch():
    from vpog.kernels.s2rope_attention import _s2rope_attention_fwd_kernel

    for B in (1, 2, 5):
        q, k, v, pos = _inputs(B, 2, 300, 64, torch.bfloat16, torch.device("cuda"))
        s2rope_attention(q, k, v, pos, backend="triton")
    keys = [key for key in _s2rope_attention_fwd_kernel.cache if 512 in key and 64 in key]
    assert len(keys) == 1, keys


@pytest.mark.cuda
def test_cuda_auto_rule():
    """CUDA: "auto" is the rotation pre-pass + SDPA (any head dim), and the reference for float64."""
    cuda = torch.device("cuda")
    assert select_backend("s2rope_attention", "auto", cuda) == "triton_rope_sdpa"
    n = (6, 6, 6, 6)
    q, k, v, pos = _inputs(2, 2, 196, 48, torch.bfloat16, cuda)  # D = 48: not a fused-kernel head dim
    torch.testing.assert_close(s2rope_attention(q, k, v, pos, n),
                               s2rope_attention(q, k, v, pos, n, backend="triton_rope_sdpa"), rtol=0, atol=0)
    _check("auto", q, k, v, pos, n)
    q64, k64, v64 = (t.double() for t in (q, k, v))
    torch.testing.assert_close(s2rope_attention(q64, k64, v64, pos, n),
                               s2rope_attention_reference(q64, k64, v64, pos, n), rtol=0, atol=0)
