"""Transformer building blocks with rotary attention: MLP, attention, pre-norm block, patch embedding.

Attention goes through `vpog.ops.s2rope_attention`, so one module serves CroCo's RoPE2D
(`rope_n = (D/4, D/4, 0, 0)`, positions (y, x, 0, 0)) and the group attention's S2RoPE
(`rope_n = (10, 10, 6, 6)`): the rotation layout is docs/conventions.md §5's, which is CroCo's for the y and x halves.
Parameter names follow CroCo's `models/blocks.py` (`norm1`, `attn.qkv`, `attn.proj`, `norm2`,
`mlp.fc1`, `mlp.fc2`, `patch_embed.proj`) so its checkpoints load by name.

Numerics: LayerNorm runs in float32 (autocast's policy, and the residual stream is kept float32 by
the callers); the rotary angles are float32 inside the op.

References: naver/croco `models/blocks.py` (block layout, names), timm `vision_transformer.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from vpog.ops.s2rope_attention import s2rope_attention

LAYER_NORM_EPS = 1e-6  # CroCo's


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability `p` in training (rescaled)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RotaryAttention(nn.Module):
    """Multi-head self-attention with rotary position embedding on q and k (docs/conventions.md §5).

    x [B, N, C], pos [B, N, 4] float32 (y, x, s1, s2) -> [B, N, C].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        rope_n: Sequence[int],
        base_xy: float = 100.0,
        f0_s: float = 4.0,
        base_s: float = 32.0,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if 2 * sum(rope_n) != self.head_dim:
            raise ValueError(f"rope_n {tuple(rope_n)} must satisfy 2 * sum = head dim {self.head_dim}")
        self.rope_n = tuple(int(v) for v in rope_n)
        self.base_xy, self.f0_s, self.base_s = float(base_xy), float(f0_s), float(base_s)
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # CroCo's qkv layout: output features ordered [q | k | v], each [head 0 | head 1 | ...].
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, D] each
        out = s2rope_attention(
            q, k, v, pos, n=self.rope_n, base_xy=self.base_xy, f0_s=self.f0_s, base_s=self.base_s,
            backend=self.backend,
        )
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, rope_n={self.rope_n}, backend={self.backend}"


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    x [B, N, C] (float32 residual stream), pos [B, N, 4] float32 -> [B, N, C].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        rope_n: Sequence[int],
        base_xy: float = 100.0,
        f0_s: float = 4.0,
        base_s: float = 32.0,
        drop_path: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = RotaryAttention(dim, num_heads, rope_n, base_xy, f0_s, base_s, backend)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), pos))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: [B, 3, H, W] -> [B, (H/P)(W/P), C], row-major patches (j = G iy + ix)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def init_vit_weights(module: nn.Module) -> None:
    """MAE/CroCo initialisation: xavier-uniform linears (zero bias), unit LayerNorms, xavier patch projection."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            w = m.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(m.proj.bias)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 unchanged (the residual stream's dtype)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, pos: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """Apply `blocks` in turn; with `checkpointing` (and grad enabled) recompute activations in backward."""
    from torch.utils.checkpoint import checkpoint

    use_ckpt = checkpointing and torch.is_grad_enabled()
    for blk in blocks:
        x = checkpoint(blk, x, pos, use_reentrant=False) if use_ckpt else blk(x, pos)
    return x
