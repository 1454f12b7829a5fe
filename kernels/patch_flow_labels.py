"""Triton kernel of `vpog.ops.patch_flow_labels`: all four label tensors in one pass.

Math (docs/conventions.md §4, rules in `vpog/ops/patch_flow_labels.py`): for query patch i with anchor a_i,

    X = T_s T_q^-1 backproject(a_i, D_q(a_i), K_q),  p = project(K_s, X)  -> buddy j or unseen / ignore
    Y = T_q T_s^-1 backproject(p', D_s(p'), K_s),    r = project(K_q, Y)  for the 256 pixels p' of j
    dense_flow = (r - centre(i)) / 16 where visible (depth test |D_q(round r) - Y_z| <= tau), else 0.

One program handles BLOCK_P query patches of one (sample, template) pair: it loads the pair's
cameras (2 x 9 + 2 x 16 scalars), the anchors' query depth and mask, gathers the template at the
rounded anchor projections, then gathers the buddies' 16 x 16 template pixels as a [BLOCK_P, 256]
tile, projects them into the query, gathers the query there and writes every output element
exactly once (non-buddy rows as zeros), so no output needs zero-filling first.

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
    q_base = b.to(tl.int64) * H * W
    t_base = bs64 * H * W

    # Cameras of this (sample, template) pair: K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]].
    qk = q_K_ptr + b * 9
    q_fx = tl.load(qk + 0)
    q_sk = tl.load(qk + 1)
    q_cx = tl.load(qk + 2)
    q_fy = tl.load(qk + 4)
    q_cy = tl.load(qk + 5)
    tk = t_K_ptr + bs * 9
    t_fx = tl.load(tk + 0)
    t_sk = tl.load(tk + 1)
    t_cx = tl.load(tk + 2)
    t_fy = tl.load(tk + 4)
    t_cy = tl.load(tk + 5)
    qp = q_pose_ptr + b * 16
    qa00 = tl.load(qp + 0)
    qa01 = tl.load(qp + 1)
    qa02 = tl.load(qp + 2)
    qb0 = tl.load(qp + 3)
    qa10 = tl.load(qp + 4)
    qa11 = tl.load(qp + 5)
    qa12 = tl.load(qp + 6)
    qb1 = tl.load(qp + 7)
    qa20 = tl.load(qp + 8)
    qa21 = tl.load(qp + 9)
    qa22 = tl.load(qp + 10)
    qb2 = tl.load(qp + 11)
    tp = t_pose_ptr + bs * 16
    ta00 = tl.load(tp + 0)
    ta01 = tl.load(tp + 1)
    ta02 = tl.load(tp + 2)
    tb0 = tl.load(tp + 3)
    ta10 = tl.load(tp + 4)
    ta11 = tl.load(tp + 5)
    ta12 = tl.load(tp + 6)
    tb1 = tl.load(tp + 7)
    ta20 = tl.load(tp + 8)
    ta21 = tl.load(tp + 9)
    ta22 = tl.load(tp + 10)
    tb2 = tl.load(tp + 11)
    tau = tl.load(tau_ptr + b)
    # Inverse poses [R^T, -R^T t] (camera -> model).
    qi0 = -(qa00 * qb0 + qa10 * qb1 + qa20 * qb2)
    qi1 = -(qa01 * qb0 + qa11 * qb1 + qa21 * qb2)
    qi2 = -(qa02 * qb0 + qa12 * qb1 + qa22 * qb2)
    ti0 = -(ta00 * tb0 + ta10 * tb1 + ta20 * tb2)
    ti1 = -(ta01 * tb0 + ta11 * tb1 + ta21 * tb2)
    ti2 = -(ta02 * tb0 + ta12 * tb1 + ta22 * tb2)

    # ---- 1. anchors of BLOCK_P query patches -> template, buddy patch ----------------------
    offs_p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP] query patch index i
    p_ok = offs_p < NP
    iy = offs_p // GW
    ix = offs_p - iy * GW
    au = ix * P + P // 2
    av = iy * P + P // 2
    a_off = av * W + au
    d_a = tl.load(q_depth_ptr + q_base + a_off, mask=p_ok, other=0.0)
    m_a = tl.load(q_mask_ptr + q_base + a_off, mask=p_ok, other=0)
    valid_q = p_ok & (m_a != 0) & (d_a > 0)
    yn = (av.to(tl.float32) - q_cy) / q_fy
    xn = (au.to(tl.float32) - q_cx - q_sk * yn) / q_fx
    x0 = xn * d_a
    x1 = yn * d_a
    x2 = d_a
    m0 = qa00 * x0 + qa10 * x1 + qa20 * x2 + qi0  # model frame
    m1 = qa01 * x0 + qa11 * x1 + qa21 * x2 + qi1
    m2 = qa02 * x0 + qa12 * x1 + qa22 * x2 + qi2
    c0 = ta00 * m0 + ta01 * m1 + ta02 * m2 + tb0  # template camera
    c1 = ta10 * m0 + ta11 * m1 + ta12 * m2 + tb1
    c2 = ta20 * m0 + ta21 * m1 + ta22 * m2 + tb2
    front = c2 > 0
    cz = tl.where(front, c2, 1.0)
    xz = c0 / cz
    yz = c1 / cz
    pu = t_fx * xz + t_sk * yz + t_cx
    pv = t_fy * yz + t_cy
    pu_r = tl.floor(pu + 0.5)  # round = floor(p + 0.5): ties go up
    pv_r = tl.floor(pv + 0.5)
    in_t = front & (pu_r >= 0) & (pu_r <= W - 1) & (pv_r >= 0) & (pv_r <= H - 1)
    pu_i = tl.where(in_t, pu_r, 0.0).to(tl.int32)
    pv_i = tl.where(in_t, pv_r, 0.0).to(tl.int32)
    look = valid_q & in_t
    t_off = pv_i * W + pu_i
    d_t = tl.load(t_depth_ptr + t_base + t_off, mask=look, other=0.0)
    m_t = tl.load(t_mask_ptr + t_base + t_off, mask=look, other=0)
    seen = look & (m_t != 0) & (d_t > 0) & (tl.abs(d_t - c2) - tau <= 0)
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
    s_off = sv * W + su
    ld = seen[:, None] & (pix >= 0)[None, :]  # broadcast to the tile
    d_s = tl.load(t_depth_ptr + t_base + s_off, mask=ld, other=0.0)
    m_s = tl.load(t_mask_ptr + t_base + s_off, mask=ld, other=0)
    valid_t = ld & (m_s != 0) & (d_s > 0)
    yn2 = (sv.to(tl.float32) - t_cy) / t_fy
    xn2 = (su.to(tl.float32) - t_cx - t_sk * yn2) / t_fx
    y0 = xn2 * d_s
    y1 = yn2 * d_s
    y2 = d_s
    n0 = ta00 * y0 + ta10 * y1 + ta20 * y2 + ti0  # model frame
    n1 = ta01 * y0 + ta11 * y1 + ta21 * y2 + ti1
    n2 = ta02 * y0 + ta12 * y1 + ta22 * y2 + ti2
    e0 = qa00 * n0 + qa01 * n1 + qa02 * n2 + qb0  # query camera
    e1 = qa10 * n0 + qa11 * n1 + qa12 * n2 + qb1
    e2 = qa20 * n0 + qa21 * n1 + qa22 * n2 + qb2
    front2 = e2 > 0
    ez = tl.where(front2, e2, 1.0)
    xz2 = e0 / ez
    yz2 = e1 / ez
    ru = q_fx * xz2 + q_sk * yz2 + q_cx
    rv = q_fy * yz2 + q_cy
    ru_r = tl.floor(ru + 0.5)
    rv_r = tl.floor(rv + 0.5)
    in_q = valid_t & front2 & (ru_r >= 0) & (ru_r <= W - 1) & (rv_r >= 0) & (rv_r <= H - 1)
    ru_i = tl.where(in_q, ru_r, 0.0).to(tl.int32)
    rv_i = tl.where(in_q, rv_r, 0.0).to(tl.int32)
    r_off = rv_i * W + ru_i
    d_q = tl.load(q_depth_ptr + q_base + r_off, mask=in_q, other=0.0)
    m_q = tl.load(q_mask_ptr + q_base + r_off, mask=in_q, other=0)
    vis = in_q & (m_q != 0) & (d_q > 0) & (tl.abs(d_q - e2) - tau <= 0)
    cu = (ix * P).to(tl.float32) + (P - 1) / 2  # query patch centre
    cv = (iy * P).to(tl.float32) + (P - 1) / 2
    fu = tl.where(vis, (ru - cu[:, None]) / P, 0.0)
    fv = tl.where(vis, (rv - cv[:, None]) / P, 0.0)
    out = row[:, None] * (P * P) + pix[None, :]  # [BP, PP] flat (b, s, i, v, u)
    out_ok = p_ok[:, None] & (pix >= 0)[None, :]
    tl.store(vis_ptr + out, vis.to(tl.uint8), mask=out_ok)
    flow = tl.where(two[None, None, :] == 0, fu[:, :, None], fv[:, :, None])  # [BP, PP, 2]
    tl.store(flow_ptr + out[:, :, None] * 2 + two[None, None, :], flow, mask=out_ok[:, :, None])


def patch_flow_labels_fwd(q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau,
                          block_p: int | None = None, num_warps: int = 4):
    """Launch the kernel. Inputs as `vpog.ops.patch_flow_labels` (already checked); tau [B] float32.

    block_p: query patches per program (a power of two). Default 4 on the GPU; 64 for CPU tensors
    (the interpreter's cost is per program, so fewer, larger programs run much faster there).
    Returns (patch_cls, coarse_flow, dense_flow, dense_visible), shapes of `FlowLabels`.
    """
    P = 16
    B, H, W = q_depth.shape
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
    grid = (B * S * num_pblocks,)
    _patch_flow_labels_fwd_kernel[grid](
        q_depth, q_mask, q_K, q_pose, t_depth, t_mask, t_K, t_pose, tau,
        cls, coarse, flow, vis,
        S, H, W, GW, NP, num_pblocks,
        P=P, BLOCK_P=block_p, num_warps=num_warps,
    )
    return cls, coarse, flow, vis.view(torch.bool)
