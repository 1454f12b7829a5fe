"""The VPOG network (CroCo encoder, S2RoPE group attention, classification and flow heads) and its config."""

from vpog.model.config import (
    EncoderConfig,
    GroupAttentionConfig,
    HeadConfig,
    VPOGConfig,
    load_model_config,
    vpog_config_from_dict,
)
from vpog.model.croco_checkpoint import CheckpointReport, load_croco_encoder
from vpog.model.encoder import CroCoEncoder
from vpog.model.group_attention import GroupAttention
from vpog.model.heads import ClassificationHead, FlowHead
from vpog.model.s2rope_positions import chart_axes, group_positions, reference_rotation, tangent_chart
from vpog.model.vpog import VPOG, VPOGOutput, inputs_from_batch, unwrap_model

__all__ = [
    "VPOG",
    "CheckpointReport",
    "ClassificationHead",
    "CroCoEncoder",
    "EncoderConfig",
    "FlowHead",
    "GroupAttention",
    "GroupAttentionConfig",
    "HeadConfig",
    "VPOGConfig",
    "VPOGOutput",
    "chart_axes",
    "group_positions",
    "inputs_from_batch",
    "load_croco_encoder",
    "load_model_config",
    "reference_rotation",
    "tangent_chart",
    "unwrap_model",
    "vpog_config_from_dict",
]
