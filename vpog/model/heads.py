"""VPOG heads: patch classification against each template, and dense flow on (query patch, buddy patch) pairs.

Classification (docs/conventions.md §4 `patch_cls`): for template s, query patch i scores each of the template's 196
patches and its unseen token,

    logits[b, s, i, j] = cos(P_q(q_i), P_t(t_j)) / T,   j in 0..195 patches, j = 196 the unseen token,

with MLP projections P_q, P_t to a `proj_dim` matching space and a learnable temperature T (bounded
below by `min_temperature`). The similarity runs in float32 outside autocast.

Flow: for each pair (query patch i, template patch j = buddy), an MLP on [q_i, t_j] predicts for the
16x16 pixels p' = (16 jx + u, 16 jy + v) of patch j the flow (where p' lands in the query, relative to
the centre of patch i, in patch units: docs/conventions.md §4 `dense_flow`) and a Laplace scale b > 0 (same units),
b = b_min + softplus(raw). Output layout [.., v, u, 2] as the labels. The last layer starts near zero
weights with biases set to the flow of an unmoved patch, ((u - 7.5) / 16, (v - 7.5) / 16), so training
starts from "the buddy patch sits on the query patch". The head also owns the learnable global
log-scale of the PnP weights, w2d = exp(log_weight_scale) / b (docs/conventions.md §6).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vpog.geometry import NUM_PATCHES, PATCH_SIZE
from vpog.model.config import HeadConfig


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


class ClassificationHead(nn.Module):
    """query [B, 196, C], templates [B, S, 196, C], unseen [B, S, C] -> logits [B, S, 196, 197] float32."""

    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        self.query_proj = _mlp(dim, dim, cfg.proj_dim)
        self.template_proj = _mlp(dim, dim, cfg.proj_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.min_log_temperature = math.log(cfg.min_temperature)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.clamp(min=self.min_log_temperature).exp()

    def forward(self, query: torch.Tensor, templates: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
        fq = self.query_proj(query)  # [B, 196, P]
        ft = self.template_proj(torch.cat([templates, unseen.unsqueeze(2)], dim=2))  # [B, S, 197, P]
        with torch.autocast(device_type=fq.device.type, enabled=False):
            fq = F.normalize(fq.float(), dim=-1)
            ft = F.normalize(ft.float(), dim=-1)
            sim = torch.einsum("bic,bsjc->bsij", fq, ft)
            return sim / self.temperature.float()


class FlowHead(nn.Module):
    """query [B, 196, C], templates [B, S, 196, C], buddies [B, S, 196] int64 (0..195)
    -> flow [B, S, 196, 16, 16, 2] float32 (patch units), b [B, S, 196, 16, 16] float32 (> b_min)."""

    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        P = PATCH_SIZE
        self.b_min = float(cfg.flow_b_min)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, cfg.flow_hidden_dim), nn.GELU(),
            nn.Linear(cfg.flow_hidden_dim, cfg.flow_hidden_dim), nn.GELU(),
        )
        self.out = nn.Linear(cfg.flow_hidden_dim, P * P * 3)
        self.log_weight_scale = nn.Parameter(torch.zeros(()))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.out.weight, std=1e-3)
        offs = (torch.arange(P, dtype=torch.float32) - (P - 1) / 2) / P
        prior = torch.zeros(P, P, 3)
        prior[..., 0] = offs[None, :]  # u (x) offset varies along the last axis
        prior[..., 1] = offs[:, None]  # v (y) offset along the rows
        with torch.no_grad():
            self.out.bias.copy_(prior.reshape(-1))

    def forward(
        self, query: torch.Tensor, templates: torch.Tensor, buddies: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _, C = templates.shape
        if buddies.shape != (B, S, NUM_PATCHES):
            raise ValueError(f"buddies must have shape [B, S, 196] = [{B}, {S}, 196], got {tuple(buddies.shape)}")
        idx = buddies.clamp(0, NUM_PATCHES - 1).unsqueeze(-1).expand(B, S, NUM_PATCHES, C)
        t_sel = templates.gather(2, idx)  # [B, S, 196, C]: the buddy of each query patch
        q = query.unsqueeze(1).expand(B, S, NUM_PATCHES, C)
        raw = self.out(self.mlp(torch.cat([q, t_sel], dim=-1))).float()
        raw = raw.view(B, S, NUM_PATCHES, PATCH_SIZE, PATCH_SIZE, 3)
        flow = raw[..., :2]
        b = self.b_min + F.softplus(raw[..., 2])
        return flow, b
