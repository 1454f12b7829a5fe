"""Laplace flow NLL on visible pixels plus the invisible-pixel 1/b penalty (docs/conventions.md §7)."""

from __future__ import annotations

import pytest
import torch

from vpog.losses import flow_loss


def _case(B=1, S=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(-1, 197, (B, S, 14, 14), generator=g)
    buddy = ((cls >= 0) & (cls < 196))[..., None, None]
    vis = (torch.rand(B, S, 14, 14, 16, 16, generator=g) < 0.6) & buddy
    gt = torch.randn(B, S, 14, 14, 16, 16, 2, generator=g, dtype=dtype) * 0.3 * vis[..., None]
    flow = torch.randn(B, S, 196, 16, 16, 2, generator=g, dtype=dtype) * 0.3
    b = 0.05 + torch.rand(B, S, 196, 16, 16, generator=g, dtype=dtype)
    return flow, b, gt, vis, cls


def test_matches_the_formula():
    flow, b, gt, vis, cls = _case(dtype=torch.float64)
    t = flow_loss(flow, b, gt, vis, cls)
    B, S = cls.shape[:2]
    v = vis.reshape(B, S, 196, 16, 16)
    buddy = ((cls >= 0) & (cls < 196)).reshape(B, S, 196, 1, 1).expand_as(v)
    err = (flow - gt.reshape(flow.shape)).abs().sum(-1)
    want_nll = (err / b + 2 * b.log())[v].mean()
    want_inv = (1 / b)[buddy & ~v].mean()
    torch.testing.assert_close(t.nll, want_nll.float())
    torch.testing.assert_close(t.invisible, want_inv.float())
    assert t.num_visible.item() == v.sum().item()
    assert t.num_invisible.item() == (buddy & ~v).sum().item()


def test_non_buddy_and_invisible_pixels_do_not_touch_the_nll():
    flow, b, gt, vis, cls = _case(seed=1)
    base = flow_loss(flow, b, gt, vis, cls)
    messed = flow.clone()
    mask = ~vis.reshape(b.shape)
    messed[mask] = float("inf")
    flow_req = messed.requires_grad_()
    t = flow_loss(flow_req, b, gt, vis, cls)
    torch.testing.assert_close(t.nll, base.nll)
    t.nll.backward()
    assert torch.isfinite(flow_req.grad).all()
    assert flow_req.grad[mask].abs().max() == 0


def test_laplace_scale_optimum():
    """d nll / d b = 0 at b = |err|_1 / 2 (the Laplace maximum-likelihood scale, two axes sharing b)."""
    flow = torch.zeros(1, 1, 196, 16, 16, 2)
    gt = torch.zeros(1, 1, 14, 14, 16, 16, 2)
    gt[0, 0, 0, 0, 3, 4] = torch.tensor([0.3, -0.1])
    vis = torch.zeros(1, 1, 14, 14, 16, 16, dtype=torch.bool)
    vis[0, 0, 0, 0, 3, 4] = True
    cls = torch.full((1, 1, 14, 14), 196)
    cls[0, 0, 0, 0] = 17
    b = torch.ones(1, 1, 196, 16, 16)
    b[0, 0, 0, 3, 4] = 0.2
    b.requires_grad_()
    t = flow_loss(flow, b, gt, vis, cls)
    t.nll.backward()
    assert abs(b.grad[0, 0, 0, 3, 4].item()) < 1e-5
    b2 = b.detach().clone()
    b2[0, 0, 0, 3, 4] = 0.1
    b2.requires_grad_()
    flow_loss(flow, b2, gt, vis, cls).nll.backward()
    assert b2.grad[0, 0, 0, 3, 4].item() < 0  # below the optimum, growing b lowers the loss


def test_penalty_pushes_b_up_at_invisible_pixels():
    flow, b, gt, vis, cls = _case(seed=2)
    b = b.requires_grad_()
    flow_loss(flow, b, gt, vis, cls).invisible.backward()
    buddy = ((cls >= 0) & (cls < 196)).reshape(1, 2, 196, 1, 1).expand_as(b)
    inv = buddy & ~vis.reshape(b.shape)
    assert (b.grad[inv] < 0).all()
    assert (b.grad[~inv] == 0).all()


def test_empty_sets_give_zero():
    flow, b, gt, vis, cls = _case()
    t = flow_loss(flow, b, gt, torch.zeros_like(vis), torch.full_like(cls, 196))
    assert t.nll.item() == 0.0 and t.invisible.item() == 0.0


def test_shape_errors():
    flow, b, gt, vis, cls = _case()
    with pytest.raises(ValueError, match="flow"):
        flow_loss(flow[..., :1], b, gt, vis, cls)
    with pytest.raises(ValueError, match="b must"):
        flow_loss(flow, b[..., :8], gt, vis, cls)
    with pytest.raises(ValueError, match="gt_flow"):
        flow_loss(flow, b, gt[..., :8, :], vis, cls)
    with pytest.raises(ValueError, match="gt_visible"):
        flow_loss(flow, b, gt, vis[:, :1], cls)
    with pytest.raises(ValueError, match="patch_cls"):
        flow_loss(flow, b, gt, vis, cls[..., :7])
