"""Pose inference on an unseen object: choose a template group, predict flow, solve PnP hypotheses.

For each query crop of an object with templates t_0..t_{V-1} (docs/conventions.md §2: no in-plane variation):

1. Groups. The group centred at template c is c and its S - 1 nearest templates by viewing
   direction (as training's positives: `t*` and the S_p - 1 nearest to it), with `d_ref = d_c` and
   the chart axes of c's camera (docs/conventions.md §3, §5).
2. Scoring. The network scores each candidate group: a template's score is the mean, over query
   patches on the query mask, of the probability that the patch is visible in the template,
   1 - p(unseen) (`template_score="visible"`: the expected share of the query seen by the
   template), or of the most likely buddy's probability (`"buddy"`; softmax over the 197 classes);
   the group's score is the mean over its templates (`group_score="mean"`) or its centre's. The best
   group wins; its centre is the retrieved template and `d_ref`. Candidates are every template, or
   (`num_candidates > 0`) a farthest-point subset refined around the best one.
3. Correspondences. Buddies, dense flow and w2d = scale / b (times the buddy probability) of the
   chosen group -> x3d, x2d, w2d (`vpog.evaluation.correspondences`, docs/conventions.md §4, §6).
4. Hypotheses. EPro-PnP's solver (random-sample init + LM) on all correspondences, on each
   template's alone, and LM from the nearest-template pose; every hypothesis is scored by the robust
   cost on *all* correspondences with one Huber threshold, and the cheapest is kept.

The "nearest template" baseline (`template_pose`) is the retrieved template's pose moved to the query:
the template's rotation turned so that its line of sight to the object passes through the query's
object position, with the position and depth from the mask boxes and areas (no flow, no PnP).

The encoder runs once per template and once per query; only the group attention and heads run per
candidate group (the same computation as `VPOG.forward`, checked by the tests).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch

from vpog.evaluation.correspondences import Correspondences, correspondences_from_output
from vpog.geometry import (
    CROP_SIZE,
    NUM_PATCHES,
    matrix_to_pose_vector,
    patch_anchors,
    pose_vector_to_matrix,
    viewing_direction,
)
from vpog.model.s2rope_positions import tangent_chart
from vpog.model.vpog import VPOGOutput, unwrap_model
from vpog.ops.pnp_cost import pnp_cost
from vpog.ops.pnp_solve import pnp_solve

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class InferenceConfig:
    """How poses are estimated (mirrored by the `inference` section of `vpog/config/evaluate.yaml`)."""

    group_size: int = 4
    """Templates per group S (training's positives: num_positive_templates)."""
    num_candidates: int = 0
    """Candidate group centres scored per query; 0 = every template (exhaustive)."""
    refine_candidates: int = 8
    """With num_candidates > 0: neighbours of the best coarse centre scored in a second pass."""
    template_score: str = "visible"
    """"visible": mean over query patches of 1 - p(unseen); "buddy": of the top buddy's probability."""
    group_score: str = "mean"
    """"mean" (over the group's templates) or "centre" (the centre template's score)."""
    candidate_batch: int = 64
    """Groups per forward pass of the group attention and heads."""
    max_points: int = 1024
    """Correspondences per query given to PnP."""
    pixels_per_patch: int = 16
    """At most this many pixels per (template, query patch) pair."""
    weight_by_probability: bool = True
    """Multiply w2d by the buddy's classification probability."""
    min_probability: float = 0.0
    """Drop (template, query patch) pairs whose buddy probability is lower."""
    drop_unseen: bool = True
    """Drop (template, query patch) pairs whose most likely class is "unseen"; False keeps their best
    template patch (weighted by its probability when weight_by_probability)."""
    pnp_iter: int = 10
    """LM iterations of every hypothesis."""
    init_proposals: int = 64
    """Random-sample init proposals (EPro-PnP RSLMSolver)."""
    per_template_hypotheses: bool = True
    """Also solve each template's correspondences alone."""
    template_init_hypothesis: bool = True
    """Also run LM from the nearest-template pose."""
    amp: bool = True
    """bf16 autocast for the network on CUDA (heads and PnP stay float32)."""
    seed: int = 0
    """Seed of the random-sample init and tie-breaks (results reproduce)."""

    def __post_init__(self) -> None:
        for name in ("group_size", "candidate_batch", "max_points", "pixels_per_patch", "init_proposals"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"inference.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_candidates", "refine_candidates", "pnp_iter"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"inference.{name} must be >= 0, got {getattr(self, name)}")
        if self.template_score not in ("visible", "buddy"):
            raise ValueError(f"inference.template_score must be 'visible' or 'buddy', got {self.template_score!r}")
        if self.group_score not in ("mean", "centre"):
            raise ValueError(f"inference.group_score must be 'mean' or 'centre', got {self.group_score!r}")
        if not 0.0 <= self.min_probability < 1.0:
            raise ValueError(f"inference.min_probability must be in [0, 1), got {self.min_probability}")


@dataclass
class ObjectTemplates:
    """Every template of one object, cropped to 224 x 224 as the training loader crops them."""

    obj_id: int
    images: torch.Tensor
    """[V, 3, 224, 224] float RGB in [0, 1] (not normalised)."""
    masks: torch.Tensor
    """[V, 224, 224] bool object masks."""
    depths: torch.Tensor
    """[V, 224, 224] float32 depth, metres (0 = empty)."""
    K: torch.Tensor
    """[V, 3, 3] crop intrinsics."""
    poses: torch.Tensor
    """[V, 4, 4] T_m2c, metres."""

    def __post_init__(self) -> None:
        V = self.images.shape[0] if self.images.dim() == 4 else -1
        want = {"images": (V, 3, CROP_SIZE, CROP_SIZE), "masks": (V, CROP_SIZE, CROP_SIZE),
                "depths": (V, CROP_SIZE, CROP_SIZE), "K": (V, 3, 3), "poses": (V, 4, 4)}
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"templates.{name} must have shape {list(shape)}, got "
                                 f"{tuple(getattr(self, name).shape)}")

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def dirs(self) -> torch.Tensor:
        """[V, 3] viewing directions, model frame."""
        return viewing_direction(self.poses.float())

    def to(self, device) -> ObjectTemplates:
        return ObjectTemplates(self.obj_id, self.images.to(device), self.masks.to(device),
                               self.depths.to(device), self.K.to(device), self.poses.to(device))


class PoseEstimates(NamedTuple):
    """Estimates for B queries of one object (V templates, group size S, H hypotheses)."""

    pose: torch.Tensor
    """[B, 4, 4] T_m2c of the cheapest hypothesis (the template pose where PnP had too few points)."""
    cost: torch.Tensor
    """[B] its robust cost on all correspondences (inf where PnP was not run)."""
    valid: torch.Tensor
    """[B] bool: PnP produced the pose."""
    template: torch.Tensor
    """[B] int64 retrieved template (centre of the chosen group)."""
    group: torch.Tensor
    """[B, S] int64 templates of the chosen group."""
    template_pose: torch.Tensor
    """[B, 4, 4] the nearest-template baseline pose."""
    scores: torch.Tensor
    """[B, V] group scores (NaN for centres not scored)."""
    hypothesis: torch.Tensor
    """[B] int64 index of the winning hypothesis (0 all points, 1..S per template, S + 1 template init; -1 none)."""
    num_points: torch.Tensor
    """[B] int64 correspondences used."""


# --------------------------------------------------------------------------------------------
# Network pieces


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def encode(model, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Encoder tokens of RGB images [N, 3, 224, 224] in [0, 1] -> [N, 196, C] (float32)."""
    m = unwrap_model(model)
    out = [m.encoder(m.normalize(images[i:i + batch])).float() for i in range(0, len(images), batch)]
    return torch.cat(out) if out else images.new_zeros(0, NUM_PATCHES, 0)


def group_forward(model, q_tokens: torch.Tensor, t_tokens: torch.Tensor, dirs: torch.Tensor, d_ref: torch.Tensor,
                  ref_R: torch.Tensor, with_flow: bool = True) -> VPOGOutput:
    """`VPOG.forward` after the encoder: q_tokens [G, 196, C], t_tokens [G, S, 196, C], dirs [G, S, 3],
    d_ref [G, 3], ref_R [G, 3, 3] -> VPOGOutput (flow fields empty when not with_flow)."""
    m = unwrap_model(model)
    chart = tangent_chart(dirs, d_ref, ref_R)
    q, t, unseen = m.group_attention(q_tokens, t_tokens, chart)
    logits = m.cls_head(q, t, unseen)
    used = logits[..., :NUM_PATCHES].argmax(dim=-1)
    if with_flow:
        flow, b = m.flow_head(q, t, used)
    else:
        flow = b = logits.new_zeros(0)
    return VPOGOutput(logits=logits, flow=flow, flow_b=b, buddies=used, chart=chart,
                      weight_scale=m.flow_head.log_weight_scale.float().exp())


def neighbour_groups(dirs: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Groups [C, size]: each centre first, then its nearest templates by viewing direction."""
    cos = dirs[centres] @ dirs.T  # [C, V]
    cos[torch.arange(len(centres)), centres] = 2.0  # the centre itself first
    return cos.topk(min(size, dirs.shape[0]), dim=1).indices


def farthest_point_subset(dirs: torch.Tensor, k: int) -> torch.Tensor:
    """k template indices spread over the view sphere (greedy farthest point, from template 0)."""
    V = dirs.shape[0]
    k = min(k, V)
    chosen = [0]
    dist = 1 - dirs @ dirs[0]
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, 1 - dirs @ dirs[nxt])
    return torch.tensor(chosen, device=dirs.device)


def patch_validity(masks: torch.Tensor | None, B: int, device) -> torch.Tensor:
    """[B, 196] bool: query patches whose anchor pixel is on the mask (all when no mask / empty mask)."""
    if masks is None:
        return torch.ones(B, NUM_PATCHES, dtype=torch.bool, device=device)
    a = patch_anchors(device).long()
    valid = masks[:, a[:, 1], a[:, 0]].bool()
    return torch.where(valid.any(dim=1, keepdim=True), valid, torch.ones_like(valid))


def template_scores(logits: torch.Tensor, valid: torch.Tensor, kind: str = "visible") -> torch.Tensor:
    """Per template: mean over valid query patches of 1 - p(unseen) ("visible") or of the top buddy
    probability ("buddy"). logits [G, S, 196, 197], valid [G, 196] -> [G, S]."""
    prob = logits.float().softmax(dim=-1)
    if kind == "visible":
        conf = 1 - prob[..., NUM_PATCHES]  # [G, S, 196]
    elif kind == "buddy":
        conf = prob[..., :NUM_PATCHES].amax(dim=-1)
    else:
        raise ValueError(f"kind must be 'visible' or 'buddy', got {kind!r}")
    w = valid[:, None].float()
    return (conf * w).sum(-1) / w.sum(-1).clamp_min(1)


# --------------------------------------------------------------------------------------------
# Nearest-template pose (the retrieval baseline)


def _mask_box(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (u, v) [B, 2] of the mask's box and sqrt(mask area) [B]; the whole crop for an empty mask."""
    B, H, W = masks.shape
    m = masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)
    ar_v = torch.arange(H, device=m.device, dtype=torch.float32)
    ar_u = torch.arange(W, device=m.device, dtype=torch.float32)
    big = float(max(H, W))
    v0 = torch.where(rows, ar_v, big).amin(1)
    v1 = torch.where(rows, ar_v, -1.0).amax(1)
    u0 = torch.where(cols, ar_u, big).amin(1)
    u1 = torch.where(cols, ar_u, -1.0).amax(1)
    empty = ~m.flatten(1).any(1)
    centre = torch.stack([(u0 + u1) / 2, (v0 + v1) / 2], -1)
    centre = torch.where(empty[:, None], centre.new_tensor([(W - 1) / 2, (H - 1) / 2]), centre)
    size = m.flatten(1).sum(1).float().sqrt()
    size = torch.where(empty, torch.full_like(size, float(H * W) ** 0.5), size)
    return centre, size


def _rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest rotation taking unit vectors a [B, 3] to b [B, 3] (Rodrigues). -> [B, 3, 3]."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    axis = torch.cross(a, b, dim=-1)
    s = axis.norm(dim=-1)
    c = (a * b).sum(-1)
    k = axis / s.clamp_min(1e-12)[:, None]
    zero = torch.zeros_like(s)
    Kx = torch.stack([zero, -k[:, 2], k[:, 1], k[:, 2], zero, -k[:, 0], -k[:, 1], k[:, 0], zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand_as(Kx)
    angle = torch.atan2(s, c)
    R = eye + torch.sin(angle)[:, None, None] * Kx + (1 - torch.cos(angle))[:, None, None] * (Kx @ Kx)
    return torch.where((s < 1e-9)[:, None, None] & (c > 0)[:, None, None], eye, R)


def template_pose(t_pose: torch.Tensor, t_K: torch.Tensor, t_mask: torch.Tensor, q_K: torch.Tensor,
                  q_mask: torch.Tensor) -> torch.Tensor:
    """The retrieved template's pose moved to the query crop (no flow, no PnP). -> [B, 4, 4].

    t_pose [B, 4, 4], t_K [B, 3, 3], t_mask [B, H, W]: the template; q_K, q_mask: the query crop.
    Scale rho = sqrt(query mask area / template mask area); the object origin's pixel in the query is
    the query box centre plus rho times its offset from the template box centre; depth
    z_q = z_t (f_q / f_t) / rho; the rotation is the template's, turned so that its line of sight to
    the origin becomes the query's.
    """
    T_t = t_pose.float()
    c_t, s_t = _mask_box(t_mask)
    c_q, s_q = _mask_box(q_mask)
    rho = s_q / s_t.clamp_min(1.0)
    o_t = (t_K.float() @ T_t[:, :3, 3:])[..., 0]
    o_t = o_t[:, :2] / o_t[:, 2:].clamp_min(1e-9)
    o_q = c_q + rho[:, None] * (o_t - c_t)
    f_t = (t_K[:, 0, 0] * t_K[:, 1, 1]).sqrt().float()
    f_q = (q_K[:, 0, 0] * q_K[:, 1, 1]).sqrt().float()
    z_q = T_t[:, 2, 3] * (f_q / f_t) / rho.clamp_min(1e-6)
    ray_q = torch.linalg.solve(q_K.float(), torch.cat([o_q, torch.ones_like(o_q[:, :1])], -1)[..., None])[..., 0]
    ray_t = T_t[:, :3, 3] / T_t[:, :3, 3].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    T = torch.zeros_like(T_t)
    T[:, :3, :3] = _rotation_between(ray_t, ray_q) @ T_t[:, :3, :3]
    T[:, :3, 3] = ray_q * (z_q / ray_q[:, 2])[:, None]
    T[:, 3, 3] = 1
    return T


# --------------------------------------------------------------------------------------------
# Group selection


def _score_centres(model, q_tok, valid, t_tok, templates, centres_per_query, cfg) -> torch.Tensor:
    """Scores [B, C] of the groups centred at centres_per_query [B, C]."""
    B, C = centres_per_query.shape
    dirs, poses = templates.dirs, templates.poses.float()
    flat = centres_per_query.reshape(-1)
    groups = neighbour_groups(dirs, flat, cfg.group_size)  # [B C, S]
    qi = torch.arange(B, device=flat.device).repeat_interleave(C)
    out = []
    for i in range(0, len(flat), cfg.candidate_batch):
        g, c, q = groups[i:i + cfg.candidate_batch], flat[i:i + cfg.candidate_batch], qi[i:i + cfg.candidate_batch]
        with _autocast(q_tok.device, cfg.amp):
            o = group_forward(model, q_tok[q], t_tok[g], dirs[g], dirs[c], poses[c, :3, :3], with_flow=False)
        s = template_scores(o.logits, valid[q], cfg.template_score)  # [G, S]
        out.append(s.mean(dim=1) if cfg.group_score == "mean" else s[:, 0])
    return torch.cat(out).view(B, C)


def select_groups(model, q_tok, valid, t_tok, templates: ObjectTemplates, cfg: InferenceConfig):
    """Best group per query -> (centre [B], scores [B, V] with NaN where not scored)."""
    B, V, dev = q_tok.shape[0], templates.num_views, q_tok.device
    scores = torch.full((B, V), float("nan"), device=dev)
    if cfg.num_candidates <= 0 or cfg.num_candidates >= V:
        cand = torch.arange(V, device=dev).expand(B, V)
    else:
        cand = farthest_point_subset(templates.dirs, cfg.num_candidates).expand(B, -1)
    scores.scatter_(1, cand, _score_centres(model, q_tok, valid, t_tok, templates, cand, cfg))
    if 0 < cfg.num_candidates < V and cfg.refine_candidates > 0:
        best = scores.nan_to_num(-1.0).argmax(dim=1)
        near = neighbour_groups(templates.dirs, best, cfg.refine_candidates + 1)[:, 1:]  # [B, R]
        scores.scatter_(1, near, _score_centres(model, q_tok, valid, t_tok, templates, near, cfg))
    return scores.nan_to_num(-1.0).argmax(dim=1), scores


# --------------------------------------------------------------------------------------------
# PnP hypotheses


def _huber_delta(x2d: torch.Tensor, w2d: torch.Tensor, used: torch.Tensor, rel: float = 0.5) -> torch.Tensor:
    """EPro-PnP's adaptive Huber threshold over the used points only (padding excluded). -> [B]."""
    u = used.float()[..., None]
    n = u.sum(1).clamp_min(2)
    mean = (x2d * u).sum(1) / n
    var = (((x2d - mean[:, None]) ** 2) * u).sum(1) / (n - 1)
    w_mean = (w2d * u).sum((1, 2)) / (2 * n[:, 0])
    return (rel * w_mean * var.sum(-1).sqrt()).clamp_min(1e-6)


def solve_hypotheses(corr: Correspondences, q_K: torch.Tensor, init_pose: torch.Tensor, S: int,
                     cfg: InferenceConfig):
    """PnP hypotheses and the cheapest by cost on all points -> (pose [B, 4, 4], cost [B], valid [B], index [B])."""
    B, N = corr.template.shape
    dev = q_K.device
    used = corr.template >= 0
    delta = _huber_delta(corr.x2d, corr.w2d, used)
    K = q_K.float()
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    kw = dict(num_iter=cfg.pnp_iter, delta=delta, init_proposals=cfg.init_proposals, generator=gen)
    poses, valids = [], []
    res = pnp_solve(corr.x3d, corr.x2d, corr.w2d, K, **kw)
    poses.append(res.pose)
    valids.append(res.valid & (used.sum(1) >= 4))
    if cfg.per_template_hypotheses and S > 1:
        sel = torch.arange(S, device=dev)[:, None, None] == corr.template[None]  # [S, B, N]
        w = (corr.w2d[None] * sel[..., None]).reshape(S * B, N, 2)
        rep = lambda t: t[None].expand(S, *t.shape).reshape(S * B, *t.shape[1:])  # noqa: E731
        kw_s = dict(kw, delta=delta.repeat(S))
        r = pnp_solve(rep(corr.x3d), rep(corr.x2d), w, rep(K), **kw_s)
        poses += list(r.pose.view(S, B, 7))
        valids += list((r.valid & (sel.sum(-1).reshape(S * B) >= 4)).view(S, B))
    if cfg.template_init_hypothesis:
        r = pnp_solve(corr.x3d, corr.x2d, corr.w2d, K, pose_init=matrix_to_pose_vector(init_pose.float()), **kw)
        poses.append(r.pose)
        valids.append(r.valid & (used.sum(1) >= 4))
    P = torch.stack(poses)  # [H, B, 7]
    ok = torch.stack(valids)
    cost = pnp_cost(P, corr.x3d, corr.x2d, corr.w2d, K, delta)
    cost = torch.where(ok & torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
    best_cost, best = cost.min(dim=0)
    pose = pose_vector_to_matrix(P[best, torch.arange(B, device=dev)])
    valid = torch.isfinite(best_cost)
    pose = torch.where(valid[:, None, None], pose, init_pose.float())
    return pose, best_cost, valid, torch.where(valid, best, -1)


# --------------------------------------------------------------------------------------------
# Everything


@torch.no_grad()
def estimate_poses(model, images: torch.Tensor, masks: torch.Tensor | None, K: torch.Tensor,
                   templates: ObjectTemplates, cfg: InferenceConfig | None = None,
                   template_tokens: torch.Tensor | None = None) -> PoseEstimates:
    """Poses of B query crops of one object.

    images: [B, 3, 224, 224] RGB in [0, 1]; masks: [B, 224, 224] bool (visible object mask) or None;
    K: [B, 3, 3] query crop intrinsics; templates: that object's templates on the same device.
    template_tokens: `encode(model, templates.images)` when already computed (one per object).
    """
    cfg = cfg or InferenceConfig()
    B = images.shape[0]
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, CROP_SIZE, CROP_SIZE):
        raise ValueError(f"images must have shape [B, 3, {CROP_SIZE}, {CROP_SIZE}], got {tuple(images.shape)}")
    if tuple(K.shape) != (B, 3, 3):
        raise ValueError(f"K must have shape [B, 3, 3] = [{B}, 3, 3], got {tuple(K.shape)}")
    if masks is not None and tuple(masks.shape) != (B, CROP_SIZE, CROP_SIZE):
        raise ValueError(f"masks must have shape [B, {CROP_SIZE}, {CROP_SIZE}], got {tuple(masks.shape)}")
    dev = images.device
    model_was_training = unwrap_model(model).training
    unwrap_model(model).eval()
    try:
        with _autocast(dev, cfg.amp):
            t_tok = template_tokens if template_tokens is not None else encode(model, templates.images)
            q_tok = encode(model, images)
        valid = patch_validity(masks, B, dev)
        centre, scores = select_groups(model, q_tok, valid, t_tok, templates, cfg)
        group = neighbour_groups(templates.dirs, centre, cfg.group_size)  # [B, S]
        S = group.shape[1]
        dirs, poses = templates.dirs, templates.poses.float()
        with _autocast(dev, cfg.amp):
            out = group_forward(model, q_tok, t_tok[group], dirs[group], dirs[centre], poses[centre, :3, :3])
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        corr = correspondences_from_output(
            out, templates.depths[group], templates.masks[group], templates.K[group], poses[group],
            max_points=cfg.max_points, pixels_per_patch=cfg.pixels_per_patch,
            weight_by_probability=cfg.weight_by_probability, min_probability=cfg.min_probability,
            drop_unseen=cfg.drop_unseen, generator=gen)
        q_masks = masks if masks is not None else torch.ones(B, CROP_SIZE, CROP_SIZE, dtype=torch.bool, device=dev)
        base = template_pose(poses[centre], templates.K[centre], templates.masks[centre], K, q_masks)
        pose, cost, ok, hyp = solve_hypotheses(corr, K, base, S, cfg)
    finally:
        unwrap_model(model).train(model_was_training)
    if not bool(ok.all()):
        log.debug("PnP produced no valid pose for %d of %d queries", int((~ok).sum()), B)
    return PoseEstimates(pose=pose, cost=cost, valid=ok, template=centre, group=group, template_pose=base,
                         scores=scores, hypothesis=hyp, num_points=corr.count)
