"""Group attention: global S2RoPE attention over the query and all templates, alternating with frame attention.

Sequence of one sample (N = 196 + S * 197 tokens, 1378 for S = 6):

    [ query patches (196) | template 1 patches (196), unseen_1 | ... | template S patches (196), unseen_S ]

- A global block attends over the whole sequence with S2RoPE at (y, x, s1, s2): query tokens at
  s = (0, 0) (the query sits at the chart origin), template s's patches at its chart coordinates
  (s1_s, s2_s) (`vpog.model.s2rope_positions`), the unseen tokens at pos = 0 (not rotated).
- A frame block attends within one image (the query's 196 tokens; a template's 196 + its unseen token)
  with 2D RoPE at (y, x).
Blocks run as `depth` pairs (global, frame). Learnable embeddings mark a token as query or template
(the query and the reference template share the chart origin, so positions alone cannot tell them
apart); every template gets a copy of one learnable "unseen" token, which the classification head
uses as the 197th class.

References: VGGT (alternating frame / global attention), shahaf-arica/vpog_dev `vpog/models/aa_module.py`
(outline: global + local attention and an added unseen token).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vpog.geometry import NUM_PATCHES
from vpog.model.blocks import LAYER_NORM_EPS, Block, init_vit_weights, run_blocks, upcast
from vpog.model.config import GroupAttentionConfig
from vpog.model.s2rope_positions import TOKENS_PER_TEMPLATE, frame_positions, group_positions


class GroupAttention(nn.Module):
    """query [B, 196, C], templates [B, S, 196, C], chart [B, S, 2] -> (query [B, 196, C],
    templates [B, S, 196, C], unseen [B, S, C]); float32 outputs after a final LayerNorm."""

    def __init__(self, cfg: GroupAttentionConfig, dim: int, attention_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.dim = dim

        def block(rope_n):
            return Block(dim, cfg.num_heads, cfg.mlp_ratio, rope_n, cfg.base_xy, cfg.f0_s, cfg.base_s,
                         drop_path=cfg.drop_path, backend=attention_backend)

        self.global_blocks = nn.ModuleList(block(cfg.rope_n) for _ in range(cfg.depth))
        self.frame_blocks = nn.ModuleList(block(cfg.frame_rope_n) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        init_vit_weights(self)
        self.unseen_token = nn.Parameter(torch.zeros(dim))
        self.query_embed = nn.Parameter(torch.zeros(dim))
        self.template_embed = nn.Parameter(torch.zeros(dim))
        for p in (self.unseen_token, self.query_embed, self.template_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(
        self, query: torch.Tensor, templates: torch.Tensor, chart: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, S = templates.shape[:2]
        C = self.dim
        if query.shape != (B, NUM_PATCHES, C):
            raise ValueError(f"query must have shape [B, 196, C] = [{B}, 196, {C}], got {tuple(query.shape)}")
        if templates.shape != (B, S, NUM_PATCHES, C):
            raise ValueError(f"templates must have shape [B, S, 196, C] = [{B}, {S}, 196, {C}], "
                             f"got {tuple(templates.shape)}")
        if chart.shape != (B, S, 2):
            raise ValueError(f"chart must have shape [B, S, 2] = [{B}, {S}, 2], got {tuple(chart.shape)}")
        q = upcast(query) + self.query_embed
        unseen = self.unseen_token.expand(B, S, 1, C)
        t = torch.cat([upcast(templates) + self.template_embed, unseen.to(q.dtype)], dim=2)  # [B, S, 197, C]
        x = torch.cat([q, t.reshape(B, S * TOKENS_PER_TEMPLATE, C)], dim=1)  # [B, 196 + 197 S, C]

        pos_global = group_positions(chart)
        pos_query = frame_positions(False, x.device).expand(B, -1, -1).contiguous()
        pos_tmpl = frame_positions(True, x.device).expand(B * S, -1, -1).contiguous()
        ckpt = self.cfg.activation_checkpointing and self.training
        for g_blk, f_blk in zip(self.global_blocks, self.frame_blocks):
            x = run_blocks([g_blk], x, pos_global, ckpt)
            xq = run_blocks([f_blk], x[:, :NUM_PATCHES], pos_query, ckpt)
            xt = x[:, NUM_PATCHES:].reshape(B * S, TOKENS_PER_TEMPLATE, C)
            xt = run_blocks([f_blk], xt, pos_tmpl, ckpt).reshape(B, S * TOKENS_PER_TEMPLATE, C)
            x = torch.cat([xq, xt], dim=1)
        x = upcast(self.norm(x))
        t = x[:, NUM_PATCHES:].reshape(B, S, TOKENS_PER_TEMPLATE, C)
        return x[:, :NUM_PATCHES], t[:, :, :NUM_PATCHES], t[:, :, NUM_PATCHES]
