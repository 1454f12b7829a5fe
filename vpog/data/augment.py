"""Photometric augmentation of query crops (CosyPose/GigaPose style: blur, contrast, brightness, colour,
noise, occasional grayscale). Geometry is untouched, so poses, masks and depths stay exact.

Applied to the query crop only, in training; templates are rendered and stay clean (as in GigaPose).
Randomness comes from the numpy Generator passed in, so a sample is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(kw_only=True)
class AugmentConfig:
    """Photometric augmentation; each op fires with its probability."""

    enabled: bool = True
    brightness: float = 0.3
    """brightness factor drawn from U(1 - b, 1 + b)."""
    contrast: float = 0.3
    """contrast factor from U(1 - c, 1 + c), blending with the mean grey level."""
    saturation: float = 0.4
    """saturation factor from U(1 - s, 1 + s), blending with the greyscale image."""
    blur_sigma: float = 1.2
    """Gaussian blur with sigma from U(0.1, blur_sigma) pixels."""
    noise_std: float = 0.03
    """additive Gaussian noise with std from U(0, noise_std) (image in [0, 1])."""
    grayscale_prob: float = 0.05
    prob: float = 0.5
    """probability of each of brightness, contrast, saturation, blur and noise."""

    def __post_init__(self):
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("prob", "grayscale_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be a probability, got {getattr(self, name)}")
        if self.blur_sigma < 0.1 or self.noise_std < 0:
            raise ValueError("augment.blur_sigma must be >= 0.1 and augment.noise_std >= 0")


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = img.shape[0]
    out = F.conv2d(F.pad(img[None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                   groups=c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                   groups=c)
    return out[0]


def augment_rgb(img: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """img float32 [3, H, W] in [0, 1] -> augmented copy, clamped to [0, 1]."""
    if not cfg.enabled:
        return img
    out = img
    if rng.random() < cfg.prob:
        out = _blur(out, rng.uniform(0.1, cfg.blur_sigma))
    if rng.random() < cfg.prob:
        mean = _gray(out).mean()  # contrast scales the distance to the mean grey level
        out = (out - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if rng.random() < cfg.prob:
        out = out * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    if rng.random() < cfg.prob:
        g = _gray(out)
        out = g + (out - g) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    if rng.random() < cfg.prob:
        std = rng.uniform(0, cfg.noise_std)
        noise = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32)) * std
        out = out + noise
    if rng.random() < cfg.grayscale_prob:
        out = _gray(out).expand(3, -1, -1)
    return out.clamp(0, 1).contiguous()
