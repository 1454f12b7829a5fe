"""Tests of vpog.ops.patch_flow_labels (docs/conventions.md §4): reference path, Triton kernel, input checks.

Scenes (ray-cast spheres and planes) and the boundary-aware comparison live in patch_flow_scenes.py.

Tolerances (float32 everywhere):
    flows, Triton vs reference .............. 1e-4 patches (same arithmetic, different rounding order)
    decisions, Triton vs reference .......... identical unless the reference's continuous value lies
                                               within 1e-3 px of a rounding tie or within 1e-5 m of
                                               the depth tolerance
    analytic flows ........................... 1e-4 patches (1.6e-3 px)
"""

from __future__ import annotations

import math

import pytest
import torch
from patch_flow_scenes import (
    assert_matches_reference,
    make_K,
    near_tie,
    plane_scene,
    random_scene,
    rot_z,
    to,
)
from synthetic_sets import tiny_set_settings

from vpog._backend import triton_interpreter, triton_status
from vpog.config_schema import from_mapping
from vpog.ops import FlowLabels, patch_flow_labels, patch_flow_labels_reference

P = 16
HAS_CUDA = torch.cuda.is_available()
triton_cpu = pytest.mark.skipif(
    not (triton_status()[0] and triton_interpreter()), reason="needs triton with TRITON_INTERPRET=1"
)
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


# --------------------------------------------------------------------------------------------
# Reference: shapes, realism of the random scenes


def test_reference_shapes_and_label_mix():
    scene = random_scene(2, 4, seed=1)
    out = patch_flow_labels(**scene, backend="reference")
    assert out.patch_cls.shape == (2, 4, 14, 14) and out.patch_cls.dtype == torch.int64
    assert out.coarse_flow.shape == (2, 4, 14, 14, 2) and out.coarse_flow.dtype == torch.float32
    assert out.dense_flow.shape == (2, 4, 14, 14, 16, 16, 2) and out.dense_flow.dtype == torch.float32
    assert out.dense_visible.shape == (2, 4, 14, 14, 16, 16) and out.dense_visible.dtype == torch.bool
    cls = out.patch_cls
    # a realistic mix: ignored background, buddies, unseen (back side / occlusion)
    assert (cls == -1).float().mean() > 0.2
    assert ((cls >= 0) & (cls < 196)).sum() > 50
    assert (cls == 196).sum() > 20
    # the query mask decides the ignore label exactly
    anchors_mask = scene["q_mask"][:, 8::16, 8::16] & (scene["q_depth"][:, 8::16, 8::16] > 0)
    assert torch.equal(cls[:, 0] == -1, ~anchors_mask)
    # non-buddy pairs are all zero; buddies have integer coarse flow = grid offset
    no_buddy = (cls < 0) | (cls == 196)
    assert (out.dense_flow[no_buddy] == 0).all() and not out.dense_visible[no_buddy].any()
    assert (out.coarse_flow[no_buddy] == 0).all()
    iy, ix = torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij")
    bud = cls.clamp(0, 195)
    want = torch.stack([bud % 14 - ix, bud // 14 - iy], dim=-1).float()
    assert torch.equal(out.coarse_flow[~no_buddy], want[~no_buddy])
    # most buddy pixels that are visible stay close to their query patch
    vis = out.dense_visible
    assert vis.sum() > 1000
    assert (out.dense_flow[vis].abs().amax(-1) <= 1.5).float().mean() > 0.5


def test_reference_reprojection_consistency():
    """Where visible, the template pixel's 3D point lands on query object pixels at the same depth."""
    scene = random_scene(2, 3, seed=2, occluders=False)
    out = patch_flow_labels(**scene, backend="reference")
    B, S = 2, 3
    cls = out.patch_cls
    centres = torch.stack(torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij")[::-1], -1) * 16 + 7.5
    r = centres[None, None, :, :, None, None, :] + 16 * out.dense_flow  # query pixels
    vis = out.dense_visible
    ru, rv = (r[..., 0] + 0.5).floor().long(), (r[..., 1] + 0.5).floor().long()
    b_idx = torch.arange(B)[:, None, None, None, None, None].expand_as(ru)
    assert scene["q_mask"][b_idx[vis], rv[vis], ru[vis]].all()
    # and the buddy patch is where the anchor projects (the same patch for both directions of
    # an identity-like pair is checked in the analytic tests)
    assert ((cls >= 0) & (cls < 196)).any()
    assert vis.float().mean() > 0.01 * S / 3


# --------------------------------------------------------------------------------------------
# Analytic cases (run on the reference and, under the interpreter, on the Triton kernel)


def _backends():
    out = ["reference"]
    if triton_status()[0] and (HAS_CUDA or triton_interpreter()):
        out.append("triton")
    return out


def _dev(backend):
    return "cuda" if HAS_CUDA and backend == "triton" else "cpu"


def _grid(H=224, W=224):
    iy, ix = torch.meshgrid(torch.arange(H // 16), torch.arange(W // 16), indexing="ij")
    v, u = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    return iy, ix, u, v


@pytest.mark.parametrize("backend", _backends())
def test_template_equals_query(backend):
    """Every buddy is the patch itself; flow = pixel offset from the patch centre, visible = valid."""
    scene = random_scene(1, 1, seed=3, occluders=False)
    scene["q_K"][:, 0, 1] = 3.0  # a little skew exercises the full K
    scene.update(t_depth=scene["q_depth"][:, None].clone(), t_mask=scene["q_mask"][:, None].clone(),
                 t_K=scene["q_K"][:, None].clone(), t_pose=scene["q_pose"][:, None].clone())
    # holes in the query mask only (depth unchanged) and in the query depth only; anchors are at
    # rows 8 + 16 k: the first hole covers some, the others none (their pixels have buddies)
    scene["q_mask"][0, 100:110, 100:140] = False
    scene["q_mask"][0, 41:47, 100:140] = False
    scene["q_depth"][0, 60:70, 100:140] = 0
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    iy, ix, u, v = _grid()
    valid = scene["q_mask"][0, 8::16, 8::16] & (scene["q_depth"][0, 8::16, 8::16] > 0)
    assert torch.equal(out.patch_cls[0, 0], torch.where(valid, iy * 14 + ix, -1))
    assert (out.coarse_flow == 0).all()
    pix_valid = (scene["q_mask"][0] & (scene["q_depth"][0] > 0)).reshape(14, 16, 14, 16).permute(0, 2, 1, 3)
    assert torch.equal(out.dense_visible[0, 0], pix_valid & valid[..., None, None])
    assert (~valid & scene["t_mask"][0, 0, 8::16, 8::16]).sum() >= 3  # the first hole covers anchors
    t_valid = scene["t_mask"][0, 0].reshape(14, 16, 14, 16).permute(0, 2, 1, 3)
    assert (~pix_valid & valid[..., None, None] & t_valid).sum() > 300  # pixels the holes hide
    want = torch.stack([(u - 7.5) / 16, (v - 7.5) / 16], dim=-1).expand(14, 14, 16, 16, 2)
    vis = out.dense_visible[0, 0]
    torch.testing.assert_close(out.dense_flow[0, 0][vis], want[vis], atol=1e-4, rtol=0)
    assert vis.sum() > 5000


def _check_closed_form(out, scene, to_template, to_query, H=224, W=224):
    """Compare labels with closed-form maps query px -> template px and template px -> query px."""
    iy, ix, u, v = _grid(H, W)
    GH, GW = H // 16, W // 16
    a = torch.stack([ix * 16 + 8.0, iy * 16 + 8.0], dim=-1).double()
    p = to_template(a)
    pr = (p + 0.5).floor()
    inside = (pr[..., 0] >= 0) & (pr[..., 0] <= W - 1) & (pr[..., 1] >= 0) & (pr[..., 1] <= H - 1)
    prc = pr.clamp_min(0).long()
    inside &= scene["t_mask"][0, 0, prc[..., 1].clamp(max=H - 1), prc[..., 0].clamp(max=W - 1)]
    buddy = torch.where(inside, prc[..., 1] // 16 * GW + prc[..., 0] // 16, GH * GW)
    # decisions at exact float ties are implementation-defined: allow them to differ
    assert not ((out.patch_cls[0, 0] != buddy) & ~near_tie(p, 1e-3)).any()
    buddy = out.patch_cls[0, 0]
    inside = buddy < GH * GW
    jx, jy = buddy % GW, buddy // GW
    pix = torch.stack([(jx * 16)[..., None, None] + u, (jy * 16)[..., None, None] + v], dim=-1).double()
    r = to_query(pix)
    rr = (r + 0.5).floor()
    in_image = (rr[..., 0] >= 0) & (rr[..., 0] <= W - 1) & (rr[..., 1] >= 0) & (rr[..., 1] <= H - 1)
    vis = inside[..., None, None] & in_image
    tie = near_tie(r, 1e-3)
    assert not ((out.dense_visible[0, 0] != vis) & ~tie).any()
    centre = torch.stack([ix * 16 + 7.5, iy * 16 + 7.5], dim=-1).double()[..., None, None, :]
    want = ((r - centre) / 16).float()
    m = out.dense_visible[0, 0] & vis
    torch.testing.assert_close(out.dense_flow[0, 0][m], want[m], atol=1e-4, rtol=0)
    assert m.sum() > 1000


@pytest.mark.parametrize("backend", _backends())
def test_image_plane_translation(backend):
    """Template camera translated parallel to a fronto-parallel plane: the image shifts by f t / Z."""
    H = W = 224
    q_K = make_K(1, 400.0, 111.5, 111.5)
    t_K = q_K[:, None].clone()
    q_pose = torch.eye(4)[None].clone()
    q_pose[0, 2, 3] = 0.5  # plane z = 0.5 in the query camera is the model plane z = 0
    shift = torch.tensor([37.3, -21.7], dtype=torch.float64)  # px, template = query + shift
    t_pose = q_pose[:, None].clone()
    t_pose[0, 0, :2, 3] = (shift * 0.5 / 400.0).float()
    scene = plane_scene(H, W, q_K, t_K, q_pose, t_pose, depth=0.5)
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    _check_closed_form(out, scene, lambda a: a + shift, lambda p: p - shift)


@pytest.mark.parametrize("backend", _backends())
def test_in_plane_rotation(backend):
    """Template camera rotated about the optical axis: the image rotates about the principal point."""
    H = W = 224
    c = torch.tensor([111.5, 111.5], dtype=torch.float64)
    q_K = make_K(1, 400.0, 111.5, 111.5)
    q_pose = torch.eye(4)[None].clone()
    q_pose[0, 2, 3] = 0.5
    ang = 0.6
    t_pose = (rot_z(torch.tensor(ang)) @ q_pose)[:, None]
    scene = plane_scene(H, W, q_K, q_K[:, None].clone(), q_pose, t_pose, depth=0.5)
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    Rm = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]], dtype=torch.float64)
    _check_closed_form(out, scene, lambda a: (a - c) @ Rm.T + c, lambda p: (p - c) @ Rm + c)


@pytest.mark.parametrize("backend", _backends())
def test_occluders(backend):
    """Query occluder (visible mask, or full mask + depth test) hides pixels; template occluder -> unseen."""
    scene = random_scene(1, 1, seed=4, occluders=False)
    scene.update(t_depth=scene["q_depth"][:, None].clone(), t_mask=scene["q_mask"][:, None].clone(),
                 t_K=scene["q_K"][:, None].clone(), t_pose=scene["q_pose"][:, None].clone())
    obj = scene["q_mask"][0].clone()
    box = torch.zeros(224, 224, dtype=torch.bool)
    box[60:130, 70:150] = True  # an occluder 5 cm in front of the object over this box
    occ = box & obj
    assert occ.sum() > 2000
    q_depth = scene["q_depth"].clone()
    q_depth[0][occ] -= 0.05
    iy, ix, u, v = _grid()
    for mask_kind in ("visib", "full"):
        s = dict(scene, q_depth=q_depth,
                 q_mask=(obj & ~occ)[None] if mask_kind == "visib" else obj[None].clone())
        out = patch_flow_labels(**to(s, _dev(backend)), backend=backend)
        out = FlowLabels(*(t.cpu() for t in out))
        # template pixels behind the occluder are invisible, all others of the object visible
        tpx = torch.stack([ix[..., None, None] * 16 + u.long(), iy[..., None, None] * 16 + v.long()], -1)
        behind = occ[tpx[..., 1], tpx[..., 0]]
        has_buddy = (out.patch_cls[0, 0] >= 0) & (out.patch_cls[0, 0] < 196)
        in_obj = obj[tpx[..., 1], tpx[..., 0]] & has_buddy[..., None, None]
        assert not out.dense_visible[0, 0][behind].any()
        assert out.dense_visible[0, 0][in_obj & ~behind].all()
        assert (out.dense_flow[0, 0][behind] == 0).all()
        anchor_occ = occ[8::16, 8::16]
        if mask_kind == "visib":  # the anchor's query mask is empty: ignored
            assert (out.patch_cls[0, 0][anchor_occ] == -1).all()
        else:  # the anchor sees the occluder: its 3D point is 5 cm off the template surface -> unseen
            assert (out.patch_cls[0, 0][anchor_occ] == 196).all()
    # template-side occluder (template mask still 1): anchors whose point it hides are unseen
    t_depth = scene["t_depth"].clone()
    t_depth[0, 0][occ] -= 0.05
    out = patch_flow_labels(**to(dict(scene, t_depth=t_depth), _dev(backend)), backend=backend)
    anchor_occ = occ[8::16, 8::16]
    assert anchor_occ.sum() > 5
    assert (out.patch_cls[0, 0].cpu()[anchor_occ] == 196).all()
    kept = ~anchor_occ & obj[8::16, 8::16]
    assert torch.equal(out.patch_cls[0, 0].cpu()[kept], (iy * 14 + ix)[kept])


@pytest.mark.parametrize("backend", _backends())
def test_object_leaving_the_image(backend):
    """A plane larger than both images, template at half the focal length and off-centre.

    Query anchors on the left project outside the template (unseen); buddy patches near the
    right border of the query spread over 32 query pixels, part of them outside the query image
    (invisible, zero flow).
    """
    H = W = 224
    q_K = make_K(1, 400.0, 111.5, 111.5)
    t_K = make_K(1, 200.0, 36.0, 111.5)[:, None]
    q_pose = torch.eye(4)[None].clone()
    q_pose[0, 2, 3] = 0.5
    scene = plane_scene(H, W, q_K, t_K, q_pose, q_pose[:, None].clone(), depth=0.5, bounded=False)
    assert scene["t_mask"].all()
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    c_q = torch.tensor([111.5, 111.5], dtype=torch.float64)
    c_t = torch.tensor([36.0, 111.5], dtype=torch.float64)
    _check_closed_form(out, scene, lambda a: (a - c_q) / 2 + c_t, lambda p: (p - c_t) * 2 + c_q)
    assert (out.patch_cls == 196).sum() >= 14  # the left column of query patches
    has = (out.patch_cls[0, 0] >= 0) & (out.patch_cls[0, 0] < 196)
    lost = has[..., None, None] & ~out.dense_visible[0, 0]
    assert lost.sum() > 100  # buddy pixels that land outside the query image
    assert (out.dense_flow[0, 0][lost] == 0).all()


@pytest.mark.parametrize("backend", _backends())
def test_rounding_ties_and_image_border(backend):
    """round = floor(p + 0.5) (ties go up) and p in [-0.5, W - 0.5); exact float arithmetic.

    Template 0 is the query shifted by +7.5 px in u, template 1 by -8.5 px: every projection
    lands exactly on a tie (powers of two and depth 1 make every step exact).
    """
    H, W = 64, 96  # a 4 x 6 grid: non-square sizes are allowed
    q_K = make_K(1, 256.0, 100.0, 30.0)
    t_K = torch.stack([make_K(1, 256.0, 107.5, 30.0), make_K(1, 256.0, 91.5, 30.0)], dim=1)
    q_depth = torch.ones(1, H, W)
    q_mask = torch.ones(1, H, W, dtype=torch.bool)
    pose = torch.eye(4)[None].clone()
    pose[0, 2, 3] = 1.0
    scene = dict(q_depth=q_depth, q_mask=q_mask, q_K=q_K, q_pose=torch.eye(4)[None],
                 t_depth=q_depth[:, None].repeat(1, 2, 1, 1), t_mask=q_mask[:, None].repeat(1, 2, 1, 1),
                 t_K=t_K, t_pose=torch.eye(4).expand(1, 2, 4, 4).clone(), tau=torch.tensor([0.01]))
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    assert out.patch_cls.shape == (1, 2, 4, 6)
    iy, ix = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    k = torch.arange(16)[None, None, None, :]
    for s, du, want_cls in (
        # anchor 16 ix + 8 -> 16 ix + 15.5 -> 16 (ix + 1): the next patch; the last column is outside
        (0, 7.5, torch.where(ix < 5, iy * 6 + ix + 1, 24)),
        # anchor -> 16 ix - 0.5 -> 16 ix: the same patch; ix = 0 gives -0.5 -> 0, inside
        (1, -8.5, iy * 6 + ix),
    ):
        assert torch.equal(out.patch_cls[0, s], want_cls), s
        has = (want_cls < 24)[..., None, None]
        u_t = ((want_cls % 6) * 16)[..., None, None] + k  # template pixel u'
        r = u_t - du  # query u: ties everywhere; round(r) = r + 0.5
        vis_want = (has & (r + 0.5 >= 0) & (r + 0.5 <= W - 1)).expand(4, 6, 16, 16)
        assert torch.equal(out.dense_visible[0, s], vis_want), s
        if s == 1:  # r = 95.5 = W - 0.5 rounds to W: outside
            assert not vis_want[:, 5, :, 7:].any() and vis_want[:, 5, :, :7].all()
        flow_u = ((r - (ix * 16 + 7.5)[..., None, None]) / 16).float().expand(4, 6, 16, 16)
        assert torch.equal(out.dense_flow[0, s][..., 0][vis_want], flow_u[vis_want])
        assert (out.dense_flow[0, s][..., 0][~vis_want] == 0).all()


def _patches(img, H, W):
    """[..., H, W] -> [..., GH, GW, 16, 16] (per patch, row-major pixels)."""
    return img.reshape(img.shape[:-2] + (H // 16, 16, W // 16, 16)).transpose(-3, -2)


@pytest.mark.parametrize("backend", _backends())
def test_empty_depth_and_mask_holes(backend):
    """Depth 0 is empty even when |0 - z| <= tau; mask 0 is empty even where the depth fits.

    A plane 3 mm in front of the query camera, the template camera 1 mm closer (tau = 10 mm, so
    only the emptiness rules can reject), template focal length scaled so pixels map to themselves.
    """
    H = W = 64
    q_K = make_K(1, 100.0, 31.5, 31.5)
    t_K = make_K(1, 100.0 * 2 / 3, 31.5, 31.5)[:, None]
    t_pose = torch.eye(4)[None, None].clone()
    t_pose[..., 2, 3] = -0.001
    q_depth, t_depth = torch.full((1, H, W), 0.003), torch.full((1, 1, H, W), 0.002)
    q_mask, t_mask = torch.ones(1, H, W, dtype=torch.bool), torch.ones(1, 1, H, W, dtype=torch.bool)
    q_depth[0, 8, 8] = 0  # anchor of patch 0: ignored
    q_mask[0, 18:22, 20:30] = False  # pixels of patch 1, depth intact
    q_depth[0, 34:38, 20:30] = 0  # pixels of patch 5, mask intact
    t_mask[0, 0, 8, 40] = False  # at the anchor of patch 2: unseen
    t_depth[0, 0, 8, 56] = 0  # at the anchor of patch 3: unseen
    t_mask[0, 0, 50:54, 4:12] = False  # pixels of patch 12
    t_depth[0, 0, 50:54, 36:44] = 0  # pixels of patch 14
    scene = dict(q_depth=q_depth, q_mask=q_mask, q_K=q_K, q_pose=torch.eye(4)[None], t_depth=t_depth,
                 t_mask=t_mask, t_K=t_K, t_pose=t_pose, tau=torch.tensor([0.01]))
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    want = torch.arange(16)
    want[0], want[2], want[3] = -1, 16, 16
    assert torch.equal(out.patch_cls.reshape(16), want)
    buddy = (want >= 0) & (want < 16)
    valid = _patches((q_mask & (q_depth > 0))[0] & (t_mask & (t_depth > 0))[0, 0], H, W).reshape(16, 16, 16)
    assert torch.equal(out.dense_visible.reshape(16, 16, 16), valid & buddy[:, None, None])
    assert (~valid[buddy]).sum() == 40 + 40 + 32 + 32  # every hole lies on a buddy patch


@pytest.mark.parametrize("backend", _backends())
def test_points_behind_cameras_are_never_seen(backend):
    """z <= 0 rejects even with a huge tau (10 m).

    The template camera sits 1 m in front of the query camera looking back at it, so a point at
    query depth d has template depth 1 - d: depth 1.5 puts it behind the other camera.
    """
    H = W = 64
    K = make_K(1, 100.0, 31.5, 31.5)
    t_pose = torch.tensor([[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]])[None, None]
    q_depth, t_depth = torch.full((1, H, W), 0.5), torch.full((1, 1, H, W), 0.5)
    # near the optical axis, so that without the z > 0 rule they would project into the image
    q_depth[0, 24, 24] = 1.5  # anchor of patch 5 behind the template camera
    t_depth[0, 0, 24:40, 28:36] = 1.5  # template pixels behind the query camera
    ones = torch.ones(1, H, W, dtype=torch.bool)
    scene = dict(q_depth=q_depth, q_mask=ones, q_K=K, q_pose=torch.eye(4)[None], t_depth=t_depth,
                 t_mask=ones[:, None].clone(), t_K=K[:, None].clone(), t_pose=t_pose, tau=torch.tensor([10.0]))
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    out = FlowLabels(*(t.cpu() for t in out))
    iy, ix = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    want = iy * 4 + 3 - ix  # mirrored in u
    want[1, 1] = 16
    assert torch.equal(out.patch_cls[0, 0], want)
    behind = _patches(t_depth[0, 0] > 1, H, W)[want.clamp(max=15) // 4, want.clamp(max=15) % 4]
    assert torch.equal(out.dense_visible[0, 0], ~behind & (want < 16)[..., None, None])
    assert behind[want < 16].sum() >= 64


# --------------------------------------------------------------------------------------------
# Triton vs reference on random realistic scenes


@triton_cpu
@pytest.mark.parametrize("B,S,H,W", [(2, 3, 224, 224), (1, 2, 80, 48)])
def test_triton_interpreter_matches_reference(B, S, H, W):
    scene = random_scene(B, S, H, W, seed=10 + B)
    out = patch_flow_labels(**scene, backend="triton")
    assert_matches_reference(out, scene)


@triton_cpu
def test_triton_interpreter_block_sizes():
    from vpog.kernels.patch_flow_labels import patch_flow_labels_fwd

    scene = random_scene(1, 2, 48, 64, seed=7)
    for block_p in (1, 8, 64):  # 12 patches: 8 leaves a partial block, 64 (the CPU default) one
        out = FlowLabels(*patch_flow_labels_fwd(**scene, patch_size=P, block_p=block_p))
        assert_matches_reference(out, scene)
    with pytest.raises(ValueError, match="block_p must be a power of two"):
        patch_flow_labels_fwd(**scene, patch_size=P, block_p=3)
    with pytest.raises(ValueError, match="patch_size must be a power of two"):
        patch_flow_labels_fwd(**scene, patch_size=12)
    with pytest.raises(ValueError, match="multiple of patch_size 32"):
        patch_flow_labels_fwd(**scene, patch_size=32)  # 48 x 64


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("B,S,H,W,seed", [(4, 6, 224, 224, 20), (3, 5, 224, 224, 21), (2, 3, 112, 80, 23),
                                          (32, 6, 224, 224, 22)])
def test_triton_gpu_matches_reference(B, S, H, W, seed):
    scene = to(random_scene(B, S, H, W, seed=seed), "cuda")
    junk = torch.full((B * S * H * W * 4,), float("nan"), device="cuda")  # freed blocks full of NaN:
    del junk  # outputs allocated from them must still be written everywhere
    out = patch_flow_labels(**scene)  # auto on CUDA = Triton
    n_boundary = assert_matches_reference(out, scene)
    assert n_boundary <= B * S * 196 * 256 * 1e-4
    assert all(torch.isfinite(t.float()).all() for t in out)


@pytest.mark.cuda
@requires_cuda
def test_auto_picks_triton_on_cuda():
    from vpog._backend import select_backend

    assert select_backend("patch_flow_labels", "auto", torch.device("cuda")) == "triton"
    assert select_backend("patch_flow_labels", "auto", torch.device("cpu")) == "reference"


@pytest.mark.cuda
@requires_cuda
def test_triton_gpu_non_contiguous_inputs():
    scene = to(random_scene(2, 4, seed=24), "cuda")
    strided = dict(scene, t_depth=scene["t_depth"].transpose(-1, -2).contiguous().transpose(-1, -2),
                   t_pose=scene["t_pose"].transpose(0, 1).contiguous().transpose(0, 1),
                   q_mask=scene["q_mask"][:, None].expand(2, 3, 224, 224)[:, 1])
    assert not strided["t_depth"].is_contiguous()
    assert_matches_reference(patch_flow_labels(**strided, backend="triton"), scene)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("B,S", [(0, 2), (2, 0)])
def test_empty_batches(backend, B, S):
    scene = random_scene(2, 2, 32, 32, seed=1)
    scene = {k: v[:B] for k, v in scene.items()}
    scene.update({k: scene[k][:, :S] for k in ("t_depth", "t_mask", "t_K", "t_pose")})
    out = patch_flow_labels(**to(scene, _dev(backend)), backend=backend)
    assert out.patch_cls.shape == (B, S, 2, 2) and out.dense_flow.shape == (B, S, 2, 2, 16, 16, 2)


def test_auto_backend():
    scene = random_scene(1, 1, 32, 32, seed=8)
    out = patch_flow_labels(**scene)  # CPU: the reference
    ref = patch_flow_labels_reference(**scene)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Labels of the synthetic training set agree with its rendered scenes


@pytest.fixture(scope="module")
def synthetic_batch(tmp_path_factory):
    """Every usable instance of a tiny synthesized set (1 procedural object, 3 scenes), one batch."""
    try:
        from vpog.data.render import egl_available
    except Exception as exc:  # the render extra (trimesh, pyrender) is missing
        pytest.skip(f"rendering stack unavailable: {exc}")
    ok, reason = egl_available()
    if not ok:
        pytest.skip(reason)
    from vpog.data import DataConfig, VPOGDataset, collate_vpog
    from vpog.data.synthesize import synthesize

    out = tmp_path_factory.mktemp("synthetic_labels")
    synthesize(tiny_set_settings(out, num_objects=1, num_images=3, images_per_shard=3, image_size=[160, 120],
                                 objects_per_image=[1, 1], distractors_per_image=[1, 1], apparent_size=[0.4, 0.6]))
    cfg = from_mapping(DataConfig, {
        "batch_size": 2, "num_positive_templates": 3, "num_negative_templates": 1,
        "train_datasets": [{"name": "synthetic", "root": str(out), "templates": str(out / "templates")}],
    }, "data")
    ds = VPOGDataset(cfg, train=False, seed=0)
    assert len(ds) >= 1
    return collate_vpog([ds[i] for i in range(len(ds))])


@pytest.mark.render
def test_synthetic_set_labels_reproduce_the_query(synthetic_batch):
    """Labels from loader batches: visible correspondences of the positive templates land on the
    query mask and cover it (where anchors are valid), their flows match a float64 reprojection of
    the template depth, and the nearest template has buddies for most query patches."""
    bt = synthetic_batch
    d, m, K, T = bt.depths, bt.masks, bt.K, bt.T_m2c
    labels = patch_flow_labels(d[:, 0], m[:, 0], K[:, 0], T[:, 0], d[:, 1:], m[:, 1:], K[:, 1:], T[:, 1:],
                               tau=0.02 * bt.diameter)
    B, S = labels.patch_cls.shape[:2]
    cls = labels.patch_cls
    buddy = (cls >= 0) & (cls < 196)
    # the nearest template (index 0) sees most of the query's valid anchors, and most of their pixels
    assert buddy[:, 0].sum() >= 0.75 * (cls[:, 0] >= 0).sum()
    assert labels.dense_visible[:, 0][buddy[:, 0]].float().mean() >= 0.75
    iy, ix = torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij")
    centre = torch.stack([ix * 16 + 7.5, iy * 16 + 7.5], -1).double()[:, :, None, None]  # [14, 14, 1, 1, 2]
    u = torch.arange(16.0, dtype=torch.float64)
    for b in range(B):
        hit = torch.zeros(224, 224, dtype=torch.bool)
        for s in range(S):
            vis = labels.dense_visible[b, s]
            r = centre + 16 * labels.dense_flow[b, s].double()  # query crop pixels
            ru, rv = (r[..., 0] + 0.5).floor().long(), (r[..., 1] + 0.5).floor().long()
            assert m[b, 0][rv[vis], ru[vis]].all()  # visible pixels land on the query mask
            if bt.is_positive[b, s]:
                hit[rv[vis], ru[vis]] = True
            # float64 reprojection: template pixel -> model point -> query pixel
            j = cls[b, s].clamp(0, 195)
            pu = ((j % 14) * 16).double()[..., None, None] + u[None, None, None, :]
            pv = ((j // 14) * 16).double()[..., None, None] + u[None, None, :, None]
            pu, pv = pu.expand(14, 14, 16, 16), pv.expand(14, 14, 16, 16)
            z = d[b, s + 1].double()[pv.long(), pu.long()]
            Ks, Kq = K[b, s + 1].double(), K[b, 0].double()
            y = (pv - Ks[1, 2]) / Ks[1, 1]
            x = (pu - Ks[0, 2] - Ks[0, 1] * y) / Ks[0, 0]
            X = torch.stack([x * z, y * z, z], -1)
            rel = T[b, 0].double() @ torch.linalg.inv(T[b, s + 1].double())
            Y = X @ rel[:3, :3].T + rel[:3, 3]
            want = torch.stack([Kq[0, 0] * Y[..., 0] / Y[..., 2] + Kq[0, 1] * Y[..., 1] / Y[..., 2] + Kq[0, 2],
                                Kq[1, 1] * Y[..., 1] / Y[..., 2] + Kq[1, 2]], -1)
            torch.testing.assert_close(r[vis], want[vis], atol=2e-3, rtol=0)
        # positives reproduce the query mask inside the patches with valid anchors
        region = (cls[b, 0] >= 0).repeat_interleave(16, 0).repeat_interleave(16, 1)
        q_obj = m[b, 0] & (d[b, 0] > 0) & region
        hit = torch.nn.functional.max_pool2d(hit[None, None].float(), 3, 1, 1)[0, 0].bool() & region
        assert (hit & q_obj).sum() >= 0.85 * q_obj.sum()
        assert (hit & q_obj).sum() >= 0.8 * (hit | q_obj).sum()


# --------------------------------------------------------------------------------------------
# Input validation


@pytest.fixture
def small():
    return random_scene(2, 2, 32, 48, seed=9)


@pytest.mark.parametrize("name,bad,match", [
    ("q_depth", lambda s: s["q_depth"][0], r"q_depth must have shape \[B, H, W\]"),
    ("q_depth", lambda s: s["q_depth"].double(), "q_depth must be float32"),
    ("q_depth", lambda s: s["q_depth"][:, :30], "multiples of the patch size"),
    ("q_mask", lambda s: s["q_mask"].float(), "q_mask must be bool"),
    ("q_mask", lambda s: s["q_mask"][:1], r"q_mask must have shape \[2, 32, 48\]"),
    ("q_K", lambda s: s["q_K"][:, :2], r"q_K must have shape \[2, 3, 3\]"),
    ("q_K", lambda s: s["q_K"].long(), "q_K must be float32 or float64"),
    ("q_pose", lambda s: s["q_pose"][:, :3], r"q_pose must have shape \[2, 4, 4\]"),
    ("t_depth", lambda s: s["t_depth"][:, :, :16], r"t_depth must have shape \[B, S, H, W\]"),
    ("t_depth", lambda s: s["t_depth"].half(), "t_depth must be float32"),
    ("t_mask", lambda s: s["t_mask"][:, :1], r"t_mask must have shape \[2, 2, 32, 48\]"),
    ("t_mask", lambda s: s["t_mask"].to(torch.uint8), "t_mask must be bool"),
    ("t_K", lambda s: s["t_K"][:1], r"t_K must have shape \[2, 2, 3, 3\]"),
    ("t_pose", lambda s: s["t_pose"][:, 0], r"t_pose must have shape \[2, 2, 4, 4\]"),
    ("tau", lambda s: s["tau"][:1], r"tau must have shape \[B\] = \[2\]"),
    ("tau", lambda s: s["tau"].long(), "tau must be floating point"),
    ("tau", lambda s: -s["tau"], "tau must be positive"),
    ("tau", lambda s: "0.01", "tau must be a tensor"),
    ("q_pose", lambda s: s["q_pose"] * torch.tensor([2.0, 2, 2, 1])[:, None], "q_pose must hold rigid"),
    ("t_pose", lambda s: s["t_pose"] + torch.tensor([[0, 0.1, 0, 0]] + [[0.0] * 4] * 3), "t_pose must hold rigid"),
    ("q_pose", lambda s: torch.diag(torch.tensor([1.0, 1, -1, 1])).expand(2, 4, 4), "q_pose must hold rigid"),
    ("t_pose", lambda s: s["t_pose"].clone().index_fill_(-2, torch.tensor([3]), 0.5), "t_pose must hold rigid"),
    ("q_pose", lambda s: torch.full_like(s["q_pose"], float("nan")), "q_pose contains NaN"),
    ("q_mask", lambda s: s["q_mask"].to("meta"), "q_mask must be on q_depth's device"),
    ("q_K", lambda s: s["q_K"] * torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 2]]), "q_K must hold pinhole"),
    ("t_K", lambda s: s["t_K"] * torch.tensor([[-1.0, 1, 1], [1, 1, 1], [1, 1, 1]]), "t_K must hold pinhole"),
    ("t_K", lambda s: s["t_K"] + torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0, 0]]), "t_K must hold pinhole"),
    ("q_K", lambda s: s["q_K"] * float("nan"), "q_K must hold pinhole"),
])
def test_bad_inputs(small, name, bad, match):
    with pytest.raises(ValueError, match=match):
        patch_flow_labels(**dict(small, **{name: bad(small)}), backend="reference")


def test_numbers_and_float64_poses_are_accepted(small):
    ref = patch_flow_labels(**small, backend="reference")
    out = patch_flow_labels(**dict(small, tau=float(small["tau"][0]), q_pose=small["q_pose"].double(),
                                   t_K=small["t_K"].double()), backend="reference")
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_check_poses_false_skips_the_value_checks(small):
    bad = dict(small, q_pose=small["q_pose"] * torch.tensor([1.0, 1, 1.01, 1])[:, None])
    with pytest.raises(ValueError, match="q_pose must hold rigid"):
        patch_flow_labels(**bad)
    out = patch_flow_labels(**bad, check_poses=False)  # computed as given, no error
    assert out.patch_cls.shape == (2, 2, 2, 3)
    with pytest.raises(ValueError, match="q_depth must be float32"):  # shape/dtype checks still run
        patch_flow_labels(**dict(bad, q_depth=small["q_depth"].double()), check_poses=False)


def test_unknown_and_unavailable_backends(small, monkeypatch):
    with pytest.raises(ValueError, match="backend must be"):
        patch_flow_labels(**small, backend="fast")
    with pytest.raises(RuntimeError, match="no backend 'cuda'"):
        patch_flow_labels(**small, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            patch_flow_labels(**small, backend="triton")
