"""Load CroCo checkpoints (the official `CroCo_V2_ViT*.pth` files) into `CroCoEncoder`.

An official file is a `torch.save`d dict `{"model": state_dict, "croco_kwargs": {...}}` (older runs
carry `"args"`, an argparse Namespace, instead of `croco_kwargs`). The encoder's weights are named

    patch_embed.proj.{weight,bias}
    enc_blocks.{i}.norm1.{weight,bias}      enc_blocks.{i}.attn.qkv.{weight,bias}
    enc_blocks.{i}.attn.proj.{weight,bias}  enc_blocks.{i}.norm2.{weight,bias}
    enc_blocks.{i}.mlp.fc1.{weight,bias}    enc_blocks.{i}.mlp.fc2.{weight,bias}
    enc_norm.{weight,bias}

and the pretraining decoder's (`decoder_embed.*`, `dec_blocks.*`, `dec_norm.*`, `prediction_head.*`,
`mask_token`) are not used by VPOG: they are counted as "ignored", not "unexpected". CroCo v1 files
(`pos_embed='cosine'`, an absolute `enc_pos_embed` buffer) are rejected: this encoder uses RoPE.

References: naver/croco `models/croco.py`, `models/croco_downstream.py` (`croco_args_from_ckpt`), `demo.py`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

DECODER_PREFIXES = ("decoder_embed.", "dec_blocks.", "dec_norm.", "prediction_head.", "mask_token", "dec_pos_embed")


@dataclass
class CheckpointReport:
    """What a checkpoint load did. Key names are the encoder's (CroCo's)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Encoder weights the checkpoint lacks (left at their initial values)."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint entries that are neither encoder weights nor CroCo's decoder."""
    ignored: list[str] = field(default_factory=list)
    """CroCo decoder entries, not used by VPOG."""
    croco_kwargs: dict = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} encoder tensors from {self.path}",
                 f"ignored {len(self.ignored)} decoder tensors"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {', '.join(self.missing[:8])}"
                         + (" ..." if len(self.missing) > 8 else ""))
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {', '.join(self.unexpected[:8])}"
                         + (" ..." if len(self.unexpected) > 8 else ""))
        return "; ".join(parts)


def read_croco_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, croco_kwargs) of a CroCo checkpoint file; tensors on the CPU.

    Reads with `torch.load(weights_only=True)` (argparse.Namespace allowed, as CroCo's `args`), so
    a file holding arbitrary Python objects is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no CroCo checkpoint file at {path}")
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"path: {path} does not hold a dict (got {type(ckpt).__name__})")
    kwargs: dict = {}
    if isinstance(ckpt.get("croco_kwargs"), Mapping):
        kwargs = dict(ckpt["croco_kwargs"])
    elif isinstance(ckpt.get("args"), argparse.Namespace) and isinstance(getattr(ckpt["args"], "model", None), str):
        kwargs = {"model": ckpt["args"].model}
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            state = ckpt[key]
            break
    else:
        state = ckpt
    state = {
        (k[len("module."):] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    if not state:
        raise ValueError(f"path: {path} holds no tensors under 'model', 'state_dict' or at the top level")
    return state, kwargs


def load_croco_encoder(encoder: nn.Module, path: str | Path, strict: bool = True) -> CheckpointReport:
    """Copy a CroCo checkpoint's encoder weights into `encoder` (a `CroCoEncoder`).

    Raises ValueError for a CroCo v1 (cosine position embedding) file, a width/depth mismatch
    (the message names the key and both shapes) or, when `strict`, missing encoder weights.
    Returns a CheckpointReport (also logged).
    """
    state, kwargs = read_croco_checkpoint(path)
    report = CheckpointReport(path=str(path), croco_kwargs=kwargs)
    pos_embed = kwargs.get("pos_embed")
    if "enc_pos_embed" in state or (isinstance(pos_embed, str) and not pos_embed.startswith("RoPE")):
        raise ValueError(
            f"path: {path} is a CroCo v1 checkpoint (absolute cosine position embedding); "
            f"the VPOG encoder needs a RoPE one (CroCo_V2_ViT*)"
        )
    if isinstance(pos_embed, str) and pos_embed != "RoPE100":
        log.warning("CroCo checkpoint %s was trained with %s; the encoder's rope_base is used", path, pos_embed)
    own = encoder.state_dict()
    to_load = {}
    for key, value in state.items():
        if key in own:
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"path: checkpoint tensor '{key}' has shape {tuple(value.shape)}, the encoder's has "
                    f"{tuple(own[key].shape)} (croco_kwargs: {kwargs or 'none'}); check encoder.embed_dim/depth"
                )
            to_load[key] = value
        elif key.startswith(DECODER_PREFIXES):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load)
    if strict and report.missing:
        raise ValueError(f"path: CroCo checkpoint lacks encoder weights: {report.summary()}")
    encoder.load_state_dict(to_load, strict=False)
    if report.missing or report.unexpected:
        log.warning("CroCo checkpoint: %s", report.summary())
    else:
        log.info("CroCo checkpoint: %s", report.summary())
    return report
