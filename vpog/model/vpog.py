"""The VPOG network: CroCo encoder -> group attention (S2RoPE) -> classification and flow heads.

Inputs are explicit tensors (not a batch class), so any loader can feed it:

    query_images     [B, 3, 224, 224]      RGB in [0, 1] (the model applies EncoderConfig.image_mean / std)
    template_images  [B, S, 3, 224, 224]   RGB in [0, 1]
    template_dirs    [B, S, 3]             viewing direction of each template, model frame (conventions §1)
    d_ref            [B, 3]                chart centre: the reference template's direction (conventions §3)
    ref_R            [B, 3, 3]             rotation of the reference template's T_m2c (chart axes, conventions §5)
    buddies          [B, S, 14, 14] or [B, S, 196] int64, optional: ground-truth `patch_cls`

With `buddies` (training) the flow head runs on the ground-truth buddy of each (template, query
patch); labels outside 0..195 (-1 ignored, 196 unseen) give a pair whose flow is meaningless and that
the flow loss masks out. Without (inference) it runs on the predicted buddy, the argmax over the 196
template patches of the classification logits (the unseen class is left to the caller: see
`VPOGOutput.predicted_cls`).

The query and templates share one encoder pass ([B (S + 1)] images). `inputs_from_batch` maps a
loader batch (`vpog.data.batch.VPOGBatch`, read by field name only) to these arguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from vpog.geometry import CROP_SIZE, GRID_SIZE, NUM_PATCHES
from vpog.model.config import VPOGConfig
from vpog.model.croco_checkpoint import CheckpointReport, load_croco_encoder
from vpog.model.encoder import CroCoEncoder
from vpog.model.group_attention import GroupAttention
from vpog.model.heads import ClassificationHead, FlowHead
from vpog.model.s2rope_positions import reference_rotation, tangent_chart

log = logging.getLogger(__name__)


@dataclass
class VPOGOutput:
    """What the network predicts for a batch of B queries with S templates each."""

    logits: torch.Tensor
    """[B, S, 196, 197] float32: query patch i vs template patch j (0..195) or unseen (196)."""
    flow: torch.Tensor
    """[B, S, 196, 16, 16, 2] float32: docs/conventions.md §4 dense flow of pair (i, buddies[i]), patch units,
    [v, u] pixels."""
    flow_b: torch.Tensor
    """[B, S, 196, 16, 16] float32: Laplace scale b > 0 of the flow, patch units."""
    buddies: torch.Tensor
    """[B, S, 196] int64: template patch (0..195) the flow of each query patch was computed on."""
    chart: torch.Tensor
    """[B, S, 2] float32: (s1, s2) of each template in the chart at d_ref (radians)."""
    weight_scale: torch.Tensor
    """[] float32: exp(learnable log-scale) of the PnP weights, w2d = weight_scale / b (docs/conventions.md §6)."""

    def predicted_cls(self) -> torch.Tensor:
        """argmax over the 197 classes (196 = unseen). -> [B, S, 196] int64."""
        return self.logits.argmax(dim=-1)

    def correspondence_weights(self) -> torch.Tensor:
        """w2d = weight_scale / b for both image axes. -> [B, S, 196, 16, 16, 2] float32."""
        w = self.weight_scale / self.flow_b
        return w.unsqueeze(-1).expand(*w.shape, 2)


class VPOG(nn.Module):
    """The VPOG network (see the module docstring for inputs)."""

    def __init__(self, cfg: VPOGConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else VPOGConfig()
        self.cfg = cfg
        dim = cfg.encoder.embed_dim
        self.encoder = CroCoEncoder(cfg.encoder, cfg.attention_backend)
        self.group_attention = GroupAttention(cfg.group_attention, dim, cfg.attention_backend)
        self.cls_head = ClassificationHead(dim, cfg.heads)
        self.flow_head = FlowHead(dim, cfg.heads)
        self.register_buffer("image_mean", torch.tensor(cfg.encoder.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.encoder.image_std).view(3, 1, 1), persistent=False)
        self.checkpoint_report: CheckpointReport | None = None
        if cfg.encoder.checkpoint:
            self.checkpoint_report = self.load_croco(cfg.encoder.checkpoint, strict=cfg.encoder.checkpoint_strict)

    def load_croco(self, path: str, strict: bool = True) -> CheckpointReport:
        """Load a CroCo checkpoint's encoder weights (see `vpog.model.croco_checkpoint`)."""
        return load_croco_encoder(self.encoder, path, strict=strict)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], [..., 3, H, W] -> the encoder's input normalisation (applied by `forward`)."""
        return (rgb - self.image_mean.to(rgb.dtype)) / self.image_std.to(rgb.dtype)

    def encoder_parameters(self):
        """Parameters of the (pretrained) encoder, e.g. for a smaller learning rate."""
        return self.encoder.parameters()

    def head_parameters(self):
        """Every parameter outside the encoder."""
        enc = {id(p) for p in self.encoder.parameters()}
        return (p for p in self.parameters() if id(p) not in enc)

    def _check(self, query_images, template_images, template_dirs, d_ref, ref_R, buddies) -> None:
        if template_images.dim() != 5 or template_images.shape[2:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"template_images must have shape [B, S, 3, {CROP_SIZE}, {CROP_SIZE}], got "
                f"{tuple(template_images.shape)}"
            )
        B, S = template_images.shape[:2]
        if S < 1:
            raise ValueError("template_images must hold at least one template (S >= 1)")
        if query_images.shape != (B, 3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"query_images must have shape [B, 3, {CROP_SIZE}, {CROP_SIZE}] with B = {B}, got "
                f"{tuple(query_images.shape)}"
            )
        if template_dirs.shape != (B, S, 3):
            raise ValueError(f"template_dirs must have shape [B, S, 3] = [{B}, {S}, 3], got "
                             f"{tuple(template_dirs.shape)}")
        if d_ref.shape != (B, 3):
            raise ValueError(f"d_ref must have shape [B, 3] = [{B}, 3], got {tuple(d_ref.shape)}")
        if ref_R.shape != (B, 3, 3):
            raise ValueError(f"ref_R must have shape [B, 3, 3] = [{B}, 3, 3], got {tuple(ref_R.shape)}")
        if buddies is not None:
            if buddies.shape not in ((B, S, GRID_SIZE, GRID_SIZE), (B, S, NUM_PATCHES)):
                raise ValueError(
                    f"buddies must have shape [B, S, 14, 14] or [B, S, 196] with B = {B}, S = {S}, got "
                    f"{tuple(buddies.shape)}"
                )
            if buddies.dtype.is_floating_point:
                raise ValueError(f"buddies must be an integer tensor (patch_cls), got {buddies.dtype}")

    def forward(
        self,
        query_images: torch.Tensor,
        template_images: torch.Tensor,
        template_dirs: torch.Tensor,
        d_ref: torch.Tensor,
        ref_R: torch.Tensor,
        buddies: torch.Tensor | None = None,
    ) -> VPOGOutput:
        self._check(query_images, template_images, template_dirs, d_ref, ref_R, buddies)
        B, S = template_images.shape[:2]
        images = self.normalize(torch.cat([query_images.unsqueeze(1), template_images], dim=1).flatten(0, 1))
        tokens = self.encoder(images).view(B, S + 1, NUM_PATCHES, -1)
        chart = tangent_chart(template_dirs, d_ref, ref_R)
        q, t, unseen = self.group_attention(tokens[:, 0], tokens[:, 1:], chart)
        logits = self.cls_head(q, t, unseen)
        if buddies is None:
            used = logits[..., :NUM_PATCHES].argmax(dim=-1)
        else:
            used = buddies.reshape(B, S, NUM_PATCHES).long().clamp(0, NUM_PATCHES - 1)
        flow, b = self.flow_head(q, t, used)
        return VPOGOutput(
            logits=logits, flow=flow, flow_b=b, buddies=used, chart=chart,
            weight_scale=self.flow_head.log_weight_scale.float().exp(),
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def inputs_from_batch(batch, buddies: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Keyword arguments of `VPOG.forward` from a loader batch (docs/conventions.md §3 fields, by name).

    Uses `images` [B, S+1, 3, C, C] (RGB in [0, 1], index 0 the query), `template_dirs` [B, S, 3],
    `d_ref` [B, 3] and `T_m2c` [B, S+1, 4, 4]; R_ref is the rotation of the template whose direction is
    d_ref (`reference_rotation`). `buddies`: the ground-truth patch_cls for training, or None.
    """
    images = batch.images
    out = dict(
        query_images=images[:, 0],
        template_images=images[:, 1:],
        template_dirs=batch.template_dirs,
        d_ref=batch.d_ref,
        ref_R=reference_rotation(batch.template_dirs, batch.d_ref, batch.T_m2c[:, 1:, :3, :3]),
    )
    if buddies is not None:
        out["buddies"] = buddies
    return out
