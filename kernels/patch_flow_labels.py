"""Triton kernel of `vpog.ops.patch_flow_labels`: all four label tensors in one pass.

Math (docs/conventions.md §4, rules in `vpog/ops/patch_flow_labels.py`): for query patch i with anchor a_i,

    X = T_s T_q^-1 backproject(a_i, D_q(a_i), K_q),  p = project(K_s, X)  -> buddy j or unseen / ignore
    Y = T_q T_s^-1 backproject(p', D_s(p'), K_s),    r = project(K_q, Y)  for the 256 pixels p' of j
    dense_flow = (r - centre(i)) / 16 where visible (depth test |D_q(round r) - Y_z| <= tau), else 0.

One program handles BLOCK_P query patches of one (sample, template) pair. Both steps are the same
test (`_seen_by`, through the camera chain `_transfer`), in opposite directions: the anchors' query
depth and mask, projected into the template and checked there, give the buddies; the buddies'
16 x 16 template pixels, as a [BLOCK_P, 256] tile, projected into the query and checked there, give
dense_visible and dense_flow. Every output element is written exactly once (non-buddy rows as
zeros), so no output needs zero-filling first.

Memory traffic at B = 32, S = 6, 224 x 224: outputs 87 MB (dense_flow 77 MB, dense_visible 10 MB);
inputs at most 56 MB (query depth + mask 8 MB, templates 48 MB; only buddy patches and the rounded
anchor projections of the templates are read, repeated reads hit L2): ~0.05 ms at 3 TB/s.
The arithmetic follows the reference op for op (backproject, inverse pose, pose, project), so
results agree to float32 rounding; decisions can differ only at exact rounding or depth-test ties.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from vpog.kernels.launch import Launch, run


@triton.jit
def _intrinsics(K):
    """fx, skew, cx, fy, cy of the pinhole matrix [[fx, skew, cx], [0, fy, cy], [0, 0, 1]] at K."""
    return tl.load(K + 0), tl.load(K + 1), tl.load(K + 2), tl.load(K + 4), tl.load(K + 5)


@triton.jit
def _pose(T):
    """R (row-major) and t of the 4 x 4 pose at T: r00, r01, r02, t0, r10, ..., r22, t2."""
    return (tl.load(T + 0), tl.load(T + 1), tl.load(T + 2), tl.load(T + 3),
            tl.load(T + 4), tl.load(T + 5), tl.load(T + 6), tl.load(T + 7),
            tl.load(T + 8), tl.load(T + 9), tl.load(T + 10), tl.load(T + 11))


@triton.jit
def _transfer(u, v, depth, K_src, T_src, T_dst, K_dst):
    """Pixel (u, v) (integers) at `depth` of the source camera, through the model frame, into the
    destination camera: backproject(K_src), T_src^-1, T_dst, project(K_dst), as the reference does.

    K_*: 3 x 3 intrinsics, T_*: 4 x 4 T_m2c (float32 pointers of this pair's cameras).
    -> (pu, pv) the projection (pixels; finite placeholders where z <= 0), z the point's depth in
    the destination camera, front: z > 0.
    """
    fx, sk, cx, fy, cy = _intrinsics(K_src)
    s00, s01, s02, s0, s10, s11, s12, s1, s20, s21, s22, s2 = _pose(T_src)
    yn = (v.to(tl.float32) - cy) / fy
    xn = (u.to(tl.float32) - cx - sk * yn) / fx
    x0 = xn * depth
    x1 = yn * depth
    x2 = depth
    i0 = -(s00 * s0 + s10 * s1 + s20 * s2)  # inverse pose [R^T, -R^T t] (camera -> model)
    i1 = -(s01 * s0 + s11 * s1 + s21 * s2)
    i2 = -(s02 * s0 + s12 * s1 + s22 * s2)
    m0 = s00 * x0 + s10 * x1 + s20 * x2 + i0  # model frame
    m1 = s01 * x0 + s11 * x1 + s21 * x2 + i1
    m2 = s02 * x0 + s12 * x1 + s22 * x2 + i2
    d00, d01, d02, d0, d10, d11, d12, d1, d20, d21, d22, d2 = _pose(T_dst)
    c0 = d00 * m0 + d01 * m1 + d02 * m2 + d0  # destination camera
    c1 = d10 * m0 + d11 * m1 + d12 * m2 + d1
    c2 = d20 * m0 + d21 * m1 + d22 * m2 + d2
    fx, sk, cx, fy, cy = _intrinsics(K_dst)
    front = c2 > 0
    cz = tl.where(front, c2, 1.0)
    xz = c0 / cz
    yz = c1 / cz
    pu = fx * xz + sk * yz + cx
    pv = fy * yz + cy
    return pu, pv, c2, front


@triton.jit
def _seen_by(u, v, ok, src_depth, src_mask, dst_depth, dst_mask, K_src, T_src, T_dst, K_dst, tau, H, W):
    """Which source pixels (u, v) (where `ok`) the destination camera sees: the source has object
    depth there, the point lands in front of the destination camera inside its image, on its mask,
    and within tau of its depth (the rules of the op module). Depth / mask pointers: this image's.

    -> (pu, pv) the projection (pixels), (iu, iv) int32 its rounding (0 where not looked up),
    valid: the source pixel has object depth, seen: all of the above.
    """
    off = v * W + u
    depth = tl.load(src_depth + off, mask=ok, other=0.0)
    m = tl.load(src_mask + off, mask=ok, other=0)
    valid = ok & (m != 0) & (depth > 0)
    pu, pv, z, front = _transfer(u, v, depth, K_src, T_src, T_dst, K_dst)
    ru = tl.floor(pu + 0.5)  # round = floor(p + 0.5): ties go up
    rv = tl.floor(pv + 0.5)
    look = valid & front & (ru >= 0) & (ru <= W - 1) & (rv >= 0) & (rv <= H - 1)
    iu = tl.where(look, ru, 0.0).to(tl.int32)
    iv = tl.where(look, rv, 0.0).to(tl.int32)
    d_off = iv * W + iu
    d_dst = tl.load(dst_depth + d_off, mask=look, other=0.0)
    m_dst = tl.load(dst_mask + d_off, mask=look, other=0)
    seen = look & (m_dst != 0) & (d_dst > 0) & (tl.abs(d_dst - z) - tau <= 0)
    return pu, pv, iu, iv, valid, seen


@triton.jit
def _patch_flow_labels_fwd_kernel(
    q_depth_ptr, q_mask_ptr, q_K_ptr, q_pose_ptr,
    t_depth_ptr, t_mask_ptr, t_K_ptr, t_pose_ptr, tau_ptr,
    cls_ptr, coarse_ptr, flow_ptr, vis_ptr,
    S, H, W, GW, NP, NUM_PBLOCKS,
    P: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    bs = pid // NUM_PBLOCKS
    pblock = pid - bs * NUM_PBLOCKS
    b = bs // S
    bs64 = bs.to(tl.int64)
    q_depth = q_depth_ptr + b.to(tl.int64) * H * W  # this pair's images
    q_mask = q_mask_ptr + b.to(tl.int64) * H * W
    t_depth = t_depth_ptr + bs64 * H * W
    t_mask = t_mask_ptr + bs64 * H * W
    q_K = q_K_ptr + b * 9  # cameras of this (sample, template) pair
    q_pose = q_pose_ptr + b * 16
    t_K = t_K_ptr + bs * 9
    t_pose = t_pose_ptr + bs * 16
    tau = tl.load(tau_ptr + b)

    # ---- 1. anchors of BLOCK_P query patches -> template, buddy patch ----------------------
    offs_p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP] query patch index i
    p_ok = offs_p < NP
    iy = offs_p // GW
    ix = offs_p - iy * GW
    au = ix * P + P // 2  # anchor pixel
    av = iy * P + P // 2
    _, _, pu_i, pv_i, valid_q, seen = _seen_by(au, av, p_ok, q_depth, q_mask, t_depth, t_mask,
                                               q_K, q_pose, t_pose, t_K, tau, H, W)
    jy = tl.where(seen, pv_i // P, 0)
    jx = tl.where(seen, pu_i // P, 0)
    cls = tl.where(seen, jy * GW + jx, tl.where(valid_q, NP, -1))
    row = bs64 * NP + offs_p  # [BP] flat (b, s, i)
    tl.store(cls_ptr + row, cls.to(tl.int64), mask=p_ok)
    two = tl.arange(0, 2)
    cfu = tl.where(seen, ((jx * P).to(tl.float32) + (P - 1) / 2 - ((ix * P).to(tl.float32) + (P - 1) / 2)) / P, 0.0)
    cfv = tl.where(seen, ((jy * P).to(tl.float32) + (P - 1) / 2 - ((iy * P).to(tl.float32) + (P - 1) / 2)) / P, 0.0)
    coarse = tl.where(two[None, :] == 0, cfu[:, None], cfv[:, None])  # [BP, 2]
    tl.store(coarse_ptr + row[:, None] * 2 + two[None, :], coarse, mask=p_ok[:, None])

    # ---- 2. the buddies' 16 x 16 template pixels -> query ---------------------------------
    pix = tl.arange(0, P * P)  # pixel (u, v) = (pix % P, pix // P) inside the buddy patch
    su = jx[:, None] * P + (pix % P)[None, :]  # [BP, PP]
    sv = jy[:, None] * P + (pix // P)[None, :]
    ld = seen[:, None] & (pix >= 0)[None, :]  # broadcast to the tile
    ru, rv, _, _, _, vis = _seen_by(su, sv, ld, t_depth, t_mask, q_depth, q_mask,
                                    t_K, t_pose, q_pose, q_K, tau, H, W)
    cu = (ix * P).to(tl.float32) + (P - 1) / 2  # query patch centre
    cv = (iy * P).to(tl.float32) + (P - 1) / 2
    fu = tl.where(vis, (ru - cu[:, None]) / P, 0.0)
    fv = tl.where(vis, (rv - cv[:, None]) / P, 0.0)
    out = row[:, None] * (P * P) + pix[None, :]  # [BP, PP] flat (b, s, i, v, u)
    out_ok = p_ok[:, None] & (pix >= 0)[None, :]
    tl.store(vis_ptr + out, vis.to(tl.uint8), mask=out_ok)
    flow = tl.where(two[None, None, :] == 0, fu[:, :, None], fv[:, :, None])  # [BP, PP, 2]
    tl.store(flow_ptr + out[:, :, None] * 2 + two[None, None, :], flow, mask=out_ok[:, :, None])


def patch_flow_labels_fwd(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau, *,
                          patch_size: int, block_p: int | None = None, num_warps: int = 4, launch=run):
    """Launch the kernel. Inputs as `vpog.ops.patch_flow_labels` (already checked); tau [B] float32.

    patch_size: pixels per patch side (the op passes `vpog.geometry.PATCH_SIZE`, 16), a power of two
    dividing H and W. block_p: query patches per program (a power of two). Default 4 on the GPU; 64
    for CPU tensors (the interpreter's cost is per program, so fewer, larger programs run much faster
    there). `launch` receives the kernel launch (`vpog.kernels.launch`; the default runs it).
    Returns (patch_cls, coarse_flow, dense_flow, dense_visible), shapes of `FlowLabels`.
    """
    P = patch_size
    if P < 2 or P & (P - 1):
        raise ValueError(f"patch_size must be a power of two >= 2, got {P}")
    B, H, W = q_depth.shape
    if H % P or W % P:
        raise ValueError(f"the image size {H} x {W} must be a multiple of patch_size {P}")
    S = t_depth.shape[1]
    GH, GW = H // P, W // P
    NP = GH * GW
    dev = q_depth.device
    f32 = lambda x: x.to(torch.float32).contiguous()
    q_depth, t_depth = f32(q_depth), f32(t_depth)
    q_mask = q_mask.contiguous().view(torch.uint8)
    t_mask = t_mask.contiguous().view(torch.uint8)
    q_K, q_pose, t_K, t_pose, tau = f32(q_K), f32(q_pose), f32(t_K), f32(t_pose), f32(tau)
    cls = torch.empty((B, S, GH, GW), dtype=torch.int64, device=dev)
    coarse = torch.empty((B, S, GH, GW, 2), dtype=torch.float32, device=dev)
    flow = torch.empty((B, S, GH, GW, P, P, 2), dtype=torch.float32, device=dev)
    vis = torch.empty((B, S, GH, GW, P, P), dtype=torch.uint8, device=dev)
    if B * S == 0:
        return cls, coarse, flow, vis.view(torch.bool)
    if block_p is None:
        block_p = 4 if dev.type == "cuda" else 64
    if block_p < 1 or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two, got {block_p}")
    num_pblocks = triton.cdiv(NP, block_p)
    launch(Launch(
        _patch_flow_labels_fwd_kernel, (B * S * num_pblocks,),
        (q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau, cls, coarse, flow, vis,
         S, H, W, GW, NP, num_pblocks),
        {"P": P, "BLOCK_P": block_p, "num_warps": num_warps},
    ))
    return cls, coarse, flow, vis.view(torch.bool)
