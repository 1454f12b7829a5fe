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

Strict loading (`encoder.checkpoint_strict: true`, the default) accepts only a checkpoint of exactly this
encoder: the architecture the file declares (`croco_kwargs`, or the `CroCoNet(...)` call in an old file's
`args.model`; CroCoNet's defaults 768 / 12 / 12 / 4 fill keys it leaves out) must equal the config's
width (`enc_embed_dim` = `embed_dim`), depth (`enc_depth`), heads (`enc_num_heads`) and `mlp_ratio`,
no encoder weight may be missing, and any entry that is neither an encoder weight nor CroCo's decoder
is an error naming it (a ViT-L file in a 12-block config would otherwise load its first 12 blocks, and
a ViT-B file in a 6-head config would load and compute another function). Non-strict loading logs
those as warnings and loads what fits by name and shape. A width or depth mismatch of a tensor is an
error either way.

The official files are published by naver/croco: `CroCo_V2_ViTBase_BaseDecoder.pth` and
`CroCo_V2_ViTLarge_BaseDecoder.pth` under `OFFICIAL_WEIGHTS_URL`; `vpog/config/model/vpog_vitb.yaml` and
`vpog_vitl.yaml` expect them under `pretrained/`.

References: naver/croco `models/croco.py`, `models/croco_downstream.py` (`croco_args_from_ckpt`), `demo.py`.
"""

from __future__ import annotations

import argparse
import ast
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

DECODER_PREFIXES = ("decoder_embed.", "dec_blocks.", "dec_norm.", "prediction_head.", "mask_token", "dec_pos_embed")
OFFICIAL_WEIGHTS_URL = "https://download.europe.naverlabs.com/ComputerVision/CroCo/"
"""Where naver/croco's README publishes the CroCo v2 weights (`<url>CroCo_V2_ViTBase_BaseDecoder.pth`, ...)."""
CROCO_DEFAULTS = {"enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12, "mlp_ratio": 4}
"""CroCoNet's constructor defaults of the encoder's shape (what a file's croco_kwargs leaves out)."""
_SHAPE_KEYS = (("enc_embed_dim", "embed_dim"), ("enc_depth", "depth"), ("enc_num_heads", "num_heads"),
               ("mlp_ratio", "mlp_ratio"))


class CheckpointNotFoundError(ValueError):
    """`model.encoder.checkpoint` names no file; the message says where the weights are published."""


def missing_checkpoint_message(path: str | Path) -> str:
    """One line: the missing path, where the official CroCo v2 weights are, how to train from scratch."""
    name = Path(path).name
    official = name if name.startswith("CroCo_V2_") else "CroCo_V2_ViTBase_BaseDecoder.pth (ViT-B) or " \
        "CroCo_V2_ViTLarge_BaseDecoder.pth (ViT-L)"
    return (f"model.encoder.checkpoint: no CroCo checkpoint file at {path}; download the official CroCo v2 "
            f"weights {official} from {OFFICIAL_WEIGHTS_URL} (naver/croco's README) to that path, or point "
            f"model.encoder.checkpoint=PATH at your copy; to train the encoder from scratch on purpose: "
            f"model.encoder.checkpoint=null")


def croco_checkpoint_problem(model_cfg) -> str | None:
    """The one-line `missing_checkpoint_message` when the model config (a mapping or DictConfig with
    `encoder.checkpoint`) names a CroCo file that does not exist; None when it exists or none is named."""
    encoder = (model_cfg or {}).get("encoder") or {}
    path = encoder.get("checkpoint")
    if not path or Path(str(path)).is_file():
        return None
    return missing_checkpoint_message(path)


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
        raise CheckpointNotFoundError(missing_checkpoint_message(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise ValueError(f"path: {path} is not a readable CroCo checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"path: {path} does not hold a dict (got {type(ckpt).__name__})")
    kwargs: dict = {}
    if isinstance(ckpt.get("croco_kwargs"), Mapping):
        kwargs = dict(ckpt["croco_kwargs"])
    elif isinstance(ckpt.get("args"), argparse.Namespace) and isinstance(getattr(ckpt["args"], "model", None), str):
        kwargs = {"model": ckpt["args"].model}
        kwargs.update(_constructor_kwargs(ckpt["args"].model))
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


def _constructor_kwargs(call: str) -> dict:
    """Literal keyword arguments of a `CroCoNet(enc_embed_dim=1024, ...)` string ({} when it is not one)."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError:
        return {}
    if not isinstance(node, ast.Call):
        return {}
    out = {}
    for kw in node.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            continue
    return out


def shape_mismatches(kwargs: dict, encoder: nn.Module) -> list[str]:
    """'enc_num_heads=12 (encoder.num_heads=6)'-style entries where the architecture a checkpoint declares
    (its croco_kwargs, CroCoNet's defaults for keys it leaves out) differs from `encoder.cfg`; [] when
    the file declares none (no croco_kwargs and no `CroCoNet(...)` args.model string). A bare `CroCoNet()`
    declares CroCoNet's defaults."""
    cfg = getattr(encoder, "cfg", None)
    declared = {k: v for k, v in kwargs.items() if k != "model"}
    constructor = str(kwargs.get("model", "")).strip().startswith("CroCoNet(")
    if cfg is None or not (declared or constructor):
        return []
    out = []
    for theirs, ours in _SHAPE_KEYS:
        value, mine = declared.get(theirs, CROCO_DEFAULTS[theirs]), getattr(cfg, ours)
        try:
            same = float(value) == float(mine)
        except (TypeError, ValueError):  # a non-numeric entry cannot describe this encoder
            same = False
        if not same:
            out.append(f"{theirs}={value!r} (encoder.{ours}={mine})")
    return out


def load_croco_encoder(encoder: nn.Module, path: str | Path, strict: bool = True) -> CheckpointReport:
    """Copy a CroCo checkpoint's encoder weights into `encoder` (a `CroCoEncoder`).

    Raises CheckpointNotFoundError (a ValueError) when `path` is no file, ValueError for a CroCo v1
    (cosine position embedding) file or a tensor of another width/depth (the message names the key and
    both shapes) and, when `strict`, for a declared architecture (croco_kwargs) other than the encoder's,
    missing encoder weights or unexpected non-decoder entries (named). Returns a CheckpointReport (also
    logged).
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
    mismatched = shape_mismatches(kwargs, encoder)  # after the tensors: a width mismatch names its key
    if mismatched and strict:
        raise ValueError(f"path: CroCo checkpoint {path} declares another encoder: {', '.join(mismatched)}; "
                         f"use the model config that matches it (vpog_vitb: 768/12/12, vpog_vitl: 1024/24/16) "
                         f"or set model.encoder.checkpoint_strict=false to load what fits")
    if mismatched:
        log.warning("CroCo checkpoint %s declares another encoder: %s (checkpoint_strict=false: loading what "
                    "fits)", path, ", ".join(mismatched))
    if strict and report.unexpected:
        shown = ", ".join(report.unexpected[:8]) + (f" ... ({len(report.unexpected)} in all)"
                                                    if len(report.unexpected) > 8 else "")
        raise ValueError(f"path: CroCo checkpoint {path} holds entries that are neither encoder weights of this "
                         f"config nor CroCo's decoder: {shown} (checkpoint_strict=true; {report.summary()})")
    if strict and report.missing:
        raise ValueError(f"path: CroCo checkpoint lacks encoder weights: {report.summary()}")
    encoder.load_state_dict(to_load, strict=False)
    if report.missing or report.unexpected:
        log.warning("CroCo checkpoint: %s", report.summary())
    else:
        log.info("CroCo checkpoint: %s", report.summary())
    return report
