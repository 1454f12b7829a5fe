"""Photometric augmentation of query crops (CosyPose/GigaPose style: blur, contrast, brightness, colour,
noise, occasional grayscale). Geometry is untouched, so poses, masks and depths stay exact.

Applied to the query crop only, in training; templates are rendered and stay clean (as in GigaPose).
Randomness comes from the numpy Generator passed in, so a sample is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def _gray(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of img [H, W, C], edges replicated."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x ** 2) / (2 * sigma ** 2)).astype(np.float32)
    k /= k.sum()
    H, W = img.shape[:2]
    pad = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    rows = sum(w * pad[i:i + H] for i, w in enumerate(k))
    pad = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(w * pad[:, i:i + W] for i, w in enumerate(k))


def augment_rgb(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """img float32 [H, W, 3] in [0, 1] -> augmented copy, clipped to [0, 1] (numpy: single-threaded)."""
    if not cfg.enabled:
        return img
    out = img.astype(np.float32, copy=True)
    if rng.random() < cfg.prob:
        out = _blur(out, rng.uniform(0.1, cfg.blur_sigma))
    if rng.random() < cfg.prob:
        mean = _gray(out).mean()  # contrast scales the distance to the mean grey level
        out = (out - mean) * np.float32(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)) + mean
    if rng.random() < cfg.prob:
        out = out * np.float32(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness))
    if rng.random() < cfg.prob:
        g = _gray(out)[..., None]
        out = g + (out - g) * np.float32(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation))
    if rng.random() < cfg.prob:
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(0, cfg.noise_std))
    if rng.random() < cfg.grayscale_prob:
        out = np.repeat(_gray(out)[..., None], 3, axis=-1)
    return np.clip(out, 0, 1).astype(np.float32, copy=False)
