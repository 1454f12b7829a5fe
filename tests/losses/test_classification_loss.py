"""Patch classification loss: cross-entropy over 197 classes with -1 ignored (docs/conventions.md §7)."""

from __future__ import annotations

import pytest
import torch

from vpog.losses import classification_accuracy, classification_loss


def _labels(B, S, g):
    return torch.randint(-1, 197, (B, S, 14, 14), generator=g)


def test_equals_mean_negative_log_likelihood_over_labelled_pairs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 196, 197, generator=g, dtype=torch.float64) * 3
    cls = _labels(2, 3, g)
    flat = cls.reshape(2, 3, 196)
    keep = flat >= 0
    logp = logits.log_softmax(-1)
    want = -logp[keep].gather(-1, flat[keep][:, None]).mean()
    got = classification_loss(logits, cls)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float())
    # [B, S, 196] labels give the same
    torch.testing.assert_close(classification_loss(logits, flat), got)


def test_ignored_pairs_do_not_count():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 196, 197, generator=g, requires_grad=True)
    cls = _labels(1, 2, g)
    cls[0, 1] = -1
    loss = classification_loss(logits, cls)
    loss.backward()
    assert logits.grad[0, 1].abs().max() == 0
    assert logits.grad[0, 0].abs().max() > 0


def test_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 2, 196, 197, requires_grad=True)
    loss = classification_loss(logits, torch.full((1, 2, 14, 14), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_accuracy_metrics():
    cls = torch.full((1, 1, 196), -1)
    cls[0, 0, :4] = torch.tensor([5, 7, 196, 196])
    logits = torch.zeros(1, 1, 196, 197)
    logits[0, 0, 0, 5] = 1  # right (seen)
    logits[0, 0, 1, 3] = 1  # wrong (seen)
    logits[0, 0, 2, 196] = 1  # right (unseen)
    logits[0, 0, 3, 0] = 1  # wrong (unseen)
    m = classification_accuracy(logits, cls)
    assert m["cls_acc"].item() == pytest.approx(0.5)
    assert m["cls_acc_seen"].item() == pytest.approx(0.5)
    assert m["cls_acc_unseen"].item() == pytest.approx(0.5)


def test_shape_errors():
    with pytest.raises(ValueError, match="logits"):
        classification_loss(torch.zeros(1, 2, 196, 196), torch.zeros(1, 2, 196, dtype=torch.long))
    with pytest.raises(ValueError, match="patch_cls"):
        classification_loss(torch.zeros(1, 2, 196, 197), torch.zeros(1, 2, 195, dtype=torch.long))
    with pytest.raises(ValueError, match="patch_cls"):
        classification_loss(torch.zeros(1, 2, 196, 197), torch.zeros(1, 2, 196))
