"""S2RoPE as the model uses it: relative property, s = 0 reduces to CroCo's 2D RoPE, reference attention
equals an explicit softmax(Q K^T / sqrt(D)) V in float64."""

from __future__ import annotations

import math

import pytest
import torch
from croco_reference import rope2d

from vpog.ops import apply_s2rope, s2rope_attention

N_DEFAULT = (10, 10, 6, 6)


def _explicit_rotation(x, pos, n, base_xy=100.0, f0_s=4.0, base_s=32.0):
    """docs/conventions.md §5 written out pair by pair (float64): channels (start + k, start + n_g + k)
    rotate by pos_g w_k."""
    out = x.clone()
    start = 0
    for g, n_g in enumerate(n):
        for k in range(n_g):
            w = base_xy ** (-k / n_g) if g < 2 else f0_s * base_s ** (-k / n_g)
            a = pos[:, None, :, g] * w  # [B, 1, N]
            c, s = torch.cos(a), torch.sin(a)
            x1, x2 = x[..., start + k], x[..., start + n_g + k]
            out[..., start + k] = x1 * c - x2 * s
            out[..., start + n_g + k] = x2 * c + x1 * s
        start += 2 * n_g
    return out


def _random_pos(B, N, dtype=torch.float64):
    pos = torch.empty(B, N, 4, dtype=dtype)
    pos[..., :2] = torch.randint(0, 14, (B, N, 2)).to(dtype)
    pos[..., 2:] = (torch.rand(B, N, 2, dtype=dtype) * 2 - 1) * math.pi
    return pos


@pytest.mark.parametrize("n", [N_DEFAULT, (16, 16, 0, 0), (4, 6, 12, 10)])
def test_relative_property(n):
    B, H, N, D = 2, 3, 41, 2 * sum(n)
    q, k = torch.randn(2, B, H, N, D, dtype=torch.float64)
    pos = _random_pos(B, N)
    shift = torch.tensor([3.0, -5.0, 0.7, -1.3], dtype=torch.float64)
    logits = apply_s2rope(q, pos, n) @ apply_s2rope(k, pos, n).transpose(-1, -2)
    shifted = apply_s2rope(q, pos + shift, n) @ apply_s2rope(k, pos + shift, n).transpose(-1, -2)
    torch.testing.assert_close(shifted, logits, rtol=1e-10, atol=1e-10)
    # and the attention output, through the op
    v = torch.randn(B, H, N, D, dtype=torch.float64)
    a = s2rope_attention(q, k, v, pos, n=n, backend="reference")
    b = s2rope_attention(q, k, v, pos + shift, n=n, backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # a shift of one token alone does change the logits (the property is not vacuous)
    moved = pos.clone()
    moved[:, 0] += shift
    one = apply_s2rope(q, moved, n) @ apply_s2rope(k, moved, n).transpose(-1, -2)
    assert (one - logits).abs().max() > 1e-3


def test_s_zero_equals_croco_rope2d():
    B, H, N = 2, 2, 30
    yx = torch.randint(0, 14, (B, N, 2)).double()
    pos = torch.cat([yx, torch.zeros(B, N, 2, dtype=torch.float64)], dim=-1)
    # the encoder's layout: head dim 64, n = (16, 16, 0, 0) is exactly CroCo's RoPE2D
    x = torch.randn(B, H, N, 64, dtype=torch.float64)
    torch.testing.assert_close(apply_s2rope(x, pos, (16, 16, 0, 0)), rope2d(x, yx), rtol=1e-12, atol=1e-12)
    # S2RoPE's default split with s = 0: 2D RoPE on the [y | x] channels, the s channels untouched
    out = apply_s2rope(x, pos, N_DEFAULT)
    torch.testing.assert_close(out[..., :40], rope2d(x[..., :40], yx), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[..., 40:], x[..., 40:], rtol=0, atol=0)


def test_unseen_token_position_zero_is_identity():
    x = torch.randn(1, 2, 3, 64, dtype=torch.float64)
    torch.testing.assert_close(apply_s2rope(x, torch.zeros(1, 3, 4, dtype=torch.float64), N_DEFAULT), x)


@pytest.mark.parametrize("n", [N_DEFAULT, (16, 16, 0, 0)])
def test_reference_attention_equals_explicit_softmax(n):
    B, H, N, D = 2, 2, 37, 64
    q, k, v = torch.randn(3, B, H, N, D, dtype=torch.float64)
    pos = _random_pos(B, N)
    qr, kr = _explicit_rotation(q, pos, n), _explicit_rotation(k, pos, n)
    logits = qr @ kr.transpose(-1, -2) / math.sqrt(D)
    p = torch.exp(logits - logits.amax(-1, keepdim=True))
    want = (p / p.sum(-1, keepdim=True)) @ v
    got = s2rope_attention(q, k, v, pos, n=n, backend="reference")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_attention_gradcheck():
    n = (1, 1, 1, 1)
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pos = _random_pos(1, 5)
    assert torch.autograd.gradcheck(lambda a, b, c: s2rope_attention(a, b, c, pos, n=n, backend="reference"),
                                    (q, k, v), fast_mode=True)


def test_bf16_angles_in_float32():
    """bf16 inputs rotate like float32 ones at large positions (angles are not formed in bf16)."""
    x = torch.randn(1, 1, 8, 64)
    pos = _random_pos(1, 8, torch.float32)
    pos[..., :2] += 1000.0
    got = apply_s2rope(x.bfloat16(), pos, N_DEFAULT).float()
    want = apply_s2rope(x, pos, N_DEFAULT)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
