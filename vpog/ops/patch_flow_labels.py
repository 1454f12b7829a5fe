"""Patch-local flow labels with visibility: the supervision of VPOG (docs/conventions.md §4).

For every (template s, query patch i) pair of a batch, computed on the tensors' device:

- ``patch_cls[s, i]``: the template patch ("buddy") that sees the 3D point under query patch i's
  anchor pixel, ``-1`` when the query has no object depth at the anchor, ``NP`` (196) when the
  point is not visible in the template ("unseen");
- ``coarse_flow[s, i]``: ``(centre(buddy) - centre(i)) / 16``, 0 unless there is a buddy;
- ``dense_flow[s, i, v, u]``: where template pixel ``p' = (16 jx + u, 16 jy + v)`` of buddy patch
  ``j`` lands in the query, relative to query patch i's centre, in units of patches; and
- ``dense_visible[s, i, v, u]``: whether that template pixel is visible in the query.

Math, for query camera ``(K_q, T_q)``, template camera ``(K_s, T_s)``, depths ``D`` (metres, z of
the camera frame, 0 = empty), masks ``M`` and depth tolerance ``tau``::

    X  = T_s T_q^-1 backproject(a_i, D_q(a_i), K_q),   p = project(K_s, X)       (anchor -> template)
    Y  = T_q T_s^-1 backproject(p', D_s(p'), K_s),     r = project(K_q, Y)       (template -> query)
    buddy(i)      = patch containing round(p)   if X_z > 0, round(p) in the image, M_s(round p),
                                                D_s(round p) > 0 and |D_s(round p) - X_z| <= tau
    dense_visible = 1                           if buddy exists, M_s(p') and D_s(p') > 0, Y_z > 0,
                                                round(r) in the image, M_q(round r),
                                                D_q(round r) > 0 and |D_q(round r) - Y_z| <= tau
    dense_flow    = (r - centre(i)) / 16        where dense_visible, else 0

Exact rules (the reference and the Triton kernel implement the same ones):

- Pixel ``(u, v)`` = (column, row); integer coordinates are pixel centres. Patch ``(iy, ix)``
  covers pixels ``u in [16 ix, 16 ix + 15]``, ``v in [16 iy, 16 iy + 15]``, its centre is
  ``(16 ix + 7.5, 16 iy + 7.5)`` and its anchor pixel ``(16 ix + 8, 16 iy + 8)``; ``i = GW iy + ix``.
- ``round(p) = floor(p + 0.5)`` per coordinate, so ties go up: 15.5 -> 16, -0.5 -> 0.
- "p in the image" means ``0 <= round(p_u) <= W - 1`` and ``0 <= round(p_v) <= H - 1``, i.e.
  ``p in [-0.5, W - 0.5) x [-0.5, H - 0.5)``; NaN or infinite coordinates are outside.
- The buddy is the patch containing ``round(p)``: ``(round(p_v) // 16) * GW + round(p_u) // 16``.
- Points with ``z <= 0`` (behind or on the camera plane) are never seen or visible.
- The depth test is ``|D - z| <= tau`` (inclusive), with ``tau`` per sample (default in the data
  pipeline: 0.02 x object diameter).

Image size: the patch size is fixed at 16 px; H and W may be any multiples of 16 (224 gives the
14 x 14 grid of docs/conventions.md §1, so ``NP = 196`` and unseen = 196). Templates and query share H, W. The
grid is ``GH = H / 16`` by ``GW = W / 16``; the unseen class is always ``NP = GH * GW``.

Outputs are labels: not differentiable, computed under ``torch.no_grad``.

Reference path (below): about 25 float32 elementwise passes over the B x S x NP x 256 template
pixels and three gathers, each pass reading and writing ~40 MB at B = 32, S = 6, 224 x 224.
The Triton kernel (``vpog.kernels.patch_flow_labels``) reads each input once per use through
caches and writes every output element once (~87 MB at that size).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vpog._backend import register_op, select_backend
from vpog.geometry import PATCH_SIZE, backproject, check_rigid, invert_pose, project, transform_points

register_op("patch_flow_labels", backends=("reference", "triton"), auto={"cuda": ("triton",)})

RIGID_ATOL = 1e-3  # largest |R^T R - I|, |det R - 1| or |last row - (0, 0, 0, 1)| accepted


class FlowLabels(NamedTuple):
    """Labels of a batch, docs/conventions.md §4 (G = 14 for 224 x 224 crops).

    patch_cls:     [B, S, GH, GW] int64, buddy template patch (0..NP-1), NP = unseen, -1 = ignore.
    coarse_flow:   [B, S, GH, GW, 2] float32, (u, v) buddy centre minus query patch centre, in patches.
    dense_flow:    [B, S, GH, GW, 16, 16, 2] float32, indexed [.., v, u, :] by the buddy patch's pixel;
                   (u, v) query position minus query patch centre, in patches; 0 where not visible.
    dense_visible: [B, S, GH, GW, 16, 16] bool.
    """

    patch_cls: torch.Tensor
    coarse_flow: torch.Tensor
    dense_flow: torch.Tensor
    dense_visible: torch.Tensor


class _Intermediates(NamedTuple):
    """Continuous quantities behind the reference's decisions (tests use them to find boundary cases).

    anchor_uv:   [B, S, NP, 2] p, the anchor projected into the template (pixels).
    anchor_res:  [B, S, NP] |D_s(round p) - X_z| - tau (metres; NaN where not in the image).
    pixel_uv:    [B, S, NP, 256, 2] r, buddy pixels projected into the query (pixels).
    pixel_res:   [B, S, NP, 256] |D_q(round r) - Y_z| - tau (metres; NaN where not in the image).
    """

    anchor_uv: torch.Tensor
    anchor_res: torch.Tensor
    pixel_uv: torch.Tensor
    pixel_res: torch.Tensor


# --------------------------------------------------------------------------------------------
# Input checks


def _check_inputs(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau):
    """Shape, dtype and device checks (no device sync). Returns tau as a float32 tensor [B]."""
    tensors = {"q_depth": q_depth, "q_mask": q_mask, "q_K": q_K, "q_pose": q_pose,
               "t_depth": t_depth, "t_mask": t_mask, "t_K": t_K, "t_pose": t_pose}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q_depth.dim() != 3:
        raise ValueError(f"q_depth must have shape [B, H, W], got {tuple(q_depth.shape)}")
    B, H, W = q_depth.shape
    if H % PATCH_SIZE or W % PATCH_SIZE or H == 0 or W == 0:
        raise ValueError(f"q_depth's H and W must be positive multiples of the patch size {PATCH_SIZE}, "
                         f"got H = {H}, W = {W}")
    if t_depth.dim() != 4 or t_depth.shape[0] != B or tuple(t_depth.shape[2:]) != (H, W):
        raise ValueError(f"t_depth must have shape [B, S, H, W] = [{B}, S, {H}, {W}], got {tuple(t_depth.shape)}")
    S = t_depth.shape[1]
    want = {"q_mask": (B, H, W), "q_K": (B, 3, 3), "q_pose": (B, 4, 4),
            "t_mask": (B, S, H, W), "t_K": (B, S, 3, 3), "t_pose": (B, S, 4, 4)}
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(tensors[name].shape)}")
    for name in ("q_depth", "t_depth"):
        if tensors[name].dtype != torch.float32:
            raise ValueError(f"{name} must be float32 (metres), got {tensors[name].dtype}")
    for name in ("q_mask", "t_mask"):
        if tensors[name].dtype != torch.bool:
            raise ValueError(f"{name} must be bool, got {tensors[name].dtype}")
    for name in ("q_K", "q_pose", "t_K", "t_pose"):
        if tensors[name].dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} must be float32 or float64, got {tensors[name].dtype}")
    device = q_depth.device
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{name} must be on q_depth's device {device}, got {t.device}")
    if isinstance(tau, (int, float)) and not isinstance(tau, bool):
        tau = torch.full((B,), float(tau), device=device)
    if not isinstance(tau, torch.Tensor):
        raise ValueError(f"tau must be a tensor [B] or a number, got {type(tau).__name__}")
    if tau.dim() == 0:
        tau = tau.expand(B)
    if tuple(tau.shape) != (B,):
        raise ValueError(f"tau must have shape [B] = [{B}], got {tuple(tau.shape)}")
    if not tau.dtype.is_floating_point:
        raise ValueError(f"tau must be floating point (metres), got {tau.dtype}")
    if tau.device != device:
        raise ValueError(f"tau must be on q_depth's device {device}, got {tau.device}")
    return tau.to(torch.float32)


def _rigid_error(T: torch.Tensor) -> torch.Tensor:
    """Rigidity error of T [N, 4, 4] (NaN stays NaN): max of |R^T R - I|, |det R - 1|, |row 3 - e4|."""
    R = T[:, :3, :3]
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    orth = (R.transpose(-1, -2) @ R - eye).abs().flatten(1)
    det = torch.linalg.cross(R[:, 0], R[:, 1], dim=-1).mul(R[:, 2]).sum(-1, keepdim=True)
    bottom = T[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    return torch.cat([orth, (det - 1).abs(), bottom.abs()], dim=1).amax(dim=1)


def _check_values(q_K, q_pose, t_K, t_pose, tau) -> None:
    """Pinhole intrinsics, rigid poses and positive finite tau.

    One small device-to-host copy (a single sync on CUDA) of the cameras and tau; the checks run
    on the CPU copy, so the GPU sees two launches, not one per check.
    """
    B, S = t_pose.shape[:2]
    parts = [q_K, q_pose, t_K, t_pose, tau]
    host = torch.cat([x.reshape(-1).float() for x in parts]).cpu().split([x.numel() for x in parts])
    q_K, q_pose, t_K, t_pose, tau = (h.reshape(x.shape) for h, x in zip(host, parts))
    for name, K in (("q_K", q_K), ("t_K", t_K)):
        K = K.reshape(-1, 3, 3)
        bad = ~torch.isfinite(K).flatten(1).all(1) | (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0) | (K[:, 1, 0] != 0)
        bad |= (K[:, 2] != torch.tensor([0.0, 0.0, 1.0])).any(1)
        if bad.any():
            raise ValueError(f"{name} must hold pinhole intrinsics [[fx, skew, cx], [0, fy, cy], [0, 0, 1]] "
                             f"with fx, fy > 0; {int(bad.sum())} of {len(K)} are not, e.g. {K[bad][0].tolist()}")
    for name, T in (("q_pose", q_pose), ("t_pose", t_pose)):
        err = _rigid_error(T.reshape(-1, 4, 4))
        if not bool((err <= RIGID_ATOL).all()):  # NaN errors compare False
            check_rigid(name, T, atol=RIGID_ATOL)
            raise ValueError(f"{name} is not rigid to float32 precision "
                             f"(worst deviation {float(err.nan_to_num(float('inf')).max()):.3g} > {RIGID_ATOL})")
    if not bool((torch.isfinite(tau) & (tau > 0)).all()):
        raise ValueError(f"tau must be positive and finite (metres), got {tau.tolist()}")


# --------------------------------------------------------------------------------------------
# Reference


def _grid_centres(GH: int, GW: int, device) -> torch.Tensor:
    """Patch centres (u, v) in pixels, flat index i = GW iy + ix. [GH * GW, 2] float32."""
    iy, ix = torch.meshgrid(torch.arange(GH, device=device), torch.arange(GW, device=device), indexing="ij")
    c = torch.stack([ix.reshape(-1), iy.reshape(-1)], dim=-1).float() * PATCH_SIZE
    return c + (PATCH_SIZE - 1) / 2


def _round_in_image(uv: torch.Tensor, H: int, W: int):
    """round(uv) = floor(uv + 0.5) -> (u [...] int64, v [...] int64, inside [...] bool); 0 where outside."""
    r = torch.floor(uv + 0.5)
    inside = (r[..., 0] >= 0) & (r[..., 0] <= W - 1) & (r[..., 1] >= 0) & (r[..., 1] <= H - 1)
    r = torch.where(inside[..., None], r, torch.zeros_like(r))
    return r[..., 0].long(), r[..., 1].long(), inside


def _reference_impl(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau, intermediates=True):
    """The reference computation -> (FlowLabels, _Intermediates or None). Inputs already checked."""
    B, H, W = q_depth.shape
    S = t_depth.shape[1]
    P = PATCH_SIZE
    GH, GW = H // P, W // P
    NP = GH * GW
    dev = q_depth.device
    q_K, q_pose, t_K, t_pose = (x.float() for x in (q_K, q_pose, t_K, t_pose))
    tau = tau.float()
    centres = _grid_centres(GH, GW, dev)  # [NP, 2]
    anchors = centres + 0.5  # integer pixel (16 ix + 8, 16 iy + 8)
    qd, qm = q_depth.reshape(B, H * W), q_mask.reshape(B, H * W)
    td, tm = t_depth.reshape(B, S, H * W), t_mask.reshape(B, S, H * W)

    # 1. Anchor -> template: reads 2 x B x NP query values, gathers 2 x B x S x NP template values.
    a_idx = anchors[:, 1].long() * W + anchors[:, 0].long()  # [NP]
    d_a = qd[:, a_idx]  # [B, NP]
    valid_q = qm[:, a_idx] & (d_a > 0)
    X_q = backproject(anchors, d_a, q_K)  # [B, NP, 3] query camera
    X_m = transform_points(invert_pose(q_pose), X_q)  # model frame
    X = transform_points(t_pose, X_m[:, None])  # [B, S, NP, 3] template camera
    p = project(X, t_K)  # [B, S, NP, 2]
    pu, pv, in_t = _round_in_image(p, H, W)
    t_idx = pv * W + pu
    d_t, m_t = td.gather(2, t_idx), tm.gather(2, t_idx)
    res_t = (d_t - X[..., 2]).abs() - tau[:, None, None]
    seen = valid_q[:, None] & (X[..., 2] > 0) & in_t & m_t & (d_t > 0) & (res_t <= 0)
    buddy = (pv // P) * GW + pu // P  # [B, S, NP]
    patch_cls = torch.where(seen, buddy, torch.where(valid_q[:, None], NP, -1))
    coarse = torch.where(seen[..., None], (centres[buddy] - centres) / P, 0.0)

    # 2. Buddy pixels -> query: gathers 2 x B x S x NP x 256 template and query values.
    j = torch.where(seen, buddy, 0)
    off = torch.arange(P, device=dev)
    ov, ou = torch.meshgrid(off, off, indexing="ij")  # pixel (u, v) inside a patch, row-major [v, u]
    su = ((j % GW) * P)[..., None] + ou.reshape(-1)  # [B, S, NP, 256]
    sv = ((j // GW) * P)[..., None] + ov.reshape(-1)
    s_idx = (sv * W + su).reshape(B, S, NP * P * P)
    d_s, m_s = td.gather(2, s_idx), tm.gather(2, s_idx)  # [B, S, N]
    valid_t = seen.repeat_interleave(P * P, dim=2) & m_s & (d_s > 0)
    uv_s = torch.stack([su, sv], dim=-1).reshape(B, S, NP * P * P, 2).float()
    Y_s = backproject(uv_s, d_s, t_K)  # [B, S, N, 3] template camera
    Y_m = transform_points(invert_pose(t_pose), Y_s)  # model frame
    Y = transform_points(q_pose[:, None], Y_m)  # query camera
    r = project(Y, q_K[:, None])  # [B, S, N, 2]
    ru, rv, in_q = _round_in_image(r, H, W)
    q_idx = (rv * W + ru).reshape(B, S * NP * P * P)
    d_q = qd.gather(1, q_idx).reshape(B, S, NP * P * P)
    m_q = qm.gather(1, q_idx).reshape(B, S, NP * P * P)
    res_q = (d_q - Y[..., 2]).abs() - tau[:, None, None]
    visible = valid_t & (Y[..., 2] > 0) & in_q & m_q & (d_q > 0) & (res_q <= 0)
    r = r.reshape(B, S, NP, P * P, 2)
    visible = visible.reshape(B, S, NP, P * P)
    flow = torch.where(visible[..., None], (r - centres[:, None]) / P, 0.0)

    labels = FlowLabels(
        patch_cls=patch_cls.reshape(B, S, GH, GW),
        coarse_flow=coarse.reshape(B, S, GH, GW, 2),
        dense_flow=flow.reshape(B, S, GH, GW, P, P, 2),
        dense_visible=visible.reshape(B, S, GH, GW, P, P),
    )
    if not intermediates:
        return labels, None
    inter = _Intermediates(
        anchor_uv=p,
        anchor_res=torch.where(in_t, res_t, float("nan")),
        pixel_uv=r,
        pixel_res=torch.where(in_q, res_q, float("nan")).reshape(B, S, NP, P * P),
    )
    return labels, inter


def patch_flow_labels_reference(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau) -> FlowLabels:
    """Vectorised PyTorch reference of `patch_flow_labels` (float32, no Python loops over samples).

    Inputs as `patch_flow_labels`, unchecked; tau [B] float tensor or a number.
    """
    tau = torch.as_tensor(tau, dtype=torch.float32, device=q_depth.device).expand(q_depth.shape[0])
    with torch.no_grad():
        return _reference_impl(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau, False)[0]


# --------------------------------------------------------------------------------------------
# Dispatcher


def patch_flow_labels(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau, backend="auto", *,
                      check_poses: bool = True) -> FlowLabels:
    """Patch-local flow labels with visibility (docs/conventions.md §4), batched on the tensors' device.

    Args:
        q_depth: query depth, z in the query camera frame, metres, 0 = empty. [B, H, W] float32.
        q_mask: query visible mask (mask_visib). [B, H, W] bool.
        q_K: query crop intrinsics, pixels. [B, 3, 3] float32 (float64 accepted).
        q_pose: query T_m2c, metres. [B, 4, 4] float32 (float64 accepted).
        t_depth, t_mask, t_K, t_pose: the same for the S templates. [B, S, ...].
        tau: depth tolerance, metres. [B] float tensor, or a number for every sample.
        backend: "auto" (Triton on CUDA, reference on CPU), "reference" or "triton"
            ("triton" on CPU tensors needs TRITON_INTERPRET=1).
        check_poses: check that K are pinhole intrinsics, poses rigid and tau positive (one small
            device-to-host copy, a sync on CUDA). The trainer may switch it off once its data is
            known to be good; shape, dtype and device checks always run (they cost no sync).

    H and W must be multiples of 16 (224 in VPOG). Returns FlowLabels (see its docstring).
    Raises ValueError naming the argument on bad shapes, dtypes, devices, intrinsics, non-rigid
    poses or tau.
    """
    tau = _check_inputs(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau)
    if check_poses:
        _check_values(q_K, q_pose, t_K, t_pose, tau)
    choice = select_backend("patch_flow_labels", backend, q_depth.device)
    if choice == "reference":
        return patch_flow_labels_reference(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau)
    from vpog.kernels.patch_flow_labels import patch_flow_labels_fwd  # "triton": needs triton

    with torch.no_grad():
        out = patch_flow_labels_fwd(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau,
                                    patch_size=PATCH_SIZE)
    return FlowLabels(*out)
