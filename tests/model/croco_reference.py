"""An independent, functional re-statement of CroCo-v2's encoder forward (RoPE100), for the tests.

Written from CroCo's public description (naver/croco `models/blocks.py`, `models/pos_embed.py`):
CroCo's checkpoint key names, qkv layout `reshape(B, N, 3, H, D)`, RoPE2D over the first half of each
head's channels by the patch row y and the second half by the column x, each half rotate-half with
frequencies base^(-2i / (D/2)). Kept separate from vpog's code so a layout drift makes the tests fail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def croco_encoder_keys(depth: int, dim: int, mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
    """CroCo's encoder state-dict names and shapes."""
    hidden = int(dim * mlp_ratio)
    keys = {"patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"enc_blocks.{i}."
        keys.update({
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
            p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
            p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
            p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
            p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,),
        })
    keys.update({"enc_norm.weight": (dim,), "enc_norm.bias": (dim,)})
    return keys


def croco_decoder_keys(dim: int = 32) -> dict[str, tuple[int, ...]]:
    """A few of CroCo's pretraining-decoder names (not used by VPOG)."""
    return {
        "mask_token": (1, 1, dim),
        "decoder_embed.weight": (dim, dim), "decoder_embed.bias": (dim,),
        "dec_blocks.0.attn.qkv.weight": (3 * dim, dim),
        "dec_blocks.0.cross_attn.projq.weight": (dim, dim),
        "dec_norm.weight": (dim,), "prediction_head.weight": (16 * 16 * 3, dim),
    }


def random_state(keys: dict[str, tuple[int, ...]], generator: torch.Generator, std: float = 0.05):
    state = {}
    for k, shape in keys.items():
        t = torch.randn(shape, generator=generator, dtype=torch.float64) * std
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "enc_norm.weight":
            t = 1.0 + t
        state[k] = t
    return state


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rope1d(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """x [B, H, N, D], pos [B, N] -> rotate-half RoPE with D/2 frequencies base^(-2i / D)."""
    D = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos.to(torch.float64)[..., None] * inv  # [B, N, D/2]
    ang = torch.cat([ang, ang], dim=-1)[:, None]
    return x * ang.cos().to(x.dtype) + _rotate_half(x) * ang.sin().to(x.dtype)


def rope2d(x: torch.Tensor, pos_yx: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """CroCo's RoPE2D: first half of the channels by y, second by x. x [B, H, N, D], pos_yx [B, N, 2]."""
    y, xx = x.chunk(2, dim=-1)
    return torch.cat([rope1d(y, pos_yx[..., 0], base), rope1d(xx, pos_yx[..., 1], base)], dim=-1)


def croco_encode(state: dict[str, torch.Tensor], images: torch.Tensor, depth: int, num_heads: int) -> torch.Tensor:
    """CroCo-v2 encoder forward in float64. images [B, 3, 224, 224] -> [B, 196, C]."""
    s = {k: v.to(torch.float64) for k, v in state.items()}
    x = F.conv2d(images.to(torch.float64), s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    B, N, C = x.shape
    D = C // num_heads
    g = torch.arange(14)
    pos = torch.cartesian_prod(g, g)[None].expand(B, -1, -1)  # (y, x), y-major
    for i in range(depth):
        p = f"enc_blocks.{i}."
        h = F.layer_norm(x, (C,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"])
        qkv = qkv.reshape(B, N, 3, num_heads, D).transpose(1, 3)  # [B, H, 3, N, D]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = rope2d(q, pos), rope2d(k, pos)
        attn = ((q @ k.transpose(-2, -1)) * D ** -0.5).softmax(dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + F.linear(o, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (C,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
                     s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        x = x + h
    return F.layer_norm(x, (C,), s["enc_norm.weight"], s["enc_norm.bias"], eps=1e-6)
