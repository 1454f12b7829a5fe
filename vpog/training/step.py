"""VPOG's training task: batch -> flow labels on the device -> model -> classification + flow + EPro-PnP losses.

One training step, on each rank (docs/conventions.md §3, §4, §6, §7):

1. the `VPOGBatch` (query + S templates per sample) moves to the device;
2. `vpog.ops.patch_flow_labels` computes the patch-local flow labels there (fp32, no autograd),
   with the depth tolerance tau = `labels.tau_factor` x object diameter;
3. the network runs under autocast on the ground-truth buddies (`buddies = patch_cls`);
4. `vpog.losses.vpog_loss` adds classification, the Laplace flow NLL and the EPro-PnP Monte Carlo pose
   loss (`vpog.pnp.MonteCarloPoseLoss`, on correspondences sampled from the predicted flow), in fp32.

Data: the training sets of `data:` read by `vpog.data.VPOGDataset`; the objects that `split:` holds out
of set 0 (the same rule as `python -m vpog.evaluate`) are excluded from training and used for
validation. Each epoch mixes the sets by their ratios (`vpog.data.MixedSampler`'s epoch list); the
built-in synthetic set is created on first use by rank 0 (`vpog.data.prepare_train_data`).

Validation (every `log.val_every_steps`): the losses on held-out objects, plus, with
`val.pose_metrics`, pose metrics through the evaluation pipeline (`vpog.evaluation.runner.PoseValidator`:
rotation / translation error, ADD(-S), BOP MSSD / MSPD recalls, template retrieval).

Data debug pictures (`data.visualization`, `vpog.data.debug_pictures`): with `enabled: true`, rank 0
writes one PNG per sample of every `save_frequency`-th step's batch, from the CPU batch, before step 1.

References: shahaf-arica/vpog_dev `training/` (the VPOG training step this follows), nv-nguyen/gigapose
`src/models/` (GigaPose's training step).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from vpog.config_schema import from_mapping, to_plain
from vpog.training.task import StepContext, StepOutput, TrainTask

log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class LabelConfig:
    """Flow-label settings (mirrors `labels:` in train.yaml)."""

    tau_factor: float = 0.02
    """Depth tolerance of the visibility tests, as a fraction of the object diameter (docs/conventions.md §4)."""

    def __post_init__(self) -> None:
        if not self.tau_factor > 0:
            raise ValueError(f"labels.tau_factor must be > 0, got {self.tau_factor}")


@dataclasses.dataclass(kw_only=True)
class ValConfig:
    """What validation measures besides the losses (mirrors `val:` in train.yaml)."""

    pose_metrics: bool = True
    """Estimate poses of the held-out queries (vpog.evaluation) and log their metrics."""

    def __post_init__(self) -> None:
        self.pose_metrics = bool(self.pose_metrics)


class VPOGTask(TrainTask):
    """The VPOG model, data, step and validation for `vpog.training.trainer.Trainer` (`task: vpog`)."""

    pass_sample_seed = True  # VPOGDataset takes (index, seed) and draws from its own generator

    def __init__(self, cfg: Any, *, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cfg, rank=rank, world_size=world_size)
        from vpog.losses import LossWeights
        from vpog.model import vpog_config_from_dict
        from vpog.pnp.loss import MonteCarloPoseLoss, PoseLossConfig

        self.seed = int(cfg.get("seed", 0))
        self._data_cfg = None
        model_dict = dict(to_plain(cfg["model"]))
        if cfg.get("machine") is not None and cfg["machine"].get("activation_checkpointing"):
            for part in ("encoder", "group_attention"):
                model_dict[part] = dict(model_dict.get(part, {}), activation_checkpointing=True)
        self.model_cfg = vpog_config_from_dict(model_dict)
        self.weights = from_mapping(LossWeights, cfg.get("loss"), "loss")
        self.labels_cfg = from_mapping(LabelConfig, cfg.get("labels"), "labels")
        self.val_cfg = from_mapping(ValConfig, cfg.get("val"), "val")
        self.pose_loss = None
        if self.weights.pnp_weight > 0:
            try:
                self.pose_loss = MonteCarloPoseLoss(from_mapping(PoseLossConfig, cfg.get("pnp"), "pnp"))
            except TypeError as exc:
                raise ValueError(f"pnp: {exc}") from None
        # without the pose loss the PnP weight scale gets no gradient
        self.find_unused_parameters = self.pose_loss is None
        self._dataset = None
        self._val_dataset = None
        self._split: tuple[list[int], list[int]] | None = None
        self._validator = None
        self._checked_poses = False
        self._pictures = None  # data.visualization's DebugPictureWriter, built on the first step

    # -- data ----------------------------------------------------------------------------------

    @property
    def data_cfg(self):
        """`data:` as vpog.data.DataConfig (built on first use: the loader needs Pillow, the step does not)."""
        if self._data_cfg is None:
            from vpog.data.dataset import DataConfig

            self._data_cfg = from_mapping(DataConfig, self.cfg["data"], "data")
        return self._data_cfg

    def prepare_data(self) -> None:
        from vpog.data.dataset import prepare_train_data

        prepare_train_data(self.data_cfg)

    def batch_size(self) -> int:
        return self.data_cfg.batch_size

    def collate(self, samples):
        from vpog.data.batch import collate_vpog

        return collate_vpog(samples)

    def _base(self):
        if self._dataset is None:
            from vpog.data.dataset import VPOGDataset

            self._dataset = VPOGDataset(self.data_cfg, train=True, seed=self.seed)
        return self._dataset

    def _held_out(self) -> tuple[list[int], list[int]]:
        """(training object ids, held-out object ids) of set 0."""
        if self._split is None:
            from vpog.evaluation.split import SplitConfig, dataset_objects, split_objects

            objs, _ = dataset_objects(self._base(), 0)
            self._split = split_objects(objs.tolist(), from_mapping(SplitConfig, self.cfg.get("split"), "split"))
            log.info("set '%s': %d training objects, %d held out for validation %s", self._base().sources[0].name,
                     len(self._split[0]), len(self._split[1]), self._split[1])
        return self._split

    def train_dataset(self):
        """Set 0 without its held-out objects (filtered inside the data set, so broken-sample
        replacements cannot draw a held-out object), the other sets whole."""
        _, held = self._held_out()
        ds = self._base().restrict_objects(0, exclude_object_ids=held)
        self._train_sizes = list(ds.source_sizes)
        return ds

    def epoch_order(self, dataset):
        """Each epoch: the training sets mixed by `ratio` (MixedSampler's list for one rank, unpadded)."""
        from vpog.data.dataset import MixedSampler

        mixer = MixedSampler(self._train_sizes, [d.ratio for d in self.data_cfg.train_datasets],
                             self.data_cfg.samples_per_epoch, rank=0, world_size=1, seed=self.seed)
        return int(mixer.counts.sum()), lambda epoch: mixer.epoch_list(epoch)[0]

    def val_dataset(self):
        """Held-out objects of set 0, no jitter or augmentation, at most 64 queries each, the objects
        interleaved batch by batch (so the first `log.val_batches` batches cover every object)."""
        if self._val_dataset is None:
            from vpog.data.dataset import VPOGDataset
            from vpog.evaluation.runner import order_by_object
            from vpog.evaluation.split import ObjectSubset, dataset_objects, select_instances

            _, held = self._held_out()
            if not held:
                return None
            # Restricted to the held-out objects, so a broken query is replaced by another held-out one.
            val_base = VPOGDataset(self.data_cfg, train=False, seed=self.seed).restrict_objects(0, object_ids=held)
            objs, offset = dataset_objects(val_base, 0)
            positions = order_by_object(objs, select_instances(objs, held, max_per_object=64, seed=self.seed),
                                        block=int(self.data_cfg.batch_size))
            if len(positions) == 0:
                return None
            self._val_dataset = ObjectSubset(val_base, positions + offset)
        return self._val_dataset

    # -- model ---------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        from vpog.model import VPOG

        model = VPOG(self.model_cfg)
        log.info("model %s: %.1fM parameters", self.model_cfg.name, sum(p.numel() for p in model.parameters()) / 1e6)
        return model

    def is_backbone(self, name: str) -> bool:
        return name.startswith("encoder.")

    def state_dict(self) -> dict[str, Any]:
        return {"pose_loss": self.pose_loss.state_dict()} if self.pose_loss is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.pose_loss is not None and "pose_loss" in state:
            self.pose_loss.load_state_dict(state["pose_loss"])

    # -- the step ------------------------------------------------------------------------------

    def labels(self, batch):
        """docs/conventions.md §4 flow labels of a batch already on its device (no autograd)."""
        from vpog.ops import patch_flow_labels

        tau = self.labels_cfg.tau_factor * batch.diameter.float()
        check = not self._checked_poses  # the pose checks sync the device: once is enough for a data set
        self._checked_poses = True
        with torch.no_grad():
            return patch_flow_labels(batch.depths[:, 0], batch.masks[:, 0], batch.K[:, 0], batch.T_m2c[:, 0],
                                     batch.depths[:, 1:], batch.masks[:, 1:], batch.K[:, 1:], batch.T_m2c[:, 1:],
                                     tau, check_poses=check)

    def forward(self, model: nn.Module, batch, ctx: StepContext, with_pose_loss: bool):
        """-> (VPOGOutput, FlowLabels, loss parts dict, pose-loss valid fraction or None)."""
        from vpog.losses import PoseTargets, vpog_loss
        from vpog.model.vpog import inputs_from_batch

        labels = self.labels(batch)
        with ctx.autocast():
            out = model(**inputs_from_batch(batch, buddies=labels.patch_cls))
        pose_loss = pose_targets = None
        valid = []
        if with_pose_loss and self.pose_loss is not None:
            self.pose_loss.train(ctx.training)

            def pose_loss(x3d, x2d, w2d, K, pose_gt):
                res = self.pose_loss(x3d, x2d, w2d, K, pose_gt)
                valid.append(res.valid)
                return res.loss_mc, res.loss_reg

            pose_targets = PoseTargets(t_depth=batch.depths[:, 1:], t_K=batch.K[:, 1:], t_pose=batch.T_m2c[:, 1:],
                                       q_K=batch.K[:, 0], q_pose=batch.T_m2c[:, 0], t_mask=batch.masks[:, 1:])
        # buddies=labels.patch_cls above: the loss need not re-check them (a host sync per micro-batch)
        parts = vpog_loss(out, labels, self.weights, pose_loss, pose_targets, check_buddies=False)
        return out, labels, parts, (valid[0].float().mean() if valid else None)

    def write_debug_pictures(self, batch, ctx: StepContext) -> None:
        """`data.visualization`: the pictures of this (CPU) batch when its step is due (vpog.data.debug_pictures)."""
        if self._pictures is None:
            from pathlib import Path

            from vpog.data.debug_pictures import DebugPictureWriter, VisualizationConfig

            # only the data config's visualization section: a task with its own batches has no data sets
            section = (to_plain(self.cfg.get("data")) or {}).get("visualization")
            run_dir = Path(str(self.cfg.get("output_dir", "outputs"))) / str(self.cfg.get("run_name", "vpog"))
            self._pictures = DebugPictureWriter(from_mapping(VisualizationConfig, section, "data.visualization"),
                                                run_dir / "data_pictures", self.labels_cfg.tau_factor)
        self._pictures.maybe_write(batch, ctx.step, ctx.rank)

    def train_step(self, model: nn.Module, batch, ctx: StepContext) -> StepOutput:
        if ctx.training:
            self.write_debug_pictures(batch, ctx)
        batch = batch.to(ctx.device, non_blocking=True)
        out, labels, parts, pnp_valid = self.forward(model, batch, ctx, with_pose_loss=True)
        terms = {("loss_" + k if k in ("cls", "flow_nll", "flow_invisible", "pnp", "reg") else k): v
                 for k, v in parts.items() if k != "loss"}
        if pnp_valid is not None:
            terms["pnp_valid_frac"] = pnp_valid
        B, S = batch.batch_size, batch.num_templates
        terms["labels_seen_frac"] = _seen_fraction(labels.patch_cls)
        return StepOutput(loss=parts["loss"], terms=terms, num_samples=B, num_images=B * (S + 1),
                          num_skipped_samples=int(sum(batch.skipped.values())), outputs=(batch, labels, out))

    # -- validation ----------------------------------------------------------------------------

    def val_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = batch.to(ctx.device, non_blocking=True)
        _, labels, parts, _ = self.forward(model, batch, ctx, with_pose_loss=False)
        values = {("loss_" + k if k in ("cls", "flow_nll", "flow_invisible") else k): v.detach().float().reshape(1)
                  for k, v in parts.items() if k not in ("num_visible",)}
        if self.val_cfg.pose_metrics:
            values.update(self._pose_validator().batch_values(model, batch))
        return values

    def _pose_validator(self):
        if self._validator is None:
            from vpog.evaluation.runner import PoseValidator

            self._validator = PoseValidator.from_dataset(self.val_dataset())
        return self._validator

    def summarise_val(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {k: float(v[~torch.isnan(v)].mean()) if (~torch.isnan(v)).any() else math.nan
               for k, v in values.items() if not k.startswith("pose/")}
        pose = {k: v for k, v in values.items() if k.startswith("pose/")}
        if pose:
            from vpog.evaluation.runner import PoseValidator

            out.update(PoseValidator.summarise(pose))
        return out

    # -- images --------------------------------------------------------------------------------

    def visualise(self, batch, output: StepOutput) -> dict[str, np.ndarray]:
        """Images of the first sample and its first template (t*), with `vpog.vis`:

        - `flow_labels`: query | template | ground-truth buddies | ground-truth dense flow (black: not visible);
        - `flow_predicted`: predicted buddies (argmax of the 197 classes) | predicted dense flow on the
          ground-truth buddies, where the labels say the pixel is visible;
        - `correspondences`: query-template matches from the labels (top) and from the predicted buddies
          (bottom).
        """
        from vpog import vis
        from vpog.geometry import GRID_SIZE, PATCH_SIZE

        vb, labels, out = output.outputs
        G, P = GRID_SIZE, PATCH_SIZE
        q_img, t_img = vb.images[0, 0], vb.images[0, 1]
        cls_gt = labels.patch_cls[0, 0]
        flow_gt, visible = labels.dense_flow[0, 0], labels.dense_visible[0, 0]
        cls_pred = out.predicted_cls()[0, 0].reshape(G, G)
        flow_pred = out.flow[0, 0].detach().float().reshape(G, G, P, P, 2)
        gt_pairs = vis.label_correspondences(cls_gt, flow_gt, visible, max_pairs=32, pixels_per_patch=2)
        pred_pairs = vis.label_correspondences(cls_pred, max_pairs=32)
        return {
            "flow_labels": vis.tile_images([q_img, t_img, vis.patch_cls_image(cls_gt),
                                            vis.dense_flow_image(flow_gt, visible)]),
            "flow_predicted": vis.tile_images([vis.patch_cls_image(cls_pred),
                                               vis.dense_flow_image(flow_pred, visible)]),
            "correspondences": vis.tile_images([vis.draw_correspondences(q_img, t_img, *gt_pairs),
                                                vis.draw_correspondences(q_img, t_img, *pred_pairs)], ncols=1),
        }


def _seen_fraction(patch_cls: torch.Tensor) -> torch.Tensor:
    """Share of (template, query patch) pairs with a buddy (0..195) among those with a label (>= 0)."""
    from vpog.geometry import NUM_PATCHES

    labelled = (patch_cls >= 0).float().sum().clamp_min(1)
    return ((patch_cls >= 0) & (patch_cls < NUM_PATCHES)).float().sum() / labelled
