"""Configuration dataclasses of the VPOG network, mirrored by `vpog/config/model/*.yaml`.

One dataclass per component (encoder, group attention, heads) nested in `VPOGConfig`. Fields are
keyword-only, each with a docstring stating its unit or meaning; `__post_init__` raises a
ValueError naming the bad field. `vpog_config_from_dict` builds a config from the YAML's mapping
and rejects unknown keys; `load_model_config` reads a YAML file (omegaconf is imported lazily, so
the model package imports without it).

References: pytorch/torchtitan `config/configs.py` (keyword-only config dataclasses with field
docstrings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpog._backend import BACKENDS
from vpog.config_schema import from_mapping

ATTENTION_BACKENDS = ("auto",) + tuple(BACKENDS)
MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config" / "model"


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if allow_zero:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    elif value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _rope_n(name: str, value) -> tuple[int, int, int, int]:
    n = tuple(int(v) for v in value)
    if len(n) != 4 or any(v < 0 for v in n):
        raise ValueError(f"{name} must be 4 non-negative pair counts (n_y, n_x, n_s1, n_s2), got {tuple(value)}")
    return n


@dataclass(kw_only=True)
class EncoderConfig:
    """CroCo-v2 compatible ViT encoder (patch 16, 224x224 input, RoPE2D, pre-norm blocks)."""

    embed_dim: int = 768
    """Token width C. ViT-B 768, ViT-L 1024."""
    depth: int = 12
    """Number of transformer blocks. ViT-B 12, ViT-L 24."""
    num_heads: int = 12
    """Attention heads; head dim = embed_dim / num_heads must be a multiple of 4 (RoPE2D y and x halves)."""
    mlp_ratio: float = 4.0
    """MLP hidden width = mlp_ratio * embed_dim."""
    rope_base: float = 100.0
    """RoPE2D base of the y and x frequencies (CroCo's RoPE100)."""
    drop_path: float = 0.0
    """Stochastic-depth rate of the last block (linearly increasing from 0 over the blocks)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs one forward)."""
    checkpoint: str | None = None
    """Path of a CroCo checkpoint (official `CroCo_V2_ViT*` .pth layout) to load; None trains from scratch."""
    checkpoint_strict: bool = True
    """True: the file must declare exactly this encoder (width, depth, heads in its `croco_kwargs`), hold every
    encoder weight and nothing but encoder and CroCo decoder entries, else an error names what differs; False:
    log the differences and load what fits."""
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean of the input normalisation (ImageNet, as CroCo's pretraining), applied by
    `VPOG.forward` to RGB in [0, 1]."""
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation of the input normalisation."""

    def __post_init__(self) -> None:
        _positive("encoder.embed_dim", self.embed_dim)
        _positive("encoder.depth", self.depth, allow_zero=True)
        _positive("encoder.num_heads", self.num_heads)
        _positive("encoder.mlp_ratio", self.mlp_ratio)
        _positive("encoder.rope_base", self.rope_base)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"encoder.embed_dim ({self.embed_dim}) must be divisible by encoder.num_heads ({self.num_heads})"
            )
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(
                f"encoder head dim embed_dim / num_heads = {self.embed_dim // self.num_heads} must be a multiple "
                f"of 4 (RoPE2D rotates pairs in a y half and an x half)"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"encoder.drop_path must be in [0, 1), got {self.drop_path}")
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if len(self.image_mean) != 3:
            raise ValueError(f"encoder.image_mean must have 3 values (RGB), got {self.image_mean}")
        if len(self.image_std) != 3 or any(v <= 0 for v in self.image_std):
            raise ValueError(f"encoder.image_std must have 3 positive values (RGB), got {self.image_std}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(kw_only=True)
class GroupAttentionConfig:
    """Alternating global (query + all templates, S2RoPE) and per-image frame (2D RoPE) attention."""

    depth: int = 4
    """Number of (global block, frame block) pairs."""
    num_heads: int = 12
    """Attention heads; head dim = embed_dim / num_heads must equal 2 * sum(rope_n) and 2 * sum(frame_rope_n)."""
    mlp_ratio: float = 4.0
    """MLP hidden width = mlp_ratio * embed_dim."""
    rope_n: tuple[int, int, int, int] = (10, 10, 6, 6)
    """S2RoPE pair counts (n_y, n_x, n_s1, n_s2) of the global blocks (docs/conventions.md §5)."""
    frame_rope_n: tuple[int, int, int, int] = (16, 16, 0, 0)
    """Pair counts of the frame blocks: plain 2D RoPE over (y, x)."""
    base_xy: float = 100.0
    """Frequency base of the y and x pairs."""
    f0_s: float = 4.0
    """Highest frequency of the s1 and s2 pairs (radians per radian of view angle)."""
    base_s: float = 32.0
    """Frequency base of the s1 and s2 pairs."""
    drop_path: float = 0.0
    """Stochastic-depth rate of every group-attention block."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass."""

    def __post_init__(self) -> None:
        _positive("group_attention.depth", self.depth, allow_zero=True)
        _positive("group_attention.num_heads", self.num_heads)
        _positive("group_attention.mlp_ratio", self.mlp_ratio)
        _positive("group_attention.base_xy", self.base_xy)
        _positive("group_attention.f0_s", self.f0_s)
        _positive("group_attention.base_s", self.base_s)
        self.rope_n = _rope_n("group_attention.rope_n", self.rope_n)
        self.frame_rope_n = _rope_n("group_attention.frame_rope_n", self.frame_rope_n)
        if self.frame_rope_n[2] or self.frame_rope_n[3]:
            raise ValueError(
                f"group_attention.frame_rope_n must have n_s1 = n_s2 = 0 (frame attention is 2D), "
                f"got {self.frame_rope_n}"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"group_attention.drop_path must be in [0, 1), got {self.drop_path}")


@dataclass(kw_only=True)
class HeadConfig:
    """Patch classification head and dense flow head."""

    proj_dim: int = 256
    """Width of the matching space where query and template patches are compared (cosine similarity)."""
    init_temperature: float = 0.1
    """Initial softmax temperature of the classification logits (logits = cos / temperature)."""
    min_temperature: float = 0.01
    """Lower bound of the learnable temperature (keeps logits finite in long bf16 runs)."""
    flow_hidden_dim: int = 512
    """Hidden width of the flow head's MLP on (query patch, buddy patch) feature pairs."""
    flow_b_min: float = 0.01
    """Lower bound of the Laplace scale b, in patches (16 px); b = flow_b_min + softplus(raw)."""

    def __post_init__(self) -> None:
        _positive("heads.proj_dim", self.proj_dim)
        _positive("heads.init_temperature", self.init_temperature)
        _positive("heads.min_temperature", self.min_temperature)
        _positive("heads.flow_hidden_dim", self.flow_hidden_dim)
        _positive("heads.flow_b_min", self.flow_b_min)
        if self.init_temperature < self.min_temperature:
            raise ValueError(
                f"heads.init_temperature ({self.init_temperature}) must be >= heads.min_temperature "
                f"({self.min_temperature})"
            )


@dataclass(kw_only=True)
class VPOGConfig:
    """The whole network: encoder -> group attention -> classification and flow heads."""

    name: str = "vpog_vitb"
    """Name of the configuration (the YAML's stem)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The CroCo ViT encoder, shared by the query and the templates."""
    group_attention: GroupAttentionConfig = field(default_factory=GroupAttentionConfig)
    """Global S2RoPE attention over query + templates, alternating with per-image attention."""
    heads: HeadConfig = field(default_factory=HeadConfig)
    """Classification and flow heads."""
    attention_backend: str = "auto"
    """Backend of `vpog.ops.s2rope_attention` for every attention layer ("auto" picks the fastest)."""

    def __post_init__(self) -> None:
        for name, cls in (("encoder", EncoderConfig), ("group_attention", GroupAttentionConfig),
                          ("heads", HeadConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, from_mapping(cls, value, name))
            elif not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got '{self.attention_backend}'")
        dim, heads = self.encoder.embed_dim, self.group_attention.num_heads
        if dim % heads:
            raise ValueError(
                f"group_attention.num_heads ({heads}) must divide encoder.embed_dim ({dim})"
            )
        head_dim = dim // heads
        for key in ("rope_n", "frame_rope_n"):
            n = getattr(self.group_attention, key)
            if 2 * sum(n) != head_dim:
                raise ValueError(
                    f"group_attention.{key} = {n} must satisfy 2 * sum = head dim "
                    f"encoder.embed_dim / group_attention.num_heads = {head_dim}, got 2 * sum = {2 * sum(n)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. to save with a run."""

        def conv(v):
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return conv(dataclasses.asdict(self))


def vpog_config_from_dict(values: Mapping) -> VPOGConfig:
    """Build a VPOGConfig from a nested mapping (the model YAML's content); unknown keys raise ValueError."""
    return from_mapping(VPOGConfig, values, "model")


def load_model_config(name_or_path: str | Path | Any) -> VPOGConfig:
    """A VPOGConfig from a model YAML name (`vpog_vitb`), a YAML path, or an omegaconf DictConfig.

    omegaconf is imported here only, so importing `vpog.model` does not need it.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(name_or_path, DictConfig):
        values = OmegaConf.to_container(name_or_path, resolve=True)
    else:
        path = Path(name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            path = MODEL_CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            options = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
            raise ValueError(f"no such model config {str(name_or_path)!r}: {path} does not exist "
                             f"(options: {', '.join(options)})")
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return vpog_config_from_dict(values)
