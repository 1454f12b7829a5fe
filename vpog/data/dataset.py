"""The VPOG training loader: object-level samples with groups of templates (docs/conventions.md §3).

A sample is one visible instance (visib_fract > 0.1) of one training image:
- query: square crop around `bbox_visib` (scale and shift jitter in training), RGB bilinear, depth and
  visible mask nearest, `K_q = M K`, photometric augmentation in training;
- templates (S = S_p + S_n): t* = the template whose viewing direction is nearest the query's, the
  S_p - 1 templates nearest t*, and S_n negatives drawn uniformly among templates at >= 90 degrees from
  the query's direction; each cropped around its alpha box;
- d_ref = d(t*), or with probability `d_ref_random_ratio` the direction of another positive.

Random access goes through `ShardIndex` (no scan per epoch); template crops are cached per worker after
first use. A bad sample (unreadable member, bad JSON, empty mask, no valid depth, missing template,
non-finite pose) is counted and replaced by another instance of the same set; the counts ride on each
batch (`VPOGBatch.skipped`) so the trainer can log them whatever the number of workers.

Object filter: `train_datasets[i].object_ids` / `exclude_object_ids` (or `VPOGDataset.restrict_objects`
at run time) remove objects from a set's instance list itself, so the sampler, the per-rank split and
the replacement of bad samples only ever see the remaining objects (held-out objects never leak into
training through a replacement draw, as they would with a subset view over the whole set).

`MixedSampler` mixes several sets by ratio and splits each epoch's list into disjoint per-rank shards,
reshuffled by epoch; it can start mid-epoch for exact data-position resume. Samples carry their own seed,
so a sample's crop jitter, template draw and augmentation do not depend on the worker that makes it.

Needs torch, numpy and Pillow only (no trimesh, pyrender or webdataset).
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from numbers import Integral

import numpy as np
import torch
from PIL import Image

from vpog.config_schema import from_mapping
from vpog.geometry import CROP_SIZE

from .augment import AugmentConfig, augment_rgb
from .batch import collate_vpog
from .crop import box_from_mask, box_from_xywh, crop_matrix, jitter_box, warp_crop
from .debug_pictures import VisualizationConfig
from .rle import rle_to_mask
from .shards import ShardReadError
from .sources import TrainingSource, object_id_list
from .templates import read_png_depth, viewing_directions

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainSetConfig:
    """One entry of `data.train_datasets`."""

    name: str
    """dataset name: templates are read from {templates}/{name}/."""
    root: str
    """BOP-webdataset root holding train_pbr_web/, key_to_shard.json and models_info.json."""
    templates: str
    """template root (GigaPose layout)."""
    ratio: float = 1.0
    """share of each epoch drawn from this set (normalised over all sets)."""
    split: str = "train_pbr_web"
    object_ids: list[int] | None = None
    """keep only the instances of these object ids of the set (None: every object)."""
    exclude_object_ids: list[int] | None = None
    """drop the instances of these object ids (wins over `object_ids`); None: drop nothing."""
    scale_factor: float = 1.0
    """template world / scene world: template translations and depths are divided by it. 10 for
    GigaPose's MegaPose-GSO and -ShapeNet templates (rendered 10x larger than the scenes, GigaPose's own
    `scale_factor: 10`), 1 for sets written by vpog.data.synthesize and for BOP sets."""

    def __post_init__(self):
        if self.ratio <= 0:
            raise ValueError(f"train_datasets[{self.name}].ratio must be > 0, got {self.ratio}")
        if not self.scale_factor > 0:
            raise ValueError(f"train_datasets[{self.name}].scale_factor must be > 0, got {self.scale_factor}")
        self.object_ids = object_id_list(self.object_ids, f"train_datasets[{self.name}].object_ids")
        self.exclude_object_ids = object_id_list(self.exclude_object_ids,
                                                 f"train_datasets[{self.name}].exclude_object_ids")
        if self.object_ids is not None and not self.object_ids:
            raise ValueError(f"train_datasets[{self.name}].object_ids is empty (null keeps every object)")


@dataclass(kw_only=True)
class DataConfig:
    """Training data settings; mirrors `vpog/config/data/*.yaml`."""

    name: str = "synthetic"
    data_root: str | None = None
    """folder the real sets' paths are built from in their YAML (documentation only here)."""
    batch_size: int = 8
    """samples per rank and step."""
    num_positive_templates: int = 4
    """S_p: t* and the S_p - 1 templates nearest to it."""
    num_negative_templates: int = 2
    """S_n: templates at >= 90 degrees from the query's viewing direction."""
    d_ref_random_ratio: float = 0.0
    min_visib_fract: float = 0.1
    samples_per_epoch: int | None = None
    """None: the number of usable instances over all sets."""
    crop_size: int = CROP_SIZE
    box_scale: float = 1.0
    """square box side = box_scale * max(w, h) of the visible box (1.0: tight, as GigaPose)."""
    scale_jitter: float = 0.15
    shift_jitter: float = 0.1
    mask_query_rgb: bool = False
    """black out the query's pixels outside its visible mask (GigaPose does; detections give masks)."""
    template_cache_mb: int = 512
    """per-process cache of template crops."""
    index_cache_dir: str | None = None
    index_workers: int = 0
    max_retries: int = 20
    missing_templates: str = "error"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_datasets: list[TrainSetConfig] = field(default_factory=list)
    synthesize: dict | None = None
    """settings of vpog.data.synthesize for sets made on first use (None for real sets)."""
    visualization: VisualizationConfig = field(default_factory=VisualizationConfig)
    """data debug pictures written during training (vpog.data.debug_pictures; the original VPOG keys)."""

    def __post_init__(self):
        if self.num_positive_templates < 1 or self.num_negative_templates < 0:
            raise ValueError("num_positive_templates must be >= 1 and num_negative_templates >= 0")
        if not 0 <= self.d_ref_random_ratio <= 1:
            raise ValueError(f"d_ref_random_ratio must be in [0, 1], got {self.d_ref_random_ratio}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.train_datasets:
            raise ValueError("train_datasets must list at least one training set")
        if not 0 <= self.scale_jitter < 1 or self.shift_jitter < 0:
            raise ValueError("scale_jitter must be in [0, 1) and shift_jitter >= 0")


class SampleError(Exception):
    """A sample that cannot be used; `reason` is the counter it goes to."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class VPOGDataset(torch.utils.data.Dataset):
    """Map-style dataset over all usable instances of all `cfg.train_datasets` (concatenated).

    `dataset[i]` or `dataset[(i, seed)]` -> sample dict (see `collate_vpog`). `index_stats` holds what
    indexing dropped per set; `skip_counts` what this process skipped while loading. Each set's object
    filter (`TrainSetConfig.object_ids` / `exclude_object_ids`, or `restrict_objects`) applies to its
    instance list, hence to indices, `source_sizes` and bad-sample replacements alike.
    """

    def __init__(self, cfg: DataConfig, train: bool = True, seed: int = 0, progress: bool = False):
        self.cfg = cfg
        self.train = train
        self.seed = int(seed)
        self.sources = [
            TrainingSource(d.name, d.root, d.templates, split=d.split, min_visib_fract=cfg.min_visib_fract,
                           index_cache_dir=(f"{cfg.index_cache_dir}/{d.name}" if cfg.index_cache_dir else None),
                           index_workers=cfg.index_workers, missing_templates=cfg.missing_templates,
                           progress=progress, object_ids=d.object_ids, exclude_object_ids=d.exclude_object_ids,
                           scale_factor=d.scale_factor)
            for d in cfg.train_datasets
        ]
        self.ratios = [d.ratio for d in cfg.train_datasets]
        self._reset()
        for s in self.sources:
            logger.info("training set '%s': %d usable instances (%s)", s.name, len(s), s.stats)

    def _reset(self) -> None:
        """Sizes and offsets from `self.sources`; empty skip counts and template cache."""
        self.source_sizes = [len(s) for s in self.sources]
        self._base = np.concatenate([[0], np.cumsum(self.source_sizes)]).astype(np.int64)
        self.skip_counts: Counter = Counter()
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = 0

    def set_number(self, dataset: int | str) -> int:
        """Position of a training set in `cfg.train_datasets`, from its position or its name."""
        names = [s.name for s in self.sources]
        if isinstance(dataset, str):
            if dataset not in names:
                raise ValueError(f"dataset must be one of the training sets {names}, got {dataset!r}")
            return names.index(dataset)
        if isinstance(dataset, bool) or not isinstance(dataset, Integral) or not 0 <= dataset < len(names):
            raise ValueError(f"dataset must be a set number in [0, {len(names)}) or a name in {names}, "
                             f"got {dataset!r}")
        return int(dataset)

    def restrict_objects(self, dataset: int | str = 0, *, object_ids=None, exclude_object_ids=None) -> VPOGDataset:
        """A copy of this dataset whose set `dataset` (number or name) keeps only the instances of
        `object_ids` (None: all its objects) minus those of `exclude_object_ids`.

        No re-indexing: the shard index and template poses are shared. Indices are renumbered over the
        filtered instance lists (`len`, `source_sizes` shrink), and bad samples are replaced from the
        filtered list only. `cfg` records the filter (ids merged with any already configured). An id
        that is not an object of the set's shards, or a filter leaving nothing, raises ValueError.
        """
        s = self.set_number(dataset)
        keep = object_id_list(object_ids, "object_ids")
        drop = object_id_list(exclude_object_ids, "exclude_object_ids")
        source = self.sources[s].restricted(keep, drop)
        old = self.cfg.train_datasets[s]
        merged = replace(
            old,
            object_ids=keep if old.object_ids is None else (
                old.object_ids if keep is None else sorted(set(old.object_ids) & set(keep))),
            exclude_object_ids=sorted(set(old.exclude_object_ids or ()) | set(drop or ())) or None)
        out = copy.copy(self)
        out.cfg = replace(self.cfg, train_datasets=[
            merged if i == s else d for i, d in enumerate(self.cfg.train_datasets)])
        out.sources = [source if i == s else src for i, src in enumerate(self.sources)]
        out._reset()
        logger.info("training set '%s' restricted to %d usable instances of objects %s (object_ids=%s, "
                    "exclude_object_ids=%s)", source.name, len(source), source.objects, keep, drop)
        return out

    @property
    def index_stats(self) -> dict[str, dict[str, int]]:
        return {s.name: dict(s.stats) for s in self.sources}

    def __len__(self) -> int:
        return int(self._base[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (set number, position in that set's instance list)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        s = int(np.searchsorted(self._base, index, side="right") - 1)
        return s, int(index - self._base[s])

    # ------------------------------------------------------------------ sampling

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (int(key), None)
        if seed is None:
            seed = self.seed * 1_000_003 + int(index)
        rng = np.random.default_rng([int(seed) & (2 ** 63 - 1), 3])
        s, pos = self.locate(int(index))
        skipped: Counter = Counter()
        for _ in range(self.cfg.max_retries + 1):
            try:
                sample = self._sample(s, pos, rng)
                sample["skipped"] = dict(skipped)
                return sample
            except SampleError as exc:
                if self.skip_counts[exc.reason] == 0:
                    logger.warning("skipping a bad sample (%s): %s; further ones are only counted", exc.reason, exc)
                skipped[exc.reason] += 1
                self.skip_counts[exc.reason] += 1
                pos = int(rng.integers(len(self.sources[s])))
        raise RuntimeError(f"training set '{self.sources[s].name}': {self.cfg.max_retries + 1} bad samples in a row "
                           f"({dict(skipped)}); the data looks broken")

    def _read(self, src: TrainingSource, image: int, slot: str) -> bytes:
        try:
            return src.index.read(image, slot)
        except ShardReadError as exc:
            raise SampleError("read_error", str(exc)) from None

    def _json(self, src: TrainingSource, image: int, slot: str):
        try:
            return json.loads(self._read(src, image, slot))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError("bad_json", f"{slot} of {src.name}/{src.index.key(image)}: {exc}") from None

    def _query(self, src: TrainingSource, inst: int, rng: np.random.Generator):
        idx = src.index
        image, k = int(idx.inst_image[inst]), int(idx.inst_index[inst])
        where = f"{src.name}/{idx.key(image)}/{k}"
        camera, gt, masks = (self._json(src, image, s) for s in ("camera", "gt", "mask_visib"))
        try:
            K = np.array(camera["cam_K"], dtype=np.float64).reshape(3, 3)
            depth_scale = float(camera.get("depth_scale", 1.0))
            g = gt[k]
            T = np.eye(4)
            T[:3, :3] = np.array(g["cam_R_m2c"], dtype=np.float64).reshape(3, 3)
            T[:3, 3] = np.array(g["cam_t_m2c"], dtype=np.float64).reshape(3) / 1000.0
            rle = masks[str(k)]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SampleError("bad_json", f"{where}: {type(exc).__name__}: {exc}") from None
        if not (np.isfinite(K).all() and np.isfinite(T).all() and T[2, 3] > 0):
            raise SampleError("bad_pose", f"{where}: non-finite camera or pose, or object behind the camera")
        if abs(np.linalg.det(T[:3, :3]) - 1) > 1e-2:
            raise SampleError("bad_pose", f"{where}: cam_R_m2c is not a rotation")
        try:
            mask = rle_to_mask(rle)
            rgb = _decode_rgb(self._read(src, image, "rgb"))
            depth = read_png_depth(self._read(src, image, "depth")) * (depth_scale / 1000.0)
        except SampleError:
            raise
        except (ValueError, OSError, SyntaxError) as exc:  # PIL raises these for broken images
            raise SampleError("decode_error", f"{where}: {exc}") from None
        if not (mask.shape == rgb.shape[:2] == depth.shape):
            raise SampleError("shape_mismatch", f"{where}: mask {mask.shape}, rgb {rgb.shape}, depth {depth.shape}")
        if not mask.any():
            raise SampleError("empty_mask", f"{where}: the visible mask is empty")
        if not np.isfinite(depth).all() or not (depth[mask] > 0).any():
            raise SampleError("bad_depth", f"{where}: depth is NaN or zero over the whole visible mask")
        bbox = idx.inst_bbox_visib[inst]
        box = box_from_xywh(bbox, self.cfg.box_scale) if bbox[2] > 0 and bbox[3] > 0 else box_from_mask(
            mask, self.cfg.box_scale)
        if self.train:
            box = jitter_box(box, rng, self.cfg.scale_jitter, self.cfg.shift_jitter)
        M = crop_matrix(box, self.cfg.crop_size)
        size = self.cfg.crop_size
        q_rgb = warp_crop(rgb, M, size, "bilinear") / np.float32(255.0)
        q_depth = warp_crop(depth, M, size, "nearest")
        q_mask = warp_crop(mask.astype(np.uint8), M, size, "nearest") > 0.5
        if not q_mask.any():
            raise SampleError("empty_mask", f"{where}: the visible mask is empty in the crop")
        if self.train:
            q_rgb = augment_rgb(q_rgb, rng, self.cfg.augment)
        if self.cfg.mask_query_rgb:
            q_rgb = q_rgb * q_mask[..., None]
        return q_rgb, q_mask, q_depth, M, K, T, where

    def _template(self, s: int, src: TrainingSource, obj_id: int, view: int):
        key = (s, obj_id, view)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        try:
            rgba, depth = src.read_template(obj_id, view)
            rgb, mask = rgba[..., :3], rgba[..., 3] >= 128
        except FileNotFoundError as exc:
            raise SampleError("missing_template", str(exc)) from None
        except (ValueError, OSError, SyntaxError) as exc:
            raise SampleError("decode_error", f"template {src.name}/{obj_id}/{view}: {exc}") from None
        if depth.shape != mask.shape:  # else the depth crop would silently miss the image crop
            raise SampleError("shape_mismatch", f"template {src.name}/{obj_id:06d}/{view:06d}: image "
                                                f"{mask.shape}, depth {depth.shape}")
        if not mask.any():
            raise SampleError("empty_mask", f"template {src.name}/{obj_id:06d}/{view:06d} has an empty alpha")
        size = self.cfg.crop_size
        M = crop_matrix(box_from_mask(mask), size)
        entry = (
            np.round(warp_crop(rgb, M, size, "bilinear")).astype(np.uint8),
            warp_crop(mask.astype(np.uint8), M, size, "nearest") > 0.5,
            warp_crop(depth, M, size, "nearest").astype(np.float16),
            M,
        )
        self._cache[key] = entry
        self._cache_bytes += size * size * 6
        while self._cache_bytes > self.cfg.template_cache_mb * 2 ** 20 and self._cache:
            self._cache.popitem(last=False)
            self._cache_bytes -= size * size * 6
        return entry

    def select_templates(self, d_q: np.ndarray, dirs: np.ndarray, rng: np.random.Generator):
        """Template choice of docs/conventions.md §3 -> (view ids [S], is_positive [S], d_ref [3]).

        d_q [3] query viewing direction, dirs [V, 3] template viewing directions (unit, model frame).
        """
        sp, sn = self.cfg.num_positive_templates, self.cfg.num_negative_templates
        if sp > len(dirs):
            raise ValueError(f"num_positive_templates={sp} exceeds the {len(dirs)} templates of the object")
        t_star = int(np.argmax(dirs @ d_q))
        near = np.argsort(-(dirs @ dirs[t_star]), kind="stable")
        positives = [t_star] + [int(v) for v in near if v != t_star][: sp - 1]
        far = np.flatnonzero(dirs @ d_q <= 0.0)  # angle(d_q, d_t) >= 90 degrees
        if sn > 0 and len(far) == 0:
            raise SampleError("no_negatives", "no template is at >= 90 degrees from the query")
        negatives = rng.choice(far, size=sn, replace=len(far) < sn).tolist() if sn else []
        d_ref = dirs[t_star]
        if sp > 1 and rng.random() < self.cfg.d_ref_random_ratio:
            d_ref = dirs[positives[int(rng.integers(1, sp))]]
        views = np.array(positives + negatives, dtype=np.int64)
        return views, np.arange(sp + sn) < sp, d_ref

    def _sample(self, s: int, pos: int, rng: np.random.Generator) -> dict:
        src = self.sources[s]
        inst = int(src.instances[pos])
        obj_id = int(src.index.inst_obj[inst])
        q_rgb, q_mask, q_depth, q_M, K, T_q, where = self._query(src, inst, rng)
        try:
            poses, dirs = src.template_poses(obj_id)
            diameter = src.diameter(obj_id)
        except (OSError, ValueError) as exc:
            raise SampleError("missing_template", f"{where}: template poses of object {obj_id}: {exc}") from None
        d_q = viewing_directions(T_q)
        views, is_pos, d_ref = self.select_templates(d_q, dirs, rng)
        crops = [self._template(s, src, obj_id, int(v)) for v in views]
        tK = src.template_K
        images = np.stack([q_rgb] + [c[0].astype(np.float32) / np.float32(255.0) for c in crops])
        masks = np.stack([q_mask] + [c[1] for c in crops])
        depths = np.stack([q_depth] + [c[2].astype(np.float32) for c in crops])
        Ms = np.stack([q_M] + [c[3] for c in crops])
        Ks = np.einsum("sij,sjk->sik", Ms, np.stack([K] + [tK] * len(crops)))
        Ts = np.concatenate([T_q[None], poses[views].astype(np.float64)])
        return {
            "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            "masks": torch.from_numpy(masks),
            "depths": torch.from_numpy(depths),
            "K": torch.from_numpy(Ks.astype(np.float32)),
            "M": torch.from_numpy(Ms.astype(np.float32)),
            "T_m2c": torch.from_numpy(Ts.astype(np.float32)),
            "d_ref": torch.from_numpy(d_ref.astype(np.float32)),
            "template_dirs": torch.from_numpy(dirs[views].astype(np.float32)),
            "query_dir": torch.from_numpy(d_q.astype(np.float32)),
            "is_positive": torch.from_numpy(is_pos),
            "template_ids": torch.from_numpy(views),
            "obj_id": torch.tensor(obj_id, dtype=torch.int64),
            "diameter": torch.tensor(diameter, dtype=torch.float32),
            "dataset_id": torch.tensor(s, dtype=torch.int64),
            "key": where,
        }


class MixedSampler(torch.utils.data.Sampler):
    """Epoch lists mixing sets by ratio, split into disjoint per-rank shards, reshuffled every epoch.

    Yields `(global index, sample seed)`. Each set contributes round(ratio share x epoch length) samples
    (its instances in random order, cycling when it is oversampled); the list is shuffled with
    (seed, epoch), padded by wrap-around to a multiple of `world_size`, and rank r takes every
    `world_size`-th entry from position r. `set_epoch(epoch, start)` skips the first `start` samples of
    this rank's list (resume at a data position).
    """

    def __init__(self, sizes: list[int], ratios: list[float], samples_per_epoch: int | None = None, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        if len(sizes) != len(ratios) or not sizes:
            raise ValueError(f"sizes and ratios must be non-empty and of equal length, got {sizes}, {ratios}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if min(sizes) < 1 or min(ratios) <= 0:
            raise ValueError(f"sizes must be >= 1 and ratios > 0, got {sizes}, {ratios}")
        self.sizes, self.rank, self.world_size, self.seed = list(sizes), rank, world_size, int(seed)
        share = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios))
        total = int(samples_per_epoch) if samples_per_epoch else int(sum(sizes))
        self.counts = np.maximum(1, np.round(share * total)).astype(np.int64)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def epoch_list(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(global indices, seeds) of the whole epoch, before the per-rank split (same on every rank)."""
        rng = np.random.default_rng([self.seed, int(epoch), 17])
        parts, base = [], 0
        for size, count in zip(self.sizes, self.counts):
            reps = -(-int(count) // size)
            order = np.concatenate([rng.permutation(size) for _ in range(reps)])[:count]
            parts.append(order + base)
            base += size
        indices = np.concatenate(parts)
        indices = indices[rng.permutation(len(indices))]
        seeds = rng.integers(0, 2 ** 62, size=len(indices))
        pad = (-len(indices)) % self.world_size
        if pad:
            indices = np.concatenate([indices, indices[:pad]])
            seeds = np.concatenate([seeds, seeds[:pad]])
        return indices, seeds

    def __len__(self) -> int:
        total = int(self.counts.sum())
        return max(0, -(-total // self.world_size) - self.start)

    def __iter__(self):
        indices, seeds = self.epoch_list(self.epoch)
        mine = slice(self.rank + self.start * self.world_size, None, self.world_size)
        yield from zip(indices[mine].tolist(), seeds[mine].tolist())


def build_train_loader(cfg, *, rank: int = 0, world_size: int = 1, num_workers: int = 2, seed: int = 0,
                       pin_memory: bool = False, progress: bool = False):
    """DataLoader of VPOGBatch for `cfg` (data config node or DataConfig); its `.sampler` is the MixedSampler
    (call `loader.sampler.set_epoch(epoch, start)` before each epoch) and `.dataset` the VPOGDataset."""
    dcfg = cfg if isinstance(cfg, DataConfig) else from_mapping(DataConfig, cfg, "data")
    dataset = VPOGDataset(dcfg, train=True, seed=seed, progress=progress)
    sampler = MixedSampler(dataset.source_sizes, dataset.ratios, dcfg.samples_per_epoch, rank=rank,
                           world_size=world_size, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=dcfg.batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_vpog,
        pin_memory=pin_memory, drop_last=True, persistent_workers=num_workers > 0)


def prepare_train_data(cfg, num_workers: int | None = None) -> None:
    """Create the data `cfg` needs before loading: the synthetic set when `cfg.synthesize` is set.

    Call it on one rank (then barrier) before `build_train_loader`; idempotent and resumable.
    """
    synth = cfg.synthesize if isinstance(cfg, DataConfig) else cfg.get("synthesize")
    if synth:
        from .synthesize import ensure_synthetic_dataset

        ensure_synthetic_dataset(synth, num_workers=num_workers)
        return
    # real sets: index the shards and measure the diameters here, once, so that the other ranks find
    # them cached instead of all doing the work at once
    dcfg = cfg if isinstance(cfg, DataConfig) else from_mapping(DataConfig, cfg, "data")
    VPOGDataset(dcfg, train=True, progress=True)
