"""CroCo-v2 compatible ViT encoder: 16x16 patches of a 224x224 crop, RoPE2D (base 100), pre-norm blocks.

Equivalent to the encoder half of CroCo's `CroCoNet(pos_embed='RoPE100')`: patch embedding (no
absolute position embedding), `depth` blocks whose attention rotates q and k by RoPE2D at the patch
coordinates (y, x) -- the first half of each head's channels by y, the second by x, rotate-half pairs
(k, k + D/4) at frequencies 100^(-k / (D/4)) -- then a final LayerNorm `enc_norm`. Its parameter names
equal CroCo's, so `CroCo_V2_ViT*` checkpoints load by name (`vpog.model.croco_checkpoint`).

The RoPE2D is docs/conventions.md §5's rotation with n = (D/4, D/4, 0, 0) at positions (y, x, 0, 0); attention runs
through `vpog.ops.s2rope_attention`, so it uses the fastest backend available.

References: naver/croco `models/croco.py` (`_encode_image`), `models/pos_embed.py` (RoPE2D layout).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from vpog.geometry import CROP_SIZE, PATCH_SIZE
from vpog.model.blocks import LAYER_NORM_EPS, Block, PatchEmbed, init_vit_weights, run_blocks, upcast
from vpog.model.config import EncoderConfig
from vpog.model.s2rope_positions import frame_positions

log = logging.getLogger(__name__)


class CroCoEncoder(nn.Module):
    """images [N, 3, 224, 224] (normalised) -> patch tokens [N, 196, C] after `enc_norm`.

    Tokens are float32 (float64 for a float64 model), also under bf16 autocast.
    """

    def __init__(self, cfg: EncoderConfig, attention_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        dim, q = cfg.embed_dim, cfg.head_dim // 4
        self.rope_n = (q, q, 0, 0)
        self.patch_embed = PatchEmbed(PATCH_SIZE, dim)
        rates = torch.linspace(0, cfg.drop_path, max(cfg.depth, 1)).tolist()
        self.enc_blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, self.rope_n, base_xy=cfg.rope_base,
                  drop_path=rates[i], backend=attention_backend)
            for i in range(cfg.depth)
        )
        self.enc_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        init_vit_weights(self)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"images must have shape [N, 3, {CROP_SIZE}, {CROP_SIZE}], got {tuple(images.shape)}"
            )
        # float32 residual stream: under bf16 autocast the branches run in bf16 and add into float32
        x = upcast(self.patch_embed(images))
        pos = frame_positions(with_unseen=False, device=x.device).expand(x.shape[0], -1, -1).contiguous()
        x = run_blocks(self.enc_blocks, x, pos, self.cfg.activation_checkpointing and self.training)
        return upcast(self.enc_norm(x))
